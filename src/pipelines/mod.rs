//! Text-to-image pipelines: tokenize → encode → sample → decode, one file per family; and
//! image-to-image (encode the image, noise it part way, sample the rest).

mod components;
pub mod flux;
mod pil_resample;
mod request;
pub mod safety;
pub mod sdxl;
mod text_encoder;
pub mod zimage;

use burn::prelude::*;
use burn::tensor::TensorData;
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::models::vae::Encoder;
use crate::output::preview::{FLUX_LATENT_RGB, LatentRgb, SDXL_LATENT_RGB};
use crate::registry::{Family, Manifest};
use crate::sampling::{SamplerKind, ScheduleKind, TorchGenerator};
use crate::text::LongPrompt;
use crate::weights::{LoraFile, LoraPatch};
use pil_resample::Filter;

pub use components::{ComponentFile, load_clip_file};
pub use flux::FluxPipeline;
pub use request::GenerationRequest;
pub use sdxl::SdxlPipeline;
pub use zimage::ZImagePipeline;

/// The request fields a family's pipeline honours, and the values it accepts.
pub struct FamilyOptions {
    pub samplers: &'static [SamplerKind],
    pub schedulers: &'static [ScheduleKind],
    /// `guidance_scale`: CFG (SDXL, Chroma) or distilled guidance (Flux dev).
    pub guidance: bool,
    pub negative_prompt: bool,
    /// `long_prompt`: CLIP's 77-token chunking (T5 families take 256 or 512 tokens).
    pub long_prompt: bool,
    pub loras: bool,
}

impl FamilyOptions {
    pub fn of(family: Family) -> Self {
        const FLOW: FamilyOptions = FamilyOptions {
            samplers: &[SamplerKind::Euler],
            schedulers: &[ScheduleKind::Normal],
            guidance: true,
            negative_prompt: false,
            long_prompt: false,
            loras: false,
        };
        match family {
            Family::Sdxl => Self {
                samplers: &SamplerKind::ALL,
                schedulers: &ScheduleKind::ALL,
                guidance: true,
                negative_prompt: true,
                long_prompt: true,
                loras: true,
            },
            // Guidance-distilled dev: one forward per step, the scale is an input.
            Family::FluxDev => FLOW,
            // schnell ignores guidance (BFL: "this is ignored for schnell").
            Family::FluxSchnell => Self {
                guidance: false,
                ..FLOW
            },
            // Real CFG with a negative prompt (`ChromaPipeline`; `ZImagePipeline` when the
            // scale is above 0).
            Family::Chroma | Family::ZImageTurbo => Self {
                negative_prompt: true,
                ..FLOW
            },
        }
    }
}

impl FamilyOptions {
    /// Why `family` cannot sample with `sampler`, if it cannot.
    pub fn refuse_sampler(&self, family: Family, sampler: SamplerKind) -> Option<String> {
        refusal("sampler", family, sampler, self.samplers, SamplerKind::name)
    }

    /// Why `family` cannot sample on `scheduler`, if it cannot.
    pub fn refuse_scheduler(&self, family: Family, scheduler: ScheduleKind) -> Option<String> {
        refusal(
            "scheduler",
            family,
            scheduler,
            self.schedulers,
            ScheduleKind::name,
        )
    }
}

fn refusal<T: Copy + PartialEq>(
    what: &str,
    family: Family,
    value: T,
    allowed: &[T],
    name: fn(T) -> &'static str,
) -> Option<String> {
    if allowed.contains(&value) {
        return None;
    }
    let names: Vec<&str> = allowed.iter().map(|v| name(*v)).collect();
    Some(format!(
        "{what} `{}` is not available for {} models; expected one of: {}",
        name(value),
        family.name(),
        names.join(", ")
    ))
}

/// Width and height must be positive multiples of `multiple` (8 where the UNet sees the
/// 8×-downsampled latent; 16 where transformers take 2×2 latent patches).
fn check_size(params: &GenerationParams, multiple: usize) -> Result<(), Error> {
    if !params.width.is_multiple_of(multiple)
        || !params.height.is_multiple_of(multiple)
        || params.width == 0
        || params.height == 0
    {
        return Err(Error::request(format!(
            "width and height must be positive multiples of {multiple}, got {}x{}",
            params.width, params.height
        )));
    }
    Ok(())
}

/// `randn([1, channels, H/8, W/8])` from the run's CPU generator, as every diffusers pipeline
/// draws its initial latents with `torch.Generator("cpu").manual_seed(seed)`.
fn initial_noise<B: Backend>(
    params: &GenerationParams,
    channels: usize,
    rng: &mut TorchGenerator,
    device: &B::Device,
) -> Tensor<B, 4> {
    let shape = [1, channels, params.height / 8, params.width / 8];
    let noise = rng.randn(shape.iter().product());
    Tensor::from_data(TensorData::new(noise, shape), device)
}

/// Pixel sizes of `family` are multiples of this (the latent is 1/8 of the image; the
/// transformers take 2×2 latent patches).
pub fn size_multiple(family: Family) -> usize {
    match family {
        Family::Sdxl => 8,
        _ => 16,
    }
}

/// An image's size as a run of `family` takes it when no size is asked for: down to the
/// family's multiple (diffusers' `VaeImageProcessor.get_default_height_width`).
pub fn image_size(family: Family, (width, height): (u32, u32)) -> (usize, usize) {
    let multiple = size_multiple(family);
    let down = |v: u32| v as usize / multiple * multiple;
    (down(width), down(height))
}

/// diffusers' img2img pipelines' default `strength`.
pub const DEFAULT_STRENGTH: f64 = 0.3;
/// The least strength taken: below it, any step count up to 150 runs the one step a run
/// always takes.
pub const MIN_STRENGTH: f64 = 0.01;

/// An 8-bit image → the VAE's input [1, 3, height, width] in [-1, 1], as diffusers'
/// `VaeImageProcessor.preprocess` makes it: resized with Pillow's Lanczos where the size
/// differs, `x / 255` in float32, then `2x − 1`.
fn image_tensor<B: Backend>(
    image: &image::RgbImage,
    width: usize,
    height: usize,
    device: &B::Device,
) -> Tensor<B, 4> {
    let resized;
    let image = if image.dimensions() == (width as u32, height as u32) {
        image
    } else {
        resized = pil_resample::resize(image, width as u32, height as u32, Filter::Lanczos);
        &resized
    };
    let values: Vec<f32> = image
        .as_raw()
        .iter()
        .map(|&v| 2.0 * (v as f32 / 255.0) - 1.0)
        .collect();
    Tensor::<B, 4>::from_data(TensorData::new(values, [1, height, width, 3]), device)
        .permute([0, 3, 1, 2])
}

/// img2img's clean latents: a sample of the VAE posterior of `image` at the run's size (the
/// run's first draw, as diffusers' `retrieve_latents(vae.encode(image), generator)` samples
/// `mean + exp(logvar / 2) · randn`), scaled as the sampler works on them.
fn image_sample<B: Backend>(
    encoder: &Encoder<B>,
    image: &image::RgbImage,
    params: &GenerationParams,
    rng: &mut TorchGenerator,
    device: &B::Device,
) -> Tensor<B, 4> {
    let pixels = image_tensor(image, params.width, params.height, device);
    let (mean, logvar) = encoder.posterior(pixels);
    let dims = mean.dims();
    let draw = Tensor::from_data(
        TensorData::new(rng.randn(dims.iter().product()), dims),
        device,
    );
    encoder.scale(mean + (logvar * 0.5).exp() * draw)
}

/// A flow-matching run's starting latents [1, C, H/8, W/8] and the σ it steps through: noise
/// (the run's first draw) and every σ; or for image to image from `init` (diffusers
/// `FluxImg2ImgPipeline`, `ChromaImg2ImgPipeline`, `ZImageImg2ImgPipeline`: `get_timesteps`,
/// `prepare_latents`) the σ of the steps `family` keeps, and the image's sample with noise (the
/// second draw) mixed in at the first of them, `σ·noise + (1 − σ)·x₀`
/// (`FlowMatchEulerDiscreteScheduler.scale_noise`).
fn flow_start<B: Backend>(
    family: Family,
    params: &GenerationParams,
    init: Option<&image::RgbImage>,
    sigmas: Vec<f32>,
    encoder: &Encoder<B>,
    channels: usize,
    device: &B::Device,
) -> (Tensor<B, 4>, Vec<f32>) {
    let mut rng = TorchGenerator::new(params.seed);
    let Some(image) = init else {
        return (initial_noise(params, channels, &mut rng, device), sigmas);
    };
    let sigmas = sigmas[params.steps - params.steps_run(family)..].to_vec();
    let clean = image_sample(encoder, image, params, &mut rng, device);
    let noise = initial_noise(params, channels, &mut rng, device);
    (noise * sigmas[0] + clean * (1.0 - sigmas[0]), sigmas)
}

/// Hands the caller a step's progress; `Error::Cancelled` when it asks to stop.
fn report_step<B: Backend>(
    on_step: &mut dyn FnMut(StepProgress<B>) -> Flow,
    progress: StepProgress<B>,
) -> Result<(), Error> {
    match on_step(progress) {
        Flow::Continue => Ok(()),
        Flow::Cancel => Err(Error::Cancelled),
    }
}

/// LoRA deltas merged into a pipeline's networks (one patch per network, in the pipeline's
/// order), to be handed back to [`Pipeline::unmerge_loras`].
pub struct MergedLoras<B: Backend>(Vec<LoraPatch<B>>);

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
    /// Image-to-image: the image the run starts from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_image: Option<InitImage>,
}

/// The image an image-to-image run starts from, and how far it is noised.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InitImage {
    /// The image file, relative to the data directory (the job's upload, removed when the job
    /// ends).
    pub path: std::path::PathBuf,
    /// diffusers' `strength` (A1111's denoising strength): the last `int(steps · strength)`
    /// steps of the schedule run, from the image noised to the first of them. Kept in f64, as
    /// Python multiplies it: in f32, 0.7 · 10 would round down to 6 steps.
    pub strength: f64,
}

impl GenerationParams {
    /// The steps a run of `family` takes: all of them, or img2img's last ones, as diffusers'
    /// `get_timesteps` keeps them: `int(N · strength)` for SDXL
    /// (`StableDiffusionXLImg2ImgPipeline`), `N − int(N − N · strength)` for the flow-matching
    /// families (`FluxImg2ImgPipeline` and the others, after SD3's): the first rounds down, the
    /// second up. At least one: where diffusers has none to run and fails, one step at the
    /// lowest σ changes the image least.
    pub fn steps_run(&self, family: Family) -> usize {
        let Some(init) = &self.init_image else {
            return self.steps;
        };
        let kept = self.steps as f64 * init.strength;
        let run = match family {
            Family::Sdxl => kept as usize,
            _ => self.steps - (self.steps as f64 - kept).max(0.0) as usize,
        };
        run.clamp(1, self.steps)
    }
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

/// A loaded model of any family (the runner holds one at a time, so variant sizes do not
/// matter).
#[allow(clippy::large_enum_variant)]
pub enum Pipeline<B: Backend> {
    Sdxl(SdxlPipeline<B>),
    /// FLUX.1 dev / schnell and Chroma.
    Flux(FluxPipeline<B>),
    ZImage(ZImagePipeline<B>),
}

impl<B: Backend> Pipeline<B> {
    pub fn load(manifest: &Manifest, device: &B::Device) -> Result<Self, Error> {
        match manifest.family {
            Family::Sdxl => Ok(Pipeline::Sdxl(SdxlPipeline::load(manifest, device)?)),
            Family::FluxDev | Family::FluxSchnell | Family::Chroma => {
                Ok(Pipeline::Flux(FluxPipeline::load(manifest, device)?))
            }
            Family::ZImageTurbo => Ok(Pipeline::ZImage(ZImagePipeline::load(manifest, device)?)),
        }
    }

    /// Merges `loras` (file, weight) into the loaded weights until [`Self::unmerge_loras`]
    /// takes them off: one merge serves every image of a job, and the base checkpoint is never
    /// read again.
    pub fn merge_loras(&mut self, loras: &[(&LoraFile, f32)]) -> Result<MergedLoras<B>, Error> {
        match self {
            Pipeline::Sdxl(p) => p.merge_loras(loras),
            Pipeline::Flux(_) | Pipeline::ZImage(_) if loras.is_empty() => {
                Ok(MergedLoras(Vec::new()))
            }
            Pipeline::Flux(_) | Pipeline::ZImage(_) => Err(Error::request(
                "this build applies LoRAs to SDXL models only",
            )),
        }
    }

    /// Puts back, bit for bit, the weights [`Self::merge_loras`] replaced.
    pub fn unmerge_loras(&mut self, merged: MergedLoras<B>) {
        match self {
            Pipeline::Sdxl(p) => p.unmerge_loras(merged),
            Pipeline::Flux(_) | Pipeline::ZImage(_) => debug_assert!(merged.0.is_empty()),
        }
    }

    /// Bytes of weights on the device now, per network (a released text encoder counts 0).
    pub fn weight_bytes(&self) -> Vec<(&'static str, u64)> {
        match self {
            Pipeline::Sdxl(p) => p.weight_bytes(),
            Pipeline::Flux(p) => p.weight_bytes(),
            Pipeline::ZImage(p) => p.weight_bytes(),
        }
    }

    /// The latent → RGB projection for this model's step previews.
    pub fn latent_rgb(&self) -> &'static LatentRgb {
        match self {
            Pipeline::Sdxl(_) => &SDXL_LATENT_RGB,
            // Z-Image uses the Flux VAE.
            Pipeline::Flux(_) | Pipeline::ZImage(_) => &FLUX_LATENT_RGB,
        }
    }

    /// Runs the pipeline, from `init` (the pixels of `params.init_image`) when given; `on_step`
    /// may cancel between steps (the run then returns `Error::Cancelled`).
    pub fn generate(
        &mut self,
        params: &GenerationParams,
        init: Option<&image::RgbImage>,
        on_step: &mut dyn FnMut(StepProgress<B>) -> Flow,
    ) -> Result<image::RgbImage, Error> {
        match (self, init) {
            (Pipeline::Sdxl(p), Some(image)) => p.generate_from_image(params, image, on_step),
            (Pipeline::Sdxl(p), None) => p.generate(params, on_step),
            (Pipeline::Flux(p), init) => p.generate(params, init, on_step),
            (Pipeline::ZImage(p), init) => p.generate(params, init, on_step),
        }
    }
}
