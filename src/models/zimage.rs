//! The Z-Image transformer (Z-Image Turbo's single-stream "S3-DiT").
//!
//! Follows diffusers `models/transformers/transformer_z_image.py` (`ZImageTransformer2DModel`,
//! basic mode) and Tongyi-MAI `src/zimage/transformer.py`: image tokens through two modulated
//! noise-refiner blocks, caption tokens through two unmodulated context-refiner blocks, then
//! [image ‖ caption] through the main blocks. Blocks use sandwich RMS norms, scale-only
//! modulation and tanh gates; each stream is padded to a multiple of 32 tokens with a learned
//! pad token; 2×2 patches are channel-last (`(ph, pw, c)`), unlike Flux. Weights use diffusers
//! names; the original layout is renamed on load (`weights::zimage_store`).

use super::linear::Linear;
use burn::module::{Module, Param};
use burn::prelude::*;
use burn::tensor::activation::{silu, tanh};
use burn::tensor::ops::AttentionModuleOptions;
use serde::Deserialize;

use super::blocks::{RmsNorm, layer_norm, sdpa, timestep_embedding};
use super::flux::Rope;
use crate::Error;
use crate::weights::{TensorStore, Weights};

/// Both streams are padded to a multiple of this many tokens (diffusers `SEQ_MULTI_OF`).
const SEQ_MULTIPLE: usize = 32;
const PATCH: usize = 2;

/// Hyper-parameters, named as in diffusers' `ZImageTransformer2DModel` config. Widths and depth
/// are read from the weights; RoPE axes, θ, the time scale and eps from config.json or the
/// manifest (defaults: Z-Image Turbo's).
#[derive(Clone, Debug)]
pub struct ZImageConfig {
    pub dim: usize,
    pub n_heads: usize,
    pub in_channels: usize,
    pub cap_feat_dim: usize,
    pub n_layers: usize,
    pub n_refiner_layers: usize,
    pub ffn_hidden: usize,
    /// Width of the time embedding the blocks modulate from: `min(dim, 256)`.
    pub adaln_dim: usize,
    pub axes_dims: Vec<usize>,
    pub rope_theta: f64,
    pub t_scale: f32,
    pub norm_eps: f64,
}

#[derive(Deserialize, Default)]
struct ZImageOverrides {
    axes_dims: Option<Vec<usize>>,
    rope_theta: Option<f64>,
    t_scale: Option<f32>,
    norm_eps: Option<f64>,
}

impl ZImageConfig {
    pub fn detect(store: &TensorStore, overrides: &serde_json::Value) -> Result<Self, Error> {
        let o: ZImageOverrides = serde_json::from_value(overrides.clone()).unwrap_or_default();
        let shape = |name: &str| {
            store.shape(name).ok_or_else(|| {
                Error::weights(format!("not a Z-Image transformer: missing `{name}`"))
            })
        };
        let embed = shape("all_x_embedder.2-1.weight")?;
        let head_dim = shape("layers.0.attention.norm_q.weight")?[0];
        Ok(Self {
            dim: embed[0],
            n_heads: embed[0] / head_dim,
            in_channels: embed[1] / (PATCH * PATCH),
            cap_feat_dim: shape("cap_embedder.1.weight")?[1],
            n_layers: store.count_indexed("layers"),
            n_refiner_layers: store.count_indexed("noise_refiner"),
            ffn_hidden: shape("layers.0.feed_forward.w1.weight")?[0],
            adaln_dim: shape("layers.0.adaLN_modulation.0.weight")?[1],
            axes_dims: o.axes_dims.unwrap_or_else(|| vec![32, 48, 48]),
            rope_theta: o.rope_theta.unwrap_or(256.0),
            t_scale: o.t_scale.unwrap_or(1000.0),
            norm_eps: o.norm_eps.unwrap_or(1e-5),
        })
    }
}

/// diffusers `ZImageTransformerBlock`; `adaln` is absent in the context refiner.
#[derive(Module, Debug)]
struct Block<B: Backend> {
    attention_norm1: RmsNorm<B>,
    to_q: Linear<B>,
    to_k: Linear<B>,
    to_v: Linear<B>,
    norm_q: RmsNorm<B>,
    norm_k: RmsNorm<B>,
    to_out: Linear<B>,
    attention_norm2: RmsNorm<B>,
    ffn_norm1: RmsNorm<B>,
    w1: Linear<B>,
    w2: Linear<B>,
    w3: Linear<B>,
    ffn_norm2: RmsNorm<B>,
    adaln: Option<Linear<B>>,
    heads: usize,
}

impl<B: Backend> Block<B> {
    fn load(w: &Weights<B>, cfg: &ZImageConfig, modulated: bool) -> Result<Self, Error> {
        let (d, eps) = (cfg.dim, cfg.norm_eps);
        let a = w.pp("attention");
        let head_dim = d / cfg.n_heads;
        let ff = w.pp("feed_forward");
        Ok(Self {
            attention_norm1: RmsNorm::load(w, "attention_norm1.weight", d, eps)?,
            to_q: a.linear("to_q", d, d, false)?,
            to_k: a.linear("to_k", d, d, false)?,
            to_v: a.linear("to_v", d, d, false)?,
            // diffusers builds the attention's q/k norms with eps 1e-5.
            norm_q: RmsNorm::load(&a, "norm_q.weight", head_dim, 1e-5)?,
            norm_k: RmsNorm::load(&a, "norm_k.weight", head_dim, 1e-5)?,
            to_out: a.linear("to_out.0", d, d, false)?,
            attention_norm2: RmsNorm::load(w, "attention_norm2.weight", d, eps)?,
            ffn_norm1: RmsNorm::load(w, "ffn_norm1.weight", d, eps)?,
            w1: ff.linear("w1", d, cfg.ffn_hidden, false)?,
            w2: ff.linear("w2", cfg.ffn_hidden, d, false)?,
            w3: ff.linear("w3", d, cfg.ffn_hidden, false)?,
            ffn_norm2: RmsNorm::load(w, "ffn_norm2.weight", d, eps)?,
            adaln: if modulated {
                Some(w.linear("adaLN_modulation.0", cfg.adaln_dim, 4 * d, true)?)
            } else {
                None
            },
            heads: cfg.n_heads,
        })
    }

    /// x: [1, L, D]; `adaln_input`: the time embedding [1, A] (modulated blocks) → [1, L, D].
    fn forward(&self, x: Tensor<B, 3>, adaln_input: &Tensor<B, 2>, rope: &Rope<B>) -> Tensor<B, 3> {
        // (scale_msa, gate_msa, scale_mlp, gate_mlp), scales as 1 + s, gates through tanh;
        // applied to the adaLN input directly (no SiLU).
        let modulation = self.adaln.as_ref().map(|adaln| {
            let m = adaln.forward(adaln_input.clone());
            let [b, width] = m.dims();
            let m: Tensor<B, 3> = m.reshape([b, 4, width / 4]);
            let row = |i: usize| m.clone().slice([0..b, i..i + 1]);
            (row(0) + 1.0, tanh(row(1)), row(2) + 1.0, tanh(row(3)))
        });
        let h = self.attention_norm1.forward(x.clone());
        let h = match &modulation {
            Some((scale, ..)) => h * scale.clone(),
            None => h,
        };
        let attn = self.attention_norm2.forward(self.attention(h, rope));
        let x = match &modulation {
            Some((_, gate, ..)) => x + gate.clone() * attn,
            None => x + attn,
        };
        let h = self.ffn_norm1.forward(x.clone());
        let h = match &modulation {
            Some((_, _, scale, _)) => h * scale.clone(),
            None => h,
        };
        let ff = self.ffn_norm2.forward(
            self.w2
                .forward(silu(self.w1.forward(h.clone())) * self.w3.forward(h)),
        );
        match &modulation {
            Some((.., gate)) => x + gate.clone() * ff,
            None => x + ff,
        }
    }

    fn attention(&self, x: Tensor<B, 3>, rope: &Rope<B>) -> Tensor<B, 3> {
        let [b, l, d] = x.dims();
        let split = |t: Tensor<B, 3>| {
            t.reshape([b, l, self.heads, d / self.heads])
                .swap_dims(1, 2)
        };
        let q = rope.apply(self.norm_q.forward(split(self.to_q.forward(x.clone()))));
        let k = rope.apply(self.norm_k.forward(split(self.to_k.forward(x.clone()))));
        let v = split(self.to_v.forward(x));
        let out = sdpa(q, k, v, None, None, AttentionModuleOptions::default());
        self.to_out.forward(out.swap_dims(1, 2).reshape([b, l, d]))
    }
}

#[derive(Module, Debug)]
pub struct ZImageTransformer<B: Backend> {
    x_embedder: Linear<B>,
    t_mlp_0: Linear<B>,
    t_mlp_2: Linear<B>,
    cap_norm: RmsNorm<B>,
    cap_linear: Linear<B>,
    x_pad_token: Param<Tensor<B, 2>>,
    cap_pad_token: Param<Tensor<B, 2>>,
    noise_refiner: Vec<Block<B>>,
    context_refiner: Vec<Block<B>>,
    layers: Vec<Block<B>>,
    final_adaln: Linear<B>,
    final_linear: Linear<B>,
    #[module(skip)]
    config: ZImageConfig,
}

impl<B: Backend> ZImageTransformer<B> {
    pub fn load(
        store: &TensorStore,
        cfg: &ZImageConfig,
        device: &B::Device,
    ) -> Result<Self, Error> {
        let w = Weights::new(store, device);
        let d = cfg.dim;
        let blocks = |name: &str, n: usize, modulated: bool| {
            (0..n)
                .map(|i| Block::load(&w.pp(name).pp(i), cfg, modulated))
                .collect::<Result<Vec<_>, Error>>()
        };
        let patch_features = PATCH * PATCH * cfg.in_channels;
        Ok(Self {
            x_embedder: w.linear("all_x_embedder.2-1", patch_features, d, true)?,
            t_mlp_0: w.linear_any("t_embedder.mlp.0", true)?.0,
            t_mlp_2: w.linear_any("t_embedder.mlp.2", true)?.0,
            cap_norm: RmsNorm::load(&w, "cap_embedder.0.weight", cfg.cap_feat_dim, cfg.norm_eps)?,
            cap_linear: w.linear("cap_embedder.1", cfg.cap_feat_dim, d, true)?,
            x_pad_token: Param::from_tensor(w.tensor("x_pad_token", [1, d])?),
            cap_pad_token: Param::from_tensor(w.tensor("cap_pad_token", [1, d])?),
            noise_refiner: blocks("noise_refiner", cfg.n_refiner_layers, true)?,
            context_refiner: blocks("context_refiner", cfg.n_refiner_layers, false)?,
            layers: blocks("layers", cfg.n_layers, true)?,
            final_adaln: w.linear(
                "all_final_layer.2-1.adaLN_modulation.1",
                cfg.adaln_dim,
                d,
                true,
            )?,
            final_linear: w.linear("all_final_layer.2-1.linear", d, patch_features, true)?,
            config: cfg.clone(),
        })
    }

    /// One image: `latent` [C, H, W], `t` the model time (1 − σ), `caption` the Qwen3 states of
    /// its real tokens [L, Dc] → the model output [C, H, W] (the pipeline negates it).
    pub fn forward(&self, latent: Tensor<B, 3>, t: f32, caption: Tensor<B, 2>) -> Tensor<B, 3> {
        let device = latent.device();
        let cfg = &self.config;
        let [c, h, w] = latent.dims();
        let (ht, wt) = (h / PATCH, w / PATCH);
        let tokens = ht * wt;
        let caption_len = caption.dims()[0];
        let x_len = tokens.next_multiple_of(SEQ_MULTIPLE);
        let cap_len = caption_len.next_multiple_of(SEQ_MULTIPLE);

        let t_freq = timestep_embedding::<B>(&[t * cfg.t_scale], 256, true, 0.0, &device);
        let adaln = self.t_mlp_2.forward(silu(self.t_mlp_0.forward(t_freq)));

        // Patches with (ph, pw, c) features, then the learned pad token up to x_len.
        let patches = latent
            .reshape([c, ht, PATCH, wt, PATCH])
            .permute([1, 3, 2, 4, 0])
            .reshape([tokens, PATCH * PATCH * c]);
        let pad = |tokens: Tensor<B, 2>, pad: &Param<Tensor<B, 2>>, len: usize| {
            let n = tokens.dims()[0];
            if n == len {
                return tokens.unsqueeze::<3>();
            }
            let fill = pad.val().expand([len - n, cfg.dim]);
            Tensor::cat(vec![tokens, fill], 0).unsqueeze::<3>()
        };
        let mut x = pad(self.x_embedder.forward(patches), &self.x_pad_token, x_len);
        let caption = self.cap_linear.forward(self.cap_norm.forward(caption));
        let mut cap = pad(caption, &self.cap_pad_token, cap_len);

        // Positions: caption token i (pads included) at (1 + i, 0, 0); image token (row, col)
        // at (cap_len + 1, row, col); image pads at the origin.
        let cap_ids: Vec<[f32; 3]> = (0..cap_len).map(|i| [1.0 + i as f32, 0.0, 0.0]).collect();
        let frame = (cap_len + 1) as f32;
        let image_ids: Vec<[f32; 3]> = (0..ht)
            .flat_map(|r| (0..wt).map(move |c| [frame, r as f32, c as f32]))
            .chain(std::iter::repeat_n([0.0; 3], x_len - tokens))
            .collect();
        let rope =
            |ids: &[[f32; 3]]| Rope::with_f32_angles(ids, &cfg.axes_dims, cfg.rope_theta, &device);
        let (x_rope, cap_rope) = (rope(&image_ids), rope(&cap_ids));
        let unified_rope = rope(&[image_ids, cap_ids].concat());

        for block in &self.noise_refiner {
            x = block.forward(x, &adaln, &x_rope);
        }
        for block in &self.context_refiner {
            cap = block.forward(cap, &adaln, &cap_rope);
        }
        let mut u = Tensor::cat(vec![x, cap], 1);
        for block in &self.layers {
            u = block.forward(u, &adaln, &unified_rope);
        }
        // Final layer: LayerNorm · (1 + Linear(SiLU(c))), scale only.
        let scale: Tensor<B, 3> = (self.final_adaln.forward(silu(adaln)) + 1.0).unsqueeze_dim(1);
        let out = self.final_linear.forward(layer_norm(u, 1e-6) * scale);
        let features = out.dims()[2];
        out.slice([0..1, 0..tokens])
            .reshape([ht, wt, PATCH, PATCH, features / (PATCH * PATCH)])
            .permute([4, 0, 2, 1, 3])
            .reshape([c, h, w])
    }
}
