//! The safety-check stage: decoded images → the Stable Diffusion safety checker's verdicts, as
//! diffusers' `StableDiffusionPipeline.run_safety_checker` runs it (the checker's
//! `CLIPImageProcessor` on the PIL images, then `StableDiffusionSafetyChecker`).

use burn::prelude::*;
use burn::tensor::TensorData;
use image::RgbImage;

use super::components::read_json;
use super::pil_resample::{Filter, resize};
use crate::Error;
use crate::models::safety_checker::{SafetyChecker, SafetyCheckerConfig, Verdict};
use crate::registry::CheckerManifest;
use crate::weights::{SafetensorsFile, TensorStore};

/// OpenAI CLIP's normalisation, as the checker's `preprocessor_config.json` writes it (numpy
/// takes these decimals to float32, as the literals here do).
#[allow(clippy::excessive_precision)]
const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
#[allow(clippy::excessive_precision)]
const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

pub fn load_checker<B: Backend>(
    manifest: &CheckerManifest,
    device: &B::Device,
) -> Result<SafetyChecker<B>, Error> {
    let config = match &manifest.files.config {
        Some(path) => read_json(&manifest.resolve(path))?,
        None => serde_json::json!({}),
    };
    let file = SafetensorsFile::open(&manifest.resolve(&manifest.files.weights))?;
    let store = TensorStore::from_file_prefix(&file, "");
    let config = SafetyCheckerConfig::detect(&store, &config)?;
    SafetyChecker::load(&store, &config, device)
}

/// transformers `CLIPImageProcessor` with the checker's settings: the shorter side resized to
/// `size` with bicubic resampling (the longer one to `int(size · long / short)`), the centre
/// `size`² cut out, then `(x / 255 − mean) / std`. Returns [3, size, size], channel-major.
pub fn clip_input(image: &RgbImage, size: usize) -> Result<Vec<f32>, Error> {
    let (w, h) = (image.width() as usize, image.height() as usize);
    if w == 0 || h == 0 {
        return Err(Error::request("an empty image"));
    }
    // image_transforms.get_resize_output_image_size(default_to_square=False)
    let (short, long) = (w.min(h), w.max(h));
    let resized_long = size * long / short;
    let (rw, rh) = if w <= h {
        (size, resized_long)
    } else {
        (resized_long, size)
    };
    // CLIPImageProcessor resizes the PIL image with Pillow's BICUBIC (resample 3).
    let resized = resize(image, rw as u32, rh as u32, Filter::Bicubic);
    let pixels = resized.as_raw();
    // image_transforms.center_crop: top = (height − crop) // 2, left likewise
    let (top, left) = ((rh - size) / 2, (rw - size) / 2);
    let mut out = vec![0f32; 3 * size * size];
    for c in 0..3 {
        for y in 0..size {
            for x in 0..size {
                let v = pixels[((top + y) * rw + left + x) * 3 + c] as f32;
                out[(c * size + y) * size + x] = (v / 255.0 - CLIP_MEAN[c]) / CLIP_STD[c];
            }
        }
    }
    Ok(out)
}

/// The checker's verdict on each image.
pub fn check_images<B: Backend>(
    checker: &SafetyChecker<B>,
    images: &[&RgbImage],
    device: &B::Device,
) -> Result<Vec<Verdict>, Error> {
    let size = checker.image_size();
    let mut values = Vec::with_capacity(images.len() * 3 * size * size);
    for image in images {
        values.extend(clip_input(image, size)?);
    }
    let pixel_values = Tensor::<B, 4>::from_data(
        TensorData::new(values, [images.len(), 3, size, size]),
        device,
    );
    checker.check(pixel_values)
}
