//! One UNet step (batch 2, as with CFG) and one VAE decode on the CPU backend, for the tiny test
//! configuration and a "small" one with every width ×8 (64/128/256 channels), at a 32×32
//! latent (256×256 image). Prints PyTorch's time for the same configurations beside ours when
//! `benches/torch_reference.py` can import torch and diffusers (interpreter: $HANGA_BENCH_PYTHON,
//! else python3), and says so when it cannot.
//!
//! Run: `make bench` (= `cargo test --bench denoise -- --bench`). Without `--bench`
//! argument) it only runs the tiny configuration once, so the suite keeps it compiling and
//! working without spending CI time on timings.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use burn::prelude::*;
use burn::tensor::TensorData;
use hanga::backend::Cpu;
use hanga::models::unet_sdxl::{UNet, UNetConfig};
use hanga::models::vae::{Decoder, VaeConfig};
use hanga::sampling::TorchGenerator;
use hanga::weights::{SafetensorsFile, TensorStore};

const SCALE: usize = 8;
const LATENT: usize = 32;
const TOKENS: usize = 77;

fn components() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/components")
}

fn read_config(dir: &str) -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(components().join(dir).join("config.json")).unwrap(),
    )
    .unwrap()
}

/// Axes of a tensor that face the latent or RGB channels and keep their size when widths scale.
fn fixed_axes(name: &str) -> &'static [usize] {
    match name {
        "conv_in.weight" | "encoder.conv_in.weight" | "decoder.conv_in.weight" => &[1],
        "conv_out.weight"
        | "conv_out.bias"
        | "encoder.conv_out.weight"
        | "encoder.conv_out.bias"
        | "decoder.conv_out.weight"
        | "decoder.conv_out.bias" => &[0],
        n if n.starts_with("quant_conv.") || n.starts_with("post_quant_conv.") => &[0, 1],
        _ => &[],
    }
}

/// The tiny model's tensors with every width ×SCALE and random values (N(0, 1/fan_in) weights,
/// unit norms, zero biases), written as a safetensors file.
fn scaled_random_weights(tiny: &Path, out: &Path) {
    let store = TensorStore::from_file_prefix(&SafetensorsFile::open(tiny).unwrap(), "");
    let mut rng = TorchGenerator::new(0);
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut names: Vec<&str> = store.names().collect();
    names.sort();
    for name in names {
        let tiny_shape = store.shape(name).unwrap();
        let fixed = fixed_axes(name);
        let shape: Vec<usize> = tiny_shape
            .iter()
            .enumerate()
            .map(|(axis, &d)| {
                if axis >= 2 || fixed.contains(&axis) {
                    d
                } else {
                    d * SCALE
                }
            })
            .collect();
        let n: usize = shape.iter().product();
        let values: Vec<f32> = if shape.len() == 1 {
            vec![
                if name.contains("norm") && name.ends_with("weight") {
                    1.0
                } else {
                    0.0
                };
                n
            ]
        } else {
            let fan_in = (n / shape[0]) as f32;
            rng.randn(n)
                .into_iter()
                .map(|v| v / fan_in.sqrt())
                .collect()
        };
        tensors.push((
            name.to_owned(),
            shape,
            values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, out).unwrap();
}

fn scale_config(mut cfg: serde_json::Value, keys: &[&str]) -> serde_json::Value {
    for key in keys {
        cfg[*key] = match &cfg[*key] {
            serde_json::Value::Array(v) => v
                .iter()
                .map(|c| c.as_u64().unwrap() * SCALE as u64)
                .collect(),
            v => (v.as_u64().unwrap() * SCALE as u64).into(),
        };
    }
    cfg
}

fn median_seconds(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[runs / 2]
}

fn randn<const D: usize>(shape: [usize; D], seed: u64) -> Tensor<Cpu, D> {
    let n = shape.iter().product();
    Tensor::from_data(
        TensorData::new(TorchGenerator::new(seed).randn(n), shape),
        &Default::default(),
    )
}

fn bench(
    name: &str,
    unet_file: &Path,
    unet_cfg: serde_json::Value,
    vae_file: &Path,
    vae_cfg: serde_json::Value,
    runs: usize,
) -> Vec<(String, f64)> {
    let device = Default::default();
    let unet_store = TensorStore::from_file_prefix(&SafetensorsFile::open(unet_file).unwrap(), "");
    let adm = unet_cfg["projection_class_embeddings_input_dim"]
        .as_u64()
        .unwrap() as usize;
    let pooled = adm - 6 * unet_cfg["addition_time_embed_dim"].as_u64().unwrap() as usize;
    let cfg = UNetConfig::detect(&unet_store, &unet_cfg, pooled).unwrap();
    let unet = UNet::<Cpu>::load(&unet_store, &cfg, &device).unwrap();
    let sample = randn([2, 4, LATENT, LATENT], 1);
    let context = randn([2, TOKENS, cfg.cross_attention_dim], 2);
    let text_embeds = randn([2, pooled], 3);
    let ids = [[256.0, 256.0, 0.0, 0.0, 256.0, 256.0]; 2];
    let unet_s = median_seconds(runs, || {
        let out = unet.forward(
            sample.clone(),
            &[500.0, 500.0],
            &context,
            text_embeds.clone(),
            &ids,
        );
        let _ = out.into_data();
    });

    let vae_store = TensorStore::from_file_prefix(&SafetensorsFile::open(vae_file).unwrap(), "");
    let vcfg = VaeConfig::detect(&vae_store, &vae_cfg, 0.13025, 0.0).unwrap();
    let vae = Decoder::<Cpu>::load(&vae_store, &vcfg, &device).unwrap();
    let z = randn([1, 4, LATENT, LATENT], 4);
    let vae_s = median_seconds(runs, || {
        let _ = vae.forward(z.clone()).into_data();
    });
    vec![
        (format!("{name}/unet_step"), unet_s),
        (format!("{name}/vae_decode"), vae_s),
    ]
}

fn torch_reference() -> Result<HashMap<String, f64>, String> {
    let python = std::env::var("HANGA_BENCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/torch_reference.py");
    let out = Command::new(&python)
        .arg(&script)
        .output()
        .map_err(|e| format!("{python}: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        let unet_tiny = components().join("sdxl_unet/diffusion_pytorch_model.safetensors");
        let vae_tiny = components().join("sdxl_vae/diffusion_pytorch_model.safetensors");
        let timings = bench(
            "tiny",
            &unet_tiny,
            read_config("sdxl_unet"),
            &vae_tiny,
            read_config("sdxl_vae"),
            1,
        );
        assert!(timings.iter().all(|(_, s)| *s > 0.0));
        println!("bench smoke run: 1 passed, 0 failed");
        return;
    }
    let tmp = std::env::temp_dir().join(format!("hanga-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let unet_tiny = components().join("sdxl_unet/diffusion_pytorch_model.safetensors");
    let vae_tiny = components().join("sdxl_vae/diffusion_pytorch_model.safetensors");
    let (unet_small, vae_small) = (
        tmp.join("unet_small.safetensors"),
        tmp.join("vae_small.safetensors"),
    );
    scaled_random_weights(&unet_tiny, &unet_small);
    scaled_random_weights(&vae_tiny, &vae_small);

    let unet_cfg = read_config("sdxl_unet");
    let vae_cfg = read_config("sdxl_vae");
    let small_unet_cfg = scale_config(
        unet_cfg.clone(),
        &[
            "block_out_channels",
            "cross_attention_dim",
            "projection_class_embeddings_input_dim",
            "addition_time_embed_dim",
        ],
    );
    let small_vae_cfg = scale_config(vae_cfg.clone(), &["block_out_channels"]);
    let mut ours = bench("tiny", &unet_tiny, unet_cfg, &vae_tiny, vae_cfg, 5);
    ours.extend(bench(
        "small",
        &unet_small,
        small_unet_cfg,
        &vae_small,
        small_vae_cfg,
        3,
    ));
    std::fs::remove_dir_all(&tmp).ok();

    let reference = torch_reference();
    println!(
        "CPU, {LATENT}x{LATENT} latent (256x256 image); UNet batch 2; median of 5 (tiny) / 3 (small) runs"
    );
    println!(
        "{:<18} {:>12} {:>12} {:>14}",
        "", "hanga (s)", "torch (s)", "torch/hanga"
    );
    for (name, s) in &ours {
        match &reference {
            Ok(r) => {
                let t = r[name];
                println!("{name:<18} {s:>12.4} {t:>12.4} {:>13.2}x", t / s);
            }
            Err(_) => println!("{name:<18} {s:>12.4} {:>12} {:>14}", "-", "-"),
        }
    }
    if let Err(why) = reference {
        println!(
            "torch column skipped ({why}); set HANGA_BENCH_PYTHON to a Python with torch and diffusers"
        );
    }
}
