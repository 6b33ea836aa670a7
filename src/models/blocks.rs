//! Building blocks that several networks share, as diffusers defines them
//! (`models/resnet.py`, `models/attention_processor.py`, `models/embeddings.py`).

use super::linear::Linear;
use burn::module::{Module, Param};
use burn::nn::GroupNorm;
use burn::nn::conv::Conv2d;
use burn::prelude::*;
use burn::tensor::Bool;
use burn::tensor::activation::silu;
use burn::tensor::module::{attention, interpolate};
use burn::tensor::ops::{AttentionModuleOptions, InterpolateMode, InterpolateOptions};
use burn::tensor::{DType, FloatDType, TensorData};

use crate::Error;
use crate::weights::Weights;

/// diffusers `ResnetBlock2D` (`resnet_time_scale_shift="default"`, output scale 1):
/// GN → SiLU → conv3×3 (+ time embedding) → GN → SiLU → conv3×3, plus a 1×1 shortcut when the
/// channel count changes. The VAE's blocks have no time embedding.
#[derive(Module, Debug)]
pub struct ResnetBlock2D<B: Backend> {
    norm1: GroupNorm<B>,
    conv1: Conv2d<B>,
    time_emb_proj: Option<Linear<B>>,
    norm2: GroupNorm<B>,
    conv2: Conv2d<B>,
    conv_shortcut: Option<Conv2d<B>>,
}

impl<B: Backend> ResnetBlock2D<B> {
    /// `temb_channels` is `None` for the VAE.
    pub fn load(
        w: &Weights<B>,
        c_in: usize,
        c_out: usize,
        temb_channels: Option<usize>,
        groups: usize,
        eps: f64,
    ) -> Result<Self, Error> {
        let time_emb_proj = match temb_channels {
            Some(t) => Some(w.linear("time_emb_proj", t, c_out, true)?),
            None => None,
        };
        let conv_shortcut = if c_in != c_out {
            Some(w.conv2d("conv_shortcut", c_in, c_out, 1, 1, 0)?)
        } else {
            None
        };
        Ok(Self {
            norm1: w.group_norm("norm1", groups, c_in, eps)?,
            conv1: w.conv2d("conv1", c_in, c_out, 3, 1, 1)?,
            time_emb_proj,
            norm2: w.group_norm("norm2", groups, c_out, eps)?,
            conv2: w.conv2d("conv2", c_out, c_out, 3, 1, 1)?,
            conv_shortcut,
        })
    }

    /// x: [B, C_in, H, W], temb: [B, T] (before its SiLU) →
    /// [B, C_out, H, W].
    pub fn forward(&self, x: Tensor<B, 4>, temb: Option<&Tensor<B, 2>>) -> Tensor<B, 4> {
        let mut h = self.conv1.forward(silu(self.norm1.forward(x.clone())));
        if let (Some(proj), Some(temb)) = (&self.time_emb_proj, temb) {
            let t: Tensor<B, 4> = proj.forward(silu(temb.clone())).unsqueeze_dims(&[2, 3]);
            h = h + t;
        }
        let h = self.conv2.forward(silu(self.norm2.forward(h)));
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward(x),
            None => x,
        };
        shortcut + h
    }
}

/// RMS norm: `w · x / √(mean(x²) + eps)`, no mean subtraction, no bias (transformers
/// `T5LayerNorm`, diffusers `RMSNorm` with an elementwise weight).
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    weight: Param<Tensor<B, 1>>,
    #[module(skip)]
    eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    pub fn load(w: &Weights<B>, name: &str, dim: usize, eps: f64) -> Result<Self, Error> {
        Ok(Self {
            weight: Param::from_tensor(w.tensor(name, [dim])?),
            eps,
        })
    }

    /// x: [..., D] → same shape. In half precision the statistics are taken in f32 and the
    /// result cast back before the weight, as diffusers `RMSNorm` and transformers
    /// `T5LayerNorm` do.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let dtype = x.dtype();
        let x = x.cast(FloatDType::F32);
        let variance = x.clone().powi_scalar(2).mean_dim(D - 1);
        let x = (x * (variance + self.eps).sqrt().recip()).cast(dtype);
        x * self.weight.val().unsqueeze()
    }
}

/// The most negative finite value of a float type (`torch.finfo(dtype).min`), for additive
/// masks.
pub fn finite_min(dtype: DType) -> f32 {
    match dtype {
        DType::BF16 => half::bf16::MIN.to_f32(),
        DType::F16 => half::f16::MIN.to_f32(),
        _ => f32::MIN,
    }
}

/// LayerNorm over the last dimension without affine parameters (`elementwise_affine=False`),
/// biased variance as PyTorch, which also computes it in f32 for half-precision inputs.
pub fn layer_norm<B: Backend, const D: usize>(x: Tensor<B, D>, eps: f64) -> Tensor<B, D> {
    let dtype = x.dtype();
    let x = x.cast(FloatDType::F32);
    let mean = x.clone().mean_dim(D - 1);
    let centered = x - mean;
    let variance = centered.clone().powi_scalar(2).mean_dim(D - 1);
    (centered * (variance + eps).sqrt().recip()).cast(dtype)
}

/// Nearest-neighbour ×2 (or to a given size) then conv3×3 (diffusers `Upsample2D`).
#[derive(Module, Debug)]
pub struct Upsample2D<B: Backend> {
    conv: Conv2d<B>,
}

impl<B: Backend> Upsample2D<B> {
    pub fn load(w: &Weights<B>, channels: usize) -> Result<Self, Error> {
        Ok(Self {
            conv: w.conv2d("conv", channels, channels, 3, 1, 1)?,
        })
    }

    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [_, _, h, w] = x.dims();
        self.forward_to(x, [h * 2, w * 2])
    }

    /// Upsamples to `size` (`F.interpolate(size=output_size, mode="nearest")`, as diffusers'
    /// UNet does when a side is not a multiple of 2^upsamplers).
    pub fn forward_to(&self, x: Tensor<B, 4>, size: [usize; 2]) -> Tensor<B, 4> {
        let up = interpolate(x, size, InterpolateOptions::new(InterpolateMode::Nearest));
        self.conv.forward(up)
    }
}

/// Scaled dot-product attention, q/k/v [B, H, L, Dh], with the inputs laid out as burn's
/// GPU flash kernels read them; every network calls attention through here.
///
/// burn 0.21 runs attention on CUDA and wgpu with cubek-attention 0.2's flash kernels when
/// autotune picks them (always once fusion is on). Those kernels read each head's query rows
/// as if dense (`QueryReader::get_tile`: a row stride of Dh), and offset every input by
/// (batch·H + head)·stride(1) (`AttentionGlobalLayout::new`). A split-heads view
/// ([B, L, H, Dh] swapped, row stride H·Dh) or a mask of shape [B, 1, L, L] therefore reads
/// other rows: on lavapipe that moved SDXL's image by up to 33/255 (issue #14). So q, k and v
/// go through [B, H, L·Dh], which copies a strided view into a dense one (and is free for a
/// dense one), and the mask gets its full [B, H, Lq, Lk] shape, dense across the batch.
pub fn sdpa<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: Option<Tensor<B, 4, Bool>>,
    bias: Option<Tensor<B, 4>>,
    options: AttentionModuleOptions,
) -> Tensor<B, 4> {
    // burn-cubecl sends these to its materialised-scores attention, which reads any layout
    // (`ops/module.rs` `attention`); the copies below would be wasted (T5's bias).
    if bias.is_some() || options.scale.is_some() || options.softcap.is_some() {
        return attention(q, k, v, mask, bias, options);
    }
    let [b, h, lq, _] = q.dims();
    let lk = k.dims()[2];
    let dense = |t: Tensor<B, 4>| {
        let [b, h, l, d] = t.dims();
        t.reshape([b, h, l * d]).reshape([b, h, l, d])
    };
    // Broadcast over heads (stride 0) reads right within one batch row; merging batch and
    // heads copies it whenever the batch has more than one row.
    let mask = mask.map(|m| {
        m.expand([b, h, lq, lk])
            .reshape([b * h, lq, lk])
            .reshape([b, h, lq, lk])
    });
    attention(dense(q), dense(k), dense(v), mask, bias, options)
}

/// Multi-head scaled dot-product attention on [B, L, D] tensors (diffusers `Attention` with
/// `AttnProcessor2_0`; transformers `CLIPAttention`): project, split heads, SDPA with
/// scale 1/√head_dim, merge heads, project out.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    to_q: Linear<B>,
    to_k: Linear<B>,
    to_v: Linear<B>,
    to_out: Linear<B>,
    heads: usize,
}

impl<B: Backend> Attention<B> {
    pub fn new(
        to_q: Linear<B>,
        to_k: Linear<B>,
        to_v: Linear<B>,
        to_out: Linear<B>,
        heads: usize,
    ) -> Self {
        Self {
            to_q,
            to_k,
            to_v,
            to_out,
            heads,
        }
    }

    /// x: [B, Lq, D], context: [B, Lk, Dc] (self-attention when `None`) → [B, Lq, D].
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        context: Option<Tensor<B, 3>>,
        causal: bool,
    ) -> Tensor<B, 3> {
        let context = context.unwrap_or_else(|| x.clone());
        let q = self.split_heads(self.to_q.forward(x));
        let k = self.split_heads(self.to_k.forward(context.clone()));
        let v = self.split_heads(self.to_v.forward(context));
        let options = AttentionModuleOptions {
            is_causal: causal,
            ..Default::default()
        };
        let out = sdpa(q, k, v, None, None, options);
        let [b, h, l, d] = out.dims();
        self.to_out
            .forward(out.swap_dims(1, 2).reshape([b, l, h * d]))
    }

    /// [B, L, H·Dh] → [B, H, L, Dh]
    fn split_heads(&self, x: Tensor<B, 3>) -> Tensor<B, 4> {
        let [b, l, d] = x.dims();
        x.reshape([b, l, self.heads, d / self.heads])
            .swap_dims(1, 2)
    }
}

/// Sinusoidal embedding of `timesteps`, as diffusers `get_timestep_embedding` computes it in
/// float32: `exp(-ln(10000)·i / (half - shift))`, `[sin, cos]`, swapped to `[cos, sin]` when
/// `flip_sin_to_cos`. Returns [N, dim].
pub fn timestep_embedding<B: Backend>(
    timesteps: &[f32],
    dim: usize,
    flip_sin_to_cos: bool,
    freq_shift: f32,
    device: &B::Device,
) -> Tensor<B, 2> {
    let half = dim / 2;
    let log_max_period = -(10000f64.ln() as f32);
    let freqs: Vec<f32> = (0..half)
        .map(|i| (log_max_period * i as f32 / (half as f32 - freq_shift)).exp())
        .collect();
    let mut values = Vec::with_capacity(timesteps.len() * dim);
    for &t in timesteps {
        let args = freqs.iter().map(|f| t * f);
        let (sin, cos): (Vec<f32>, Vec<f32>) = args.map(|a| (a.sin(), a.cos())).unzip();
        if flip_sin_to_cos {
            values.extend(cos.iter().chain(&sin));
        } else {
            values.extend(sin.iter().chain(&cos));
        }
        values.extend(std::iter::repeat_n(0.0, dim - 2 * half));
    }
    Tensor::from_data(TensorData::new(values, [timesteps.len(), dim]), device)
}
