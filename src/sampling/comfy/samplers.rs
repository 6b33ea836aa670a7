//! ComfyUI's k-diffusion samplers (`comfy/k_diffusion/sampling.py`), over a denoiser that gives
//! the CFG-combined x₀ at (x, σ). Scalars are float32, as torch computes on 0-d float32 σ.

use burn::prelude::*;
use burn::tensor::TensorData;

use super::ModelSampling;
use super::brownian::BrownianNoise;
use super::uni_pc::UniPcVariant;
use crate::Error;
use crate::pipelines::Flow;
use crate::sampling::TorchGenerator;

/// D(x, σ): the model's (CFG-combined) estimate of the clean latents.
pub trait Denoiser<B: Backend> {
    fn denoise(&mut self, x: Tensor<B, 4>, sigma: f32) -> Result<Tensor<B, 4>, Error>;
}

/// What a sampler reports at each step (`callback({'x', 'i', 'denoised'})`).
pub struct SamplerStep<'a, B: Backend> {
    /// 0-based.
    pub index: usize,
    pub total: usize,
    /// x entering the step.
    pub x: &'a Tensor<B, 4>,
    pub denoised: &'a Tensor<B, 4>,
}

/// The samplers this build runs (ComfyUI `KSAMPLER_NAMES` + "ddim"), by their graph names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KSamplerName {
    Euler,
    EulerAncestral,
    Heun,
    Dpm2,
    Dpm2Ancestral,
    Lms,
    DpmPpSde,
    DpmPp2m,
    DpmPp2mSde,
    ResMultistep,
    Ddim,
    UniPc,
    UniPcBh2,
}

impl KSamplerName {
    /// In `SAMPLER_NAMES` order.
    pub const ALL: [KSamplerName; 13] = [
        KSamplerName::Euler,
        KSamplerName::EulerAncestral,
        KSamplerName::Heun,
        KSamplerName::Dpm2,
        KSamplerName::Dpm2Ancestral,
        KSamplerName::Lms,
        KSamplerName::DpmPpSde,
        KSamplerName::DpmPp2m,
        KSamplerName::DpmPp2mSde,
        KSamplerName::ResMultistep,
        KSamplerName::Ddim,
        KSamplerName::UniPc,
        KSamplerName::UniPcBh2,
    ];

    pub fn name(self) -> &'static str {
        match self {
            KSamplerName::Euler => "euler",
            KSamplerName::EulerAncestral => "euler_ancestral",
            KSamplerName::Heun => "heun",
            KSamplerName::Dpm2 => "dpm_2",
            KSamplerName::Dpm2Ancestral => "dpm_2_ancestral",
            KSamplerName::Lms => "lms",
            KSamplerName::DpmPpSde => "dpmpp_sde",
            KSamplerName::DpmPp2m => "dpmpp_2m",
            KSamplerName::DpmPp2mSde => "dpmpp_2m_sde",
            KSamplerName::ResMultistep => "res_multistep",
            KSamplerName::Ddim => "ddim",
            KSamplerName::UniPc => "uni_pc",
            KSamplerName::UniPcBh2 => "uni_pc_bh2",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// `KSampler.DISCARD_PENULTIMATE_SIGMA_SAMPLERS`.
    pub fn discards_penultimate_sigma(self) -> bool {
        matches!(
            self,
            KSamplerName::Dpm2
                | KSamplerName::Dpm2Ancestral
                | KSamplerName::UniPc
                | KSamplerName::UniPcBh2
        )
    }
}

/// Runs `sampler` from x over `sigmas`; `seed` feeds ancestral noise, which ComfyUI draws from
/// a fresh generator seeded like the initial noise (`default_noise_sampler`; on the CPU, so
/// the first draw equals the initial noise). On flow models (`CONST`) the ancestral samplers
/// are ComfyUI's `_RF` variants and the SDE ones use flow's half-log-SNR, log((1 − σ)/σ).
/// `on_step` may cancel between steps.
pub fn sample<B: Backend>(
    sampler: KSamplerName,
    sampling: &ModelSampling,
    model: &mut dyn Denoiser<B>,
    mut x: Tensor<B, 4>,
    sigmas: &[f32],
    seed: u64,
    on_step: &mut dyn FnMut(SamplerStep<B>) -> Flow,
) -> Result<Tensor<B, 4>, Error> {
    let total = sigmas.len().saturating_sub(1);
    if let KSamplerName::UniPc | KSamplerName::UniPcBh2 = sampler {
        let variant = match sampler {
            KSamplerName::UniPc => UniPcVariant::Bh1,
            _ => UniPcVariant::Bh2,
        };
        return super::uni_pc::sample_uni_pc(model, x, sigmas, variant, on_step);
    }
    // SDE samplers: Brownian noise between σ_min (of the σ > 0) and σ_max, on the CPU.
    let mut brownian =
        matches!(sampler, KSamplerName::DpmPpSde | KSamplerName::DpmPp2mSde).then(|| {
            let positive = sigmas.iter().copied().filter(|&s| s > 0.0);
            let sigma_min = positive.fold(f32::INFINITY, f32::min);
            let sigma_max = sigmas.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            BrownianNoise::new(sigma_min, sigma_max, x.dims().iter().product(), seed)
        });
    let flow = sampling.is_flow();
    let sde = brownian.is_some();
    // `sigma_to_half_log_snr` and its inverse.
    let lambda = |s: f32| if flow { -(s / (1.0 - s)).ln() } else { -s.ln() };
    let sigma_of = |l: f32| {
        if flow {
            1.0 / (1.0 + l.exp())
        } else {
            (-l).exp()
        }
    };
    // `offset_first_sigma_for_snr` (after the Brownian tree took σ_max): a flow σ₀ of 1 has
    // no log-SNR.
    let offset: Vec<f32>;
    let sigmas = if flow && sde && sigmas.len() > 1 && sigmas[0] >= 1.0 {
        offset = std::iter::once(sampling.percent_to_sigma(1e-4) as f32)
            .chain(sigmas[1..].iter().copied())
            .collect();
        &offset[..]
    } else {
        sigmas
    };
    let mut brownian_noise = |sigma: f32, sigma_next: f32, like: &Tensor<B, 4>| {
        let values = brownian
            .as_mut()
            .expect("an SDE sampler")
            .sample(sigma, sigma_next);
        Tensor::<B, 4>::from_data(TensorData::new(values, like.dims()), &like.device())
    };
    let mut noise = TorchGenerator::new(seed);
    let mut randn = |like: &Tensor<B, 4>| {
        let dims = like.dims();
        Tensor::<B, 4>::from_data(
            TensorData::new(noise.randn(dims.iter().product()), dims),
            &like.device(),
        )
    };
    let mut report =
        |index: usize, x: &Tensor<B, 4>, denoised: &Tensor<B, 4>| match on_step(SamplerStep {
            index,
            total,
            x,
            denoised,
        }) {
            Flow::Continue => Ok(()),
            Flow::Cancel => Err(Error::Cancelled),
        };
    // Multistep history: the previous x₀ and derivatives.
    let mut old_denoised: Option<Tensor<B, 4>> = None;
    let mut derivatives: Vec<Tensor<B, 4>> = Vec::new();
    let mut h_last: Option<f32> = None;
    for i in 0..total {
        let (sigma, sigma_next) = (sigmas[i], sigmas[i + 1]);
        let denoised = model.denoise(x.clone(), sigma)?;
        report(i, &x, &denoised)?;
        let d = to_d(&x, sigma, &denoised);
        x = match sampler {
            // `ddim` is `ksampler("euler")` (its inpaint noise option needs a mask).
            KSamplerName::Euler | KSamplerName::Ddim => x + d * (sigma_next - sigma),
            KSamplerName::EulerAncestral if flow => {
                if sigma_next == 0.0 {
                    denoised.clone()
                } else {
                    let step = RfStep::new(sigma, sigma_next);
                    let ratio = step.sigma_down / sigma;
                    let x = x * ratio + denoised.clone() * (1.0 - ratio);
                    x * step.scale + randn(&denoised) * step.renoise
                }
            }
            KSamplerName::EulerAncestral => {
                let (sigma_down, sigma_up) = ancestral_step(sigma, sigma_next);
                if sigma_down == 0.0 {
                    denoised.clone()
                } else {
                    x + d * (sigma_down - sigma) + randn(&denoised) * sigma_up
                }
            }
            KSamplerName::Heun => {
                let dt = sigma_next - sigma;
                if sigma_next == 0.0 {
                    x + d * dt
                } else {
                    let x2 = x.clone() + d.clone() * dt;
                    let denoised2 = model.denoise(x2.clone(), sigma_next)?;
                    let d2 = to_d(&x2, sigma_next, &denoised2);
                    x + (d + d2) / 2.0 * dt
                }
            }
            KSamplerName::Dpm2 => {
                if sigma_next == 0.0 {
                    x + d * (sigma_next - sigma)
                } else {
                    dpm_solver_2(model, x, d, sigma, sigma_next)?
                }
            }
            KSamplerName::Dpm2Ancestral if flow => {
                let step = RfStep::new(sigma, sigma_next);
                if step.sigma_down == 0.0 {
                    x + d * (step.sigma_down - sigma)
                } else {
                    let x = dpm_solver_2(model, x, d, sigma, step.sigma_down)?;
                    x * step.scale + randn(&denoised) * step.renoise
                }
            }
            KSamplerName::Dpm2Ancestral => {
                let (sigma_down, sigma_up) = ancestral_step(sigma, sigma_next);
                if sigma_down == 0.0 {
                    x + d * (sigma_down - sigma)
                } else {
                    let x = dpm_solver_2(model, x, d, sigma, sigma_down)?;
                    x + randn(&denoised) * sigma_up
                }
            }
            KSamplerName::Lms => {
                derivatives.push(d);
                if derivatives.len() > LMS_ORDER {
                    derivatives.remove(0);
                }
                if sigma_next == 0.0 {
                    denoised.clone()
                } else {
                    let order = (i + 1).min(LMS_ORDER);
                    let mut next = x;
                    for (j, d) in derivatives.iter().rev().enumerate().take(order) {
                        let coeff = linear_multistep_coeff(order, sigmas, i, j) as f32;
                        next = next + d.clone() * coeff;
                    }
                    next
                }
            }
            KSamplerName::DpmPp2m => {
                let (t, t_next) = (-sigma.ln(), -sigma_next.ln());
                let h = t_next - t;
                let ratio = (-t_next).exp() / (-t).exp();
                match old_denoised.as_ref().filter(|_| sigma_next != 0.0) {
                    None => x * ratio - denoised.clone() * (-h).exp_m1(),
                    Some(old) => {
                        let h_last = t + sigmas[i - 1].ln();
                        let r = h_last / h;
                        let denoised_d = denoised.clone() * (1.0 + 1.0 / (2.0 * r))
                            - old.clone() * (1.0 / (2.0 * r));
                        x * ratio - denoised_d * (-h).exp_m1()
                    }
                }
            }
            // η = 1, r = ½; λ the half-log-SNR.
            KSamplerName::DpmPpSde => {
                if sigma_next == 0.0 {
                    denoised.clone()
                } else {
                    let (lambda_s, lambda_t) = (lambda(sigma), lambda(sigma_next));
                    let h = lambda_t - lambda_s;
                    let lambda_s_1 = lambda_s + 0.5 * h;
                    let sigma_s_1 = sigma_of(lambda_s_1);
                    let (alpha_s, alpha_s_1, alpha_t) = (
                        sigma * lambda_s.exp(),
                        sigma_s_1 * lambda_s_1.exp(),
                        sigma_next * lambda_t.exp(),
                    );
                    // Step 1, to σ_s1.
                    let (sd, su) = ancestral_step((-lambda_s).exp(), (-lambda_s_1).exp());
                    let h_ = -sd.ln() - lambda_s;
                    let x2 = x.clone() * ((alpha_s_1 / alpha_s) * (-h_).exp())
                        - denoised.clone() * (alpha_s_1 * (-h_).exp_m1())
                        + brownian_noise(sigma, sigma_s_1, &x) * (alpha_s_1 * su);
                    let denoised2 = model.denoise(x2, sigma_s_1)?;
                    // Step 2, to σ_next.
                    let (sd, su) = ancestral_step((-lambda_s).exp(), (-lambda_t).exp());
                    let h_ = -sd.ln() - lambda_s;
                    // (1 − fac)·D + fac·D₂ with fac = 1/(2r) = 1.
                    let denoised_d = denoised2;
                    x.clone() * ((alpha_t / alpha_s) * (-h_).exp())
                        - denoised_d * (alpha_t * (-h_).exp_m1())
                        + brownian_noise(sigma, sigma_next, &x) * (alpha_t * su)
                }
            }
            // η = 1, the midpoint solver.
            KSamplerName::DpmPp2mSde => {
                if sigma_next == 0.0 {
                    denoised.clone()
                } else {
                    let (lambda_s, lambda_t) = (lambda(sigma), lambda(sigma_next));
                    let h = lambda_t - lambda_s;
                    let h_eta = h * 2.0;
                    let alpha_t = sigma_next * lambda_t.exp();
                    let mut next = x.clone() * (sigma_next / sigma * (-h).exp())
                        + denoised.clone() * (alpha_t * -(-h_eta).exp_m1());
                    if let (Some(old), Some(h_last)) = (&old_denoised, h_last) {
                        let r = h_last / h;
                        next = next
                            + (denoised.clone() - old.clone())
                                * (0.5 * alpha_t * -(-h_eta).exp_m1() * (1.0 / r));
                    }
                    h_last = Some(h);
                    next + brownian_noise(sigma, sigma_next, &x)
                        * (sigma_next * (-(-2.0 * h).exp_m1()).sqrt())
                }
            }
            // η = 0: σ_down = σ_next, no noise.
            KSamplerName::ResMultistep => match old_denoised.as_ref().filter(|_| sigma_next != 0.0)
            {
                None => x + d * (sigma_next - sigma),
                Some(old) => {
                    let t = -sigma.ln();
                    // old_sigma_down is the previous step's σ_next, i.e. σ.
                    let (t_old, t_next, t_prev) = (t, -sigma_next.ln(), -sigmas[i - 1].ln());
                    let h = t_next - t;
                    let c2 = (t_prev - t_old) / h;
                    let phi1 = (-h).exp_m1() / -h;
                    let phi2 = (phi1 - 1.0) / -h;
                    let nan_to_zero = |v: f32| if v.is_nan() { 0.0 } else { v };
                    let b1 = nan_to_zero(phi1 - phi2 / c2);
                    let b2 = nan_to_zero(phi2 / c2);
                    x * (-h).exp() + (denoised.clone() * b1 + old.clone() * b2) * h
                }
            },
            KSamplerName::UniPc | KSamplerName::UniPcBh2 => unreachable!("sampled above"),
        };
        old_denoised = Some(denoised);
    }
    Ok(x)
}

const LMS_ORDER: usize = 4;

/// `to_d`: the Karras ODE derivative (x − D)/σ.
fn to_d<B: Backend>(x: &Tensor<B, 4>, sigma: f32, denoised: &Tensor<B, 4>) -> Tensor<B, 4> {
    (x.clone() - denoised.clone()) / sigma
}

/// `get_ancestral_step` with η = 1: (σ_down, σ_up).
fn ancestral_step(sigma: f32, sigma_next: f32) -> (f32, f32) {
    let sigma_up = sigma_next.min(
        (sigma_next * sigma_next * (sigma * sigma - sigma_next * sigma_next) / (sigma * sigma))
            .sqrt(),
    );
    let sigma_down = (sigma_next * sigma_next - sigma_up * sigma_up).sqrt();
    (sigma_down, sigma_up)
}

/// The `_RF` samplers' ancestral step (η = 1) on a flow model: the σ to step down to, the
/// rescale of x from it to σ_next's signal level, and the noise to add.
struct RfStep {
    sigma_down: f32,
    scale: f32,
    renoise: f32,
}

impl RfStep {
    fn new(sigma: f32, sigma_next: f32) -> Self {
        let downstep_ratio = 1.0 + (sigma_next / sigma - 1.0);
        let sigma_down = sigma_next * downstep_ratio;
        let (alpha_next, alpha_down) = (1.0 - sigma_next, 1.0 - sigma_down);
        let renoise = (sigma_next * sigma_next
            - sigma_down * sigma_down * alpha_next * alpha_next / (alpha_down * alpha_down))
            .sqrt();
        Self {
            sigma_down,
            scale: alpha_next / alpha_down,
            renoise,
        }
    }
}

/// DPM-Solver-2's step from σ to `target` through the log-midpoint σ_mid.
fn dpm_solver_2<B: Backend>(
    model: &mut dyn Denoiser<B>,
    x: Tensor<B, 4>,
    d: Tensor<B, 4>,
    sigma: f32,
    target: f32,
) -> Result<Tensor<B, 4>, Error> {
    // sigma.log().lerp(target.log(), 0.5).exp()
    let (a, b) = (sigma.ln(), target.ln());
    let sigma_mid = (a + 0.5 * (b - a)).exp();
    let x2 = x.clone() + d * (sigma_mid - sigma);
    let denoised2 = model.denoise(x2.clone(), sigma_mid)?;
    Ok(x + to_d(&x2, sigma_mid, &denoised2) * (target - sigma))
}

/// `linear_multistep_coeff`: ∫ over [σ_i, σ_{i+1}] of the Lagrange basis polynomial j on the
/// last `order` σ. ComfyUI integrates with `scipy.integrate.quad`; the integrand is a
/// polynomial of degree < 4, which 3-point Gauss–Legendre integrates exactly.
fn linear_multistep_coeff(order: usize, t: &[f32], i: usize, j: usize) -> f64 {
    let t: Vec<f64> = t.iter().map(|&v| v as f64).collect();
    let basis = |tau: f64| {
        (0..order)
            .filter(|&k| k != j)
            .map(|k| (tau - t[i - k]) / (t[i - j] - t[i - k]))
            .product::<f64>()
    };
    let (a, b) = (t[i], t[i + 1]);
    let (mid, half) = ((a + b) / 2.0, (b - a) / 2.0);
    let node = (3.0f64 / 5.0).sqrt();
    half * (5.0 / 9.0 * basis(mid - half * node)
        + 8.0 / 9.0 * basis(mid)
        + 5.0 / 9.0 * basis(mid + half * node))
}
