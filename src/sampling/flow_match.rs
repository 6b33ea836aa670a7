//! Flow-matching schedules (Flux, Chroma, Z-Image): σ from 1 to 0, `x_σ = σ·noise + (1−σ)·x0`,
//! the model predicts the velocity `noise − x0`, and an Euler step is `x + (σ_next − σ)·v`.
//!
//! Reference: diffusers `schedulers/scheduling_flow_match_euler_discrete.py` (`set_timesteps`,
//! `time_shift`, `step`) with the σ the pipelines hand it (`linspace(1, 1/N, N)`,
//! `pipeline_flux.py calculate_shift`). numpy computes the shifted σ in float32 (the array's
//! dtype wins over Python scalars), and so does this.

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::Error;

/// The fields of a `FlowMatchEulerDiscreteScheduler` `scheduler_config.json` this build follows.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct FlowMatchConfig {
    pub num_train_timesteps: usize,
    /// The static shift, when `use_dynamic_shifting` is off.
    pub shift: f32,
    /// Shift by μ from the image's token count (FLUX.1-dev, Chroma).
    pub use_dynamic_shifting: bool,
    pub base_shift: f64,
    pub max_shift: f64,
    pub base_image_seq_len: usize,
    pub max_image_seq_len: usize,
    pub time_shift_type: String,
}

impl Default for FlowMatchConfig {
    /// FLUX.1-dev's `scheduler/scheduler_config.json`.
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            shift: 3.0,
            use_dynamic_shifting: true,
            base_shift: 0.5,
            max_shift: 1.15,
            base_image_seq_len: 256,
            max_image_seq_len: 4096,
            time_shift_type: "exponential".into(),
        }
    }
}

impl FlowMatchConfig {
    /// FLUX.1-schnell's: a fixed schedule (static shift 1).
    pub fn schnell() -> Self {
        Self {
            shift: 1.0,
            use_dynamic_shifting: false,
            ..Self::default()
        }
    }

    /// μ of the dynamic shift, linear in the number of packed image tokens (diffusers
    /// `calculate_shift`, in f64 like Python).
    pub fn mu(&self, image_seq_len: usize) -> f64 {
        let m = (self.max_shift - self.base_shift)
            / (self.max_image_seq_len - self.base_image_seq_len) as f64;
        let b = self.base_shift - m * self.base_image_seq_len as f64;
        image_seq_len as f64 * m + b
    }

    /// σ of each of the `steps` steps, then the final 0 (N+1 values).
    pub fn sigmas(
        &self,
        steps: usize,
        image_seq_len: usize,
        linspace: Linspace,
    ) -> Result<Vec<f32>, Error> {
        if self.time_shift_type != "exponential" {
            return Err(Error::config(format!(
                "scheduler time_shift_type `{}` is not supported",
                self.time_shift_type
            )));
        }
        let mut sigmas = linspace.values(steps);
        if self.use_dynamic_shifting {
            // e^μ / (e^μ + (1/σ − 1))
            let e = self.mu(image_seq_len).exp() as f32;
            sigmas
                .iter_mut()
                .for_each(|s| *s = e / (e + (1.0 / *s - 1.0)));
        } else {
            // shift·σ / (1 + (shift − 1)·σ); `shift - 1` is a Python float op.
            let (shift, shift_less_one) = (self.shift, (self.shift as f64 - 1.0) as f32);
            sigmas
                .iter_mut()
                .for_each(|s| *s = shift * *s / (1.0 + shift_less_one * *s));
        }
        sigmas.push(0.0);
        Ok(sigmas)
    }

    /// The timestep the pipelines hand the transformer for σ: `(σ·1000)/1000` in f32, as
    /// diffusers' `t = σ·num_train_timesteps` and `timestep / 1000` round it.
    pub fn model_time(&self, sigma: f32) -> f32 {
        sigma * self.num_train_timesteps as f32 / 1000.0
    }
}

/// How a pipeline computes the unshifted σ, `linspace(1, 1/N, N)`, before the scheduler shifts
/// them (the last bits differ).
#[derive(Clone, Copy, Debug)]
pub enum Linspace {
    /// `np.linspace` in f64, then f32 (`FluxPipeline`, `ChromaPipeline`).
    Numpy,
    /// `torch.linspace` in f32, which fills the second half backwards from the end
    /// (`ZImagePipeline`, ATen `linspace` kernel).
    Torch,
}

impl Linspace {
    fn values(self, n: usize) -> Vec<f32> {
        if n == 1 {
            return vec![1.0];
        }
        match self {
            Linspace::Numpy => {
                let (start, stop) = (1.0f64, 1.0 / n as f64);
                let step = (stop - start) / (n - 1) as f64;
                (0..n)
                    .map(|i| if i == n - 1 { stop } else { start + i as f64 * step } as f32)
                    .collect()
            }
            Linspace::Torch => {
                let (start, end) = (1.0f32, (1.0 / n as f64) as f32);
                let step = (end - start) / (n - 1) as f32;
                (0..n)
                    .map(|i| {
                        if i < n / 2 {
                            start + step * i as f32
                        } else {
                            end - step * (n - i - 1) as f32
                        }
                    })
                    .collect()
            }
        }
    }
}

/// One Euler step `x + (σ_next − σ)·v`, and the clean-latent estimate `x − σ·v` (previews).
pub fn euler_step<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    velocity: Tensor<B, D>,
    sigma: f32,
    sigma_next: f32,
) -> (Tensor<B, D>, Tensor<B, D>) {
    let denoised = x.clone() - velocity.clone() * sigma;
    (x + velocity * (sigma_next - sigma), denoised)
}
