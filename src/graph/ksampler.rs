//! ComfyUI's KSampler path: `common_ksampler` → `comfy.sample.sample` → `CFGGuider` →
//! `KSAMPLER.sample` (../shared/reference/comfyui/SEMANTICS.md §1–§6), for SDXL's EPS UNet
//! and the Flux family's flow transformers.

use burn::prelude::*;
use burn::tensor::TensorData;

use std::sync::Arc;

use super::models::{GraphModel, SdxlSize};
use crate::Error;
use crate::models::flux::{AttentionMask, ROPE_THETA, Rope, position_ids};
use crate::models::zimage::ZImageTransformer;
use crate::pipelines::flux::{pack, unpack};
use crate::pipelines::{Flow, SdxlPipeline};
use crate::sampling::TorchGenerator;
use crate::sampling::comfy::{
    Denoiser, KSamplerName, ModelSampling, Prediction, SamplerStep, SchedulerName, ksampler_sigmas,
    sample,
};

/// One entry of a CONDITIONING list.
#[derive(Clone)]
pub struct CondEntry<B: Backend> {
    /// Cross-attention states (CLIP for SDXL, T5 for the Flux family). [1, L, ctx]
    pub context: Tensor<B, 3>,
    /// SDXL's bigG projected pooled vector, Flux's CLIP-L pooled output. [1, P]
    pub pooled: Option<Tensor<B, 2>>,
    /// FluxGuidance's value (Flux dev's distilled guidance; 3.5 when absent).
    pub guidance: Option<f32>,
    /// CLIPTextEncodeSDXL's sizes (else the latent's size, no crop).
    pub sdxl_size: Option<SdxlSize>,
}

impl<B: Backend> CondEntry<B> {
    pub fn new(context: Tensor<B, 3>, pooled: Option<Tensor<B, 2>>) -> Self {
        Self {
            context,
            pooled,
            guidance: None,
            sdxl_size: None,
        }
    }
}

/// What a KSampler node is given besides the model, conditioning and latent.
#[derive(Clone, Copy, Debug)]
pub struct KSamplerSettings {
    pub seed: u64,
    pub steps: usize,
    pub cfg: f64,
    pub sampler: KSamplerName,
    pub scheduler: SchedulerName,
    pub denoise: f64,
}

/// The σ a KSampler node samples with.
pub fn ksampler_node_sigmas(ms: &ModelSampling, s: &KSamplerSettings) -> Result<Vec<f32>, Error> {
    ksampler_sigmas(
        ms,
        s.scheduler,
        s.steps,
        s.denoise,
        s.sampler.discards_penultimate_sigma(),
    )
}

/// `prepare_noise`: one `torch.randn` of the whole latent shape from `manual_seed(seed)`.
pub fn prepare_noise<B: Backend>(seed: u64, like: &Tensor<B, 4>) -> Tensor<B, 4> {
    let dims = like.dims();
    let values = TorchGenerator::new(seed).randn(dims.iter().product());
    Tensor::from_data(TensorData::new(values, dims), &like.device())
}

/// A GUIDER value, and what a KSampler node guides with: the model, its conditioning and the
/// CFG scale (`CFGGuider`; `BasicGuider` is the positive alone at cfg 1).
#[derive(Clone)]
pub struct Guider<B: Backend> {
    pub model: Arc<GraphModel<B>>,
    pub sampling: Arc<ModelSampling>,
    pub positive: Arc<Vec<CondEntry<B>>>,
    pub negative: Option<Arc<Vec<CondEntry<B>>>>,
    pub cfg: f64,
}

/// The initial noise: `RandomNoise(seed)` / `prepare_noise`, or zeros (`DisableNoise`,
/// `add_noise` off).
#[derive(Clone, Copy, Debug)]
pub enum NoiseSource {
    Random(u64),
    Disabled,
}

/// A sampler's result in VAE space, and the last step's x₀ (SamplerCustom's
/// `denoised_output`; the result itself when no step ran).
pub struct Sampled<B: Backend> {
    pub samples: Tensor<B, 4>,
    pub denoised: Tensor<B, 4>,
}

/// Samples `latent` (VAE space, [B, C, h, w]) as ComfyUI's KSampler node does.
#[allow(clippy::too_many_arguments)]
pub fn ksample<B: Backend>(
    model: &GraphModel<B>,
    ms: &ModelSampling,
    settings: &KSamplerSettings,
    positive: &[CondEntry<B>],
    negative: &[CondEntry<B>],
    latent: Tensor<B, 4>,
    on_step: &mut dyn FnMut(SamplerStep<B>) -> Flow,
) -> Result<Tensor<B, 4>, Error> {
    let sigmas = ksampler_node_sigmas(ms, settings)?;
    let sampled = guide(
        model,
        ms,
        positive,
        Some(negative),
        settings.cfg,
        settings.sampler,
        &sigmas,
        NoiseSource::Random(settings.seed),
        settings.seed,
        latent,
        on_step,
    )?;
    Ok(sampled.samples)
}

/// `CFGGuider.sample` → `KSAMPLER.sample`: noise, start scaling and the sampler over
/// `sigmas`, on any model; `seed` feeds the samplers' own noise. The negative is never
/// evaluated at cfg 1 (nor given by a BasicGuider).
#[allow(clippy::too_many_arguments)]
pub fn guide<B: Backend>(
    model: &GraphModel<B>,
    ms: &ModelSampling,
    positive: &[CondEntry<B>],
    negative: Option<&[CondEntry<B>]>,
    cfg: f64,
    sampler: KSamplerName,
    sigmas: &[f32],
    noise: NoiseSource,
    seed: u64,
    latent: Tensor<B, 4>,
    on_step: &mut dyn FnMut(SamplerStep<B>) -> Flow,
) -> Result<Sampled<B>, Error> {
    let format = model.latent_format();
    let is_empty = latent.clone().abs().sum().into_scalar().elem::<f32>() == 0.0;
    // `fix_empty_latent_channels`: an empty 4-channel latent serves 16-channel models too.
    let channels = latent.dims()[1];
    let latent =
        if is_empty && channels != format.channels && format.channels.is_multiple_of(channels) {
            latent.repeat_dim(1, format.channels / channels)
        } else {
            latent
        };
    if latent.dims()[1] != format.channels {
        return Err(Error::request(format!(
            "the latent has {} channels; this model samples {}",
            latent.dims()[1],
            format.channels
        )));
    }
    if sigmas.is_empty() {
        return Ok(Sampled {
            samples: latent.clone(),
            denoised: latent,
        });
    }
    let noise = match noise {
        NoiseSource::Random(seed) => prepare_noise(seed, &latent),
        NoiseSource::Disabled => latent.zeros_like(),
    };
    // `inner_sample`: only a latent with content is moved into sampling space.
    let latent_in = if is_empty {
        latent.clone()
    } else {
        (latent.clone() - format.shift) * format.scale
    };
    let (noise_factor, latent_factor) = ms.noise_scaling(sigmas[0], ms.is_max_denoise(sigmas[0]));
    let x = noise * noise_factor + latent_in * latent_factor;
    let negative = negative.filter(|_| !is_close(cfg, 1.0));
    let cfg = cfg as f32;
    let mut last_denoised = None;
    let mut on_step = |step: SamplerStep<B>| {
        last_denoised = Some(step.denoised.clone());
        on_step(step)
    };
    let samples = match model {
        GraphModel::Sdxl(pipeline) => {
            let [_, _, h, w] = latent.dims();
            // `encode_model_conds` fills width/height with the latent size × 8.
            let (height, width) = ((h * 8) as f32, (w * 8) as f32);
            let mut denoiser = Cfg {
                positive,
                negative,
                cfg,
                predict: SdxlUnet {
                    pipeline,
                    ms,
                    latent_size: SdxlSize {
                        width,
                        height,
                        crop_w: 0.0,
                        crop_h: 0.0,
                        target_width: width,
                        target_height: height,
                    },
                },
            };
            sample(sampler, ms, &mut denoiser, x, sigmas, seed, &mut on_step)?
        }
        GraphModel::Flux {
            denoiser,
            rope_axes,
        } => {
            let mut denoiser = Cfg {
                positive,
                negative,
                cfg,
                predict: FluxVelocity {
                    denoiser,
                    rope_axes,
                    ms,
                },
            };
            sample(sampler, ms, &mut denoiser, x, sigmas, seed, &mut on_step)?
        }
        GraphModel::ZImage(transformer) => {
            let mut denoiser = Cfg {
                positive,
                negative,
                cfg,
                predict: ZImageVelocity { transformer, ms },
            };
            sample(sampler, ms, &mut denoiser, x, sigmas, seed, &mut on_step)?
        }
    };
    // `inverse_noise_scaling` (flow: ÷ (1 − σ_last)), then `process_latent_out`.
    let last = *sigmas.last().expect("non-empty");
    let samples = if ms.is_flow() && last != 0.0 {
        samples / (1.0 - last)
    } else {
        samples
    };
    let out = |x: Tensor<B, 4>| x / format.scale + format.shift;
    let samples = out(samples);
    let denoised = last_denoised.map_or_else(|| samples.clone(), out);
    Ok(Sampled { samples, denoised })
}

/// Samplers whose flow-model (`CONST`) variants this build has: the deterministic ones that
/// need none.
/// `math.isclose` with its default relative tolerance.
fn is_close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
}

/// One model's x₀ for a batch x and several conditioning entries.
trait PredictX0<B: Backend> {
    fn predict(
        &self,
        x: &Tensor<B, 4>,
        sigma: f32,
        entries: &[&CondEntry<B>],
    ) -> Result<Vec<Tensor<B, 4>>, Error>;
}

/// `sampling_function` + `calc_cond_batch`: x₀ of each conditioning entry, averaged within the
/// positive and the negative list, then `u + (c − u)·cfg`.
struct Cfg<'a, B: Backend, P> {
    positive: &'a [CondEntry<B>],
    /// None at cfg 1: ComfyUI never evaluates the negative then.
    negative: Option<&'a [CondEntry<B>]>,
    cfg: f32,
    predict: P,
}

impl<B: Backend, P: PredictX0<B>> Denoiser<B> for Cfg<'_, B, P> {
    fn denoise(&mut self, x: Tensor<B, 4>, sigma: f32) -> Result<Tensor<B, 4>, Error> {
        let mut entries: Vec<&CondEntry<B>> = Vec::new();
        if let Some(negative) = self.negative {
            entries.extend(negative);
        }
        let n_negative = entries.len();
        entries.extend(self.positive);
        let predictions = self.predict.predict(&x, sigma, &entries)?;
        let mean = |p: &[Tensor<B, 4>]| {
            let n = p.len() as f32;
            p.iter()
                .cloned()
                .reduce(|a, b| a + b)
                .map(|s| if n > 1.0 { s / n } else { s })
        };
        let cond = mean(&predictions[n_negative..])
            .ok_or_else(|| Error::request("the positive conditioning is empty"))?;
        Ok(match mean(&predictions[..n_negative]) {
            Some(uncond) => uncond.clone() + (cond - uncond) * self.cfg,
            None => cond,
        })
    }
}

/// SDXL: x_in = x/√(σ²+1), the nearest training timestep; x₀ = x − ε·σ (EPS) or
/// x/(σ²+1) − v·σ/√(σ²+1) (V_PREDICTION, σ_data 1). Entries with the same context length
/// share one UNet call, negative first (ComfyUI batches `[uncond, cond]`); each entry's size
/// conditioning is its own or the latent's.
struct SdxlUnet<'a, B: Backend> {
    pipeline: &'a SdxlPipeline<B>,
    ms: &'a ModelSampling,
    latent_size: SdxlSize,
}

impl<B: Backend> PredictX0<B> for SdxlUnet<'_, B> {
    fn predict(
        &self,
        x: &Tensor<B, 4>,
        sigma: f32,
        entries: &[&CondEntry<B>],
    ) -> Result<Vec<Tensor<B, 4>>, Error> {
        let t = self.ms.timestep(sigma);
        let x_in = x.clone() / (sigma * sigma + 1.0).sqrt();
        let batch = x.dims()[0];
        let mut out: Vec<Option<Tensor<B, 4>>> = vec![None; entries.len()];
        let mut todo: Vec<usize> = (0..entries.len()).collect();
        while let Some(&first) = todo.first() {
            let dims = entries[first].context.dims();
            let group: Vec<usize> = todo
                .iter()
                .copied()
                .filter(|&i| entries[i].context.dims() == dims)
                .collect();
            todo.retain(|i| !group.contains(i));
            let mut contexts = Vec::new();
            let mut pooled = Vec::new();
            let mut time_ids = Vec::new();
            for &i in &group {
                let p = entries[i].pooled.clone().ok_or_else(|| {
                    Error::request("SDXL conditioning needs the pooled output of CLIP-G")
                })?;
                contexts.push(entries[i].context.clone().repeat_dim(0, batch));
                pooled.push(p.repeat_dim(0, batch));
                let size = entries[i].sdxl_size.unwrap_or(self.latent_size);
                time_ids.extend(std::iter::repeat_n(size.time_ids(), batch));
            }
            let rows = group.len() * batch;
            let output = self.pipeline.predict_noise(
                Tensor::cat(vec![x_in.clone(); group.len()], 0),
                &vec![t; rows],
                &Tensor::cat(contexts, 0),
                Tensor::cat(pooled, 0),
                &time_ids,
            );
            let var = sigma * sigma + 1.0;
            for (k, &i) in group.iter().enumerate() {
                let output = output.clone().narrow(0, k * batch, batch);
                out[i] = Some(match self.ms.prediction() {
                    Prediction::Eps => x.clone() - output * sigma,
                    Prediction::V => x.clone() / var - output * (sigma / var.sqrt()),
                });
            }
        }
        Ok(out
            .into_iter()
            .map(|o| o.expect("every entry predicted"))
            .collect())
    }
}

/// The Flux family (CONST): the model patchifies x itself, takes σ as its timestep, and its
/// velocity gives x₀ = x − v·σ. Each entry runs on its own (`CONDRegular` batches only equal
/// shapes).
struct FluxVelocity<'a, B: Backend> {
    denoiser: &'a crate::pipelines::flux::Denoiser<B>,
    rope_axes: &'a [usize],
    ms: &'a ModelSampling,
}

impl<B: Backend> PredictX0<B> for FluxVelocity<'_, B> {
    fn predict(
        &self,
        x: &Tensor<B, 4>,
        sigma: f32,
        entries: &[&CondEntry<B>],
    ) -> Result<Vec<Tensor<B, 4>>, Error> {
        let [batch, _, h, w] = x.dims();
        if h % 2 != 0 || w % 2 != 0 {
            return Err(Error::request(
                "Flux-family latents need even sides (images in multiples of 16 pixels)",
            ));
        }
        let t = vec![self.ms.timestep(sigma); batch];
        entries
            .iter()
            .map(|entry| {
                let text_len = entry.context.dims()[1];
                let ids = position_ids(text_len, h / 2, w / 2);
                let rope = Rope::new(&ids, self.rope_axes, ROPE_THETA, &x.device());
                // `model_base.Flux.extra_conds`: guidance 3.5 unless FluxGuidance set one.
                let guidance = vec![entry.guidance.unwrap_or(3.5); batch];
                let velocity = self.denoiser.velocity(
                    pack(x.clone()),
                    entry.context.clone().repeat_dim(0, batch),
                    &rope,
                    &t,
                    &guidance,
                    entry.pooled.clone().map(|p| p.repeat_dim(0, batch)),
                    &AttentionMask::None,
                )?;
                Ok(x.clone() - unpack(velocity, h, w) * sigma)
            })
            .collect()
    }
}

/// Z-Image (CONST): ComfyUI's NextDiT runs at time 1 − t and negates its output, so
/// x₀ = x − σ·(−out) (`comfy/ldm/lumina/model.py`), one image and entry at a time.
struct ZImageVelocity<'a, B: Backend> {
    transformer: &'a ZImageTransformer<B>,
    ms: &'a ModelSampling,
}

impl<B: Backend> PredictX0<B> for ZImageVelocity<'_, B> {
    fn predict(
        &self,
        x: &Tensor<B, 4>,
        sigma: f32,
        entries: &[&CondEntry<B>],
    ) -> Result<Vec<Tensor<B, 4>>, Error> {
        let [batch, c, h, w] = x.dims();
        let t = 1.0 - self.ms.timestep(sigma);
        entries
            .iter()
            .map(|entry| {
                let [_, len, d] = entry.context.dims();
                let caption = entry.context.clone().reshape([len, d]);
                let rows: Vec<Tensor<B, 4>> = (0..batch)
                    .map(|b| {
                        let row = x.clone().narrow(0, b, 1).reshape([c, h, w]);
                        let out = self.transformer.forward(row, t, caption.clone());
                        out.reshape([1, c, h, w])
                    })
                    .collect();
                Ok(x.clone() + Tensor::cat(rows, 0) * sigma)
            })
            .collect()
    }
}
