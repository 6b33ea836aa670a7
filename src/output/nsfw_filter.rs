//! Hiding an image the safety checker flags: the copies `nsfw/filter` writes and the images
//! of jobs run with `nsfw_filter`.

use image::RgbImage;
use image::imageops::{FilterType, fast_blur, resize};

/// How a flagged image is hidden.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    poem_openapi::Enum,
)]
#[serde(rename_all = "snake_case")]
#[oai(rename_all = "snake_case")]
pub enum NsfwFilter {
    /// A Gaussian blur (σ = 4 % of the longer side: shapes stay, details go).
    #[default]
    Blur,
    /// Blocks of 1/16 of the longer side, each its mean colour.
    Pixelate,
    /// All black, as diffusers' safety checker returns a flagged image.
    Black,
}

/// `image` hidden by `filter`, the same size.
pub fn hide(image: &RgbImage, filter: NsfwFilter) -> RgbImage {
    let (w, h) = image.dimensions();
    let long = w.max(h) as f32;
    match filter {
        NsfwFilter::Blur => fast_blur(image, (long * 0.04).max(2.0)),
        NsfwFilter::Pixelate => {
            let block = (long / 16.0).max(2.0);
            let (bw, bh) = (
                ((w as f32 / block).ceil() as u32).max(1),
                ((h as f32 / block).ceil() as u32).max(1),
            );
            // A box filter down to one pixel a block is each block's mean; nearest back up.
            let small = resize(image, bw, bh, FilterType::Triangle);
            resize(&small, w, h, FilterType::Nearest)
        }
        NsfwFilter::Black => RgbImage::new(w, h),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A picture with detail everywhere: every filter must change it, keep its size, and
    /// black must be all zero.
    #[test]
    fn each_filter_hides_and_keeps_the_size() {
        let image = RgbImage::from_fn(96, 64, |x, y| {
            image::Rgb([
                (x * 7 % 256) as u8,
                (y * 13 % 256) as u8,
                ((x ^ y) * 5 % 256) as u8,
            ])
        });
        for filter in [NsfwFilter::Blur, NsfwFilter::Pixelate, NsfwFilter::Black] {
            let hidden = hide(&image, filter);
            assert_eq!(hidden.dimensions(), image.dimensions(), "{filter:?}");
            let changed = hidden
                .as_raw()
                .iter()
                .zip(image.as_raw())
                .filter(|(a, b)| a != b)
                .count();
            assert!(
                changed > image.as_raw().len() / 2,
                "{filter:?} changed {changed}"
            );
        }
        assert!(
            hide(&image, NsfwFilter::Black)
                .as_raw()
                .iter()
                .all(|&v| v == 0)
        );
        // Pixelated: within a block (6 px here) neighbours are equal.
        let p = hide(&image, NsfwFilter::Pixelate);
        assert_eq!(p.get_pixel(0, 0), p.get_pixel(5, 5));
    }
}
