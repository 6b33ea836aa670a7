//! The Flux transformer (FLUX.1 dev and schnell), and the double- and single-stream blocks
//! Chroma shares.
//!
//! Follows diffusers `models/transformers/transformer_flux.py` (`FluxTransformer2DModel`, with
//! `FluxAttnProcessor`) and BFL `flux/model.py`, `modules/layers.py`. Weights use diffusers
//! names; BFL files are renamed on load (`weights::flux_store`). Shapes: B batch, T text tokens,
//! N image tokens (packed 2×2 latent patches), D = heads · head_dim.

use super::linear::Linear;
use burn::module::Module;
use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::{gelu_approximate, silu};
use burn::tensor::ops::AttentionModuleOptions;
use serde::Deserialize;

use super::blocks::{RmsNorm, layer_norm, sdpa, timestep_embedding};
use crate::Error;
use crate::weights::{TensorStore, Weights};

/// LayerNorm eps of every Flux norm (BFL `eps=1e-6`).
const EPS: f64 = 1e-6;
/// θ of Flux's and Chroma's RoPE (BFL `theta=10_000`).
pub const ROPE_THETA: f64 = 10000.0;

/// Hyper-parameters, named as in diffusers' `FluxTransformer2DModel` config. Everything but the
/// RoPE axes is read from the weights.
#[derive(Clone, Debug)]
pub struct FluxConfig {
    pub in_channels: usize,
    pub num_layers: usize,
    pub num_single_layers: usize,
    pub attention_head_dim: usize,
    pub num_attention_heads: usize,
    pub joint_attention_dim: usize,
    /// CLIP pooled width (Flux only; Chroma has no pooled input).
    pub pooled_projection_dim: usize,
    pub guidance_embeds: bool,
    pub axes_dims_rope: Vec<usize>,
    pub mlp_hidden_dim: usize,
}

#[derive(Deserialize, Default)]
struct FluxOverrides {
    axes_dims_rope: Option<Vec<usize>>,
}

impl FluxConfig {
    /// Shapes from `store` (diffusers names), the RoPE axes from `overrides` (default
    /// [16, 56, 56], FLUX.1's).
    pub fn detect(store: &TensorStore, overrides: &serde_json::Value) -> Result<Self, Error> {
        let o: FluxOverrides = serde_json::from_value(overrides.clone()).unwrap_or_default();
        let shape = |name: &str| {
            store
                .shape(name)
                .ok_or_else(|| Error::weights(format!("not a Flux transformer: missing `{name}`")))
        };
        let x_embedder = shape("x_embedder.weight")?;
        let inner = x_embedder[0];
        let head_dim = shape("transformer_blocks.0.attn.norm_q.weight")?[0];
        Ok(Self {
            in_channels: x_embedder[1],
            num_layers: store.count_indexed("transformer_blocks"),
            num_single_layers: store.count_indexed("single_transformer_blocks"),
            attention_head_dim: head_dim,
            num_attention_heads: inner / head_dim,
            joint_attention_dim: shape("context_embedder.weight")?[1],
            pooled_projection_dim: store
                .shape("time_text_embed.text_embedder.linear_1.weight")
                .map_or(0, |s| s[1]),
            guidance_embeds: store.contains("time_text_embed.guidance_embedder.linear_1.weight"),
            axes_dims_rope: o.axes_dims_rope.unwrap_or_else(|| vec![16, 56, 56]),
            mlp_hidden_dim: shape("transformer_blocks.0.ff.net.0.proj.weight")?[0],
        })
    }

    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }
}

/// `x · (1 + scale) + shift` after a LayerNorm without affine, and the gate of the residual
/// (diffusers `AdaLayerNormZero`: one (shift, scale, gate) triple). Vectors are [B, 1, D].
#[derive(Clone, Debug)]
pub struct Modulation<B: Backend> {
    pub shift: Tensor<B, 3>,
    pub scale: Tensor<B, 3>,
    pub gate: Tensor<B, 3>,
}

impl<B: Backend> Modulation<B> {
    /// The `n` triples in `v` [B, 3n·D] or [B, 3n, D] rows, in (shift, scale, gate) order.
    pub fn chunks(v: Tensor<B, 3>, n: usize) -> Vec<Self> {
        let [b, rows, d] = v.dims();
        let v = if rows == 1 {
            v.reshape([b, 3 * n, d / (3 * n)])
        } else {
            v
        };
        (0..n)
            .map(|i| {
                let row = |j: usize| v.clone().slice([0..b, 3 * i + j..3 * i + j + 1]);
                Self {
                    shift: row(0),
                    scale: row(1),
                    gate: row(2),
                }
            })
            .collect()
    }

    fn apply(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        layer_norm(x, EPS) * (self.scale.clone() + 1.0) + self.shift.clone()
    }
}

/// Rotary position embedding of Flux: per axis, consecutive (even, odd) channel pairs rotated
/// by `pos · θ^(-2i/d)` (diffusers `FluxPosEmbed`, `get_1d_rotary_pos_embed(...,
/// repeat_interleave_real=True)`, computed in f64 as there).
#[derive(Clone, Debug)]
pub struct Rope<B: Backend> {
    /// [1, 1, T+N, head_dim] each.
    cos: Tensor<B, 4>,
    sin: Tensor<B, 4>,
}

impl<B: Backend> Rope<B> {
    /// `ids`: one `[axis0, axis1, axis2]` position per token (text tokens first); cos and sin
    /// computed in f64 and rounded, as diffusers' `get_1d_rotary_pos_embed`.
    pub fn new(ids: &[[f32; 3]], axes_dims: &[usize], theta: f64, device: &B::Device) -> Self {
        Self::build(ids, axes_dims, theta, device, |angle| {
            (angle.cos() as f32, angle.sin() as f32)
        })
    }

    /// As [`Self::new`], but the angle is rounded to f32 before cos and sin (Z-Image's
    /// `torch.polar` on f32 angles).
    pub fn with_f32_angles(
        ids: &[[f32; 3]],
        axes_dims: &[usize],
        theta: f64,
        device: &B::Device,
    ) -> Self {
        Self::build(ids, axes_dims, theta, device, |angle| {
            let angle = angle as f32;
            (angle.cos(), angle.sin())
        })
    }

    fn build(
        ids: &[[f32; 3]],
        axes_dims: &[usize],
        theta: f64,
        device: &B::Device,
        trig: impl Fn(f64) -> (f32, f32),
    ) -> Self {
        let head_dim: usize = axes_dims.iter().sum();
        // θ^(-2i/d) for each (axis, channel pair), the same for every token.
        let freqs: Vec<(usize, f64)> = axes_dims
            .iter()
            .enumerate()
            .flat_map(|(axis, &dim)| {
                (0..dim)
                    .step_by(2)
                    .map(move |i| (axis, 1.0 / theta.powf(i as f64 / dim as f64)))
            })
            .collect();
        let (mut cos, mut sin) = (
            Vec::with_capacity(ids.len() * head_dim),
            Vec::with_capacity(ids.len() * head_dim),
        );
        for id in ids {
            for &(axis, freq) in &freqs {
                let (c, s) = trig(id[axis] as f64 * freq);
                cos.extend([c, c]);
                sin.extend([s, s]);
            }
        }
        let shape = [1, 1, ids.len(), head_dim];
        Self {
            cos: Tensor::from_data(TensorData::new(cos, shape), device),
            sin: Tensor::from_data(TensorData::new(sin, shape), device),
        }
    }

    /// x: [B, H, L, Dh] → rotated, same shape (diffusers `apply_rotary_emb`,
    /// `use_real_unbind_dim=-1`).
    pub fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, h, l, d] = x.dims();
        let pairs = x.clone().reshape([b, h, l, d / 2, 2]);
        let real = pairs.clone().slice([0..b, 0..h, 0..l, 0..d / 2, 0..1]);
        let imag = pairs.slice([0..b, 0..h, 0..l, 0..d / 2, 1..2]);
        let rotated = Tensor::cat(vec![imag.neg(), real], 4).reshape([b, h, l, d]);
        x * self.cos.clone() + rotated * self.sin.clone()
    }
}

/// Position ids of Flux's token sequence: text tokens at 0, then image token (row, col) as
/// (0, row, col) (diffusers `FluxPipeline._prepare_latent_image_ids`).
pub fn position_ids(text_tokens: usize, rows: usize, cols: usize) -> Vec<[f32; 3]> {
    let text = std::iter::repeat_n([0.0; 3], text_tokens);
    let image = (0..rows).flat_map(|r| (0..cols).map(move |c| [0.0, r as f32, c as f32]));
    text.chain(image).collect()
}

/// What attention may not (or may less) look at.
#[derive(Clone, Debug)]
pub enum AttentionMask<B: Backend> {
    /// Every token sees every token (Flux).
    None,
    /// `mᵢ·mⱼ` added to the logits, for the token mask `m` [B, L] (1 = a real token): the float
    /// mask `ChromaPipeline` hands SDPA, so pairs of real tokens get +1 and the rest +0.
    PairBonus(Tensor<B, 2>),
    /// `true` pairs are excluded (a bool mask given to SDPA, [B, 1, L, L]).
    Exclude(Tensor<B, 4, Bool>),
}

impl<B: Backend> AttentionMask<B> {
    /// `token_mask` [B, L] (1 = attend) as diffusers' Chroma blocks pass it to SDPA:
    /// `m[:, None, None, :] · m[:, None, :, None]`. `as_bool` says whether the mask is bool
    /// (pairs with a padded query or key excluded) or float, which SDPA *adds* to the logits —
    /// what `ChromaPipeline` passes, so its padded pairs get +0 and the others +1.
    pub fn from_tokens(token_mask: Tensor<B, 2>, as_bool: bool) -> Self {
        if !as_bool {
            return AttentionMask::PairBonus(token_mask);
        }
        let keys: Tensor<B, 4> = token_mask.clone().unsqueeze_dims(&[1, 2]);
        let queries: Tensor<B, 4> = token_mask.unsqueeze_dims(&[1, 3]);
        AttentionMask::Exclude((keys * queries).lower_elem(0.5))
    }
}

/// Attention over a token sequence that may hold two streams: RoPE on the (already normed)
/// q/k, then SDPA with scale 1/√head_dim.
fn joint_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    rope: &Rope<B>,
    mask: &AttentionMask<B>,
) -> Tensor<B, 3> {
    let (q, k) = (rope.apply(q), rope.apply(k));
    let [b, h, l, d] = q.dims();
    let out = match mask {
        AttentionMask::None => sdpa(q, k, v, None, None, AttentionModuleOptions::default()),
        AttentionMask::Exclude(exclude) => sdpa(
            q,
            k,
            v,
            Some(exclude.clone()),
            None,
            AttentionModuleOptions::default(),
        ),
        AttentionMask::PairBonus(tokens) => {
            let (q, k, v) = pair_bonus_as_channels(q, k, v, tokens.clone());
            sdpa(q, k, v, None, None, AttentionModuleOptions::default()).slice([
                0..b,
                0..h,
                0..l,
                0..d,
            ])
        }
    };
    out.swap_dims(1, 2).reshape([b, l, h * d])
}

/// softmax(q·kᵀ/√d + mᵢ·mⱼ)·v as attention without an additive bias, so that burn's flash
/// kernels take it (burn-cubecl 0.21 `ops/module.rs` sends a bias to its materialised-scores
/// attention, with the softmax in the tensor's dtype). The bonus is rank one, so it fits in
/// one more q/k channel: q becomes [√(d'/d)·q, √d'·mᵢ, 0…], k [k, mⱼ, 0…], v [v, 0…], with d'
/// the next multiple of 32 above d. The default scale 1/√d' then gives q·k/√d + mᵢ·mⱼ; the
/// first d output channels are the attention's. Not 16: on lavapipe burn's attention with a
/// head width of 48 is wrong for some lengths (dense q/k/v [1, 2, 536, 48], no mask: max error
/// 2.1e-2 against the CPU; 528 and 537 are right), while 64, 96, 144, 160 and 256 were right at
/// every length tried (issue #14).
fn pair_bonus_as_channels<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    tokens: Tensor<B, 2>,
) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
    let [b, h, l, d] = q.dims();
    let padded = (d + 1).next_multiple_of(32);
    let device = q.device();
    // `parts` side by side, then zero channels up to `padded`.
    let widen = |mut parts: Vec<Tensor<B, 4>>| {
        let filled: usize = parts.iter().map(|t| t.dims()[3]).sum();
        if filled < padded {
            parts.push(Tensor::zeros([b, h, l, padded - filled], &device));
        }
        Tensor::cat(parts, 3)
    };
    let rows = tokens.dims()[0];
    let m: Tensor<B, 4> = tokens.reshape([rows, 1, l, 1]).expand([b, h, l, 1]);
    let q = widen(vec![
        q * (padded as f64 / d as f64).sqrt(),
        m.clone() * (padded as f64).sqrt(),
    ]);
    let k = widen(vec![k, m]);
    let v = widen(vec![v]);
    (q, k, v)
}

/// q, k, v projections with per-head q/k RMS norms: [B, L, D] → three [B, H, L, Dh].
#[derive(Module, Debug)]
struct QkvProjection<B: Backend> {
    to_q: Linear<B>,
    to_k: Linear<B>,
    to_v: Linear<B>,
    norm_q: RmsNorm<B>,
    norm_k: RmsNorm<B>,
    heads: usize,
}

impl<B: Backend> QkvProjection<B> {
    /// `names`: the q, k, v and q-norm, k-norm names (diffusers calls the text stream's
    /// `add_q_proj`, …, `norm_added_q`).
    fn load(w: &Weights<B>, names: [&str; 5], cfg: &FluxConfig) -> Result<Self, Error> {
        let (d, dh) = (cfg.inner_dim(), cfg.attention_head_dim);
        Ok(Self {
            to_q: w.linear(names[0], d, d, true)?,
            to_k: w.linear(names[1], d, d, true)?,
            to_v: w.linear(names[2], d, d, true)?,
            norm_q: RmsNorm::load(w, &format!("{}.weight", names[3]), dh, EPS)?,
            norm_k: RmsNorm::load(w, &format!("{}.weight", names[4]), dh, EPS)?,
            heads: cfg.num_attention_heads,
        })
    }

    fn forward(&self, x: Tensor<B, 3>) -> [Tensor<B, 4>; 3] {
        let [b, l, d] = x.dims();
        let split = |t: Tensor<B, 3>| {
            t.reshape([b, l, self.heads, d / self.heads])
                .swap_dims(1, 2)
        };
        [
            self.norm_q.forward(split(self.to_q.forward(x.clone()))),
            self.norm_k.forward(split(self.to_k.forward(x.clone()))),
            split(self.to_v.forward(x)),
        ]
    }
}

/// diffusers `FeedForward(activation_fn="gelu-approximate")`: Linear → GELU(tanh) → Linear.
#[derive(Module, Debug)]
struct FeedForward<B: Backend> {
    proj: Linear<B>,
    out: Linear<B>,
}

impl<B: Backend> FeedForward<B> {
    fn load(w: &Weights<B>, d: usize, hidden: usize) -> Result<Self, Error> {
        Ok(Self {
            proj: w.linear("net.0.proj", d, hidden, true)?,
            out: w.linear("net.2", hidden, d, true)?,
        })
    }

    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.out.forward(gelu_approximate(self.proj.forward(x)))
    }
}

/// Double-stream block (diffusers `FluxTransformerBlock`, BFL `DoubleStreamBlock`): image and
/// text keep their own weights and attend jointly over [text ‖ image].
#[derive(Module, Debug)]
pub struct DoubleBlock<B: Backend> {
    img_qkv: QkvProjection<B>,
    txt_qkv: QkvProjection<B>,
    to_out: Linear<B>,
    to_add_out: Linear<B>,
    ff: FeedForward<B>,
    ff_context: FeedForward<B>,
}

impl<B: Backend> DoubleBlock<B> {
    pub fn load(w: &Weights<B>, cfg: &FluxConfig) -> Result<Self, Error> {
        let (a, d) = (w.pp("attn"), cfg.inner_dim());
        Ok(Self {
            img_qkv: QkvProjection::load(&a, ["to_q", "to_k", "to_v", "norm_q", "norm_k"], cfg)?,
            txt_qkv: QkvProjection::load(
                &a,
                [
                    "add_q_proj",
                    "add_k_proj",
                    "add_v_proj",
                    "norm_added_q",
                    "norm_added_k",
                ],
                cfg,
            )?,
            to_out: a.linear("to_out.0", d, d, true)?,
            to_add_out: a.linear("to_add_out", d, d, true)?,
            ff: FeedForward::load(&w.pp("ff"), d, cfg.mlp_hidden_dim)?,
            ff_context: FeedForward::load(&w.pp("ff_context"), d, cfg.mlp_hidden_dim)?,
        })
    }

    /// img [B, N, D], txt [B, T, D]; `img_mod` / `txt_mod`: the attention and MLP modulations
    /// of each stream → (img, txt).
    pub fn forward(
        &self,
        img: Tensor<B, 3>,
        txt: Tensor<B, 3>,
        img_mod: &[Modulation<B>],
        txt_mod: &[Modulation<B>],
        rope: &Rope<B>,
        mask: &AttentionMask<B>,
    ) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let text_len = txt.dims()[1];
        let [iq, ik, iv] = self.img_qkv.forward(img_mod[0].apply(img.clone()));
        let [tq, tk, tv] = self.txt_qkv.forward(txt_mod[0].apply(txt.clone()));
        let cat = |t: Tensor<B, 4>, i: Tensor<B, 4>| Tensor::cat(vec![t, i], 2);
        let attn = joint_attention(cat(tq, iq), cat(tk, ik), cat(tv, iv), rope, mask);
        let [b, l, d] = attn.dims();
        let txt_attn = attn.clone().slice([0..b, 0..text_len, 0..d]);
        let img_attn = attn.slice([0..b, text_len..l, 0..d]);

        let img = img + img_mod[0].gate.clone() * self.to_out.forward(img_attn);
        let img = img.clone() + img_mod[1].gate.clone() * self.ff.forward(img_mod[1].apply(img));
        let txt = txt + txt_mod[0].gate.clone() * self.to_add_out.forward(txt_attn);
        let txt =
            txt.clone() + txt_mod[1].gate.clone() * self.ff_context.forward(txt_mod[1].apply(txt));
        (img, txt)
    }
}

/// Single-stream block (diffusers `FluxSingleTransformerBlock`, BFL `SingleStreamBlock`):
/// attention and MLP in parallel on the joint sequence, one output projection.
#[derive(Module, Debug)]
pub struct SingleBlock<B: Backend> {
    qkv: QkvProjection<B>,
    proj_mlp: Linear<B>,
    proj_out: Linear<B>,
}

impl<B: Backend> SingleBlock<B> {
    pub fn load(w: &Weights<B>, cfg: &FluxConfig) -> Result<Self, Error> {
        let (d, mlp) = (cfg.inner_dim(), cfg.mlp_hidden_dim);
        Ok(Self {
            qkv: QkvProjection::load(
                &w.pp("attn"),
                ["to_q", "to_k", "to_v", "norm_q", "norm_k"],
                cfg,
            )?,
            proj_mlp: w.linear("proj_mlp", d, mlp, true)?,
            proj_out: w.linear("proj_out", d + mlp, d, true)?,
        })
    }

    /// x: [B, T+N, D] → same shape.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        modulation: &Modulation<B>,
        rope: &Rope<B>,
        mask: &AttentionMask<B>,
    ) -> Tensor<B, 3> {
        let h = modulation.apply(x.clone());
        let mlp = gelu_approximate(self.proj_mlp.forward(h.clone()));
        let [q, k, v] = self.qkv.forward(h);
        let attn = joint_attention(q, k, v, rope, mask);
        let out = self.proj_out.forward(Tensor::cat(vec![attn, mlp], 2));
        x + modulation.gate.clone() * out
    }
}

/// Linear → SiLU → Linear (diffusers `TimestepEmbedding`, `PixArtAlphaTextProjection`; BFL
/// `MLPEmbedder`).
#[derive(Module, Debug)]
pub struct MlpEmbedder<B: Backend> {
    linear_1: Linear<B>,
    linear_2: Linear<B>,
}

impl<B: Backend> MlpEmbedder<B> {
    pub fn load(w: &Weights<B>) -> Result<Self, Error> {
        Ok(Self {
            linear_1: w.linear_any("linear_1", true)?.0,
            linear_2: w.linear_any("linear_2", true)?.0,
        })
    }

    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        self.linear_2.forward(silu(self.linear_1.forward(x)))
    }
}

#[derive(Module, Debug)]
struct BlockModulation<B: Backend> {
    img: Linear<B>,
    txt: Linear<B>,
}

#[derive(Module, Debug)]
pub struct FluxTransformer<B: Backend> {
    x_embedder: Linear<B>,
    context_embedder: Linear<B>,
    timestep_embedder: MlpEmbedder<B>,
    guidance_embedder: Option<MlpEmbedder<B>>,
    text_embedder: MlpEmbedder<B>,
    double_modulation: Vec<BlockModulation<B>>,
    double_blocks: Vec<DoubleBlock<B>>,
    single_modulation: Vec<Linear<B>>,
    single_blocks: Vec<SingleBlock<B>>,
    norm_out: Linear<B>,
    proj_out: Linear<B>,
}

/// Flux's time, guidance and pooled-text inputs for one forward.
pub struct FluxConditioning<'a, B: Backend> {
    /// σ ∈ [0, 1] per batch row (diffusers passes `t / 1000`; the model multiplies by 1000).
    pub timesteps: &'a [f32],
    /// The distilled guidance scale per row (dev); ignored by models without it.
    pub guidance: Option<&'a [f32]>,
    /// CLIP-L pooled output [B, P].
    pub pooled: Tensor<B, 2>,
}

impl<B: Backend> FluxTransformer<B> {
    pub fn load(store: &TensorStore, cfg: &FluxConfig, device: &B::Device) -> Result<Self, Error> {
        let w = Weights::new(store, device);
        let d = cfg.inner_dim();
        let double = (0..cfg.num_layers)
            .map(|i| {
                let b = w.pp("transformer_blocks").pp(i);
                Ok((
                    BlockModulation {
                        img: b.linear("norm1.linear", d, 6 * d, true)?,
                        txt: b.linear("norm1_context.linear", d, 6 * d, true)?,
                    },
                    DoubleBlock::load(&b, cfg)?,
                ))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let single = (0..cfg.num_single_layers)
            .map(|i| {
                let b = w.pp("single_transformer_blocks").pp(i);
                Ok((
                    b.linear("norm.linear", d, 3 * d, true)?,
                    SingleBlock::load(&b, cfg)?,
                ))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let embed = w.pp("time_text_embed");
        let (double_modulation, double_blocks) = double.into_iter().unzip();
        let (single_modulation, single_blocks) = single.into_iter().unzip();
        Ok(Self {
            x_embedder: w.linear("x_embedder", cfg.in_channels, d, true)?,
            context_embedder: w.linear("context_embedder", cfg.joint_attention_dim, d, true)?,
            timestep_embedder: MlpEmbedder::load(&embed.pp("timestep_embedder"))?,
            guidance_embedder: if cfg.guidance_embeds {
                Some(MlpEmbedder::load(&embed.pp("guidance_embedder"))?)
            } else {
                None
            },
            text_embedder: MlpEmbedder::load(&embed.pp("text_embedder"))?,
            double_modulation,
            double_blocks,
            single_modulation,
            single_blocks,
            norm_out: w.linear("norm_out.linear", d, 2 * d, true)?,
            proj_out: w.linear("proj_out", d, cfg.in_channels, true)?,
        })
    }

    pub fn has_guidance(&self) -> bool {
        self.guidance_embedder.is_some()
    }

    /// img: packed latents [B, N, C]; txt: T5 states [B, T, Dt]; `rope`: of the
    /// [`position_ids`] of the T + N tokens (the same at every step) → velocity [B, N, C].
    pub fn forward(
        &self,
        img: Tensor<B, 3>,
        txt: Tensor<B, 3>,
        rope: &Rope<B>,
        cond: &FluxConditioning<B>,
    ) -> Tensor<B, 3> {
        let device = img.device();
        let embed = |values: &[f32]| {
            let scaled: Vec<f32> = values.iter().map(|v| v * 1000.0).collect();
            timestep_embedding::<B>(&scaled, 256, true, 0.0, &device)
        };
        // diffusers `CombinedTimestep(Guidance)TextProjEmbeddings`
        let mut temb = self.timestep_embedder.forward(embed(cond.timesteps))
            + self.text_embedder.forward(cond.pooled.clone());
        if let (Some(embedder), Some(guidance)) = (&self.guidance_embedder, cond.guidance) {
            temb = temb + embedder.forward(embed(guidance));
        }
        let vec: Tensor<B, 3> = silu(temb).unsqueeze_dim(1);
        let mut img = self.x_embedder.forward(img);
        let mut txt = self.context_embedder.forward(txt);
        for (m, block) in self.double_modulation.iter().zip(&self.double_blocks) {
            let img_mod = Modulation::chunks(m.img.forward(vec.clone()), 2);
            let txt_mod = Modulation::chunks(m.txt.forward(vec.clone()), 2);
            (img, txt) = block.forward(img, txt, &img_mod, &txt_mod, rope, &AttentionMask::None);
        }
        let text_len = txt.dims()[1];
        let mut x = Tensor::cat(vec![txt, img], 1);
        for (m, block) in self.single_modulation.iter().zip(&self.single_blocks) {
            let modulation = &Modulation::chunks(m.forward(vec.clone()), 1)[0];
            x = block.forward(x, modulation, rope, &AttentionMask::None);
        }
        let [b, l, d] = x.dims();
        let img = x.slice([0..b, text_len..l, 0..d]);
        // diffusers `AdaLayerNormContinuous` chunks (scale, shift); BFL's order is swapped on load.
        let out = self.norm_out.forward(vec).reshape([b, 2, d]);
        let scale = out.clone().slice([0..b, 0..1]);
        let shift = out.slice([0..b, 1..2]);
        self.proj_out
            .forward(layer_norm(img, EPS) * (scale + 1.0) + shift)
    }
}
