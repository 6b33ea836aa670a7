//! From what a user asked for to fully resolved [`GenerationParams`]: request fields, then the
//! manifest's `[defaults]`, then the family's defaults.

use serde::Deserialize;

use super::{FamilyOptions, GenerationParams};
use crate::Error;
use crate::registry::{Family, Manifest};
use crate::sampling::{SamplerKind, ScheduleKind, random_seed};
use crate::text::LongPrompt;

/// A generation request with every optional field optional (CLI flags, API body).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct GenerationRequest {
    pub prompt: String,
    pub negative_prompt: Option<String>,
    pub width: Option<usize>,
    pub height: Option<usize>,
    pub steps: Option<usize>,
    pub guidance_scale: Option<f32>,
    pub sampler: Option<String>,
    pub scheduler: Option<String>,
    pub seed: Option<u64>,
    pub long_prompt: Option<LongPrompt>,
}

/// What a family does when neither request nor manifest says.
struct FamilyDefaults {
    size: usize,
    steps: usize,
    guidance_scale: f32,
}

fn family_defaults(family: Family) -> FamilyDefaults {
    match family {
        // diffusers StableDiffusionXLPipeline: 1024², guidance 5.0; 30 steps is the usual
        // civitai recommendation for SDXL / Illustrious (diffusers' 50 is slow for no gain).
        Family::Sdxl => FamilyDefaults {
            size: 1024,
            steps: 30,
            guidance_scale: 5.0,
        },
        // diffusers FluxPipeline: 28 steps, guidance 3.5.
        Family::FluxDev => FamilyDefaults {
            size: 1024,
            steps: 28,
            guidance_scale: 3.5,
        },
        // diffusers ChromaPipeline: 35 steps, CFG 5.0.
        Family::Chroma => FamilyDefaults {
            size: 1024,
            steps: 35,
            guidance_scale: 5.0,
        },
        Family::FluxSchnell => FamilyDefaults {
            size: 1024,
            steps: 4,
            guidance_scale: 0.0,
        },
        Family::ZImageTurbo => FamilyDefaults {
            size: 1024,
            steps: 8,
            guidance_scale: 0.0,
        },
    }
}

impl GenerationRequest {
    pub fn resolve(&self, manifest: &Manifest) -> Result<GenerationParams, Error> {
        let d = &manifest.defaults;
        let f = family_defaults(manifest.family);
        let sampler = self
            .sampler
            .as_deref()
            .or(d.sampler.as_deref())
            .unwrap_or("euler");
        let scheduler = self
            .scheduler
            .as_deref()
            .or(d.scheduler.as_deref())
            .unwrap_or("normal");
        let options = FamilyOptions::of(manifest.family);
        let sampler = sampler.parse::<SamplerKind>().map_err(Error::request)?;
        let scheduler = scheduler.parse::<ScheduleKind>().map_err(Error::request)?;
        if let Some(why) = options
            .refuse_sampler(manifest.family, sampler)
            .or_else(|| options.refuse_scheduler(manifest.family, scheduler))
        {
            return Err(Error::request(why));
        }
        Ok(GenerationParams {
            prompt: self.prompt.clone(),
            negative_prompt: self.negative_prompt.clone(),
            width: self.width.or(d.width).unwrap_or(f.size),
            height: self.height.or(d.height).unwrap_or(f.size),
            steps: self.steps.or(d.steps).unwrap_or(f.steps),
            guidance_scale: self
                .guidance_scale
                .or(d.guidance_scale)
                .unwrap_or(f.guidance_scale),
            sampler,
            scheduler,
            seed: self.seed.unwrap_or_else(random_seed),
            long_prompt: self.long_prompt.unwrap_or_default(),
            init_image: None,
        })
    }
}
