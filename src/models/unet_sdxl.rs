//! The SDXL UNet (diffusers `UNet2DConditionModel` with `addition_embed_type="text_time"`).
//!
//! Reference: diffusers `models/unets/unet_2d_condition.py`, `unet_2d_blocks.py`
//! (`CrossAttnDownBlock2D`, `UNetMidBlock2DCrossAttn`, `CrossAttnUpBlock2D`),
//! `transformers/transformer_2d.py`, `attention.py` (`BasicTransformerBlock`, GEGLU).
//! Single-file checkpoints are renamed to these names on load (`weights::unet_store`).

use super::linear::Linear;
use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, LayerNorm};
use burn::prelude::*;
use burn::tensor::activation::{gelu, silu};
use serde::Deserialize;

use super::blocks::{Attention, ResnetBlock2D, Upsample2D, timestep_embedding};
use crate::Error;
use crate::weights::{TensorStore, Weights};

/// Hyper-parameters. Shapes give most of them (as ComfyUI's `detect_unet_config` does); the
/// head counts, group count and time-id width come from config.json / the manifest.
#[derive(Clone, Debug)]
pub struct UNetConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    /// Transformer depth of each down level (0: a level without attention).
    pub down_depth: Vec<usize>,
    /// Transformer depth of each up level, in up-block order.
    pub up_depth: Vec<usize>,
    pub mid_depth: usize,
    /// Attention heads of each down level.
    pub heads: Vec<usize>,
    pub cross_attention_dim: usize,
    pub time_embed_dim: usize,
    pub addition_time_embed_dim: usize,
    pub projection_class_embeddings_input_dim: usize,
    pub norm_num_groups: usize,
    pub norm_eps: f64,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f32,
}

/// The config.json keys the loader reads. diffusers' `attention_head_dim` holds the number of
/// heads for this class (a historical quirk): `num_attention_heads = num_attention_heads or
/// attention_head_dim` (unet_2d_condition.py).
#[derive(Deserialize, Default)]
struct UNetOverrides {
    attention_head_dim: Option<PerLevel>,
    num_attention_heads: Option<PerLevel>,
    norm_num_groups: Option<usize>,
    norm_eps: Option<f64>,
    addition_time_embed_dim: Option<usize>,
    flip_sin_to_cos: Option<bool>,
    freq_shift: Option<f32>,
}

#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum PerLevel {
    One(usize),
    Each(Vec<usize>),
}

impl UNetConfig {
    /// `pooled_dim` is the width of the pooled text embedding the pipeline adds (1280 for
    /// SDXL's bigG): `projection_class_embeddings_input_dim = pooled_dim + 6 · time_id_dim`.
    pub fn detect(
        store: &TensorStore,
        overrides: &serde_json::Value,
        pooled_dim: usize,
    ) -> Result<Self, Error> {
        let o: UNetOverrides = serde_json::from_value(overrides.clone())
            .map_err(|e| Error::config(format!("unet architecture: {e}")))?;
        let shape = |name: &str| {
            store
                .shape(name)
                .ok_or_else(|| Error::weights(format!("not an SDXL UNet: missing `{name}`")))
        };
        let conv_in = shape("conv_in.weight")?;
        let conv_out = shape("conv_out.weight")?;
        let levels = store.count_indexed("down_blocks");
        if levels == 0 {
            return Err(Error::weights("not an SDXL UNet: no down blocks"));
        }
        let block_out_channels = (0..levels)
            .map(|i| shape(&format!("down_blocks.{i}.resnets.0.conv1.weight")).map(|s| s[0]))
            .collect::<Result<Vec<_>, _>>()?;
        let layers_per_block = store.count_indexed("down_blocks.0.resnets");
        let depth = |prefix: String| {
            store.count_indexed(&format!("{prefix}.attentions.0.transformer_blocks"))
        };
        let down_depth: Vec<usize> = (0..levels)
            .map(|i| depth(format!("down_blocks.{i}")))
            .collect();
        let up_depth: Vec<usize> = (0..levels)
            .map(|i| depth(format!("up_blocks.{i}")))
            .collect();
        let mid_depth = depth("mid_block".into());
        let attn_level = down_depth
            .iter()
            .position(|&d| d > 0)
            .ok_or_else(|| Error::weights("not an SDXL UNet: no cross-attention blocks"))?;
        let cross_attention_dim = shape(&format!(
            "down_blocks.{attn_level}.attentions.0.transformer_blocks.0.attn2.to_k.weight"
        ))?[1];
        let time_embed_dim = shape("time_embedding.linear_1.weight")?[0];
        let adm_in = shape("add_embedding.linear_1.weight")?[1];
        let addition_time_embed_dim = match o.addition_time_embed_dim {
            Some(d) => d,
            None if adm_in > pooled_dim && (adm_in - pooled_dim).is_multiple_of(6) => {
                (adm_in - pooled_dim) / 6
            }
            None => {
                return Err(Error::weights(format!(
                    "UNet expects {adm_in} added-conditioning channels, which does not fit a \
                     {pooled_dim}-wide pooled text embedding plus 6 time ids"
                )));
            }
        };
        let heads = match o.num_attention_heads.or(o.attention_head_dim) {
            Some(PerLevel::Each(v)) if v.len() == levels => v,
            Some(PerLevel::Each(v)) => {
                return Err(Error::config(format!(
                    "unet: {} head counts given for {levels} levels",
                    v.len()
                )));
            }
            Some(PerLevel::One(h)) => vec![h; levels],
            // SGM's SDXL config: num_head_channels = 64.
            None => block_out_channels.iter().map(|c| (c / 64).max(1)).collect(),
        };
        Ok(Self {
            in_channels: conv_in[1],
            out_channels: conv_out[0],
            block_out_channels,
            layers_per_block,
            down_depth,
            up_depth,
            mid_depth,
            heads,
            cross_attention_dim,
            time_embed_dim,
            addition_time_embed_dim,
            projection_class_embeddings_input_dim: adm_in,
            norm_num_groups: o.norm_num_groups.unwrap_or(32),
            norm_eps: o.norm_eps.unwrap_or(1e-5),
            flip_sin_to_cos: o.flip_sin_to_cos.unwrap_or(true),
            freq_shift: o.freq_shift.unwrap_or(0.0),
        })
    }
}

/// `BasicTransformerBlock`: self-attention, cross-attention, GEGLU feed-forward, each pre-norm
/// with a residual.
#[derive(Module, Debug)]
struct TransformerBlock<B: Backend> {
    norm1: LayerNorm<B>,
    attn1: Attention<B>,
    norm2: LayerNorm<B>,
    attn2: Attention<B>,
    norm3: LayerNorm<B>,
    ff_proj: Linear<B>,
    ff_out: Linear<B>,
}

impl<B: Backend> TransformerBlock<B> {
    fn load(w: &Weights<B>, dim: usize, context_dim: usize, heads: usize) -> Result<Self, Error> {
        let attention = |name: &str, kv_dim: usize| -> Result<Attention<B>, Error> {
            let a = w.pp(name);
            Ok(Attention::new(
                a.linear("to_q", dim, dim, false)?,
                a.linear("to_k", kv_dim, dim, false)?,
                a.linear("to_v", kv_dim, dim, false)?,
                a.linear("to_out.0", dim, dim, true)?,
                heads,
            ))
        };
        let (ff_proj, _, inner2) = w.linear_any("ff.net.0.proj", true)?;
        Ok(Self {
            norm1: w.layer_norm("norm1", dim, 1e-5)?,
            attn1: attention("attn1", dim)?,
            norm2: w.layer_norm("norm2", dim, 1e-5)?,
            attn2: attention("attn2", context_dim)?,
            norm3: w.layer_norm("norm3", dim, 1e-5)?,
            ff_proj,
            ff_out: w.linear("ff.net.2", inner2 / 2, dim, true)?,
        })
    }

    fn forward(&self, x: Tensor<B, 3>, context: &Tensor<B, 3>) -> Tensor<B, 3> {
        let x = self
            .attn1
            .forward(self.norm1.forward(x.clone()), None, false)
            + x;
        let x = self
            .attn2
            .forward(self.norm2.forward(x.clone()), Some(context.clone()), false)
            + x;
        // GEGLU (diffusers activations.py): hidden, gate = proj(x).chunk(2); hidden · gelu(gate)
        let h = self.ff_proj.forward(self.norm3.forward(x.clone()));
        let [hidden, gate] = <[Tensor<B, 3>; 2]>::try_from(h.chunk(2, 2)).expect("two chunks");
        self.ff_out.forward(hidden * gelu(gate)) + x
    }
}

/// `Transformer2DModel` with `use_linear_projection=True`: GroupNorm (eps 1e-6), flatten to
/// tokens, proj_in, transformer blocks, proj_out, back to a feature map, residual.
#[derive(Module, Debug)]
struct SpatialTransformer<B: Backend> {
    norm: GroupNorm<B>,
    proj_in: Linear<B>,
    blocks: Vec<TransformerBlock<B>>,
    proj_out: Linear<B>,
}

impl<B: Backend> SpatialTransformer<B> {
    fn load(
        w: &Weights<B>,
        channels: usize,
        depth: usize,
        heads: usize,
        cfg: &UNetConfig,
    ) -> Result<Self, Error> {
        Ok(Self {
            norm: w.group_norm("norm", cfg.norm_num_groups, channels, 1e-6)?,
            proj_in: w.linear("proj_in", channels, channels, true)?,
            blocks: (0..depth)
                .map(|i| {
                    TransformerBlock::load(
                        &w.pp("transformer_blocks").pp(i),
                        channels,
                        cfg.cross_attention_dim,
                        heads,
                    )
                })
                .collect::<Result<_, _>>()?,
            proj_out: w.linear("proj_out", channels, channels, true)?,
        })
    }

    fn forward(&self, x: Tensor<B, 4>, context: &Tensor<B, 3>) -> Tensor<B, 4> {
        let [b, c, h, w] = x.dims();
        let tokens = self
            .norm
            .forward(x.clone())
            .reshape([b, c, h * w])
            .swap_dims(1, 2);
        let mut tokens = self.proj_in.forward(tokens);
        for block in &self.blocks {
            tokens = block.forward(tokens, context);
        }
        let out = self
            .proj_out
            .forward(tokens)
            .swap_dims(1, 2)
            .reshape([b, c, h, w]);
        out + x
    }
}

/// One resnet, optionally followed by a spatial transformer: the repeating unit of every block.
#[derive(Module, Debug)]
struct Layer<B: Backend> {
    resnet: ResnetBlock2D<B>,
    attention: Option<SpatialTransformer<B>>,
}

impl<B: Backend> Layer<B> {
    fn forward(
        &self,
        x: Tensor<B, 4>,
        temb: &Tensor<B, 2>,
        context: &Tensor<B, 3>,
    ) -> Tensor<B, 4> {
        let x = self.resnet.forward(x, Some(temb));
        match &self.attention {
            Some(attn) => attn.forward(x, context),
            None => x,
        }
    }
}

#[derive(Module, Debug)]
struct DownBlock<B: Backend> {
    layers: Vec<Layer<B>>,
    downsample: Option<Conv2d<B>>,
}

#[derive(Module, Debug)]
struct UpBlock<B: Backend> {
    layers: Vec<Layer<B>>,
    upsample: Option<Upsample2D<B>>,
}

#[derive(Module, Debug)]
pub struct UNet<B: Backend> {
    time_linear_1: Linear<B>,
    time_linear_2: Linear<B>,
    add_linear_1: Linear<B>,
    add_linear_2: Linear<B>,
    conv_in: Conv2d<B>,
    down: Vec<DownBlock<B>>,
    mid_resnet_0: ResnetBlock2D<B>,
    mid_attention: SpatialTransformer<B>,
    mid_resnet_1: ResnetBlock2D<B>,
    up: Vec<UpBlock<B>>,
    norm_out: GroupNorm<B>,
    conv_out: Conv2d<B>,
    #[module(skip)]
    config: UNetConfig,
}

impl<B: Backend> UNet<B> {
    pub fn load(store: &TensorStore, cfg: &UNetConfig, device: &B::Device) -> Result<Self, Error> {
        let w = Weights::new(store, device);
        let ch = &cfg.block_out_channels;
        let levels = ch.len();
        let temb = cfg.time_embed_dim;
        let (groups, eps) = (cfg.norm_num_groups, cfg.norm_eps);
        let layer = |w: &Weights<B>,
                     i: usize,
                     c_in: usize,
                     c_out: usize,
                     depth: usize,
                     heads: usize| {
            let resnet =
                ResnetBlock2D::load(&w.pp("resnets").pp(i), c_in, c_out, Some(temb), groups, eps)?;
            let attention = if depth > 0 {
                Some(SpatialTransformer::load(
                    &w.pp("attentions").pp(i),
                    c_out,
                    depth,
                    heads,
                    cfg,
                )?)
            } else {
                None
            };
            Ok::<_, Error>(Layer { resnet, attention })
        };

        // Down path; remember the channels of every skip connection it leaves.
        let mut skip_channels = vec![ch[0]];
        let mut down = Vec::with_capacity(levels);
        let mut c_prev = ch[0];
        for (level, &c) in ch.iter().enumerate() {
            let b = w.pp("down_blocks").pp(level);
            let mut layers = Vec::new();
            for i in 0..cfg.layers_per_block {
                layers.push(layer(
                    &b,
                    i,
                    if i == 0 { c_prev } else { c },
                    c,
                    cfg.down_depth[level],
                    cfg.heads[level],
                )?);
                skip_channels.push(c);
            }
            let downsample = if level + 1 < levels {
                skip_channels.push(c);
                Some(b.pp("downsamplers.0").conv2d("conv", c, c, 3, 2, 1)?)
            } else {
                None
            };
            down.push(DownBlock { layers, downsample });
            c_prev = c;
        }

        let m = w.pp("mid_block");
        let c_mid = ch[levels - 1];
        let mid_resnet_0 =
            ResnetBlock2D::load(&m.pp("resnets.0"), c_mid, c_mid, Some(temb), groups, eps)?;
        let mid_attention = SpatialTransformer::load(
            &m.pp("attentions.0"),
            c_mid,
            cfg.mid_depth,
            cfg.heads[levels - 1],
            cfg,
        )?;
        let mid_resnet_1 =
            ResnetBlock2D::load(&m.pp("resnets.1"), c_mid, c_mid, Some(temb), groups, eps)?;

        // Up path: level i mirrors down level (levels-1-i), with one more layer per block, each
        // taking a skip connection from the stack.
        let mut up = Vec::with_capacity(levels);
        let mut c_prev = c_mid;
        for i in 0..levels {
            let c = ch[levels - 1 - i];
            let b = w.pp("up_blocks").pp(i);
            let mut layers = Vec::new();
            for j in 0..=cfg.layers_per_block {
                let skip = skip_channels.pop().expect("one skip per up layer");
                let c_in = if j == 0 { c_prev } else { c } + skip;
                layers.push(layer(
                    &b,
                    j,
                    c_in,
                    c,
                    cfg.up_depth[i],
                    cfg.heads[levels - 1 - i],
                )?);
            }
            let upsample = if i + 1 < levels {
                Some(Upsample2D::load(&b.pp("upsamplers.0"), c)?)
            } else {
                None
            };
            up.push(UpBlock { layers, upsample });
            c_prev = c;
        }

        Ok(Self {
            time_linear_1: w.linear("time_embedding.linear_1", ch[0], temb, true)?,
            time_linear_2: w.linear("time_embedding.linear_2", temb, temb, true)?,
            add_linear_1: w.linear(
                "add_embedding.linear_1",
                cfg.projection_class_embeddings_input_dim,
                temb,
                true,
            )?,
            add_linear_2: w.linear("add_embedding.linear_2", temb, temb, true)?,
            conv_in: w.conv2d("conv_in", cfg.in_channels, ch[0], 3, 1, 1)?,
            down,
            mid_resnet_0,
            mid_attention,
            mid_resnet_1,
            up,
            norm_out: w.group_norm("conv_norm_out", groups, ch[0], eps)?,
            conv_out: w.conv2d("conv_out", ch[0], cfg.out_channels, 3, 1, 1)?,
            config: cfg.clone(),
        })
    }

    /// sample: [B, C, H/8, W/8]; timesteps: one t per batch row; context: [B, L, ctx];
    /// text_embeds: pooled [B, P]; time_ids: [B][6] (original h, w, crop top, left, target h, w).
    /// Returns the noise prediction [B, C, H/8, W/8].
    pub fn forward(
        &self,
        sample: Tensor<B, 4>,
        timesteps: &[f32],
        context: &Tensor<B, 3>,
        text_embeds: Tensor<B, 2>,
        time_ids: &[[f32; 6]],
    ) -> Tensor<B, 4> {
        let cfg = &self.config;
        let device = sample.device();
        let batch = sample.dims()[0];

        // Time embedding, plus the "text_time" added conditioning (unet_2d_condition.py
        // get_aug_embed): embed each of the 6 time ids, concatenate after the pooled text.
        let t = timestep_embedding::<B>(
            timesteps,
            cfg.block_out_channels[0],
            cfg.flip_sin_to_cos,
            cfg.freq_shift,
            &device,
        );
        let emb = self
            .time_linear_2
            .forward(silu(self.time_linear_1.forward(t)));
        let ids: Vec<f32> = time_ids.iter().flatten().copied().collect();
        let time_embeds = timestep_embedding::<B>(
            &ids,
            cfg.addition_time_embed_dim,
            cfg.flip_sin_to_cos,
            cfg.freq_shift,
            &device,
        )
        .reshape([batch, 6 * cfg.addition_time_embed_dim]);
        let add = Tensor::cat(vec![text_embeds, time_embeds], 1);
        let emb = emb
            + self
                .add_linear_2
                .forward(silu(self.add_linear_1.forward(add)));

        let mut x = self.conv_in.forward(sample);
        let mut skips = vec![x.clone()];
        for block in &self.down {
            for layer in &block.layers {
                x = layer.forward(x, &emb, context);
                skips.push(x.clone());
            }
            if let Some(down) = &block.downsample {
                x = down.forward(x);
                skips.push(x.clone());
            }
        }

        x = self.mid_resnet_0.forward(x, Some(&emb));
        x = self.mid_attention.forward(x, context);
        x = self.mid_resnet_1.forward(x, Some(&emb));

        for block in &self.up {
            for layer in &block.layers {
                let skip = skips.pop().expect("one skip per up layer");
                x = layer.forward(Tensor::cat(vec![x, skip], 1), &emb, context);
            }
            if let Some(up) = &block.upsample {
                // To the size of the skip it meets next: ×2, or what the downsampling rounded
                // (diffusers `UNet2DConditionModel.forward`, `forward_upsample_size`), so any
                // multiple of 8 works.
                let [_, _, h, w] = skips.last().expect("a skip below each upsampler").dims();
                x = up.forward_to(x, [h, w]);
            }
        }
        self.conv_out.forward(silu(self.norm_out.forward(x)))
    }
}
