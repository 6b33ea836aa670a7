//! Text-to-image pipelines: tokenize → encode → sample → decode, one file per family.

mod components;
mod request;
pub mod sdxl;

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::registry::{Family, Manifest};
use crate::sampling::{SamplerKind, ScheduleKind};
use crate::text::LongPrompt;

pub use request::GenerationRequest;
pub use sdxl::SdxlPipeline;

/// Everything one image depends on, fully resolved (defaults applied, seed chosen).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerationParams {
    pub prompt: String,
    /// `None`: no negative prompt (SDXL: zero embeddings, as diffusers with
    /// `force_zeros_for_empty_prompt`); `Some("")` is encoded like any prompt.
    pub negative_prompt: Option<String>,
    pub width: usize,
    pub height: usize,
    pub steps: usize,
    pub guidance_scale: f32,
    #[serde(with = "by_name")]
    pub sampler: SamplerKind,
    #[serde(with = "by_name")]
    pub scheduler: ScheduleKind,
    pub seed: u64,
    pub long_prompt: LongPrompt,
}

/// Serialize the sampler enums by their API names.
mod by_name {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::fmt::Display;
    use std::str::FromStr;

    pub fn serialize<T: Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }
    pub fn deserialize<'de, T: FromStr<Err = String>, D: Deserializer<'de>>(
        d: D,
    ) -> Result<T, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Progress of one run, given to the caller after every step.
pub struct StepProgress<'a, B: Backend> {
    /// 1-based.
    pub step: usize,
    pub total_steps: usize,
    /// The latents after this step [1, C, h, w].
    pub latents: &'a Tensor<B, 4>,
    /// The model's current estimate of the clean latents, for previews [1, C, h, w].
    pub denoised: &'a Tensor<B, 4>,
}

/// What the caller wants after a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Cancel,
}

/// A loaded model of any family.
pub enum Pipeline<B: Backend> {
    Sdxl(SdxlPipeline<B>),
}

impl<B: Backend> Pipeline<B> {
    pub fn load(manifest: &Manifest, device: &B::Device) -> Result<Self, Error> {
        match manifest.family {
            Family::Sdxl => Ok(Pipeline::Sdxl(SdxlPipeline::load(manifest, device)?)),
            other => Err(Error::config(format!(
                "model `{}`: the {} family is not supported by this build yet",
                manifest.id,
                other.name()
            ))),
        }
    }

    /// Runs the pipeline with `loras` (file, weight) merged for this run only; `on_step` may
    /// cancel between steps (the run then returns `Error::Cancelled`).
    pub fn generate_with_loras(
        &mut self,
        params: &GenerationParams,
        loras: &[(&crate::weights::LoraFile, f32)],
        on_step: &mut dyn FnMut(StepProgress<B>) -> Flow,
    ) -> Result<image::RgbImage, Error> {
        match self {
            Pipeline::Sdxl(p) => p.generate_with_loras(params, loras, on_step),
        }
    }

    /// Runs the pipeline; `on_step` may cancel between steps (the run then returns
    /// `Error::Cancelled`).
    pub fn generate(
        &self,
        params: &GenerationParams,
        on_step: &mut dyn FnMut(StepProgress<B>) -> Flow,
    ) -> Result<image::RgbImage, Error> {
        match self {
            Pipeline::Sdxl(p) => p.generate(params, on_step),
        }
    }
}
