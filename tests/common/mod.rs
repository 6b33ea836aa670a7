//! Reading the reference fixtures (tensors recorded from diffusers / transformers runs).
#![allow(dead_code)]

pub mod comfyui;
pub mod http;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::TensorData;
use safetensors::{Dtype, SafeTensors};

pub type B = hanga::backend::Cpu;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A fresh `hanga-<name>-<pid>` folder under the system's temp dir.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hanga-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Copies the kohya-layout LoRA of the tiny SDXL (the demo model) into `loras` as
/// `kohya_style.safetensors`, with a civitai sidecar naming its trigger words "wine bottle".
pub fn install_kohya_lora(loras: &Path) {
    std::fs::create_dir_all(loras).unwrap();
    std::fs::copy(
        fixtures().join("sdxl/lora/sdxl_lora_kohya.safetensors"),
        loras.join("kohya_style.safetensors"),
    )
    .unwrap();
    std::fs::write(
        loras.join("kohya_style.json"),
        r#"{"trainedWords": ["wine bottle"]}"#,
    )
    .unwrap();
}

/// A fixture tensor: values as f64 (ids and masks converted) and shape.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub values: Vec<f64>,
    pub shape: Vec<usize>,
}

impl Recorded {
    pub fn f32(&self) -> Vec<f32> {
        self.values.iter().map(|&v| v as f32).collect()
    }

    pub fn tensor<const D: usize>(&self) -> Tensor<B, D> {
        Tensor::from_data(
            TensorData::new(self.f32(), self.shape.clone()),
            &Default::default(),
        )
    }

    pub fn ids(&self) -> Vec<u32> {
        self.values.iter().map(|&v| v as u32).collect()
    }
}

pub fn load(path: &Path) -> HashMap<String, Recorded> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let data = view.data();
            let values: Vec<f64> = match view.dtype() {
                Dtype::F32 => data
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
                    .collect(),
                Dtype::I64 => data
                    .chunks_exact(8)
                    .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f64)
                    .collect(),
                Dtype::BOOL | Dtype::U8 => data.iter().map(|&b| b as f64).collect(),
                other => panic!("{name}: unexpected dtype {other:?}"),
            };
            (
                name,
                Recorded {
                    values,
                    shape: view.shape().to_vec(),
                },
            )
        })
        .collect()
}

/// max |a - b| over all elements (shapes must agree in size).
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "sizes differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Largest per-channel difference between two 8-bit images of the same size.
pub fn max_pixel_diff(a: &image::RgbImage, b: &image::RgbImage) -> u8 {
    assert_eq!(a.dimensions(), b.dimensions());
    a.as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap()
}

/// Mean per-channel difference between two 8-bit images of the same size, in 1/255 steps.
pub fn mean_pixel_diff(a: &image::RgbImage, b: &image::RgbImage) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions());
    let total: u64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| x.abs_diff(*y) as u64)
        .sum();
    total as f64 / a.as_raw().len() as f64
}

pub fn max_abs(a: &[f32]) -> f32 {
    a.iter().map(|x| x.abs()).fold(0.0, f32::max)
}

pub fn values<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

/// Asserts max |got - expected| ≤ tol · max(1, max |expected|) and returns the error.
pub fn assert_close(what: &str, got: &[f32], expected: &[f32], tol: f32) -> f32 {
    let err = max_abs_diff(got, expected);
    let scale = max_abs(expected).max(1.0);
    assert!(
        err <= tol * scale,
        "{what}: max abs error {err:e} > {tol:e} × {scale}"
    );
    err
}

/// A recorded pipeline case: `case.json`'s parameters (prompts cut at 77 CLIP tokens, as
/// diffusers does), its tensors and its image.
pub struct PipelineCase {
    pub params: hanga::pipelines::GenerationParams,
    pub tensors: HashMap<String, Recorded>,
    pub png: image::RgbImage,
}

impl PipelineCase {
    pub fn load(
        dir: &Path,
        sampler: hanga::sampling::SamplerKind,
        scheduler: hanga::sampling::ScheduleKind,
    ) -> Self {
        // Python's json writes -Infinity (lambda_min_clipped), which is not JSON.
        let text = std::fs::read_to_string(dir.join("case.json"))
            .unwrap()
            .replace("-Infinity", "null");
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        let params = hanga::pipelines::GenerationParams {
            prompt: json["prompt"].as_str().unwrap().into(),
            negative_prompt: json["negative_prompt"].as_str().map(Into::into),
            width: json["width"].as_u64().unwrap() as usize,
            height: json["height"].as_u64().unwrap() as usize,
            steps: json["num_inference_steps"].as_u64().unwrap() as usize,
            guidance_scale: json["guidance_scale"].as_f64().unwrap() as f32,
            sampler,
            scheduler,
            seed: json["seed"].as_u64().unwrap(),
            long_prompt: hanga::text::LongPrompt::Truncate,
        };
        Self {
            params,
            tensors: load(&dir.join("case.safetensors")),
            png: image::open(dir.join("image.png")).unwrap().to_rgb8(),
        }
    }

    /// Runs `generate` with a step callback that checks each step's latents against
    /// `latents.step{i}` (≤ 1e-3), then the image against the case's (≤ 2/255): the issues'
    /// pipeline tolerances. Returns the worst step error and the image difference.
    pub fn check_run(
        &self,
        label: &str,
        generate: impl FnOnce(
            &mut dyn FnMut(hanga::pipelines::StepProgress<B>) -> hanga::pipelines::Flow,
        ) -> image::RgbImage,
    ) -> (f32, u8) {
        let mut worst_step = 0.0f32;
        let image = generate(&mut |progress| {
            let key = format!("latents.step{}", progress.step - 1);
            let err = max_abs_diff(&values(progress.latents.clone()), &self.tensors[&key].f32());
            assert!(err <= 1e-3, "{label} {key}: max abs error {err:e}");
            worst_step = worst_step.max(err);
            hanga::pipelines::Flow::Continue
        });
        let pixels = max_pixel_diff(&image, &self.png);
        assert!(pixels <= 2, "{label}: image differs by {pixels}/255");
        (worst_step, pixels)
    }
}
