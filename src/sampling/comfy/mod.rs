//! ComfyUI's sampling, for graphs: its model-sampling tables, its schedulers and its
//! k-diffusion samplers. The native API keeps diffusers' schedulers (`sampling::schedule`);
//! the two share the torch-compatible RNG and nothing else, because the numbers differ (σ
//! tables, timesteps, initial noise scale, CFG on x₀; see ../shared/reference/comfyui/
//! SEMANTICS.md §10).
//!
//! Reference: ComfyUI `comfy/model_sampling.py`, `comfy/samplers.py`,
//! `comfy/k_diffusion/sampling.py` (commit a125cd84).

mod brownian;
mod samplers;
mod schedulers;
mod uni_pc;

use super::schedule::torch_linspace;

pub use brownian::{BrownianNoise, seed_sequence_state};
pub use samplers::{Denoiser, KSamplerName, SamplerStep, sample};
pub use schedulers::{SchedulerName, karras, ksampler_sigmas};

/// What a discrete-time (UNet) model predicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prediction {
    /// `EPS`: the noise.
    Eps,
    /// `V_PREDICTION`: the velocity (σ_data 1).
    V,
}

/// How a model maps σ to its input and its output to x₀ (ComfyUI `model_sampling`).
#[derive(Clone, Debug)]
pub enum ModelSampling {
    /// `ModelSamplingDiscrete` (SD1.5, SDXL): 1000 training σ, with EPS (SDXL's own) or
    /// V_PREDICTION (the ModelSamplingDiscrete node).
    Discrete(DiscreteSigmas, Prediction),
    /// `ModelSamplingFlux` + `CONST` (FLUX.1 dev, Chroma): σ(t) = eᵘ/(eᵘ + 1/t − 1) on 10000 t.
    Flux { mu: f64, sigmas: Vec<f32> },
    /// `ModelSamplingDiscreteFlow` + `CONST` (FLUX.1 schnell, Z-Image; the AuraFlow and SD3
    /// nodes): σ(t) = s·t/(1 + (s − 1)·t) on 1000 t, timestep = σ · multiplier.
    DiscreteFlow {
        shift: f64,
        multiplier: f64,
        sigmas: Vec<f32>,
    },
}

/// `arange(1, n + 1) / n` in float32, as the flow tables are built.
fn flow_ts(n: usize) -> impl Iterator<Item = f32> {
    (1..=n).map(move |i| i as f32 / n as f32)
}

/// `flux_time_shift(mu, 1.0, t)`: the Python float eᵘ against the float32 t.
fn flux_time_shift(mu: f64, t: f32) -> f32 {
    let e = mu.exp() as f32;
    e / (e + (1.0 / t - 1.0))
}

/// `time_snr_shift(alpha, t)`.
fn time_snr_shift(alpha: f64, t: f32) -> f32 {
    if alpha == 1.0 {
        return t;
    }
    let a = alpha as f32;
    a * t / (1.0 + (a - 1.0) * t)
}

impl ModelSampling {
    /// SDXL's own: the linear schedule, EPS.
    pub fn sdxl() -> Self {
        ModelSampling::Discrete(DiscreteSigmas::linear(false), Prediction::Eps)
    }

    /// What the UNet's output is (flow models' velocity counts as EPS: never asked).
    pub fn prediction(&self) -> Prediction {
        match self {
            ModelSampling::Discrete(_, p) => *p,
            _ => Prediction::Eps,
        }
    }

    /// `ModelSamplingFlux.set_parameters(shift=mu)`.
    pub fn flux(mu: f64) -> Self {
        ModelSampling::Flux {
            mu,
            sigmas: flow_ts(10000).map(|t| flux_time_shift(mu, t)).collect(),
        }
    }

    /// `ModelSamplingDiscreteFlow.set_parameters(shift, multiplier)`.
    pub fn discrete_flow(shift: f64, multiplier: f64) -> Self {
        ModelSampling::DiscreteFlow {
            shift,
            multiplier,
            // sigma((arange(1, 1001) / 1000) * multiplier), all in float32.
            sigmas: flow_ts(1000)
                .map(|t| {
                    let m = multiplier as f32;
                    time_snr_shift(shift, t * m / m)
                })
                .collect(),
        }
    }

    /// The `ModelSamplingFlux` node's μ: linear in the packed token count of width × height.
    pub fn flux_mu(max_shift: f64, base_shift: f64, width: f64, height: f64) -> f64 {
        let m = (max_shift - base_shift) / (4096.0 - 256.0);
        let b = base_shift - m * 256.0;
        width * height / (8.0 * 8.0 * 2.0 * 2.0) * m + b
    }

    /// `percent_to_sigma`: σ at a fraction of the schedule (0 the start), in float64 as
    /// Python computes it for the flow samplings.
    pub fn percent_to_sigma(&self, percent: f64) -> f64 {
        if percent >= 1.0 {
            return 0.0;
        }
        let t = 1.0 - percent;
        match self {
            ModelSampling::Discrete(d, _) if percent > 0.0 => d.sigma((t * 999.0) as f32) as f64,
            ModelSampling::Discrete(..) => 999999999.9,
            _ if percent <= 0.0 => 1.0,
            ModelSampling::Flux { mu, .. } => mu.exp() / (mu.exp() + (1.0 / t - 1.0)),
            ModelSampling::DiscreteFlow { shift, .. } if *shift == 1.0 => t,
            ModelSampling::DiscreteFlow { shift, .. } => shift * t / (1.0 + (shift - 1.0) * t),
        }
    }

    /// Flow models predict velocity (`CONST`): x₀ = x − σ·v, x = σ·ε + (1 − σ)·x₀.
    pub fn is_flow(&self) -> bool {
        !matches!(self, ModelSampling::Discrete(..))
    }
}

/// `rescale_zero_terminal_snr_sigmas`: √ᾱ shifted so the last is 0 and scaled so the first
/// keeps its value, the last ᾱ then set to 4.8973451890853435e-08 (float64).
fn rescale_zero_terminal_snr(sigmas: &[f64]) -> Vec<f64> {
    let sqrt_alphas: Vec<f64> = sigmas
        .iter()
        .map(|s| (1.0 / (s * s + 1.0)).sqrt())
        .collect();
    let (first, last) = (sqrt_alphas[0], sqrt_alphas[sqrt_alphas.len() - 1]);
    let mut alphas: Vec<f64> = sqrt_alphas
        .iter()
        .map(|a| {
            let a = (a - last) * (first / (first - last));
            a * a
        })
        .collect();
    *alphas.last_mut().expect("1000 entries") = 4.8973451890853435e-08;
    alphas.iter().map(|a| ((1.0 - a) / a).sqrt()).collect()
}

/// `ModelSamplingDiscrete`'s tables: betas = linspace(√0.00085, √0.012, 1000)² in float64 (what
/// ComfyUI calls "linear"), σ = √((1−ᾱ)/ᾱ), rescaled to zero terminal SNR when `zsnr`
/// (`rescale_zero_terminal_snr_sigmas`); σ and ln σ are then stored as float32.
#[derive(Clone, Debug)]
pub struct DiscreteSigmas {
    pub sigmas: Vec<f32>,
    pub log_sigmas: Vec<f32>,
}

impl DiscreteSigmas {
    pub fn linear(zsnr: bool) -> Self {
        let betas: Vec<f64> = torch_linspace(0.00085f64.sqrt(), 0.012f64.sqrt(), 1000)
            .into_iter()
            .map(|b| b * b)
            .collect();
        let mut cumprod = 1.0f64;
        let sigmas64: Vec<f64> = betas
            .iter()
            .map(|b| {
                cumprod *= 1.0 - b;
                ((1.0 - cumprod) / cumprod).sqrt()
            })
            .collect();
        let sigmas64 = if zsnr {
            rescale_zero_terminal_snr(&sigmas64)
        } else {
            sigmas64
        };
        Self {
            sigmas: sigmas64.iter().map(|&s| s as f32).collect(),
            log_sigmas: sigmas64.iter().map(|s| s.ln() as f32).collect(),
        }
    }

    /// The nearest training timestep in log σ (`timestep`: argmin, first on ties).
    pub fn timestep(&self, sigma: f32) -> usize {
        let log_sigma = sigma.ln();
        let mut best = (f32::INFINITY, 0);
        for (i, &l) in self.log_sigmas.iter().enumerate() {
            let d = (log_sigma - l).abs();
            if d < best.0 {
                best = (d, i);
            }
        }
        best.1
    }

    /// σ at a fractional timestep, interpolated in log σ (`sigma`).
    pub fn sigma(&self, t: f32) -> f32 {
        let t = t.clamp(0.0, (self.sigmas.len() - 1) as f32);
        let (low, high, w) = (t.floor() as usize, t.ceil() as usize, t.fract());
        ((1.0 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()
    }
}

impl ModelSampling {
    /// The σ table a scheduler picks from.
    pub fn sigmas(&self) -> &[f32] {
        match self {
            ModelSampling::Discrete(d, _) => &d.sigmas,
            ModelSampling::Flux { sigmas, .. } | ModelSampling::DiscreteFlow { sigmas, .. } => {
                sigmas
            }
        }
    }

    pub fn sigma_min(&self) -> f32 {
        self.sigmas()[0]
    }

    pub fn sigma_max(&self) -> f32 {
        *self.sigmas().last().expect("a σ table")
    }

    /// What the network is given as its timestep at σ.
    pub fn timestep(&self, sigma: f32) -> f32 {
        match self {
            ModelSampling::Discrete(d, _) => d.timestep(sigma) as f32,
            ModelSampling::Flux { .. } => sigma,
            ModelSampling::DiscreteFlow { multiplier, .. } => sigma * *multiplier as f32,
        }
    }

    /// σ at a (fractional) timestep.
    pub fn sigma(&self, t: f32) -> f32 {
        match self {
            ModelSampling::Discrete(d, _) => d.sigma(t),
            ModelSampling::Flux { mu, .. } => flux_time_shift(*mu, t),
            ModelSampling::DiscreteFlow {
                shift, multiplier, ..
            } => time_snr_shift(*shift, t / *multiplier as f32),
        }
    }

    /// The sampler's starting x (`noise_scaling`) as (noise factor, latent factor): EPS
    /// models start from ε·√(1+σ₀²) + latent when the schedule starts at the table's σ_max
    /// (`max_denoise`), else ε·σ₀ + latent; flow models from σ₀·ε + (1 − σ₀)·latent.
    pub fn noise_scaling(&self, sigma0: f32, max_denoise: bool) -> (f32, f32) {
        match self {
            ModelSampling::Discrete(..) if max_denoise => ((1.0 + sigma0 * sigma0).sqrt(), 1.0),
            ModelSampling::Discrete(..) => (sigma0, 1.0),
            _ => (sigma0, 1.0 - sigma0),
        }
    }

    /// `Sampler.max_denoise`: σ₀ equals (rel. tol. 1e-5) or exceeds the table's σ_max.
    pub fn is_max_denoise(&self, sigma0: f32) -> bool {
        let max = self.sigma_max() as f64;
        let s = sigma0 as f64;
        (s - max).abs() <= 1e-5 * s.abs().max(max.abs()) || s > max
    }
}
