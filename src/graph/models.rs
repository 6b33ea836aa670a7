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
use crate::pipelines::sdxl::{ComfyClip, clip_vectors_fit};
use crate::pipelines::zimage::encode_caption;
use crate::text::{
    ClipTokenizer, Embeddings, Qwen3Tokenizer, T5Tokenizer, Word, comfy_token_weights, comfy_words,
};

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

/// T5 padding (`SDTokenizer` `min_padding`, `min_length`; T5TokenizerOptions sets both).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct T5Padding {
    /// Pads after `</s>`.
    pub min_padding: usize,
    /// Pads up to this many tokens.
    pub min_length: usize,
}

impl T5Layout {
    pub fn padding(self) -> T5Padding {
        T5Padding {
            min_padding: 0,
            min_length: match self {
                T5Layout::Flux => 256,
                T5Layout::Chroma => 1,
            },
        }
    }
}

/// SDXL's size conditioning (CLIPTextEncodeSDXL's `width`, `height`, `crop_w`, `crop_h`,
/// `target_width`, `target_height`; `SDXL.encode_adm`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SdxlSize {
    pub width: f32,
    pub height: f32,
    pub crop_w: f32,
    pub crop_h: f32,
    pub target_width: f32,
    pub target_height: f32,
}

impl SdxlSize {
    /// The six ids in the order `encode_adm` embeds them.
    pub fn time_ids(&self) -> [f32; 6] {
        [
            self.height,
            self.width,
            self.crop_h,
            self.crop_w,
            self.target_height,
            self.target_width,
        ]
    }
}

/// DualCLIPLoader's SDXL encoders, with CLIP-L's tokenizer serving both.
pub struct SdxlClipFiles<B: Backend> {
    pub tokenizer: ClipTokenizer,
    pub clip_l: ClipTextModel<B>,
    pub clip_g: ClipTextModel<B>,
    pub device: B::Device,
}

/// The text encoders of a CLIP value, with the options nodes set on it (CLIPSetLastLayer,
/// T5TokenizerOptions); clones share the networks.
#[derive(Clone)]
pub enum GraphClip<B: Backend> {
    /// A checkpoint's SDXL encoders (LoraLoader patches them through the pipeline).
    Sdxl {
        pipeline: Arc<SdxlPipeline<B>>,
        /// ComfyUI's `clip_layer` (−2 unless CLIPSetLastLayer says otherwise).
        clip_layer: i64,
        embeddings: Arc<Embeddings>,
    },
    /// DualCLIPLoader `sdxl`: CLIP-L and bigG files.
    SdxlFiles {
        files: Arc<SdxlClipFiles<B>>,
        clip_layer: i64,
        embeddings: Arc<Embeddings>,
    },
    T5 {
        /// CLIP-L for Flux's pooled vector.
        clip_l: Option<Arc<(ClipTokenizer, ClipTextModel<B>)>>,
        t5: Arc<(T5Tokenizer, T5Encoder<B>)>,
        layout: T5Layout,
        padding: T5Padding,
        /// For CLIP-L's words (T5's `embedding:` words are dropped).
        embeddings: Arc<Embeddings>,
        device: B::Device,
    },
    /// Z-Image's Qwen3 (CLIPLoader type lumina2).
    Qwen3 {
        encoder: Arc<(Qwen3Tokenizer, Qwen3Encoder<B>)>,
        device: B::Device,
    },
}

impl<B: Backend> GraphClip<B> {
    pub fn sdxl(pipeline: Arc<SdxlPipeline<B>>, embeddings: Arc<Embeddings>) -> Self {
        GraphClip::Sdxl {
            pipeline,
            clip_layer: -2,
            embeddings,
        }
    }

    /// CLIPTextEncode.
    pub fn encode(&self, text: &str) -> Result<CondEntry<B>, Error> {
        match self {
            GraphClip::Sdxl { .. } | GraphClip::SdxlFiles { .. } => {
                self.encode_sdxl(text, text, None)
            }
            GraphClip::T5 { .. } => self.encode_flux(text, text, None),
            // `z_image.py`: the chat template, weights disabled, no truncation.
            GraphClip::Qwen3 { encoder, device } => Ok(CondEntry::new(
                encode_caption(&encoder.0, &encoder.1, text, usize::MAX, device)?.unsqueeze::<3>(),
                None,
            )),
        }
    }

    /// CLIPTextEncodeSDXL (and CLIPTextEncode on SDXL): `text_l` for CLIP-L, `text_g` for
    /// bigG, and the size conditioning when given.
    pub fn encode_sdxl(
        &self,
        text_l: &str,
        text_g: &str,
        size: Option<SdxlSize>,
    ) -> Result<CondEntry<B>, Error> {
        let (clip, layer) = match self {
            GraphClip::Sdxl {
                pipeline,
                clip_layer,
                embeddings,
            } => (pipeline.comfy_clip(embeddings), *clip_layer),
            GraphClip::SdxlFiles {
                files,
                clip_layer,
                embeddings,
            } => (
                ComfyClip {
                    tokenizer: &files.tokenizer,
                    clip_l: &files.clip_l,
                    clip_g: &files.clip_g,
                    device: &files.device,
                    embeddings,
                },
                *clip_layer,
            ),
            _ => {
                return Err(Error::request(
                    "CLIPTextEncodeSDXL needs SDXL's CLIP encoders",
                ));
            }
        };
        let (context, pooled) = clip.encode(text_l, text_g, layer)?;
        Ok(CondEntry {
            sdxl_size: size,
            ..CondEntry::new(context, Some(pooled))
        })
    }

    /// CLIPTextEncodeFlux (and CLIPTextEncode on T5 encoders): `clip_text` for CLIP-L's
    /// pooled vector (Flux), `t5_text` for T5, and the guidance when given.
    pub fn encode_flux(
        &self,
        clip_text: &str,
        t5_text: &str,
        guidance: Option<f32>,
    ) -> Result<CondEntry<B>, Error> {
        let GraphClip::T5 {
            clip_l,
            t5,
            layout,
            padding,
            embeddings,
            device,
        } = self
        else {
            return Err(Error::request(
                "CLIPTextEncodeFlux needs a T5 text encoder (DualCLIPLoader flux, CLIPLoader chroma)",
            ));
        };
        let context = encode_t5(&t5.0, &t5.1, *layout, *padding, t5_text, device)?;
        let pooled = match clip_l.as_deref() {
            Some((tokenizer, clip)) => {
                // Only the first chunk's pooled output is used (no projection).
                let lookup = |name: &str| embeddings.vectors(name, "clip_l");
                let chunk = tokenizer
                    .comfy_chunks(clip_text, None, &lookup)?
                    .into_iter()
                    .next()
                    .expect("one chunk");
                clip_vectors_fit(clip, &chunk)?;
                let ids: Vec<i64> = chunk.ids.iter().map(|&i| i as i64).collect();
                let len = ids.len();
                let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, len]), device);
                let layer = clip.num_layers().checked_sub(2);
                Some(
                    clip.forward_at(ids, &[chunk.eos_position], layer, &chunk.vectors)
                        .pooled,
                )
            }
            None => None,
        };
        Ok(CondEntry {
            guidance,
            ..CondEntry::new(context, pooled)
        })
    }

    /// CLIPSetLastLayer: `CLIP.clip_layer(n)`.
    pub fn with_clip_layer(&self, layer: i64) -> Result<Self, Error> {
        match self {
            GraphClip::Sdxl {
                pipeline,
                embeddings,
                ..
            } => Ok(GraphClip::Sdxl {
                pipeline: pipeline.clone(),
                clip_layer: layer,
                embeddings: embeddings.clone(),
            }),
            GraphClip::SdxlFiles {
                files, embeddings, ..
            } => Ok(GraphClip::SdxlFiles {
                files: files.clone(),
                clip_layer: layer,
                embeddings: embeddings.clone(),
            }),
            _ => Err(Error::request(
                "CLIPSetLastLayer applies to SDXL's CLIP encoders only in this build",
            )),
        }
    }

    /// T5TokenizerOptions: `t5xxl_min_padding` and `t5xxl_min_length` (other encoders keep
    /// theirs, as ComfyUI's options name T5 tokenizers only).
    pub fn with_t5_padding(&self, new: T5Padding) -> Self {
        let mut clip = self.clone();
        if let GraphClip::T5 { padding, .. } = &mut clip {
            *padding = new;
        }
        clip
    }
}

/// ComfyUI's T5 encoding: each weighted segment tokenized alone, `</s>` at the end, padded
/// per `padding`, no attention mask; weights as `(z − z_empty)·w + z_empty`, the empty
/// sequence laid out per `layout`. [1, T, D]
fn encode_t5<B: Backend>(
    tokenizer: &T5Tokenizer,
    t5: &T5Encoder<B>,
    layout: T5Layout,
    padding: T5Padding,
    text: &str,
    device: &B::Device,
) -> Result<Tensor<B, 3>, Error> {
    const EOS: u32 = 1;
    const PAD: u32 = 0;
    let mut tokens: Vec<(u32, f32)> = Vec::new();
    for (segment, weight) in comfy_token_weights(text) {
        for word in comfy_words(&segment, &|_| None) {
            if let Word::Text(word) = word {
                tokens.extend(
                    tokenizer
                        .segment_ids(&word)?
                        .into_iter()
                        .map(|id| (id, weight as f32)),
                );
            }
        }
    }
    tokens.push((EOS, 1.0));
    tokens.extend(std::iter::repeat_n((PAD, 1.0), padding.min_padding));
    if tokens.len() < padding.min_length {
        tokens.resize(padding.min_length, (PAD, 1.0));
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

/// The VAE of a VAE value: a checkpoint's, or a VAELoader file's (4 or 16 channels).
pub struct GraphVae<B: Backend> {
    pub decoder: Decoder<B>,
    pub encoder: Encoder<B>,
    pub device: B::Device,
}

impl<B: Backend> GraphVae<B> {
    /// VAE-space latents → the decoder's raw output (about [-1, 1]).
    pub fn decode_raw(&self, latents: Tensor<B, 4>) -> Tensor<B, 4> {
        self.decoder.forward(latents)
    }

    /// image in [-1, 1] → the posterior mean in VAE space.
    pub fn encode_image(&self, image: Tensor<B, 4>) -> Tensor<B, 4> {
        self.encoder.forward(image)
    }
}
