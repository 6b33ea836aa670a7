//! `comfy.utils.common_upscale`: resizing [N, C, H, W] planes as LatentUpscale(By) and
//! ImageScale(By) do, with torch's `F.interpolate` index rules (align_corners false, no
//! antialiasing: aten `UpSample.h` `area_pixel_compute_source_index`,
//! `nearest_neighbor_exact_compute_source_index`, `upsample_bicubic2d` with A = −0.75;
//! `adaptive_avg_pool2d` for "area"), ComfyUI's `bislerp`, and PIL's Lanczos for "lanczos".

use crate::Error;

/// Planes [n, c, h, w] as f32, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Planes {
    pub data: Vec<f32>,
    pub shape: [usize; 4],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpscaleMethod {
    NearestExact,
    Bilinear,
    Area,
    Bicubic,
    Bislerp,
    Lanczos,
}

impl UpscaleMethod {
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "nearest-exact" => Self::NearestExact,
            "bilinear" => Self::Bilinear,
            "area" => Self::Area,
            "bicubic" => Self::Bicubic,
            "bislerp" => Self::Bislerp,
            "lanczos" => Self::Lanczos,
            _ => return None,
        })
    }
}

/// Python's `round(x)`: halves to even.
pub fn python_round(x: f64) -> usize {
    x.round_ties_even().max(0.0) as usize
}

/// `common_upscale(samples, width, height, method, crop)`; `crop_center`: cut the middle
/// region of the target's aspect first.
pub fn common_upscale(
    planes: &Planes,
    width: usize,
    height: usize,
    method: UpscaleMethod,
    crop_center: bool,
) -> Result<Planes, Error> {
    if width == 0 || height == 0 {
        return Err(Error::request(format!("cannot resize to {width}×{height}")));
    }
    let cropped = if crop_center {
        crop_to_aspect(planes, width, height)
    } else {
        planes.clone()
    };
    let [n, c, h, w] = cropped.shape;
    if h == 0 || w == 0 {
        return Err(Error::request("cannot resize an empty image"));
    }
    Ok(match method {
        UpscaleMethod::Bislerp => bislerp(&cropped, width, height),
        UpscaleMethod::Lanczos => lanczos(&cropped, width, height)?,
        _ => {
            let rows = axis_weights(method, h, height);
            let cols = axis_weights(method, w, width);
            let mut data = Vec::with_capacity(n * c * height * width);
            for plane in cropped.data.chunks(h * w) {
                for (ys, yw) in &rows {
                    for (xs, xw) in &cols {
                        let mut sum = 0f32;
                        for (&y, &wy) in ys.iter().zip(yw) {
                            let mut row = 0f32;
                            for (&x, &wx) in xs.iter().zip(xw) {
                                row += wx * plane[y * w + x];
                            }
                            sum += wy * row;
                        }
                        data.push(sum);
                    }
                }
            }
            Planes {
                data,
                shape: [n, c, height, width],
            }
        }
    })
}

/// The centred region with the target's aspect (`common_upscale`'s crop, with Python's
/// rounding).
fn crop_to_aspect(planes: &Planes, width: usize, height: usize) -> Planes {
    let [n, c, h, w] = planes.shape;
    let old_aspect = w as f64 / h as f64;
    let new_aspect = width as f64 / height as f64;
    let (mut x, mut y) = (0, 0);
    if old_aspect > new_aspect {
        x = python_round((w as f64 - w as f64 * (new_aspect / old_aspect)) / 2.0);
    } else if old_aspect < new_aspect {
        y = python_round((h as f64 - h as f64 * (old_aspect / new_aspect)) / 2.0);
    }
    let (nh, nw) = (h.saturating_sub(2 * y), w.saturating_sub(2 * x));
    let mut data = Vec::with_capacity(n * c * nh * nw);
    for plane in planes.data.chunks(h * w) {
        for row in y..y + nh {
            data.extend_from_slice(&plane[row * w + x..row * w + x + nw]);
        }
    }
    Planes {
        data,
        shape: [n, c, nh, nw],
    }
}

/// Per output index along one axis: the source indices and their weights.
type AxisWeights = Vec<(Vec<usize>, Vec<f32>)>;

fn axis_weights(method: UpscaleMethod, input: usize, output: usize) -> AxisWeights {
    // torch computes the scale in the tensor's accumulate type (float for f32).
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|i| match method {
            UpscaleMethod::NearestExact => {
                let src = (((i as f32 + 0.5) * scale).floor() as usize).min(input - 1);
                (vec![src], vec![1.0])
            }
            UpscaleMethod::Bilinear => {
                let src = (scale * (i as f32 + 0.5) - 0.5).max(0.0);
                let i0 = src as usize;
                let i1 = if i0 < input - 1 { i0 + 1 } else { i0 };
                let l1 = src - i0 as f32;
                (vec![i0, i1], vec![1.0 - l1, l1])
            }
            UpscaleMethod::Bicubic => {
                let src = scale * (i as f32 + 0.5) - 0.5;
                let floor = src.floor();
                let t = src - floor;
                let index = |k: i64| (floor as i64 - 1 + k).clamp(0, input as i64 - 1) as usize;
                ((0..4).map(index).collect(), cubic_coefficients(t).to_vec())
            }
            // adaptive_avg_pool2d: [floor(i·in/out), ceil((i+1)·in/out)).
            _ => {
                let start = i * input / output;
                let end = ((i + 1) * input).div_ceil(output);
                let count = (end - start) as f32;
                ((start..end).collect(), vec![1.0 / count; end - start])
            }
        })
        .collect()
}

/// aten `get_cubic_upsample_coefficients` with A = −0.75.
fn cubic_coefficients(t: f32) -> [f32; 4] {
    const A: f32 = -0.75;
    let near = |x: f32| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let far = |x: f32| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)]
}

/// ComfyUI's `bislerp`: along each axis, the bilinear neighbours of each output pixel
/// slerped channel-vector-wise (norm interpolated linearly), width first.
fn bislerp(planes: &Planes, width: usize, height: usize) -> Planes {
    let [n, c, _, _] = planes.shape;
    let get = |p: &Planes, b: usize, ch: usize, y: usize, x: usize| {
        let [_, cs, hs, ws] = p.shape;
        p.data[((b * cs + ch) * hs + y) * ws + x]
    };
    let pass = |src: &Planes, along_width: bool| {
        let [_, _, sh, sw] = src.shape;
        let (old, new) = if along_width {
            (sw, width)
        } else {
            (sh, height)
        };
        let (ratios, first, second) = bilinear_neighbours(old, new);
        let (oh, ow) = if along_width {
            (sh, width)
        } else {
            (height, sw)
        };
        let mut out = vec![0f32; n * c * oh * ow];
        let mut v1 = vec![0f32; c];
        let mut v2 = vec![0f32; c];
        for b in 0..n {
            for y in 0..oh {
                for x in 0..ow {
                    let i = if along_width { x } else { y };
                    for ch in 0..c {
                        (v1[ch], v2[ch]) = if along_width {
                            (get(src, b, ch, y, first[i]), get(src, b, ch, y, second[i]))
                        } else {
                            (get(src, b, ch, first[i], x), get(src, b, ch, second[i], x))
                        };
                    }
                    let mixed = slerp(&v1, &v2, ratios[i]);
                    for ch in 0..c {
                        out[((b * c + ch) * oh + y) * ow + x] = mixed[ch];
                    }
                }
            }
        }
        Planes {
            data: out,
            shape: [n, c, oh, ow],
        }
    };
    pass(&pass(planes, true), false)
}

/// `generate_bilinear_data`: torch's bilinear resize of the coordinates 0..old (and of
/// 1..old with the last repeated) to `new` entries: (fractions, first, second).
fn bilinear_neighbours(old: usize, new: usize) -> (Vec<f32>, Vec<usize>, Vec<usize>) {
    let weights = axis_weights(UpscaleMethod::Bilinear, old, new);
    let resized = |coords: &[f32]| -> Vec<f32> {
        weights
            .iter()
            .map(|(idx, w)| idx.iter().zip(w).map(|(&i, &w)| w * coords[i]).sum())
            .collect()
    };
    let plain: Vec<f32> = (0..old).map(|i| i as f32).collect();
    let mut next: Vec<f32> = (0..old).map(|i| i as f32 + 1.0).collect();
    *next.last_mut().expect("old > 0") -= 1.0;
    let first = resized(&plain);
    let ratios = first.iter().map(|v| v - v.floor()).collect();
    let to_index = |v: Vec<f32>| v.into_iter().map(|x| x as usize).collect();
    (ratios, to_index(first), to_index(resized(&next)))
}

/// bislerp's `slerp` of two channel vectors at ratio `r`.
fn slerp(b1: &[f32], b2: &[f32], r: f32) -> Vec<f32> {
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let (n1, n2) = (norm(b1), norm(b2));
    let unit = |v: &[f32], n: f32| -> Vec<f32> {
        v.iter()
            .map(|x| if n == 0.0 { 0.0 } else { x / n })
            .collect()
    };
    let (u1, u2) = (unit(b1, n1), unit(b2, n2));
    let dot: f32 = u1.iter().zip(&u2).map(|(a, b)| a * b).sum();
    if dot > 1.0 - 1e-5 {
        return b1.to_vec();
    }
    if dot < 1e-5 - 1.0 {
        return b1
            .iter()
            .zip(b2)
            .map(|(a, b)| a * (1.0 - r) + b * r)
            .collect();
    }
    let omega = dot.acos();
    let so = omega.sin();
    let (k1, k2) = (((1.0 - r) * omega).sin() / so, (r * omega).sin() / so);
    let scale = n1 * (1.0 - r) + n2 * r;
    u1.iter()
        .zip(&u2)
        .map(|(a, b)| (k1 * a + k2 * b) * scale)
        .collect()
}

/// `comfy.utils.lanczos`: each image to 8 bits (`clip(255·x)` truncated), PIL's
/// `resize(LANCZOS)` (fast_image_resize's Lanczos3 convolution, as Pillow computes it), back
/// to [0, 1]. Expects 3 channels.
fn lanczos(planes: &Planes, width: usize, height: usize) -> Result<Planes, Error> {
    use fast_image_resize::images::Image;
    use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
    let [n, c, h, w] = planes.shape;
    if c != 3 {
        return Err(Error::request("lanczos resizes RGB images only"));
    }
    let mut data = vec![0f32; n * c * height * width];
    let mut resizer = Resizer::new();
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3));
    for b in 0..n {
        let plane = &planes.data[b * c * h * w..(b + 1) * c * h * w];
        let mut rgb = Vec::with_capacity(h * w * 3);
        for i in 0..h * w {
            for ch in 0..3 {
                rgb.push((255.0 * plane[ch * h * w + i]).clamp(0.0, 255.0) as u8);
            }
        }
        let src = Image::from_vec_u8(w as u32, h as u32, rgb, PixelType::U8x3)
            .map_err(|e| Error::request(format!("lanczos: {e}")))?;
        let mut dst = Image::new(width as u32, height as u32, PixelType::U8x3);
        resizer
            .resize(&src, &mut dst, &options)
            .map_err(|e| Error::request(format!("lanczos: {e}")))?;
        let out = &mut data[b * c * height * width..(b + 1) * c * height * width];
        for (i, px) in dst.buffer().chunks(3).enumerate() {
            for ch in 0..3 {
                out[ch * height * width + i] = px[ch] as f32 / 255.0;
            }
        }
    }
    Ok(Planes {
        data,
        shape: [n, c, height, width],
    })
}
