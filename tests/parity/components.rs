//! Each network and scheduler against the reference implementation on the same tiny weights
//! (fixtures: ../shared/reference/components). Tolerance: max abs error ≤ 1e-4, relative to the
//! output's scale where it exceeds 1.

use crate::common::{B, assert_close, fixtures, load, values};
use burn::prelude::*;
use burn::tensor::TensorData;
use hanga::models::chroma::ChromaTransformer;
use hanga::models::clip::{Activation, ClipConfig, ClipTextModel};
use hanga::models::flux::{
    AttentionMask, FluxConditioning, FluxConfig, FluxTransformer, ROPE_THETA, Rope,
};
use hanga::models::qwen3::{Qwen3Config, Qwen3Encoder};
use hanga::models::t5::{T5Config, T5Encoder};
use hanga::models::unet_sdxl::{UNet, UNetConfig};
use hanga::models::vae::{Decoder, Encoder, VaeConfig};
use hanga::models::zimage::{ZImageConfig, ZImageTransformer};
use hanga::sampling::{
    NoiseSource, Prediction, Sampler, SamplerKind, ScheduleKind, SchedulerConfig,
};
use hanga::weights::{SafetensorsFile, TensorStore};

const TOL: f32 = 1e-4;

fn store(dir: &str, file: &str) -> TensorStore {
    TensorStore::from_file_prefix(
        &SafetensorsFile::open(&fixtures().join("components").join(dir).join(file)).unwrap(),
        "",
    )
}

fn config(dir: &str) -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("components").join(dir).join("config.json"))
            .unwrap(),
    )
    .unwrap()
}

fn check_clip(dir: &str, act: Activation, pooled_key: &str) {
    let weights = store(dir, "model.safetensors");
    let cfg = ClipConfig::detect(&weights, &config(dir), act).unwrap();
    let model = ClipTextModel::<B>::load(&weights, &cfg, &Default::default()).unwrap();
    let io = load(
        &fixtures()
            .join("components")
            .join(dir)
            .join("io.safetensors"),
    );
    let ids = &io["in.input_ids"];
    let [batch, len] = [ids.shape[0], ids.shape[1]];
    let eos_id = config(dir)["eos_token_id"].as_u64().unwrap() as f64;
    let eos: Vec<usize> = (0..batch)
        .map(|b| {
            ids.values[b * len..(b + 1) * len]
                .iter()
                .position(|&v| v == eos_id)
                .unwrap()
        })
        .collect();
    let ids_i64: Vec<i64> = ids.values.iter().map(|&v| v as i64).collect();
    let input =
        Tensor::<B, 2, Int>::from_data(TensorData::new(ids_i64, [batch, len]), &Default::default());
    let out = model.forward(input, &eos);
    let e1 = assert_close(
        &format!("{dir} penultimate"),
        &values(out.hidden),
        &io["out.penultimate_hidden_state"].f32(),
        TOL,
    );
    let e2 = assert_close(
        &format!("{dir} pooled"),
        &values(out.pooled),
        &io[pooled_key].f32(),
        TOL,
    );
    println!("{dir}: penultimate {e1:e}, pooled {e2:e}");
}

#[test]
fn clip_l_matches_transformers() {
    check_clip(
        "clip_l_text_encoder",
        Activation::QuickGelu,
        "out.pooler_output",
    );
}

#[test]
fn clip_g_matches_transformers() {
    check_clip("clip_g_text_encoder", Activation::Gelu, "out.text_embeds");
}

#[test]
fn sdxl_unet_matches_diffusers() {
    let weights = store("sdxl_unet", "diffusion_pytorch_model.safetensors");
    let io = load(&fixtures().join("components/sdxl_unet/io.safetensors"));
    let pooled_dim = io["in.text_embeds"].shape[1];
    let cfg = UNetConfig::detect(&weights, &config("sdxl_unet"), pooled_dim).unwrap();
    let unet = UNet::<B>::load(&weights, &cfg, &Default::default()).unwrap();
    let time_ids: Vec<[f32; 6]> = io["in.time_ids"]
        .f32()
        .chunks_exact(6)
        .map(|c| c.try_into().unwrap())
        .collect();
    let out = unet.forward(
        io["in.sample"].tensor(),
        &io["in.timestep"].f32(),
        &io["in.encoder_hidden_states"].tensor(),
        io["in.text_embeds"].tensor(),
        &time_ids,
    );
    let err = assert_close("unet", &values(out), &io["out.sample"].f32(), TOL);
    println!("unet: {err:e}");
}

fn check_vae(dir: &str, scaling: f32, shift: f32) {
    let weights = store(dir, "diffusion_pytorch_model.safetensors");
    let cfg = VaeConfig::detect(&weights, &config(dir), scaling, shift).unwrap();
    let io = load(
        &fixtures()
            .join("components")
            .join(dir)
            .join("io.safetensors"),
    );
    let decoder = Decoder::<B>::load(&weights, &cfg, &Default::default()).unwrap();
    let decoded = decoder.forward(io["in.latent"].tensor());
    let e1 = assert_close(
        &format!("{dir} decode"),
        &values(decoded),
        &io["out.decoded"].f32(),
        TOL,
    );
    let encoder = Encoder::<B>::load(&weights, &cfg, &Default::default()).unwrap();
    let mean = encoder.forward(io["in.image"].tensor());
    let e2 = assert_close(
        &format!("{dir} encode"),
        &values(mean),
        &io["out.latent_mean"].f32(),
        TOL,
    );
    println!("{dir}: decode {e1:e}, encode {e2:e}");
}

#[test]
fn sdxl_vae_matches_diffusers() {
    check_vae("sdxl_vae", 0.13025, 0.0);
}

/// 16 latent channels, no quant convs.
#[test]
fn flux_vae_matches_diffusers() {
    check_vae("flux_vae", 0.3611, 0.1159);
}

/// The scheduler fixture drives each scheduler with fixed "model outputs" from one sample.
#[test]
fn schedulers_match_diffusers() {
    let io = load(&fixtures().join("components/schedulers/io.safetensors"));
    let outputs = &io["in.model_outputs"];
    let steps = outputs.shape[0];
    let per_step: usize = outputs.shape[1..].iter().product();
    let shape: [usize; 4] = io["in.sample0"].shape.clone().try_into().unwrap();
    let cases = [
        ("euler_sdxl", SamplerKind::Euler, ScheduleKind::Normal),
        (
            "euler_sdxl_karras",
            SamplerKind::Euler,
            ScheduleKind::Karras,
        ),
        (
            "euler_a_sdxl",
            SamplerKind::EulerAncestral,
            ScheduleKind::Normal,
        ),
        ("dpmpp_2m_sdxl", SamplerKind::DpmPp2m, ScheduleKind::Normal),
        (
            "dpmpp_2m_sdxl_karras",
            SamplerKind::DpmPp2m,
            ScheduleKind::Karras,
        ),
    ];
    for (name, kind, schedule_kind) in cases {
        let schedule = SchedulerConfig::default()
            .schedule(kind, schedule_kind, steps)
            .unwrap();
        assert_close(
            &format!("{name} timesteps"),
            &schedule.timesteps,
            &io[&format!("out.{name}.timesteps")].f32(),
            TOL,
        );
        assert_close(
            &format!("{name} sigmas"),
            &schedule.sigmas,
            &io[&format!("out.{name}.sigmas")].f32(),
            TOL,
        );
        let mut sampler = Sampler::<B>::new(kind, Prediction::Epsilon, schedule);
        let mut x: Tensor<B, 4> = io["in.sample0"].tensor();
        let scaled = io[&format!("out.{name}.scaled_model_input")].f32();
        let expected = io[&format!("out.{name}.prev_samples")].f32();
        // Euler-ancestral's noise is whatever the reference generator drew; replay it.
        let ancestral = io
            .get(&format!("out.{name}.ancestral_noise"))
            .map(|r| r.f32());
        for i in 0..steps {
            let range = i * per_step..(i + 1) * per_step;
            assert_close(
                &format!("{name} scaled input {i}"),
                &values(sampler.scale_model_input(x.clone(), i)),
                &scaled[range.clone()],
                TOL,
            );
            let eps = Tensor::<B, 4>::from_data(
                TensorData::new(outputs.f32()[range.clone()].to_vec(), shape),
                &Default::default(),
            );
            let mut noise = Replay(ancestral.as_ref().map(|n| n[range.clone()].to_vec()));
            x = sampler.step(x, eps, i, &mut noise).next;
            assert_close(
                &format!("{name} step {i}"),
                &values(x.clone()),
                &expected[range],
                TOL,
            );
        }
    }
}

/// Gives back the noise the reference scheduler drew at one step.
struct Replay(Option<Vec<f32>>);

impl NoiseSource for Replay {
    fn randn(&mut self, n: usize) -> Vec<f32> {
        let noise = self
            .0
            .take()
            .expect("only ancestral steps draw noise, once per step");
        assert_eq!(noise.len(), n);
        noise
    }
}

#[test]
fn t5_encoder_matches_transformers() {
    let dir = "t5_encoder";
    let weights = store(dir, "model.safetensors");
    let cfg = T5Config::detect(&weights, &config(dir)).unwrap();
    let model = T5Encoder::<B>::load(&weights, &cfg, &Default::default()).unwrap();
    let io = load(&fixtures().join("components/t5_encoder/io.safetensors"));
    let (ids, mask) = (&io["in.input_ids"], &io["in.attention_mask"]);
    let [batch, len] = [ids.shape[0], ids.shape[1]];
    let device = Default::default();
    let ids: Vec<i64> = ids.values.iter().map(|&v| v as i64).collect();
    let input =
        || Tensor::<B, 2, Int>::from_data(TensorData::new(ids.clone(), [batch, len]), &device);
    let mask = Tensor::<B, 2>::from_data(TensorData::new(mask.f32(), [batch, len]), &device);
    // 160 tokens: past relative_attention_max_distance, so the log-spaced buckets are used.
    let e1 = assert_close(
        "t5 no mask",
        &values(model.forward(input(), None)),
        &io["out.last_hidden_state_nomask"].f32(),
        TOL,
    );
    let e2 = assert_close(
        "t5 masked",
        &values(model.forward(input(), Some(mask))),
        &io["out.last_hidden_state_masked"].f32(),
        TOL,
    );
    println!("t5: no mask {e1:e}, masked {e2:e}");
}

fn ids(io: &std::collections::HashMap<String, crate::common::Recorded>) -> Vec<[f32; 3]> {
    let (txt, img) = (io["in.txt_ids"].f32(), io["in.img_ids"].f32());
    txt.chunks(3)
        .chain(img.chunks(3))
        .map(|c| [c[0], c[1], c[2]])
        .collect()
}

fn check_flux(dir: &str) {
    let weights = store(dir, "diffusion_pytorch_model.safetensors");
    let cfg = FluxConfig::detect(&weights, &config(dir)).unwrap();
    let model = FluxTransformer::<B>::load(&weights, &cfg, &Default::default()).unwrap();
    let io = load(
        &fixtures()
            .join("components")
            .join(dir)
            .join("io.safetensors"),
    );
    let pooled = &io["in.pooled_projections"];
    let guidance = io.get("in.guidance").map(|g| g.f32());
    let cond = FluxConditioning {
        timesteps: &io["in.timestep"].f32(),
        guidance: guidance.as_deref(),
        pooled: Tensor::from_data(
            TensorData::new(pooled.f32(), [pooled.shape[0], pooled.shape[1]]),
            &Default::default(),
        ),
    };
    let out = model.forward(
        io["in.hidden_states"].tensor(),
        io["in.encoder_hidden_states"].tensor(),
        &Rope::new(
            &ids(&io),
            &cfg.axes_dims_rope,
            ROPE_THETA,
            &Default::default(),
        ),
        &cond,
    );
    let err = assert_close(dir, &values(out), &io["out.sample"].f32(), TOL);
    println!("{dir}: {err:e}");
}

#[test]
fn flux_dev_transformer_matches_diffusers() {
    check_flux("flux_dev_transformer");
}

#[test]
fn flux_schnell_transformer_matches_diffusers() {
    check_flux("flux_schnell_transformer");
}

#[test]
fn chroma_transformer_matches_diffusers_for_each_mask() {
    let dir = "chroma_transformer";
    let weights = store(dir, "diffusion_pytorch_model.safetensors");
    let cfg = FluxConfig::detect(&weights, &config(dir)).unwrap();
    let model = ChromaTransformer::<B>::load(&weights, &cfg, &Default::default()).unwrap();
    let io = load(
        &fixtures()
            .join("components")
            .join(dir)
            .join("io.safetensors"),
    );
    let token_mask = |key: &str| {
        let m = &io[key];
        Tensor::<B, 2>::from_data(
            TensorData::new(m.f32(), [m.shape[0], m.shape[1]]),
            &Default::default(),
        )
    };
    let rope = Rope::new(
        &ids(&io),
        &cfg.axes_dims_rope,
        ROPE_THETA,
        &Default::default(),
    );
    for (mask, expected) in [
        (AttentionMask::None, "out.sample_no_mask"),
        (
            AttentionMask::from_tokens(token_mask("in.attention_mask_pipeline"), false),
            "out.sample_pipeline_mask",
        ),
        (
            AttentionMask::from_tokens(token_mask("in.attention_mask_bool"), true),
            "out.sample_bool_mask",
        ),
    ] {
        let out = model.forward(
            io["in.hidden_states"].tensor(),
            io["in.encoder_hidden_states"].tensor(),
            &rope,
            &io["in.timestep"].f32(),
            &mask,
        );
        let err = assert_close(expected, &values(out), &io[expected].f32(), TOL);
        println!("chroma {expected}: {err:e}");
    }
}

#[test]
fn qwen3_encoder_matches_transformers() {
    let dir = "qwen3_text_encoder";
    let weights = store(dir, "model.safetensors");
    let cfg = Qwen3Config::detect(&weights, &config(dir)).unwrap();
    let model = Qwen3Encoder::<B>::load(&weights, &cfg, &Default::default()).unwrap();
    let io = load(
        &fixtures()
            .join("components")
            .join(dir)
            .join("io.safetensors"),
    );
    let (ids, mask) = (&io["in.input_ids"], &io["in.attention_mask"]);
    let [batch, len] = [ids.shape[0], ids.shape[1]];
    let ids: Vec<i64> = ids.values.iter().map(|&v| v as i64).collect();
    let input =
        Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [batch, len]), &Default::default());
    let out = model.forward(input, mask.tensor());
    let err = assert_close(
        "qwen3 hidden_states[-2]",
        &values(out),
        &io["out.penultimate_hidden_state"].f32(),
        TOL,
    );
    println!("qwen3: {err:e}");
}

/// Per-item lists as `ZImagePipeline` passes them; captions of 10, 37 and 7 tokens exercise the
/// padding to 32, case b a non-square latent.
#[test]
fn zimage_transformer_matches_diffusers() {
    let dir = "zimage_transformer";
    let weights = store(dir, "diffusion_pytorch_model.safetensors");
    let cfg = ZImageConfig::detect(&weights, &config(dir)).unwrap();
    let model = ZImageTransformer::<B>::load(&weights, &cfg, &Default::default()).unwrap();
    let io = load(
        &fixtures()
            .join("components")
            .join(dir)
            .join("io.safetensors"),
    );
    for (case, items) in [("a", 2), ("b", 1)] {
        let t = io[&format!("in.{case}.t")].f32();
        for i in 0..items {
            let x = &io[&format!("in.{case}.x.{i}")];
            let [c, _, h, w] = [x.shape[0], x.shape[1], x.shape[2], x.shape[3]];
            let latent = x.tensor::<4>().reshape([c, h, w]);
            let caption = io[&format!("in.{case}.cap_feats.{i}")].tensor::<2>();
            let out = model.forward(latent, t[i], caption);
            let key = format!("out.{case}.sample.{i}");
            let err = assert_close(&key, &values(out), &io[&key].f32(), TOL);
            println!("zimage {key}: {err:e}");
        }
    }
}

/// `models::blocks::sdpa` on what the networks give it — split-heads views of [B, L, H·Dh]
/// projections and a padding mask of shape [B, 1, L, L] — against softmax(q·kᵀ/√Dh)·v
/// written out with matmuls on the same backend. On wgpu (`make test-wgpu`) this is what
/// burn's flash attention kernels got wrong before `sdpa` laid their inputs out (issue #14).
#[test]
fn attention_on_split_heads_and_padding_masks_matches_softmax() {
    use burn::tensor::activation::softmax;
    use hanga::models::blocks::sdpa;
    let device = Default::default();
    let (batch, len, heads, head_dim) = (2, 77, 4, 8);
    let projection = |seed: usize| {
        let values: Vec<f32> = (0..batch * len * heads * head_dim)
            .map(|i| ((i * seed) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        Tensor::<B, 3>::from_data(
            TensorData::new(values, [batch, len, heads * head_dim]),
            &device,
        )
        .reshape([batch, len, heads, head_dim])
        .swap_dims(1, 2)
    };
    let (q, k, v) = (projection(7919), projection(104729), projection(31));
    // Row 0 attends to its first 60 keys, row 1 to all of them.
    let excluded: Vec<bool> = (0..batch * len * len)
        .map(|i| i / (len * len) == 0 && i % len >= 60)
        .collect();
    let mask =
        Tensor::<B, 4, Bool>::from_data(TensorData::new(excluded, [batch, 1, len, len]), &device);
    for (causal, mask) in [(false, None), (true, None), (false, Some(mask))] {
        let options = burn::tensor::ops::AttentionModuleOptions {
            is_causal: causal,
            ..Default::default()
        };
        let got = sdpa(q.clone(), k.clone(), v.clone(), mask.clone(), None, options);
        let scores = q.clone().matmul(k.clone().swap_dims(2, 3)) / (head_dim as f32).sqrt();
        let what = format!("sdpa causal={causal} masked={}", mask.is_some());
        let mut excluded = mask.map(|m| m.expand([batch, heads, len, len]));
        if causal {
            let upper = Tensor::<B, 2, Bool>::tril_mask([len, len], 0, &device)
                .unsqueeze::<4>()
                .expand([batch, heads, len, len]);
            excluded = Some(upper);
        }
        let scores = match excluded {
            Some(m) => scores.mask_fill(m, f32::NEG_INFINITY),
            None => scores,
        };
        let expected = softmax(scores, 3).matmul(v.clone());
        assert_close(&what, &values(got), &values(expected), TOL);
    }
}
