//! Pillow's `Image.resize(size, BICUBIC | LANCZOS)` on 8-bit RGB, to the bit: transformers'
//! `CLIPImageProcessor` resizes with bicubic and diffusers' `VaeImageProcessor` with Lanczos,
//! and fast_image_resize's 16-bit coefficients round some pixels one step away from Pillow's
//! 22-bit ones. Follows Pillow `src/libImaging/
//! Resample.c` (`precompute_coeffs`, `normalize_coeffs_8bpc`, `ImagingResampleHorizontal_8bpc`,
//! `ImagingResampleVertical_8bpc`, `ImagingResampleInner`): the horizontal pass first, into
//! 8-bit rows, then the vertical one.

use image::RgbImage;

/// `PRECISION_BITS = 32 - 8 - 2`
const PRECISION_BITS: u32 = 22;

/// Pillow's resampling filters (`struct filter`: the kernel and its support).
#[derive(Clone, Copy, Debug)]
pub enum Filter {
    Bicubic,
    Lanczos,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Bicubic => 2.0,
            Filter::Lanczos => 3.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        match self {
            Filter::Bicubic => bicubic(x),
            Filter::Lanczos => lanczos(x),
        }
    }
}

/// `bicubic_filter`, a = −0.5.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// `sinc_filter`.
fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        return 1.0;
    }
    let x = x * std::f64::consts::PI;
    x.sin() / x
}

/// `lanczos_filter`: sinc truncated to [−3, 3), windowed by sinc(x/3).
fn lanczos(x: f64) -> f64 {
    if (-3.0..3.0).contains(&x) {
        sinc(x) * sinc(x / 3.0)
    } else {
        0.0
    }
}

/// Per output pixel: the first input pixel read and the fixed-point weights.
struct Coefficients {
    taps: Vec<(usize, Vec<i32>)>,
}

/// `precompute_coeffs` over the whole input (box 0..in_size), then `normalize_coeffs_8bpc`.
fn coefficients(in_size: usize, out_size: usize, filter: Filter) -> Coefficients {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let taps = (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            // C's (int) cast truncates toward zero.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let weights: Vec<f64> = (xmin..xmax)
                .map(|x| filter.weight((x as f64 - center + 0.5) / filterscale))
                .collect();
            let total: f64 = weights.iter().sum();
            let fixed = weights
                .iter()
                .map(|w| {
                    let w = if total != 0.0 { w / total } else { *w };
                    let scaled = w * f64::from(1u32 << PRECISION_BITS);
                    if w < 0.0 {
                        (scaled - 0.5) as i32
                    } else {
                        (scaled + 0.5) as i32
                    }
                })
                .collect();
            (xmin, fixed)
        })
        .collect();
    Coefficients { taps }
}

/// `clip8`: the rounded sum back to a byte.
fn clip8(sum: i64) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// One tap sum from `1 << (PRECISION_BITS − 1)`, as Pillow starts it (the rounding half).
fn convolve(weights: &[i32], sample: impl Fn(usize) -> u8) -> u8 {
    let start = 1i64 << (PRECISION_BITS - 1);
    clip8(
        weights
            .iter()
            .enumerate()
            .fold(start, |s, (i, &k)| s + i64::from(sample(i)) * i64::from(k)),
    )
}

/// `image.resize((width, height), filter)` with `reducing_gap=None`.
pub fn resize(image: &RgbImage, width: u32, height: u32, filter: Filter) -> RgbImage {
    let (in_w, in_h) = (image.width() as usize, image.height() as usize);
    let (out_w, out_h) = (width as usize, height as usize);
    let src = image.as_raw();
    // Horizontal pass over the rows the vertical pass reads (all of them here: the box is the
    // whole image), skipped when the width stays.
    let (rows, row_w) = if out_w != in_w {
        let horizontal = coefficients(in_w, out_w, filter);
        let mut rows = vec![0u8; in_h * out_w * 3];
        for y in 0..in_h {
            for (x, (xmin, weights)) in horizontal.taps.iter().enumerate() {
                for c in 0..3 {
                    rows[(y * out_w + x) * 3 + c] =
                        convolve(weights, |i| src[(y * in_w + xmin + i) * 3 + c]);
                }
            }
        }
        (rows, out_w)
    } else {
        (src.clone(), in_w)
    };
    if out_h == in_h {
        return RgbImage::from_raw(width, height, rows).expect("sized above");
    }
    let vertical = coefficients(in_h, out_h, filter);
    let mut out = vec![0u8; out_h * row_w * 3];
    for (y, (ymin, weights)) in vertical.taps.iter().enumerate() {
        for x in 0..row_w {
            for c in 0..3 {
                out[(y * row_w + x) * 3 + c] =
                    convolve(weights, |i| rows[((ymin + i) * row_w + x) * 3 + c]);
            }
        }
    }
    RgbImage::from_raw(width, height, out).expect("sized above")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// diffusers' img2img preprocessing squeezed a 72×60 image to 72×56 with Pillow's LANCZOS
    /// (tests/fixtures/sdxl/img2img, `image.resized_u8`); the result must be the same bytes.
    #[test]
    fn lanczos_matches_pillow() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sdxl/img2img");
        let input = image::open(dir.join("init_72x60.png")).unwrap().to_rgb8();
        let bytes =
            std::fs::read(dir.join("img2img_dpmpp2m-karras_72x56_s0.75/case.safetensors")).unwrap();
        let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let expected = tensors.tensor("image.resized_u8").unwrap();
        assert_eq!(expected.shape(), [56, 72, 3]);
        let resized = resize(&input, 72, 56, Filter::Lanczos);
        assert_eq!(resized.as_raw().as_slice(), expected.data());
    }
}
