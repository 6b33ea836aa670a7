//! One step of each sampler, on latents of any shape, matching the diffusers scheduler of the
//! same name step for step.
//!
//! Reference: diffusers `EulerDiscreteScheduler.step`, `EulerAncestralDiscreteScheduler.step`,
//! `DPMSolverMultistepScheduler` (`algorithm_type="dpmsolver++"`, `solver_order=2`,
//! `final_sigmas_type="zero"`: `convert_model_output`, `dpm_solver_first_order_update`,
//! `multistep_dpm_solver_second_order_update`). Scalar coefficients are computed in float32 as
//! torch computes them on 0-d tensors.

use burn::prelude::*;
use burn::tensor::TensorData;

use super::NoiseSource;
use super::SamplerKind;
use super::schedule::Schedule;

/// What the denoiser predicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prediction {
    Epsilon,
    VPrediction,
}

/// The result of one step.
pub struct StepOutput<B: Backend> {
    /// The latents for the next step.
    pub next: Tensor<B, 4>,
    /// The model's estimate of the clean latents at this step (x₀), for previews.
    pub denoised: Tensor<B, 4>,
}

/// A sampler run: the schedule plus whatever state the method carries between steps.
pub struct Sampler<B: Backend> {
    kind: SamplerKind,
    prediction: Prediction,
    schedule: Schedule,
    /// DPM-Solver++: the previous step's x₀ prediction.
    previous_x0: Option<Tensor<B, 4>>,
}

impl<B: Backend> Sampler<B> {
    pub fn new(kind: SamplerKind, prediction: Prediction, schedule: Schedule) -> Self {
        Self {
            kind,
            prediction,
            schedule,
            previous_x0: None,
        }
    }

    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    pub fn steps(&self) -> usize {
        self.schedule.timesteps.len()
    }

    /// The Euler family works on x = x₀ + σ·ε and scales the denoiser's input by 1/√(σ²+1);
    /// DPM-Solver works on the variance-preserving x and passes it unchanged.
    pub fn scale_model_input(&self, x: Tensor<B, 4>, step: usize) -> Tensor<B, 4> {
        if self.kind == SamplerKind::DpmPp2m {
            return x;
        }
        let sigma = self.schedule.sigmas[step];
        x / (sigma * sigma + 1.0).sqrt()
    }

    /// img2img's start: clean latents noised to the run's first σ, as each scheduler's
    /// `add_noise` does at its `begin_index`: x₀ + σ·ε for the Euler family (which works on
    /// x₀ + σ·ε), α_t·x₀ + σ_t·ε for DPM-Solver (variance preserving).
    pub fn add_noise(&self, x0: Tensor<B, 4>, noise: Tensor<B, 4>) -> Tensor<B, 4> {
        let sigma = self.schedule.sigmas[0];
        match self.kind {
            SamplerKind::DpmPp2m => {
                let (alpha_t, sigma_t) = alpha_sigma(sigma);
                x0 * alpha_t + noise * sigma_t
            }
            SamplerKind::Euler | SamplerKind::EulerAncestral => x0 + noise * sigma,
        }
    }

    /// x at step `step` and the model output there → x at step `step + 1`. Ancestral steps
    /// draw fresh noise from `noise`, as diffusers draws from the pipeline's generator.
    pub fn step(
        &mut self,
        x: Tensor<B, 4>,
        model_output: Tensor<B, 4>,
        step: usize,
        noise: &mut dyn NoiseSource,
    ) -> StepOutput<B> {
        let sigma = self.schedule.sigmas[step];
        let sigma_next = self.schedule.sigmas[step + 1];
        match self.kind {
            SamplerKind::Euler | SamplerKind::EulerAncestral => {
                let x0 = match self.prediction {
                    Prediction::Epsilon => x.clone() - model_output * sigma,
                    Prediction::VPrediction => {
                        let s2 = sigma * sigma + 1.0;
                        model_output * (-sigma / s2.sqrt()) + x.clone() / s2
                    }
                };
                let derivative = (x.clone() - x0.clone()) / sigma;
                if self.kind == SamplerKind::Euler {
                    return StepOutput {
                        next: x + derivative * (sigma_next - sigma),
                        denoised: x0,
                    };
                }
                let sigma_up =
                    (sigma_next * sigma_next * (sigma * sigma - sigma_next * sigma_next)
                        / (sigma * sigma))
                        .sqrt();
                let sigma_down = (sigma_next * sigma_next - sigma_up * sigma_up).sqrt();
                let dims = x.dims();
                let noise = Tensor::<B, 4>::from_data(
                    TensorData::new(noise.randn(dims.iter().product()), dims),
                    &x.device(),
                );
                let next = x + derivative * (sigma_down - sigma) + noise * sigma_up;
                StepOutput { next, denoised: x0 }
            }
            SamplerKind::DpmPp2m => self.dpm_step(x, model_output, step),
        }
    }

    fn dpm_step(
        &mut self,
        x: Tensor<B, 4>,
        model_output: Tensor<B, 4>,
        step: usize,
    ) -> StepOutput<B> {
        let sigmas = &self.schedule.sigmas;
        let (alpha_s0, sigma_s0) = alpha_sigma(sigmas[step]);
        let x0 = match self.prediction {
            Prediction::Epsilon => (x.clone() - model_output * sigma_s0) / alpha_s0,
            Prediction::VPrediction => x.clone() * alpha_s0 - model_output * sigma_s0,
        };
        let (alpha_t, sigma_t) = alpha_sigma(sigmas[step + 1]);
        let lambda = |a: f32, s: f32| a.ln() - s.ln();
        let h = lambda(alpha_t, sigma_t) - lambda(alpha_s0, sigma_s0);
        let coef = alpha_t * ((-h).exp() - 1.0);
        let last = step + 1 == self.steps();
        // lower_order_final: with final_sigmas_type "zero" the last step is always first order.
        let out = match self.previous_x0.take() {
            Some(m1) if !last => {
                let (alpha_s1, sigma_s1) = alpha_sigma(sigmas[step - 1]);
                let h_0 = lambda(alpha_s0, sigma_s0) - lambda(alpha_s1, sigma_s1);
                let r0 = h_0 / h;
                let d1 = (x0.clone() - m1) * (1.0 / r0);
                x * (sigma_t / sigma_s0) - x0.clone() * coef - d1 * (0.5 * coef)
            }
            _ => x * (sigma_t / sigma_s0) - x0.clone() * coef,
        };
        self.previous_x0 = Some(x0.clone());
        StepOutput {
            next: out,
            denoised: x0,
        }
    }
}

/// σ (variance-exploding) → (α_t, σ_t) of the variance-preserving process.
fn alpha_sigma(sigma: f32) -> (f32, f32) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}
