//! The KL autoencoder (diffusers `AutoencoderKL`; LDM `first_stage_model`; BFL `ae.safetensors`).
//!
//! Reference: diffusers `models/autoencoders/autoencoder_kl.py`, `vae.py` (`Encoder`,
//! `Decoder`), `unet_2d_blocks.py` (`UNetMidBlock2D`, `DownEncoderBlock2D`,
//! `UpDecoderBlock2D`). SDXL's VAE and the Flux VAE differ only in widths, latent channels,
//! quant convs and the scaling factor / shift.

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::silu;
use serde::Deserialize;

use super::blocks::{Attention, ResnetBlock2D, Upsample2D};
use crate::Error;
use crate::weights::{TensorStore, Weights};

#[derive(Clone, Debug)]
pub struct VaeConfig {
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub latent_channels: usize,
    pub norm_num_groups: usize,
    pub scaling_factor: f32,
    pub shift_factor: f32,
}

#[derive(Deserialize, Default)]
struct VaeOverrides {
    norm_num_groups: Option<usize>,
    scaling_factor: Option<f32>,
    shift_factor: Option<f32>,
}

impl VaeConfig {
    /// Widths from the weights; groups and latent scaling from config.json / the manifest, with
    /// the family's defaults (`default_scaling`, `default_shift`).
    pub fn detect(
        store: &TensorStore,
        overrides: &serde_json::Value,
        default_scaling: f32,
        default_shift: f32,
    ) -> Result<Self, Error> {
        let o: VaeOverrides = serde_json::from_value(overrides.clone())
            .map_err(|e| Error::config(format!("vae architecture: {e}")))?;
        let shape = |name: &str| {
            store
                .shape(name)
                .ok_or_else(|| Error::weights(format!("not a KL autoencoder: missing `{name}`")))
        };
        let levels = store.count_indexed("decoder.up_blocks");
        if levels == 0 {
            return Err(Error::weights("not a KL autoencoder: no decoder up blocks"));
        }
        // up_blocks.i has the width of block_out_channels[levels-1-i].
        let block_out_channels = (0..levels)
            .rev()
            .map(|i| shape(&format!("decoder.up_blocks.{i}.resnets.0.conv2.weight")).map(|s| s[0]))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            block_out_channels,
            layers_per_block: store.count_indexed("decoder.up_blocks.0.resnets") - 1,
            latent_channels: shape("decoder.conv_in.weight")?[1],
            norm_num_groups: o.norm_num_groups.unwrap_or(32),
            scaling_factor: o.scaling_factor.unwrap_or(default_scaling),
            shift_factor: o.shift_factor.unwrap_or(default_shift),
        })
    }
}

const EPS: f64 = 1e-6;

/// `count` resnets of a block (`resnets.0..count`), the first taking `c_in` channels.
fn load_resnets<B: Backend>(
    w: &Weights<B>,
    count: usize,
    c_in: usize,
    c_out: usize,
    groups: usize,
) -> Result<Vec<ResnetBlock2D<B>>, Error> {
    (0..count)
        .map(|j| {
            let c = if j == 0 { c_in } else { c_out };
            ResnetBlock2D::load(&w.pp("resnets").pp(j), c, c_out, None, groups, EPS)
        })
        .collect()
}

/// `UNetMidBlock2D`: resnet, single-head self-attention over all pixels, resnet.
#[derive(Module, Debug)]
struct MidBlock<B: Backend> {
    resnet_0: ResnetBlock2D<B>,
    norm: GroupNorm<B>,
    attention: Attention<B>,
    resnet_1: ResnetBlock2D<B>,
}

impl<B: Backend> MidBlock<B> {
    fn load(w: &Weights<B>, c: usize, groups: usize) -> Result<Self, Error> {
        let a = w.pp("attentions.0");
        Ok(Self {
            resnet_0: ResnetBlock2D::load(&w.pp("resnets.0"), c, c, None, groups, EPS)?,
            norm: a.group_norm("group_norm", groups, c, EPS)?,
            attention: Attention::new(
                a.linear("to_q", c, c, true)?,
                a.linear("to_k", c, c, true)?,
                a.linear("to_v", c, c, true)?,
                a.linear("to_out.0", c, c, true)?,
                1,
            ),
            resnet_1: ResnetBlock2D::load(&w.pp("resnets.1"), c, c, None, groups, EPS)?,
        })
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let x = self.resnet_0.forward(x, None);
        let [b, c, h, w] = x.dims();
        let tokens = self
            .norm
            .forward(x.clone())
            .reshape([b, c, h * w])
            .swap_dims(1, 2);
        let attended = self
            .attention
            .forward(tokens, None, false)
            .swap_dims(1, 2)
            .reshape([b, c, h, w]);
        self.resnet_1.forward(attended + x, None)
    }
}

#[derive(Module, Debug)]
struct DecoderBlock<B: Backend> {
    resnets: Vec<ResnetBlock2D<B>>,
    upsample: Option<Upsample2D<B>>,
}

#[derive(Module, Debug)]
struct EncoderBlock<B: Backend> {
    resnets: Vec<ResnetBlock2D<B>>,
    downsample: Option<Conv2d<B>>,
}

#[derive(Module, Debug)]
pub struct Decoder<B: Backend> {
    post_quant_conv: Option<Conv2d<B>>,
    conv_in: Conv2d<B>,
    mid: MidBlock<B>,
    up: Vec<DecoderBlock<B>>,
    norm_out: GroupNorm<B>,
    conv_out: Conv2d<B>,
    #[module(skip)]
    scaling_factor: f32,
    #[module(skip)]
    shift_factor: f32,
}

impl<B: Backend> Decoder<B> {
    pub fn load(store: &TensorStore, cfg: &VaeConfig, device: &B::Device) -> Result<Self, Error> {
        let root = Weights::new(store, device);
        let w = root.pp("decoder");
        let ch = &cfg.block_out_channels;
        let groups = cfg.norm_num_groups;
        let latent = cfg.latent_channels;
        let top = *ch.last().expect("at least one level");
        let post_quant_conv = if root.contains("post_quant_conv.weight") {
            Some(root.conv2d("post_quant_conv", latent, latent, 1, 1, 0)?)
        } else {
            None
        };
        let mut up = Vec::new();
        let mut c_prev = top;
        for i in 0..ch.len() {
            let c = ch[ch.len() - 1 - i];
            let b = w.pp("up_blocks").pp(i);
            let resnets = load_resnets(&b, cfg.layers_per_block + 1, c_prev, c, groups)?;
            let upsample = if i + 1 < ch.len() {
                Some(Upsample2D::load(&b.pp("upsamplers.0"), c)?)
            } else {
                None
            };
            up.push(DecoderBlock { resnets, upsample });
            c_prev = c;
        }
        Ok(Self {
            post_quant_conv,
            conv_in: w.conv2d("conv_in", latent, top, 3, 1, 1)?,
            mid: MidBlock::load(&w.pp("mid_block"), top, groups)?,
            up,
            norm_out: w.group_norm("conv_norm_out", groups, ch[0], EPS)?,
            conv_out: w.conv2d("conv_out", ch[0], 3, 3, 1, 1)?,
            scaling_factor: cfg.scaling_factor,
            shift_factor: cfg.shift_factor,
        })
    }

    /// Latents as the sampler leaves them [B, C, h, w] → `latents / scaling + shift`, the
    /// tensor diffusers' pipelines give `vae.decode`.
    pub fn unscale(&self, latents: Tensor<B, 4>) -> Tensor<B, 4> {
        latents / self.scaling_factor + self.shift_factor
    }

    /// z: unscaled latents [B, C, h, w] → image [B, 3, 8h, 8w] in about [-1, 1] (not clamped).
    pub fn forward(&self, z: Tensor<B, 4>) -> Tensor<B, 4> {
        let z = match &self.post_quant_conv {
            Some(conv) => conv.forward(z),
            None => z,
        };
        let mut x = self.mid.forward(self.conv_in.forward(z));
        for block in &self.up {
            for resnet in &block.resnets {
                x = resnet.forward(x, None);
            }
            if let Some(up) = &block.upsample {
                x = up.forward(x);
            }
        }
        self.conv_out.forward(silu(self.norm_out.forward(x)))
    }
}

#[derive(Module, Debug)]
pub struct Encoder<B: Backend> {
    conv_in: Conv2d<B>,
    down: Vec<EncoderBlock<B>>,
    mid: MidBlock<B>,
    norm_out: GroupNorm<B>,
    conv_out: Conv2d<B>,
    quant_conv: Option<Conv2d<B>>,
    #[module(skip)]
    scaling_factor: f32,
    #[module(skip)]
    shift_factor: f32,
}

impl<B: Backend> Encoder<B> {
    pub fn load(store: &TensorStore, cfg: &VaeConfig, device: &B::Device) -> Result<Self, Error> {
        let root = Weights::new(store, device);
        let w = root.pp("encoder");
        let ch = &cfg.block_out_channels;
        let groups = cfg.norm_num_groups;
        let moments = 2 * cfg.latent_channels;
        let mut down = Vec::new();
        let mut c_prev = ch[0];
        for (i, &c) in ch.iter().enumerate() {
            let b = w.pp("down_blocks").pp(i);
            let resnets = load_resnets(&b, cfg.layers_per_block, c_prev, c, groups)?;
            let downsample = if i + 1 < ch.len() {
                // diffusers Downsample2D(padding=0): pad (0, 1, 0, 1) then a stride-2 conv.
                let mut conv = b.pp("downsamplers.0").conv2d("conv", c, c, 3, 2, 0)?;
                conv.padding = PaddingConfig2d::Explicit(0, 0, 1, 1);
                Some(conv)
            } else {
                None
            };
            down.push(EncoderBlock {
                resnets,
                downsample,
            });
            c_prev = c;
        }
        let top = *ch.last().expect("at least one level");
        let quant_conv = if root.contains("quant_conv.weight") {
            Some(root.conv2d("quant_conv", moments, moments, 1, 1, 0)?)
        } else {
            None
        };
        Ok(Self {
            conv_in: w.conv2d("conv_in", 3, ch[0], 3, 1, 1)?,
            down,
            mid: MidBlock::load(&w.pp("mid_block"), top, groups)?,
            norm_out: w.group_norm("conv_norm_out", groups, top, EPS)?,
            conv_out: w.conv2d("conv_out", top, moments, 3, 1, 1)?,
            quant_conv,
            scaling_factor: cfg.scaling_factor,
            shift_factor: cfg.shift_factor,
        })
    }

    /// The latent distribution's mean → latents as the sampler works on them:
    /// `(mean - shift) · scaling`.
    pub fn scale(&self, mean: Tensor<B, 4>) -> Tensor<B, 4> {
        (mean - self.shift_factor) * self.scaling_factor
    }

    /// image [B, 3, H, W] in [-1, 1] → the mean of the latent distribution [B, C, H/8, W/8]
    /// (diffusers `encode(x).latent_dist.mean`).
    pub fn forward(&self, image: Tensor<B, 4>) -> Tensor<B, 4> {
        let moments = self.moments(image);
        let latent = moments.dims()[1] / 2;
        moments.narrow(1, 0, latent)
    }

    /// image [B, 3, H, W] in [-1, 1] → the latent distribution's (mean, log variance), each
    /// [B, C, H/8, W/8]; the log variance clamped to [−30, 20] as diffusers'
    /// `DiagonalGaussianDistribution` stores it.
    pub fn posterior(&self, image: Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let moments = self.moments(image);
        let latent = moments.dims()[1] / 2;
        (
            moments.clone().narrow(1, 0, latent),
            moments.narrow(1, latent, latent).clamp(-30.0, 20.0),
        )
    }

    /// The encoder's output [B, 2C, H/8, W/8]: means, then log variances.
    fn moments(&self, image: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut x = self.conv_in.forward(image);
        for block in &self.down {
            for resnet in &block.resnets {
                x = resnet.forward(x, None);
            }
            if let Some(down) = &block.downsample {
                x = down.forward(x);
            }
        }
        let x = self
            .conv_out
            .forward(silu(self.norm_out.forward(self.mid.forward(x))));
        match &self.quant_conv {
            Some(conv) => conv.forward(x),
            None => x,
        }
    }
}
