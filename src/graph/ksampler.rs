//! ComfyUI's KSampler path for SDXL: `common_ksampler` → `comfy.sample.sample` →
//! `CFGGuider` → `KSAMPLER.sample` (../shared/reference/comfyui/SEMANTICS.md §1–§6).

use burn::prelude::*;
use burn::tensor::TensorData;

use crate::Error;
use crate::pipelines::{Flow, SdxlPipeline};
use crate::sampling::TorchGenerator;
use crate::sampling::comfy::{
    Denoiser, KSamplerName, ModelSampling, SamplerStep, SchedulerName, ksampler_sigmas, sample,
};

/// One entry of a CONDITIONING list: cross-attention states and SDXL's pooled vector.
#[derive(Clone)]
pub struct CondEntry<B: Backend> {
    /// [1, L, ctx]
    pub context: Tensor<B, 3>,
    /// [1, P]
    pub pooled: Tensor<B, 2>,
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

/// Samples `latent` (VAE space, [B, 4, h, w]) as ComfyUI's KSampler does and returns the result
/// in VAE space. `on_step` sees each step's x and x₀ (sampling space) and may cancel.
#[allow(clippy::too_many_arguments)]
pub fn sdxl_ksample<B: Backend>(
    pipeline: &SdxlPipeline<B>,
    ms: &ModelSampling,
    settings: &KSamplerSettings,
    positive: &[CondEntry<B>],
    negative: &[CondEntry<B>],
    latent: Tensor<B, 4>,
    on_step: &mut dyn FnMut(SamplerStep<B>) -> Flow,
) -> Result<Tensor<B, 4>, Error> {
    let sigmas = ksampler_node_sigmas(ms, settings)?;
    if sigmas.is_empty() {
        return Ok(latent);
    }
    let noise = prepare_noise(settings.seed, &latent);
    let scale = pipeline.vae_scaling();
    // `inner_sample`: only a latent with content is moved into sampling space.
    let is_empty = latent.clone().abs().sum().into_scalar().elem::<f32>() == 0.0;
    let latent_in = if is_empty {
        latent.clone()
    } else {
        latent.clone() * scale
    };
    let max_denoise = ms.is_max_denoise(sigmas[0]);
    let x = noise * ms.noise_scaling(sigmas[0], max_denoise) + latent_in;
    let [_, _, h, w] = latent.dims();
    // `encode_model_conds` fills width/height with the latent size × 8.
    let (hh, ww) = ((h * 8) as f32, (w * 8) as f32);
    let mut denoiser = SdxlCfg {
        pipeline,
        ms,
        positive,
        negative: (!is_close(settings.cfg, 1.0)).then_some(negative),
        cfg: settings.cfg as f32,
        time_ids: [hh, ww, 0.0, 0.0, hh, ww],
    };
    let samples = sample(
        settings.sampler,
        &mut denoiser,
        x,
        &sigmas,
        settings.seed,
        on_step,
    )?;
    // `process_latent_out`.
    Ok(samples / scale)
}

/// `math.isclose` with its default relative tolerance.
fn is_close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
}

/// `sampling_function` + `calc_cond_batch` on an EPS model: x₀ of each conditioning entry,
/// averaged within the positive and the negative list, then `u + (c − u)·cfg`.
struct SdxlCfg<'a, B: Backend> {
    pipeline: &'a SdxlPipeline<B>,
    ms: &'a ModelSampling,
    positive: &'a [CondEntry<B>],
    /// None at cfg 1: ComfyUI never evaluates the negative then.
    negative: Option<&'a [CondEntry<B>]>,
    cfg: f32,
    time_ids: [f32; 6],
}

impl<B: Backend> SdxlCfg<'_, B> {
    /// The x₀ of every entry: entries with the same context length share one UNet call,
    /// negative first (ComfyUI batches `[uncond, cond]`).
    fn predict(
        &self,
        x: &Tensor<B, 4>,
        sigma: f32,
        entries: &[&CondEntry<B>],
    ) -> Vec<Tensor<B, 4>> {
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
            let repeat = |t3: &Tensor<B, 3>| t3.clone().repeat_dim(0, batch);
            let context = Tensor::cat(
                group.iter().map(|&i| repeat(&entries[i].context)).collect(),
                0,
            );
            let pooled = Tensor::cat(
                group
                    .iter()
                    .map(|&i| entries[i].pooled.clone().repeat_dim(0, batch))
                    .collect(),
                0,
            );
            let rows = group.len() * batch;
            let eps = self.pipeline.predict_noise(
                Tensor::cat(vec![x_in.clone(); group.len()], 0),
                &vec![t; rows],
                &context,
                pooled,
                &vec![self.time_ids; rows],
            );
            for (k, &i) in group.iter().enumerate() {
                let eps_i = eps.clone().narrow(0, k * batch, batch);
                // EPS `calculate_denoised`: x − ε·σ.
                out[i] = Some(x.clone() - eps_i * sigma);
            }
        }
        out.into_iter()
            .map(|o| o.expect("every entry predicted"))
            .collect()
    }
}

impl<B: Backend> Denoiser<B> for SdxlCfg<'_, B> {
    fn denoise(&mut self, x: Tensor<B, 4>, sigma: f32) -> Result<Tensor<B, 4>, Error> {
        let mut entries: Vec<&CondEntry<B>> = Vec::new();
        if let Some(negative) = self.negative {
            entries.extend(negative);
        }
        let n_negative = entries.len();
        entries.extend(self.positive);
        let predictions = self.predict(&x, sigma, &entries);
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
