//! Qwen3 decoder as a text encoder (Z-Image's Qwen3-4B): the hidden state of the second-to-last
//! layer.
//!
//! Follows transformers `models/qwen3/modeling_qwen3.py` (`Qwen3Model`): RMS norms, grouped-query
//! attention with per-head q/k RMS norms before a half-split ("rotate_half") RoPE, causal mask
//! plus padding mask, SwiGLU MLP. candle `z_image/text_encoder.rs` is the same network.

use super::linear::Linear;
use burn::module::Module;
use burn::nn::Embedding;
use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::silu;
use burn::tensor::ops::AttentionModuleOptions;
use serde::Deserialize;

use super::blocks::{RmsNorm, sdpa};
use crate::Error;
use crate::weights::{TensorStore, Weights};

/// Hyper-parameters, named as in transformers' `Qwen3Config`. Widths, depth and head size are
/// read from the weights; the head count, θ and eps come from config.json or the manifest
/// (defaults: Qwen3-4B's).
#[derive(Clone, Debug)]
pub struct Qwen3Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
}

#[derive(Deserialize, Default)]
struct Qwen3Overrides {
    rope_theta: Option<f64>,
    rope_parameters: Option<RopeParameters>,
    rms_norm_eps: Option<f64>,
}

#[derive(Deserialize)]
struct RopeParameters {
    rope_theta: f64,
}

impl Qwen3Config {
    pub fn detect(store: &TensorStore, overrides: &serde_json::Value) -> Result<Self, Error> {
        let o: Qwen3Overrides = serde_json::from_value(overrides.clone()).unwrap_or_default();
        let shape = |name: &str| {
            store.shape(name).ok_or_else(|| {
                Error::weights(format!("not a Qwen3 text encoder: missing `{name}`"))
            })
        };
        let embed = shape("embed_tokens.weight")?;
        let head_dim = shape("layers.0.self_attn.q_norm.weight")?[0];
        Ok(Self {
            vocab_size: embed[0],
            hidden_size: embed[1],
            intermediate_size: shape("layers.0.mlp.gate_proj.weight")?[0],
            num_hidden_layers: store.count_indexed("layers"),
            num_attention_heads: shape("layers.0.self_attn.q_proj.weight")?[0] / head_dim,
            num_key_value_heads: shape("layers.0.self_attn.k_proj.weight")?[0] / head_dim,
            head_dim,
            rope_theta: o
                .rope_parameters
                .map(|r| r.rope_theta)
                .or(o.rope_theta)
                .unwrap_or(1_000_000.0),
            rms_norm_eps: o.rms_norm_eps.unwrap_or(1e-6),
        })
    }
}

#[derive(Module, Debug)]
struct Layer<B: Backend> {
    input_layernorm: RmsNorm<B>,
    q_proj: Linear<B>,
    k_proj: Linear<B>,
    v_proj: Linear<B>,
    o_proj: Linear<B>,
    q_norm: RmsNorm<B>,
    k_norm: RmsNorm<B>,
    post_attention_layernorm: RmsNorm<B>,
    gate_proj: Linear<B>,
    up_proj: Linear<B>,
    down_proj: Linear<B>,
}

#[derive(Module, Debug)]
pub struct Qwen3Encoder<B: Backend> {
    embed_tokens: Embedding<B>,
    /// Only the layers up to the second-to-last output are kept: the last layer and the final
    /// norm do not contribute to `hidden_states[-2]`.
    layers: Vec<Layer<B>>,
    #[module(skip)]
    config: Qwen3Config,
}

impl<B: Backend> Qwen3Encoder<B> {
    /// `store` holds the `Qwen3Model` names (without `model.`).
    pub fn load(
        store: &TensorStore,
        config: &Qwen3Config,
        device: &B::Device,
    ) -> Result<Self, Error> {
        let w = Weights::new(store, device);
        let (d, hd, eps) = (config.hidden_size, config.head_dim, config.rms_norm_eps);
        let (q_dim, kv_dim) = (
            config.num_attention_heads * hd,
            config.num_key_value_heads * hd,
        );
        let used = config.num_hidden_layers.saturating_sub(1);
        let layers = (0..used)
            .map(|i| {
                let l = w.pp("layers").pp(i);
                let (a, m) = (l.pp("self_attn"), l.pp("mlp"));
                Ok(Layer {
                    input_layernorm: RmsNorm::load(&l, "input_layernorm.weight", d, eps)?,
                    q_proj: a.linear("q_proj", d, q_dim, false)?,
                    k_proj: a.linear("k_proj", d, kv_dim, false)?,
                    v_proj: a.linear("v_proj", d, kv_dim, false)?,
                    o_proj: a.linear("o_proj", q_dim, d, false)?,
                    q_norm: RmsNorm::load(&a, "q_norm.weight", hd, eps)?,
                    k_norm: RmsNorm::load(&a, "k_norm.weight", hd, eps)?,
                    post_attention_layernorm: RmsNorm::load(
                        &l,
                        "post_attention_layernorm.weight",
                        d,
                        eps,
                    )?,
                    gate_proj: m.linear("gate_proj", d, config.intermediate_size, false)?,
                    up_proj: m.linear("up_proj", d, config.intermediate_size, false)?,
                    down_proj: m.linear("down_proj", config.intermediate_size, d, false)?,
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(Self {
            embed_tokens: w.embedding("embed_tokens", config.vocab_size, d)?,
            layers,
            config: config.clone(),
        })
    }

    /// input_ids [B, L], `attention_mask` [B, L] (1 = token) → `hidden_states[-2]` [B, L, D]:
    /// the output of the second-to-last layer, without the final norm.
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2>,
    ) -> Tensor<B, 3> {
        let [batch, len] = input_ids.dims();
        let device = input_ids.device();
        let (cos, sin) = self.rope(len, &device);
        // Causal, and padded keys excluded (true = masked).
        let causal =
            Tensor::<B, 2, Bool>::tril_mask([len, len], 0, &device).unsqueeze_dims::<4>(&[0, 1]);
        let padded = attention_mask.lower_elem(0.5).unsqueeze_dims::<4>(&[1, 2]);
        let mask = causal
            .expand([batch, 1, len, len])
            .bool_or(padded.expand([batch, 1, len, len]));
        let (heads, kv_heads, hd) = (
            self.config.num_attention_heads,
            self.config.num_key_value_heads,
            self.config.head_dim,
        );
        let mut x = self.embed_tokens.forward(input_ids);
        for layer in &self.layers {
            let h = layer.input_layernorm.forward(x.clone());
            let split = |t: Tensor<B, 3>, n: usize| t.reshape([batch, len, n, hd]).swap_dims(1, 2);
            let q = layer
                .q_norm
                .forward(split(layer.q_proj.forward(h.clone()), heads));
            let k = layer
                .k_norm
                .forward(split(layer.k_proj.forward(h.clone()), kv_heads));
            let v = split(layer.v_proj.forward(h), kv_heads);
            let (q, k) = (rotate(q, &cos, &sin), rotate(k, &cos, &sin));
            // Grouped-query attention: query head h reads key/value head h / (heads / kv_heads).
            let repeat = |t: Tensor<B, 4>| {
                t.unsqueeze_dim::<5>(2)
                    .expand([batch, kv_heads, heads / kv_heads, len, hd])
                    .reshape([batch, heads, len, hd])
            };
            let attn = sdpa(
                q,
                repeat(k),
                repeat(v),
                Some(mask.clone()),
                None,
                AttentionModuleOptions::default(),
            )
            .swap_dims(1, 2)
            .reshape([batch, len, heads * hd]);
            x = x + layer.o_proj.forward(attn);
            let h = layer.post_attention_layernorm.forward(x.clone());
            let mlp = silu(layer.gate_proj.forward(h.clone())) * layer.up_proj.forward(h);
            x = x + layer.down_proj.forward(mlp);
        }
        x
    }

    /// cos, sin [1, 1, L, head_dim] of transformers' default RoPE: `inv_freq = θ^(-2i/d)` and
    /// angles in f32, each frequency used for channel i and i + d/2.
    fn rope(&self, len: usize, device: &B::Device) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let hd = self.config.head_dim;
        let inv_freq: Vec<f32> = (0..hd / 2)
            .map(|i| 1.0 / (self.config.rope_theta as f32).powf((2 * i) as f32 / hd as f32))
            .collect();
        let (mut cos, mut sin) = (Vec::with_capacity(len * hd), Vec::with_capacity(len * hd));
        for p in 0..len {
            for _ in 0..2 {
                for f in &inv_freq {
                    let angle = p as f32 * f;
                    cos.push(angle.cos());
                    sin.push(angle.sin());
                }
            }
        }
        let shape = [1, 1, len, hd];
        (
            Tensor::from_data(TensorData::new(cos, shape), device),
            Tensor::from_data(TensorData::new(sin, shape), device),
        )
    }
}

/// `x·cos + rotate_half(x)·sin`, with `rotate_half(x) = [−x₂, x₁]` over the halves of the head.
fn rotate<B: Backend>(x: Tensor<B, 4>, cos: &Tensor<B, 4>, sin: &Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, h, l, d] = x.dims();
    let first = x.clone().slice([0..b, 0..h, 0..l, 0..d / 2]);
    let second = x.clone().slice([0..b, 0..h, 0..l, d / 2..d]);
    let rotated = Tensor::cat(vec![second.neg(), first], 3);
    x * cos.clone() + rotated * sin.clone()
}
