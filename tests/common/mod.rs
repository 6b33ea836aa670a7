//! Reading the reference fixtures (tensors recorded from diffusers / transformers runs).
#![allow(dead_code)]

pub mod comfyui;
pub mod http;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::TensorData;
use safetensors::{Dtype, SafeTensors};

/// The backend the parity tests run on: the CPU; burn's wgpu backend when built with
/// `--features wgpu` (`make test-wgpu`, on Mesa's lavapipe where no GPU is present); CUDA when
/// built with `--features cuda` (the GPU bundle, `make gpu-bundle`).
#[cfg(not(any(feature = "wgpu", feature = "cuda")))]
pub type B = hanga::backend::Cpu;
#[cfg(all(feature = "wgpu", not(feature = "cuda")))]
pub type B = hanga::backend::Wgpu;
#[cfg(feature = "cuda")]
pub type B = hanga::backend::Cuda;

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

/// Runs a client script of `tests/` with the virtualenv `make test-deps` made for it
/// (`.venv/<venv>`); asserts that it succeeded and returns what it printed.
pub fn run_client(venv: &str, script: &str, args: &[&std::ffi::OsStr]) -> String {
    let python = repo().join(".venv").join(venv).join("bin/python");
    assert!(
        python.exists(),
        "{} is missing: `make test-deps` makes it",
        python.display()
    );
    let output = std::process::Command::new(python)
        .arg(repo().join("tests").join(script))
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    println!("{stdout}");
    stdout
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

pub fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// diffusers' img2img case `id` (tests/fixtures/sdxl/img2img or flux_img2img) as a native
/// generate body (the image as base64, no size: the server takes the image's), and the image
/// it made.
pub fn img2img_case(id: &str) -> (serde_json::Value, image::RgbImage) {
    let dir = [
        fixtures().join("sdxl/img2img"),
        fixtures().join("flux_img2img"),
    ]
    .into_iter()
    .find(|d| d.join(id).is_dir())
    .unwrap_or_else(|| panic!("no img2img case {id}"));
    let case: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join(id).join("case.json"))
            .unwrap()
            .replace("-Infinity", "null"),
    )
    .unwrap();
    // The SDXL cases name the image beside them, the others from the repository.
    let init = case["init_image"].as_str().unwrap();
    let init = std::fs::read(match init.starts_with("tests/") {
        true => repo().join(init),
        false => dir.join(init),
    })
    .unwrap();
    let mut body = serde_json::json!({
        "prompt": case["prompt"], "init_image": base64(&init), "strength": case["strength"],
        "steps": case["num_inference_steps"], "guidance_scale": case["guidance_scale"],
        "seed": case["seed"],
    });
    if let Some(negative) = case["negative_prompt"].as_str() {
        body["negative_prompt"] = negative.into();
    }
    if case["family"] == "sdxl" {
        let (sampler, scheduler) = match case["scheduler_name"].as_str().unwrap() {
            "euler" => ("euler", "normal"),
            "euler_a" => ("euler_ancestral", "normal"),
            "dpmpp_2m_karras" => ("dpmpp_2m", "karras"),
            other => panic!("unexpected scheduler {other}"),
        };
        body["sampler"] = sampler.into();
        body["scheduler"] = scheduler.into();
        body["long_prompt"] = "truncate".into();
    }
    let image = image::open(dir.join(id).join("image.png"))
        .unwrap()
        .to_rgb8();
    (body, image)
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
            // img2img cases: the image file beside the cases, and its strength.
            init_image: json["strength"]
                .as_f64()
                .map(|strength| hanga::pipelines::InitImage {
                    path: json["init_image"].as_str().unwrap().into(),
                    strength,
                }),
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

/// A ComfyUI `models/` folder at `dir` over the tiny fixtures, as a user lays one out: files
/// linked into `checkpoints/tiny/`, `diffusion_models/`, `text_encoders/`, `vae/`,
/// `loras/styles/` and `embeddings/styles/`, each with the `<stem>.toml` the tiny weights need (their own tokenizers,
/// the sizes tensors cannot tell; real models need none).
pub fn tiny_models_dir(dir: &Path) -> PathBuf {
    let models = dir.join("models");
    let assets = repo().join("assets/demo");
    let flux = fixtures().join("flux");
    let zimage = fixtures().join("zimage");
    let link = |from: PathBuf, to: &str, sidecar: Option<String>| {
        let to = models.join(to);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&from, &to).unwrap();
        if let Some(text) = sidecar {
            std::fs::write(to.with_extension("toml"), text).unwrap();
        }
    };
    let path = |p: PathBuf| p.to_str().unwrap().to_owned();
    link(
        assets.join("sd_xl_tiny.safetensors"),
        "checkpoints/tiny/sd_xl_tiny.safetensors",
        Some(format!(
            r#"name = "SDXL tiny from a models folder"
[files]
tokenizer_clip_l = "{}"
tokenizer_clip_g = "{}"
[architecture.unet]
attention_head_dim = [1, 2, 4]
norm_num_groups = 8
[architecture.vae]
norm_num_groups = 8
[architecture.text_encoder]
num_attention_heads = 4
hidden_act = "quick_gelu"
[architecture.text_encoder_2]
num_attention_heads = 4
hidden_act = "gelu"
"#,
            path(assets.join("tokenizer/tokenizer.json")),
            path(assets.join("tokenizer_2/tokenizer.json")),
        )),
    );
    let rope =
        |axes: &str, key: &str| Some(format!("[architecture.transformer]\n{key} = {axes}\n"));
    link(
        flux.join("flux1-dev-tiny.safetensors"),
        "diffusion_models/flux1-dev-tiny.safetensors",
        rope("[4, 14, 14]", "axes_dims_rope"),
    );
    link(
        flux.join("chroma-tiny.safetensors"),
        "diffusion_models/chroma-tiny.safetensors",
        rope("[4, 14, 14]", "axes_dims_rope"),
    );
    link(
        zimage.join("z_image_turbo-tiny.safetensors"),
        "diffusion_models/z_image_turbo-tiny.safetensors",
        rope("[8, 12, 12]", "axes_dims"),
    );
    link(
        flux.join("common/t5xxl-tiny.safetensors"),
        "text_encoders/t5xxl-tiny.safetensors",
        Some(format!(
            "[files]\ntokenizer_t5 = \"{}\"\n",
            path(flux.join("common/tokenizer_t5/tokenizer.json"))
        )),
    );
    link(
        flux.join("common/clip_l.safetensors"),
        "text_encoders/clip_l.safetensors",
        Some(format!(
            "[files]\ntokenizer_clip_l = \"{}\"\n[architecture.clip_l]\nnum_attention_heads = 4\nhidden_act = \"quick_gelu\"\n",
            path(flux.join("common/tokenizer_clip_l/tokenizer.json"))
        )),
    );
    link(
        zimage.join("qwen3-tiny.safetensors"),
        "text_encoders/qwen3-tiny.safetensors",
        Some(format!(
            "[files]\ntokenizer_qwen3 = \"{}\"\n",
            path(zimage.join("diffusers/tokenizer/tokenizer.json"))
        )),
    );
    link(
        flux.join("common/ae.safetensors"),
        "vae/ae.safetensors",
        Some("[architecture.vae]\nnorm_num_groups = 8\n".into()),
    );
    link(
        fixtures().join("sdxl/lora/sdxl_lora_kohya_sdscripts-equivalent.safetensors"),
        "loras/styles/sdxl_lora_kohya_sdscripts-equivalent.safetensors",
        None,
    );
    link(
        fixtures().join("comfyui_nodes/embeddings/tiny_style.safetensors"),
        "embeddings/styles/tiny_style.safetensors",
        None,
    );
    // Not model files: left out of every list.
    std::fs::write(models.join("checkpoints/put_checkpoints_here"), "").unwrap();
    models
}
