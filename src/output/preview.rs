//! Cheap per-step previews: a linear map from latent channels to RGB, no VAE.
//!
//! Factors from ComfyUI `comfy/latent_formats.py` (`SDXL` and `Flux` `latent_rgb_factors`, bias);
//! the image is `clamp((rgb + 1) / 2)` as ComfyUI's `Latent2RGBPreviewer` draws it.

use burn::prelude::*;

/// The latent → RGB projection of one latent format.
pub struct LatentRgb {
    /// One row per latent channel: its contribution to R, G, B.
    pub factors: &'static [[f32; 3]],
    pub bias: [f32; 3],
}

pub const SDXL_LATENT_RGB: LatentRgb = LatentRgb {
    factors: &[
        [0.3651, 0.4232, 0.4341],
        [-0.2533, -0.0042, 0.1068],
        [0.1076, 0.1111, -0.0362],
        [-0.3165, -0.2492, -0.2188],
    ],
    bias: [0.1084, -0.0175, -0.0011],
};

/// The 16-channel Flux VAE's latents (Flux, Chroma, Z-Image): ComfyUI `latent_formats.Flux`.
pub const FLUX_LATENT_RGB: LatentRgb = LatentRgb {
    factors: &[
        [-0.0346, 0.0244, 0.0681],
        [0.0034, 0.0210, 0.0687],
        [0.0275, -0.0668, -0.0433],
        [-0.0174, 0.0160, 0.0617],
        [0.0859, 0.0721, 0.0329],
        [0.0004, 0.0383, 0.0115],
        [0.0405, 0.0861, 0.0915],
        [-0.0236, -0.0185, -0.0259],
        [-0.0245, 0.0250, 0.1180],
        [0.1008, 0.0755, -0.0421],
        [-0.0515, 0.0201, 0.0011],
        [0.0428, -0.0012, -0.0036],
        [0.0817, 0.0765, 0.0749],
        [-0.1264, -0.0522, -0.1103],
        [-0.0280, -0.0881, -0.0499],
        [-0.1262, -0.0982, -0.0778],
    ],
    bias: [-0.0329, -0.0718, -0.0851],
};

/// latents [1, C, h, w] → an h×w RGB image.
pub fn latent_preview<B: Backend>(latents: &Tensor<B, 4>, map: &LatentRgb) -> image::RgbImage {
    let [_, channels, h, w] = latents.dims();
    let values: Vec<f32> = latents
        .clone()
        .into_data()
        .convert::<f32>()
        .to_vec()
        .expect("f32 data");
    let plane = h * w;
    let mut pixels = Vec::with_capacity(plane * 3);
    for p in 0..plane {
        for (rgb, bias) in map.bias.iter().enumerate() {
            let v: f32 = (0..channels.min(map.factors.len()))
                .map(|c| values[c * plane + p] * map.factors[c][rgb])
                .sum();
            pixels.push((((v + bias + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0).round() as u8);
        }
    }
    image::RgbImage::from_raw(w as u32, h as u32, pixels).expect("w·h·3 bytes")
}

/// JPEG bytes of a preview (what the SSE stream sends as a data URL).
pub fn jpeg(image: &image::RgbImage, quality: u8) -> Vec<u8> {
    let mut out = Vec::new();
    let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality);
    image
        .write_with_encoder(encoder)
        .expect("JPEG encoding into memory");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    #[test]
    fn projects_each_latent_pixel() {
        // Two pixels: all-zero latents give the bias; a unit first channel adds its row.
        let latents = Tensor::<crate::backend::Cpu, 4>::from_data(
            TensorData::new(vec![0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], [1, 4, 1, 2]),
            &Default::default(),
        );
        let image = latent_preview(&latents, &SDXL_LATENT_RGB);
        assert_eq!(image.dimensions(), (2, 1));
        let expect = |v: f32| (((v + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0).round() as u8;
        assert_eq!(
            image.get_pixel(0, 0).0,
            [expect(0.1084), expect(-0.0175), expect(-0.0011)]
        );
        assert_eq!(
            image.get_pixel(1, 0).0,
            [
                expect(0.3651 + 0.1084),
                expect(0.4232 - 0.0175),
                expect(0.4341 - 0.0011)
            ]
        );
    }
}
