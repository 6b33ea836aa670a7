//! PNG files with the generation parameters in A1111's `parameters` text chunk, which civitai,
//! A1111 and ComfyUI's loaders read back.

use std::io::Write;

use crate::Error;
use crate::pipelines::GenerationParams;
use crate::sampling::ScheduleKind;

/// A1111's infotext (`modules/processing.py::create_infotext`):
/// prompt, `Negative prompt: ...`, then `Key: value` pairs on one line.
pub fn a1111_parameters(params: &GenerationParams, model: &str) -> String {
    let mut text = params.prompt.clone();
    if let Some(negative) = params.negative_prompt.as_deref().filter(|n| !n.is_empty()) {
        text.push_str(&format!("\nNegative prompt: {negative}"));
    }
    let mut fields = vec![
        format!("Steps: {}", params.steps),
        format!("Sampler: {}", params.sampler.a1111_name()),
    ];
    if params.scheduler == ScheduleKind::Karras {
        fields.push("Schedule type: Karras".into());
    }
    fields.extend([
        format!("CFG scale: {}", params.guidance_scale),
        format!("Seed: {}", params.seed),
        format!("Size: {}x{}", params.width, params.height),
        format!("Model: {model}"),
    ]);
    if let Some(init) = &params.init_image {
        fields.push(format!("Denoising strength: {}", init.strength));
    }
    fields.push(format!("Version: hanga {}", env!("CARGO_PKG_VERSION")));
    text.push('\n');
    text.push_str(&fields.join(", "));
    text
}

/// Encodes `image` as PNG with a `parameters` chunk (tEXt when Latin-1, else iTXt, as PIL does).
pub fn encode_png(image: &image::RgbImage, parameters: &str, out: impl Write) -> Result<(), Error> {
    encode_png_with_text(image, &[("parameters", parameters)], out)
}

/// Encodes `image` as PNG with text chunks (keyword, text), each tEXt when Latin-1, else iTXt.
pub fn encode_png_with_text(
    image: &image::RgbImage,
    chunks: &[(&str, &str)],
    out: impl Write,
) -> Result<(), Error> {
    let io = |e: png::EncodingError| Error::Io(std::io::Error::other(e));
    let mut encoder = png::Encoder::new(out, image.width(), image.height());
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    for (keyword, text) in chunks {
        if text.chars().all(|c| (c as u32) < 256) {
            encoder
                .add_text_chunk((*keyword).into(), (*text).into())
                .map_err(io)?;
        } else {
            encoder
                .add_itxt_chunk((*keyword).into(), (*text).into())
                .map_err(io)?;
        }
    }
    let mut writer = encoder.write_header().map_err(io)?;
    writer.write_image_data(image.as_raw()).map_err(io)?;
    writer.finish().map_err(io)
}

/// The `parameters` text of a PNG file, if it has one.
pub fn read_parameters(bytes: &[u8]) -> Option<String> {
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let reader = decoder.read_info().ok()?;
    let info = reader.info();
    info.uncompressed_latin1_text
        .iter()
        .find(|c| c.keyword == "parameters")
        .map(|c| c.text.clone())
        .or_else(|| {
            info.utf8_text
                .iter()
                .find(|c| c.keyword == "parameters")
                .and_then(|c| c.get_text().ok())
        })
}
