//! `hanga bench`: full-size networks with random weights (no model files), timed on one
//! device. Each network is built from its published diffusers config (see [`cases`]); its
//! tensors, as [`shapes`] lists them, are filled with random values in an in-memory
//! safetensors file and loaded by the same loaders as a real checkpoint. Every forward is
//! followed by a device sync, so the times are of finished work.
//!
//! `benches/gpu/compare.py` builds the same cases in diffusers (`hanga bench --list` gives it
//! the configs and input sizes) and prints the ratio.

pub mod shapes;

use std::sync::Arc;
use std::time::Instant;

use burn::prelude::*;
use burn::tensor::Distribution;
use memmap2::MmapMut;
use serde::Serialize;
use serde_json::json;

use crate::Error;
use crate::backend::{DeviceKind, Precision, set_precision};
use crate::models::flux::{
    FluxConditioning, FluxConfig, FluxTransformer, ROPE_THETA, Rope, position_ids,
};
use crate::models::unet_sdxl::{UNet, UNetConfig};
use crate::models::vae::{Decoder, VaeConfig};
use crate::models::weight_bytes;
use crate::weights::{SafetensorsFile, TensorStore};
use shapes::Shapes;

/// Full size (the published configs at 1024²) or reduced widths at 256², which run on a CPU
/// and on lavapipe in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Size {
    Full,
    Small,
}

impl Size {
    pub fn name(self) -> &'static str {
        match self {
            Size::Full => "full",
            Size::Small => "small",
        }
    }
}

/// The networks benched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Network {
    SdxlUnet,
    FluxTransformer,
    VaeDecoder,
}

/// One timed network: the diffusers class and config it is built from, and its input.
#[derive(Clone, Debug, Serialize)]
pub struct Case {
    pub name: &'static str,
    pub network: Network,
    /// The diffusers class `compare.py` builds from `config`.
    pub class: &'static str,
    pub config: serde_json::Value,
    /// Image side in pixels (latents are 1/8 of it).
    pub image: usize,
    /// Rows per forward: 2 for the UNet (CFG's conditional and unconditional), else 1.
    pub batch: usize,
    /// Text tokens the network attends to (CLIP's 77, T5's 512); 0 for a VAE.
    pub text_tokens: usize,
}

/// The cases of `size`: the SDXL UNet with CFG, the FLUX.1 dev transformer, and the SDXL and
/// Flux VAE decoders. Full-size configs are the published `config.json`s
/// (stabilityai/stable-diffusion-xl-base-1.0 `unet/`, `vae/`; black-forest-labs/FLUX.1-dev
/// `transformer/`, `vae/`), keeping the keys the loaders and diffusers read.
pub fn cases(size: Size) -> Vec<Case> {
    let full = size == Size::Full;
    let pick = |big: serde_json::Value, small: serde_json::Value| if full { big } else { small };
    let image = if full { 1024 } else { 256 };
    let unet = json!({
        "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "use_linear_projection": true, "norm_num_groups": 32, "norm_eps": 1e-5,
        "flip_sin_to_cos": true, "freq_shift": 0, "addition_embed_type": "text_time",
    });
    let unet_size = pick(
        json!({
            "block_out_channels": [320, 640, 1280], "attention_head_dim": [5, 10, 20],
            "transformer_layers_per_block": [1, 2, 10], "cross_attention_dim": 2048,
            "addition_time_embed_dim": 256, "projection_class_embeddings_input_dim": 2816,
        }),
        json!({
            "block_out_channels": [64, 128, 256], "attention_head_dim": [1, 2, 4],
            "transformer_layers_per_block": [1, 1, 2], "cross_attention_dim": 256,
            "addition_time_embed_dim": 32, "projection_class_embeddings_input_dim": 320,
        }),
    );
    let flux = pick(
        json!({
            "in_channels": 64, "num_layers": 19, "num_single_layers": 38,
            "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 4096,
            "pooled_projection_dim": 768, "guidance_embeds": true, "axes_dims_rope": [16, 56, 56],
            "patch_size": 1,
        }),
        json!({
            "in_channels": 64, "num_layers": 2, "num_single_layers": 4,
            "attention_head_dim": 64, "num_attention_heads": 2, "joint_attention_dim": 256,
            "pooled_projection_dim": 128, "guidance_embeds": true, "axes_dims_rope": [8, 28, 28],
            "patch_size": 1,
        }),
    );
    let vae_widths = pick(json!([128, 256, 512, 512]), json!([32, 64, 128, 128]));
    let vae = |latent: usize, quant_convs: bool, scaling: f64, shift: f64| {
        json!({
            "block_out_channels": vae_widths, "layers_per_block": 2, "latent_channels": latent,
            "in_channels": 3, "out_channels": 3, "norm_num_groups": 32,
            "down_block_types": vec!["DownEncoderBlock2D"; 4],
            "up_block_types": vec!["UpDecoderBlock2D"; 4],
            "use_quant_conv": quant_convs, "use_post_quant_conv": quant_convs,
            "scaling_factor": scaling, "shift_factor": shift,
        })
    };
    let mut unet_config = unet;
    unet_config
        .as_object_mut()
        .expect("an object")
        .extend(unet_size.as_object().expect("an object").clone());
    vec![
        Case {
            name: "sdxl-unet",
            network: Network::SdxlUnet,
            class: "UNet2DConditionModel",
            config: unet_config,
            image,
            batch: 2,
            text_tokens: 77,
        },
        Case {
            name: "flux-dev-transformer",
            network: Network::FluxTransformer,
            class: "FluxTransformer2DModel",
            config: flux,
            image,
            batch: 1,
            text_tokens: if full { 512 } else { 64 },
        },
        Case {
            name: "sdxl-vae-decode",
            network: Network::VaeDecoder,
            class: "AutoencoderKL",
            config: vae(4, true, 0.13025, 0.0),
            image,
            batch: 1,
            text_tokens: 0,
        },
        Case {
            name: "flux-vae-decode",
            network: Network::VaeDecoder,
            class: "AutoencoderKL",
            config: vae(16, false, 0.3611, 0.1159),
            image,
            batch: 1,
            text_tokens: 0,
        },
    ]
}

/// What one case measured.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub name: &'static str,
    pub image: usize,
    pub batch: usize,
    /// Seconds to build the random weights' store and load it onto the device.
    pub load_s: f64,
    /// Median seconds per forward (one sampling step, or one decode), synced.
    pub median_s: f64,
    pub weight_bytes: u64,
    /// The most device memory seen (see [`device_memory`]), sampled after loading and after
    /// every forward.
    pub peak_bytes: Option<u64>,
}

pub struct BenchOptions {
    pub device: DeviceKind,
    pub precision: Precision,
    pub size: Size,
    /// Timed forwards per case (the median is reported), after `warmup` untimed ones.
    pub runs: usize,
    pub warmup: usize,
    /// Case names to run; empty: all.
    pub only: Vec<String>,
}

/// Runs the chosen cases, printing a line as each finishes.
pub fn run(options: &BenchOptions) -> Result<Vec<Row>, Error> {
    let chosen: Vec<Case> = cases(options.size)
        .into_iter()
        .filter(|c| options.only.is_empty() || options.only.iter().any(|o| o == c.name))
        .collect();
    if chosen.is_empty() {
        let names: Vec<_> = cases(options.size).iter().map(|c| c.name).collect();
        return Err(Error::config(format!(
            "--only names none of the cases: {}",
            names.join(", ")
        )));
    }
    crate::with_backend!(options.device, |B, device| {
        set_precision::<B>(&device, options.precision)?;
        chosen
            .iter()
            .map(|case| {
                let row = run_case::<B>(case, &device, options)?;
                // The network is gone; hand its pages back so the next case's peak is its own.
                B::memory_cleanup(&device);
                eprintln!(
                    "{}: {:.4} s per forward, loaded in {:.1} s",
                    row.name, row.median_s, row.load_s
                );
                Ok(row)
            })
            .collect()
    })
}

/// A loaded network's forward on fixed inputs, reduced to one value so that reading it back
/// waits for the whole forward.
type Forward<'a, B> = Box<dyn FnMut() -> Tensor<B, 1> + 'a>;

fn run_case<B: Backend>(
    case: &Case,
    device: &B::Device,
    options: &BenchOptions,
) -> Result<Row, Error> {
    let started = Instant::now();
    let shapes = match case.network {
        Network::SdxlUnet => shapes::sdxl_unet(&case.config)?,
        Network::FluxTransformer => shapes::flux_transformer(&case.config)?,
        Network::VaeDecoder => shapes::vae_decoder(&case.config)?,
    };
    let store = TensorStore::from_file_prefix(&random_weights(&shapes, case.name)?, "");
    let latent = case.image / 8;
    let randn =
        |shape: [usize; 3]| Tensor::<B, 3>::random(shape, Distribution::Normal(0.0, 1.0), device);
    let (weights, mut forward): (u64, Forward<B>) = match case.network {
        Network::SdxlUnet => {
            let adm = usize_key(&case.config, "projection_class_embeddings_input_dim")?;
            let pooled = adm - 6 * usize_key(&case.config, "addition_time_embed_dim")?;
            let cfg = UNetConfig::detect(&store, &case.config, pooled)?;
            let unet = UNet::<B>::load(&store, &cfg, device)?;
            let b = case.batch;
            let sample: Tensor<B, 4> =
                randn([b, 4, latent * latent]).reshape([b, 4, latent, latent]);
            let context = randn([b, case.text_tokens, cfg.cross_attention_dim]);
            let text_embeds: Tensor<B, 2> = randn([b, 1, pooled]).reshape([b, pooled]);
            let side = case.image as f32;
            let ids = vec![[side, side, 0.0, 0.0, side, side]; b];
            let timesteps = vec![500.0; b];
            (
                weight_bytes(&unet),
                Box::new(move || {
                    let out = unet.forward(
                        sample.clone(),
                        &timesteps,
                        &context,
                        text_embeds.clone(),
                        &ids,
                    );
                    out.sum()
                }),
            )
        }
        Network::FluxTransformer => {
            let cfg = FluxConfig::detect(&store, &case.config)?;
            let flux = FluxTransformer::<B>::load(&store, &cfg, device)?;
            let (rows, tokens) = (latent / 2, case.text_tokens);
            let img = randn([1, rows * rows, cfg.in_channels]);
            let txt = randn([1, tokens, cfg.joint_attention_dim]);
            let pooled: Tensor<B, 2> =
                randn([1, 1, cfg.pooled_projection_dim]).reshape([1, cfg.pooled_projection_dim]);
            let ids = position_ids(tokens, rows, rows);
            let rope = Rope::new(&ids, &cfg.axes_dims_rope, ROPE_THETA, device);
            (
                weight_bytes(&flux),
                Box::new(move || {
                    let cond = FluxConditioning {
                        timesteps: &[1.0],
                        guidance: Some(&[3.5]),
                        pooled: pooled.clone(),
                    };
                    flux.forward(img.clone(), txt.clone(), &rope, &cond).sum()
                }),
            )
        }
        Network::VaeDecoder => {
            let scaling = case.config["scaling_factor"].as_f64().unwrap_or(1.0) as f32;
            let shift = case.config["shift_factor"].as_f64().unwrap_or(0.0) as f32;
            let cfg = VaeConfig::detect(&store, &case.config, scaling, shift)?;
            let vae = Decoder::<B>::load(&store, &cfg, device)?;
            let c = cfg.latent_channels;
            let z: Tensor<B, 4> = randn([1, c, latent * latent]).reshape([1, c, latent, latent]);
            (
                weight_bytes(&vae),
                Box::new(move || vae.forward(z.clone()).sum()),
            )
        }
    };
    // The weights are on the device now; the random file's memory goes.
    drop(store);
    let sync = || B::sync(device).map_err(|e| Error::config(format!("device sync: {e}")));
    sync()?;
    let load_s = started.elapsed().as_secs_f64();
    let mut peak = device_memory(options.device);
    let mut times = Vec::with_capacity(options.runs);
    for i in 0..options.warmup + options.runs.max(1) {
        let t = Instant::now();
        let value = forward().into_scalar().elem::<f32>();
        sync()?;
        let seconds = t.elapsed().as_secs_f64();
        if i >= options.warmup {
            times.push(seconds);
        }
        peak = peak.max(device_memory(options.device));
        tracing::debug!(case = case.name, run = i, seconds, value, "forward");
    }
    times.sort_by(f64::total_cmp);
    Ok(Row {
        name: case.name,
        image: case.image,
        batch: case.batch,
        load_s,
        median_s: times[times.len() / 2],
        weight_bytes: weights,
        peak_bytes: peak,
    })
}

fn usize_key(config: &serde_json::Value, key: &str) -> Result<usize, Error> {
    config[key]
        .as_u64()
        .map(|v| v as usize)
        .ok_or_else(|| Error::config(format!("bench config lacks `{key}`")))
}

/// `shapes` as a safetensors file in anonymous memory, in bf16, with random values:
/// uniform with variance 1/fan_in for matrices and kernels (activations keep their scale
/// through deep stacks), 1 for norm weights, 0 for biases. Filled on every core.
pub fn random_weights(shapes: &Shapes, name: &str) -> Result<Arc<SafetensorsFile>, Error> {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (tensor, shape) in shapes {
        let bytes = 2 * shape.iter().product::<usize>();
        header.insert(
            tensor.clone(),
            json!({"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut header = serde_json::to_vec(&header).map_err(|e| Error::config(e.to_string()))?;
    header.resize(header.len().next_multiple_of(8), b' ');
    let data_start = 8 + header.len();
    let mut mmap = MmapMut::map_anon(data_start + offset)
        .map_err(|e| Error::weights(format!("cannot allocate {offset} bytes of weights: {e}")))?;
    mmap[..8].copy_from_slice(&(header.len() as u64).to_le_bytes());
    mmap[8..data_start].copy_from_slice(&header);

    // One job per (tensor, chunk of at most 1 Mi values), dealt round-robin to the threads.
    const CHUNK: usize = 1 << 20;
    let mut jobs: Vec<Fill> = Vec::new();
    let mut rest = &mut mmap[data_start..];
    for (tensor, shape) in shapes {
        let (values, tail) = rest.split_at_mut(2 * shape.iter().product::<usize>());
        rest = tail;
        let (bound, random) = match shape.as_slice() {
            [_] if tensor.contains("norm") && tensor.ends_with(".weight") => (1.0, false),
            [_] => (0.0, false),
            [rows, ..] => ((3.0 / (values.len() / 2 / rows) as f32).sqrt(), true),
            [] => (0.0, false),
        };
        for chunk in values.chunks_mut(2 * CHUNK) {
            let seed = jobs.len() as u64;
            jobs.push(Fill {
                chunk,
                bound,
                random,
                seed,
            });
        }
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut dealt: Vec<Vec<Fill>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, job) in jobs.into_iter().enumerate() {
        dealt[i % threads].push(job);
    }
    std::thread::scope(|scope| {
        for share in dealt {
            scope.spawn(move || share.into_iter().for_each(Fill::run));
        }
    });
    let mmap = mmap
        .make_read_only()
        .map_err(|e| Error::weights(format!("random weights: {e}")))?;
    SafetensorsFile::from_mmap(std::path::Path::new(&format!("<random {name}>")), mmap)
}

/// One chunk of a tensor to fill with bf16 values: uniform in ±`bound` when `random`
/// (SplitMix64 from `seed`), else all `bound`.
struct Fill<'a> {
    chunk: &'a mut [u8],
    bound: f32,
    random: bool,
    seed: u64,
}

impl Fill<'_> {
    fn run(self) {
        let mut state = self.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
        for value in self.chunk.chunks_exact_mut(2) {
            let v = if self.random {
                state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^= z >> 31;
                let unit = (z >> 40) as f32 / (1u64 << 24) as f32;
                (2.0 * unit - 1.0) * self.bound
            } else {
                self.bound
            };
            value.copy_from_slice(&half::bf16::from_f32(v).to_le_bytes());
        }
    }
}

/// Device memory in use now: on CUDA and wgpu the bytes cubecl's memory pools have reserved
/// (pools keep their pages until a cleanup, which `run` asks for between cases, so this is the
/// high-water mark of what they asked the driver for); on the CPU the process's resident set
/// (`VmRSS`). `None` where unknown.
pub fn device_memory(kind: DeviceKind) -> Option<u64> {
    match kind {
        DeviceKind::Cpu => {
            let status = std::fs::read_to_string("/proc/self/status").ok()?;
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        }
        #[cfg(feature = "cuda")]
        DeviceKind::Cuda => {
            use burn::cubecl::Runtime;
            let client = burn::cubecl::cuda::CudaRuntime::client(&Default::default());
            client.memory_usage().ok().map(|m| m.bytes_reserved)
        }
        #[cfg(feature = "wgpu")]
        DeviceKind::Wgpu => {
            use burn::cubecl::Runtime;
            let client = burn::cubecl::wgpu::WgpuRuntime::client(&Default::default());
            client.memory_usage().ok().map(|m| m.bytes_reserved)
        }
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

/// The table `hanga bench` prints.
pub fn table(options: &BenchOptions, rows: &[Row]) -> String {
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let mut out = format!(
        "hanga bench: device {}, dtype {}, size {}, median of {} after {} warm-up\n",
        options.device,
        options.precision,
        options.size.name(),
        options.runs,
        options.warmup
    );
    out += &format!(
        "{:<22} {:>6} {:>5} {:>11} {:>8} {:>13} {:>12} {:>9}\n",
        "network",
        "image",
        "batch",
        "median (s)",
        "it/s",
        "weights (MiB)",
        "peak (MiB)",
        "load (s)"
    );
    for r in rows {
        let peak = r
            .peak_bytes
            .map_or("-".to_owned(), |b| format!("{:.0}", mib(b)));
        out += &format!(
            "{:<22} {:>6} {:>5} {:>11.4} {:>8.3} {:>13.0} {:>12} {:>9.1}\n",
            r.name,
            r.image,
            r.batch,
            r.median_s,
            1.0 / r.median_s,
            mib(r.weight_bytes),
            peak,
            r.load_s
        );
    }
    out
}
