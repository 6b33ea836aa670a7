//! Discrete-time (DDPM-trained) noise schedules: which timesteps and sigmas a run of N steps
//! visits, exactly as diffusers' schedulers compute them.
//!
//! Reference: diffusers `schedulers/scheduling_euler_discrete.py` (`set_timesteps`,
//! `_sigma_to_t`, `_convert_to_karras`), `scheduling_dpmsolver_multistep.py` (`set_timesteps`,
//! whose "leading" spacing divides by N+1 and whose Karras range is the full training range).
//! Betas and ᾱ are float32 as in torch; interpolation and the Karras ramp are float64 as in
//! numpy; the result is cast to float32.

use serde::{Deserialize, Serialize};

use super::{SamplerKind, ScheduleKind};
use crate::Error;

/// The fields of a diffusers `scheduler_config.json` that the discrete schedulers use.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct SchedulerConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f32,
    pub beta_end: f32,
    pub beta_schedule: String,
    pub steps_offset: usize,
    pub timestep_spacing: String,
    pub prediction_type: String,
}

impl Default for SchedulerConfig {
    /// Stable Diffusion XL base 1.0 `scheduler/scheduler_config.json` (EulerDiscreteScheduler).
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: "scaled_linear".into(),
            steps_offset: 1,
            timestep_spacing: "leading".into(),
            prediction_type: "epsilon".into(),
        }
    }
}

/// The sigmas and timesteps of one run.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    /// The timestep given to the denoiser at each step (N values).
    pub timesteps: Vec<f32>,
    /// σ at each step, then the final σ (N+1 values).
    pub sigmas: Vec<f32>,
    /// What the initial noise is multiplied by.
    pub init_noise_sigma: f32,
}

impl Schedule {
    /// The run from step `start` on: img2img's cut (diffusers `get_timesteps`, which slices
    /// `timesteps[t_start * order:]` and sets the scheduler's `begin_index` there; every
    /// sampler here has order 1).
    pub fn from_step(mut self, start: usize) -> Self {
        self.timesteps.drain(..start);
        self.sigmas.drain(..start);
        self
    }
}

impl SchedulerConfig {
    /// σ_t = √((1-ᾱ_t)/ᾱ_t) for every training timestep, in float32.
    fn training_sigmas(&self) -> Result<Vec<f32>, Error> {
        let n = self.num_train_timesteps;
        let betas: Vec<f32> = match self.beta_schedule.as_str() {
            "scaled_linear" => torch_linspace(self.beta_start.sqrt(), self.beta_end.sqrt(), n)
                .into_iter()
                .map(|b| b * b)
                .collect(),
            "linear" => torch_linspace(self.beta_start, self.beta_end, n),
            other => {
                return Err(Error::config(format!(
                    "beta_schedule `{other}` is not supported"
                )));
            }
        };
        let mut cumprod = 1.0f32;
        Ok(betas
            .iter()
            .map(|b| {
                cumprod *= 1.0 - b;
                ((1.0 - cumprod) / cumprod).sqrt()
            })
            .collect())
    }

    pub fn schedule(
        &self,
        sampler: SamplerKind,
        kind: ScheduleKind,
        steps: usize,
    ) -> Result<Schedule, Error> {
        if steps == 0 {
            return Err(Error::request("steps must be at least 1"));
        }
        let train = self.training_sigmas()?;
        let log_sigmas: Vec<f32> = train.iter().map(|s| s.ln()).collect();
        let n_train = self.num_train_timesteps;
        let multistep = sampler == SamplerKind::DpmPp2m;

        let (timesteps, sigmas): (Vec<f64>, Vec<f64>) = match kind {
            ScheduleKind::Normal => {
                let ts = self.spaced_timesteps(steps, multistep)?;
                let sig = ts.iter().map(|&t| interp(t, &train)).collect();
                (ts, sig)
            }
            ScheduleKind::Karras => {
                // Euler ramps between the σ of the spaced timesteps; DPM-Solver over the whole
                // training range.
                let (lo, hi) = if multistep {
                    (train[0] as f64, train[n_train - 1] as f64)
                } else {
                    let ts = self.spaced_timesteps(steps, false)?;
                    (interp(ts[steps - 1], &train), interp(ts[0], &train))
                };
                let sig = karras(lo, hi, steps);
                let mut ts: Vec<f64> = sig.iter().map(|&s| sigma_to_t(s, &log_sigmas)).collect();
                if multistep {
                    ts.iter_mut().for_each(|t| *t = t.round_ties_even());
                }
                (ts, sig)
            }
        };
        let mut sigmas: Vec<f32> = sigmas.into_iter().map(|s| s as f32).collect();
        sigmas.push(0.0);
        let max_sigma = sigmas.iter().copied().fold(0.0f32, f32::max);
        let init_noise_sigma = match (multistep, self.timestep_spacing.as_str()) {
            (true, _) => 1.0,
            (false, "linspace" | "trailing") => max_sigma,
            (false, _) => (max_sigma * max_sigma + 1.0).sqrt(),
        };
        Ok(Schedule {
            timesteps: timesteps.into_iter().map(|t| t as f32).collect(),
            sigmas,
            init_noise_sigma,
        })
    }

    /// The timesteps of `timestep_spacing`. DPMSolverMultistep spaces N+1 points and drops the
    /// last ("leading", "linspace"), and rounds to integers.
    fn spaced_timesteps(&self, steps: usize, multistep: bool) -> Result<Vec<f64>, Error> {
        let n_train = self.num_train_timesteps as f64;
        let offset = self.steps_offset as f64;
        let ts: Vec<f64> = match (self.timestep_spacing.as_str(), multistep) {
            ("leading", false) => {
                let ratio = (self.num_train_timesteps / steps) as f64;
                (0..steps)
                    .rev()
                    .map(|i| (i as f64 * ratio).round_ties_even() + offset)
                    .collect()
            }
            ("leading", true) => {
                let ratio = (self.num_train_timesteps / (steps + 1)) as f64;
                (1..=steps)
                    .rev()
                    .map(|i| (i as f64 * ratio).round_ties_even() + offset)
                    .collect()
            }
            ("linspace", false) => linspace_f64(0.0, n_train - 1.0, steps)
                .into_iter()
                .rev()
                .map(|t| t as f32 as f64)
                .collect(),
            ("linspace", true) => linspace_f64(0.0, n_train - 1.0, steps + 1)
                .into_iter()
                .rev()
                .take(steps)
                .map(f64::round_ties_even)
                .collect(),
            ("trailing", _) => {
                let ratio = n_train / steps as f64;
                (0..steps)
                    .map(|i| (n_train - i as f64 * ratio).round_ties_even() - 1.0)
                    .collect()
            }
            (other, _) => {
                return Err(Error::config(format!(
                    "timestep_spacing `{other}` is not supported"
                )));
            }
        };
        Ok(ts)
    }
}

/// The float types `torch.linspace` is run in here.
pub(crate) trait LinspaceFloat:
    Copy
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
{
    fn from_count(n: usize) -> Self;
}

impl LinspaceFloat for f32 {
    fn from_count(n: usize) -> Self {
        n as f32
    }
}

impl LinspaceFloat for f64 {
    fn from_count(n: usize) -> Self {
        n as f64
    }
}

/// `torch.linspace(start, end, n)` as ATen's CPU kernel computes it, in the output's
/// precision: the first half counts up from `start`, the second half down from `end`.
pub(crate) fn torch_linspace<T: LinspaceFloat>(start: T, end: T, n: usize) -> Vec<T> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / T::from_count(n - 1);
    let half = n / 2;
    (0..n)
        .map(|i| {
            if i < half {
                start + step * T::from_count(i)
            } else {
                end - step * T::from_count(n - 1 - i)
            }
        })
        .collect()
}

/// `np.linspace`.
fn linspace_f64(start: f64, end: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f64;
    let mut v: Vec<f64> = (0..n).map(|i| start + i as f64 * step).collect();
    v[n - 1] = end;
    v
}

/// `np.interp(t, arange(len), values)`.
fn interp(t: f64, values: &[f32]) -> f64 {
    let last = values.len() - 1;
    if t <= 0.0 {
        return values[0] as f64;
    }
    if t >= last as f64 {
        return values[last] as f64;
    }
    let i = t.floor() as usize;
    let frac = t - i as f64;
    let (a, b) = (values[i] as f64, values[i + 1] as f64);
    a + frac * (b - a)
}

/// Karras et al. 2022 ρ=7 ramp from σ_max down to σ_min (k-diffusion `get_sigmas_karras`).
fn karras(sigma_min: f64, sigma_max: f64, steps: usize) -> Vec<f64> {
    let rho = 7.0;
    let (min_inv, max_inv) = (sigma_min.powf(1.0 / rho), sigma_max.powf(1.0 / rho));
    linspace_f64(0.0, 1.0, steps)
        .into_iter()
        .map(|r| (max_inv + r * (min_inv - max_inv)).powf(rho))
        .collect()
}

/// The (fractional) training timestep whose σ is `sigma`, interpolating log σ.
fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    let n = log_sigmas.len();
    // Index of the last log σ not above log_sigma, clipped to n-2.
    let low = log_sigmas
        .iter()
        .filter(|&&l| log_sigma - l as f64 >= 0.0)
        .count()
        .saturating_sub(1)
        .min(n - 2);
    let (lo, hi) = (log_sigmas[low] as f64, log_sigmas[low + 1] as f64);
    let w = ((lo - log_sigma) / (lo - hi)).clamp(0.0, 1.0);
    (1.0 - w) * low as f64 + w * (low + 1) as f64
}
