//! T5 v1.1 encoder (the T5-XXL text encoder of Flux and Chroma).
//!
//! Follows transformers `models/t5/modeling_t5.py` (`T5EncoderModel`): RMS layer norms without
//! bias or mean subtraction, attention without 1/√d scaling, a learned relative position bias
//! computed once (block 0 owns the table) and shared by every layer, gated-GELU feed-forward
//! (`wo(gelu_tanh(wi_0 x) ⊙ wi_1 x)`). Runs in f32, so the reference's fp16 overflow clamp
//! (`clamp_value = finfo(fp16).max - 1000`) never triggers here.

use super::linear::Linear;
use burn::module::Module;
use burn::nn::Embedding;
use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::gelu_approximate;
use burn::tensor::ops::AttentionModuleOptions;
use serde::Deserialize;

use super::blocks::{RmsNorm, finite_min, sdpa};
use crate::Error;
use crate::weights::{TensorStore, Weights};

/// Hyper-parameters, named as in transformers' `T5Config`. Widths, depth and bucket count are
/// read from the weights; the head count, max distance and eps come from config.json or the
/// manifest (defaults: T5-XXL v1.1's).
#[derive(Clone, Debug)]
pub struct T5Config {
    pub vocab_size: usize,
    pub d_model: usize,
    pub d_kv: usize,
    pub d_ff: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub relative_attention_num_buckets: usize,
    pub relative_attention_max_distance: usize,
    pub layer_norm_epsilon: f64,
}

#[derive(Deserialize, Default)]
struct T5Overrides {
    num_heads: Option<usize>,
    relative_attention_max_distance: Option<usize>,
    layer_norm_epsilon: Option<f64>,
}

impl T5Config {
    pub fn detect(store: &TensorStore, overrides: &serde_json::Value) -> Result<Self, Error> {
        let o: T5Overrides = serde_json::from_value(overrides.clone()).unwrap_or_default();
        let shape = |name: &str| {
            store
                .shape(name)
                .ok_or_else(|| Error::weights(format!("not a T5 encoder: missing `{name}`")))
        };
        let shared = shape("shared.weight")?;
        let bias = shape("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")?;
        let q = shape("encoder.block.0.layer.0.SelfAttention.q.weight")?;
        let wi = shape("encoder.block.0.layer.1.DenseReluDense.wi_0.weight")?;
        let num_heads = o.num_heads.unwrap_or(bias[1]);
        Ok(Self {
            vocab_size: shared[0],
            d_model: shared[1],
            d_kv: q[0] / num_heads,
            d_ff: wi[0],
            num_layers: store.count_indexed("encoder.block"),
            num_heads,
            relative_attention_num_buckets: bias[0],
            relative_attention_max_distance: o.relative_attention_max_distance.unwrap_or(128),
            layer_norm_epsilon: o.layer_norm_epsilon.unwrap_or(1e-6),
        })
    }
}

#[derive(Module, Debug)]
struct Block<B: Backend> {
    attn_norm: RmsNorm<B>,
    q: Linear<B>,
    k: Linear<B>,
    v: Linear<B>,
    o: Linear<B>,
    ff_norm: RmsNorm<B>,
    wi_0: Linear<B>,
    wi_1: Linear<B>,
    wo: Linear<B>,
}

#[derive(Module, Debug)]
pub struct T5Encoder<B: Backend> {
    shared: Embedding<B>,
    /// [buckets, heads], block 0's `relative_attention_bias`.
    relative_attention_bias: Embedding<B>,
    blocks: Vec<Block<B>>,
    final_layer_norm: RmsNorm<B>,
    #[module(skip)]
    config: T5Config,
}

impl<B: Backend> T5Encoder<B> {
    pub fn load(store: &TensorStore, config: &T5Config, device: &B::Device) -> Result<Self, Error> {
        let root = Weights::new(store, device);
        let (d, inner, eps) = (
            config.d_model,
            config.num_heads * config.d_kv,
            config.layer_norm_epsilon,
        );
        let blocks = (0..config.num_layers)
            .map(|i| {
                let b = root.pp("encoder.block").pp(i);
                let (a, f) = (b.pp("layer.0"), b.pp("layer.1"));
                let (sa, ff) = (a.pp("SelfAttention"), f.pp("DenseReluDense"));
                Ok(Block {
                    attn_norm: RmsNorm::load(&a, "layer_norm.weight", d, eps)?,
                    q: sa.linear("q", d, inner, false)?,
                    k: sa.linear("k", d, inner, false)?,
                    v: sa.linear("v", d, inner, false)?,
                    o: sa.linear("o", inner, d, false)?,
                    ff_norm: RmsNorm::load(&f, "layer_norm.weight", d, eps)?,
                    wi_0: ff.linear("wi_0", d, config.d_ff, false)?,
                    wi_1: ff.linear("wi_1", d, config.d_ff, false)?,
                    wo: ff.linear("wo", config.d_ff, d, false)?,
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(Self {
            shared: root.embedding("shared", config.vocab_size, d)?,
            relative_attention_bias: root.pp("encoder.block.0.layer.0.SelfAttention").embedding(
                "relative_attention_bias",
                config.relative_attention_num_buckets,
                config.num_heads,
            )?,
            blocks,
            final_layer_norm: RmsNorm::load(&root, "encoder.final_layer_norm.weight", d, eps)?,
            config: config.clone(),
        })
    }

    /// input_ids: [B, L]; `attention_mask` [B, L] (1 = token, 0 = padding) or `None` (Flux
    /// passes none) → last hidden state [B, L, D] (after the final layer norm).
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2>>,
    ) -> Tensor<B, 3> {
        let [batch, len] = input_ids.dims();
        let device = input_ids.device();
        let heads = self.config.num_heads;
        // [1, H, L, L] position bias, plus finfo.min on masked keys (transformers adds
        // `(1 - mask) · finfo(dtype).min` to the bias; f32's min is -inf in bf16, and
        // 0 · -inf would make every kept key NaN).
        let mut bias = self.position_bias(len, &device);
        if let Some(mask) = attention_mask {
            let min = finite_min(mask.dtype());
            let masked: Tensor<B, 4> = ((mask.neg() + 1.0) * min).unsqueeze_dims(&[1, 2]);
            bias = bias + masked;
        }
        let bias = bias.expand([batch, heads, len, len]);
        let mut x = self.shared.forward(input_ids);
        for block in &self.blocks {
            let h = block.attn_norm.forward(x.clone());
            let split = |t: Tensor<B, 3>| {
                t.reshape([batch, len, heads, self.config.d_kv])
                    .swap_dims(1, 2)
            };
            let (q, k, v) = (
                split(block.q.forward(h.clone())),
                split(block.k.forward(h.clone())),
                split(block.v.forward(h)),
            );
            // T5 does not scale the logits by 1/√d_kv.
            let options = AttentionModuleOptions {
                scale: Some(1.0),
                ..Default::default()
            };
            let attn = sdpa(q, k, v, None, Some(bias.clone()), options)
                .swap_dims(1, 2)
                .reshape([batch, len, heads * self.config.d_kv]);
            x = x + block.o.forward(attn);
            let h = block.ff_norm.forward(x.clone());
            let gated = gelu_approximate(block.wi_0.forward(h.clone())) * block.wi_1.forward(h);
            x = x + block.wo.forward(gated);
        }
        self.final_layer_norm.forward(x)
    }

    /// The learned relative position bias [1, H, L, L] (transformers `T5Attention.compute_bias`,
    /// bidirectional buckets).
    fn position_bias(&self, len: usize, device: &B::Device) -> Tensor<B, 4> {
        let buckets: Vec<i64> = (0..len)
            .flat_map(|q| (0..len).map(move |k| k as i64 - q as i64))
            .map(|relative| self.bucket(relative))
            .collect();
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(buckets, [len, len]), device);
        // [L, L, H] → [1, H, L, L]
        self.relative_attention_bias
            .forward(ids)
            .permute([2, 0, 1])
            .unsqueeze()
    }

    /// transformers `T5Attention._relative_position_bucket(bidirectional=True)`, in f32 as
    /// torch computes it, so the bucket edges match.
    fn bucket(&self, relative: i64) -> i64 {
        let buckets = self.config.relative_attention_num_buckets as i64 / 2;
        let offset = if relative > 0 { buckets } else { 0 };
        let distance = relative.abs();
        let max_exact = buckets / 2;
        if distance < max_exact {
            return offset + distance;
        }
        let max_distance = self.config.relative_attention_max_distance as f64;
        let scaled = ((distance as f32 / max_exact as f32).ln()
            / (max_distance / max_exact as f64).ln() as f32
            * (buckets - max_exact) as f32) as i64;
        offset + (max_exact + scaled).min(buckets - 1)
    }
}
