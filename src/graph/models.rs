//! What a graph's MODEL, CLIP and VAE values hold: the networks of the pipelines (one copy of
//! each network call), with what ComfyUI adds around them (latent formats, text encoding).

use std::sync::Arc;

use burn::prelude::*;
use burn::tensor::TensorData;

use super::ksampler::CondEntry;
use crate::Error;
use crate::models::clip::ClipTextModel;
use crate::models::qwen3::Qwen3Encoder;
use crate::models::t5::T5Encoder;
use crate::models::vae::{Decoder, Encoder};
use crate::models::zimage::ZImageTransformer;
use crate::pipelines::SdxlPipeline;
use crate::pipelines::flux::Denoiser as FluxDenoiser;
use crate::pipelines::zimage::encode_caption;
use crate::text::{ClipTokenizer, Qwen3Tokenizer, T5Tokenizer, comfy_token_weights};

/// ComfyUI's `latent_format`: channels, and `process_in(z) = (z − shift)·scale`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LatentFormat {
    pub channels: usize,
    pub scale: f32,
    pub shift: f32,
}

pub const SDXL_LATENT: LatentFormat = LatentFormat {
    channels: 4,
    scale: 0.13025,
    shift: 0.0,
};

/// Flux, Chroma and Z-Image share the 16-channel Flux VAE.
pub const FLUX_LATENT: LatentFormat = LatentFormat {
    channels: 16,
    scale: 0.3611,
    shift: 0.1159,
};

/// The denoiser of a MODEL value.
pub enum GraphModel<B: Backend> {
    Sdxl(Arc<SdxlPipeline<B>>),
    Flux {
        denoiser: Arc<FluxDenoiser<B>>,
        rope_axes: Vec<usize>,
    },
    ZImage(Arc<ZImageTransformer<B>>),
}

impl<B: Backend> GraphModel<B> {
    pub fn latent_format(&self) -> LatentFormat {
        match self {
            GraphModel::Sdxl(_) => SDXL_LATENT,
            GraphModel::Flux { .. } | GraphModel::ZImage(_) => FLUX_LATENT,
        }
    }
}

/// How a T5 prompt is laid out (ComfyUI's `T5XXLTokenizer` variants).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum T5Layout {
    /// `flux.T5XXLTokenizer`: padded with 0 to at least 256 tokens; the empty sequence for
    /// weights is `</s>` then pads.
    Flux,
    /// `pixart_t5.T5XXLTokenizer` (Chroma): no padding; the empty sequence is all pads.
    Chroma,
}

/// The text encoders of a CLIP value (held in an `Arc`, so the variants' sizes matter not).
#[allow(clippy::large_enum_variant)]
pub enum GraphClip<B: Backend> {
    Sdxl(Arc<SdxlPipeline<B>>),
    T5 {
        /// CLIP-L for Flux's pooled vector.
        clip_l: Option<(ClipTokenizer, ClipTextModel<B>)>,
        tokenizer: T5Tokenizer,
        t5: T5Encoder<B>,
        layout: T5Layout,
        device: B::Device,
    },
    /// Z-Image's Qwen3 (CLIPLoader type lumina2).
    Qwen3 {
        tokenizer: Qwen3Tokenizer,
        encoder: Qwen3Encoder<B>,
        device: B::Device,
    },
}

impl<B: Backend> GraphClip<B> {
    /// CLIPTextEncode.
    pub fn encode(&self, text: &str) -> Result<CondEntry<B>, Error> {
        match self {
            GraphClip::Sdxl(pipeline) => {
                let (context, pooled) = pipeline.comfy_encode(text)?;
                Ok(CondEntry {
                    context,
                    pooled: Some(pooled),
                    guidance: None,
                })
            }
            GraphClip::T5 {
                clip_l,
                tokenizer,
                t5,
                layout,
                device,
            } => {
                let context = encode_t5(tokenizer, t5, *layout, text, device)?;
                let pooled = match clip_l {
                    Some((tokenizer, clip)) => {
                        // Only the first chunk's pooled output is used (no projection).
                        let chunk = tokenizer
                            .comfy_chunks(text, None)?
                            .into_iter()
                            .next()
                            .expect("one chunk");
                        let ids: Vec<i64> = chunk.ids.iter().map(|&i| i as i64).collect();
                        let len = ids.len();
                        let ids =
                            Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, len]), device);
                        Some(clip.forward(ids, &[chunk.eos_position]).pooled)
                    }
                    None => None,
                };
                Ok(CondEntry {
                    context,
                    pooled,
                    guidance: None,
                })
            }
            // `z_image.py`: the chat template, weights disabled, no truncation.
            GraphClip::Qwen3 {
                tokenizer,
                encoder,
                device,
            } => Ok(CondEntry {
                context: encode_caption(tokenizer, encoder, text, usize::MAX, device)?
                    .unsqueeze::<3>(),
                pooled: None,
                guidance: None,
            }),
        }
    }
}

/// ComfyUI's T5 encoding: each weighted segment tokenized alone, `</s>` at the end, padded
/// per `layout`, no attention mask; weights as `(z − z_empty)·w + z_empty`. [1, T, D]
fn encode_t5<B: Backend>(
    tokenizer: &T5Tokenizer,
    t5: &T5Encoder<B>,
    layout: T5Layout,
    text: &str,
    device: &B::Device,
) -> Result<Tensor<B, 3>, Error> {
    const EOS: u32 = 1;
    const PAD: u32 = 0;
    let mut tokens: Vec<(u32, f32)> = Vec::new();
    for (segment, weight) in comfy_token_weights(text) {
        if segment.is_empty() {
            continue;
        }
        tokens.extend(
            tokenizer
                .segment_ids(&segment)?
                .into_iter()
                .map(|id| (id, weight as f32)),
        );
    }
    tokens.push((EOS, 1.0));
    if layout == T5Layout::Flux && tokens.len() < 256 {
        tokens.resize(256, (PAD, 1.0));
    }
    let len = tokens.len();
    let run = |ids: Vec<u32>| {
        let ids: Vec<i64> = ids.into_iter().map(|i| i as i64).collect();
        t5.forward(
            Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, len]), device),
            None,
        )
    };
    let z = run(tokens.iter().map(|t| t.0).collect());
    if tokens.iter().all(|t| t.1 == 1.0) {
        return Ok(z);
    }
    let empty: Vec<u32> = match layout {
        T5Layout::Flux => std::iter::once(EOS)
            .chain(std::iter::repeat_n(PAD, len - 1))
            .collect(),
        T5Layout::Chroma => vec![PAD; len],
    };
    let z_empty = run(empty);
    let weights: Vec<f32> = tokens.iter().map(|t| t.1).collect();
    let weights = Tensor::<B, 3>::from_data(TensorData::new(weights, [1, len, 1]), device);
    Ok((z - z_empty.clone()) * weights + z_empty)
}

/// The VAE of a VAE value (held in an `Arc`, so the variants' sizes matter not).
#[allow(clippy::large_enum_variant)]
pub enum GraphVae<B: Backend> {
    Sdxl(Arc<SdxlPipeline<B>>),
    Flux {
        decoder: Decoder<B>,
        encoder: Encoder<B>,
        device: B::Device,
    },
}

impl<B: Backend> GraphVae<B> {
    pub fn device(&self) -> B::Device {
        match self {
            GraphVae::Sdxl(p) => p.device().clone(),
            GraphVae::Flux { device, .. } => device.clone(),
        }
    }

    /// VAE-space latents → the decoder's raw output (about [-1, 1]).
    pub fn decode_raw(&self, latents: Tensor<B, 4>) -> Tensor<B, 4> {
        match self {
            GraphVae::Sdxl(p) => p.decode_raw(latents),
            GraphVae::Flux { decoder, .. } => decoder.forward(latents),
        }
    }

    /// image in [-1, 1] → the posterior mean in VAE space.
    pub fn encode_image(&self, image: Tensor<B, 4>) -> Tensor<B, 4> {
        match self {
            GraphVae::Sdxl(p) => p.encode_image(image),
            GraphVae::Flux { encoder, .. } => encoder.forward(image),
        }
    }
}
