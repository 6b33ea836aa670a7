//! ComfyUI's schedulers: which σ a run of N steps visits (`comfy/samplers.py`
//! `SCHEDULER_HANDLERS`, `KSampler.calculate_sigmas` / `set_steps`).

use super::ModelSampling;
use crate::Error;
use crate::sampling::schedule::torch_linspace;

/// `SCHEDULER_NAMES`, in ComfyUI's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchedulerName {
    Simple,
    SgmUniform,
    Karras,
    Exponential,
    DdimUniform,
    Beta,
    Normal,
    LinearQuadratic,
    KlOptimal,
}

impl SchedulerName {
    pub const ALL: [SchedulerName; 9] = [
        SchedulerName::Simple,
        SchedulerName::SgmUniform,
        SchedulerName::Karras,
        SchedulerName::Exponential,
        SchedulerName::DdimUniform,
        SchedulerName::Beta,
        SchedulerName::Normal,
        SchedulerName::LinearQuadratic,
        SchedulerName::KlOptimal,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SchedulerName::Simple => "simple",
            SchedulerName::SgmUniform => "sgm_uniform",
            SchedulerName::Karras => "karras",
            SchedulerName::Exponential => "exponential",
            SchedulerName::DdimUniform => "ddim_uniform",
            SchedulerName::Beta => "beta",
            SchedulerName::Normal => "normal",
            SchedulerName::LinearQuadratic => "linear_quadratic",
            SchedulerName::KlOptimal => "kl_optimal",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// `calculate_sigmas(model_sampling, name, steps)`: usually steps + 1 values ending in 0
    /// (ddim_uniform and beta can give more or fewer).
    pub fn sigmas(self, ms: &ModelSampling, steps: usize) -> Vec<f32> {
        let (sigma_min, sigma_max) = (ms.sigma_min() as f64, ms.sigma_max() as f64);
        match self {
            SchedulerName::Simple => simple(ms, steps),
            SchedulerName::SgmUniform => normal(ms, steps, true),
            SchedulerName::Normal => normal(ms, steps, false),
            SchedulerName::Karras => karras(steps, sigma_min, sigma_max, 7.0),
            SchedulerName::Exponential => exponential(steps, sigma_min, sigma_max),
            SchedulerName::DdimUniform => ddim_uniform(ms, steps),
            SchedulerName::Beta => beta(ms, steps, 0.6, 0.6),
            SchedulerName::LinearQuadratic => linear_quadratic(ms, steps),
            SchedulerName::KlOptimal => kl_optimal(steps, sigma_min, sigma_max),
        }
    }
}

/// `KSampler(model, steps, ..., sampler, scheduler, denoise).sigmas`: samplers that discard
/// the penultimate σ are given a schedule one step longer; `denoise` < 1 keeps the last
/// steps + 1 σ of a schedule of `int(steps / denoise)` steps.
pub fn ksampler_sigmas(
    ms: &ModelSampling,
    scheduler: SchedulerName,
    steps: usize,
    denoise: f64,
    discard_penultimate: bool,
) -> Result<Vec<f32>, Error> {
    let calculate = |steps: usize| {
        let steps = steps + discard_penultimate as usize;
        if steps == 0 {
            return vec![];
        }
        let mut sigmas = scheduler.sigmas(ms, steps);
        if discard_penultimate && sigmas.len() >= 2 {
            sigmas.remove(sigmas.len() - 2);
        }
        sigmas
    };
    if denoise > 0.9999 {
        return Ok(calculate(steps));
    }
    if denoise <= 0.0 {
        return Ok(vec![]);
    }
    let sigmas = calculate((steps as f64 / denoise) as usize);
    Ok(sigmas[sigmas.len().saturating_sub(steps + 1)..].to_vec())
}

/// `simple_scheduler`: every len/steps-th σ of the table, from the top.
fn simple(ms: &ModelSampling, steps: usize) -> Vec<f32> {
    let table = ms.sigmas();
    let stride = table.len() as f64 / steps as f64;
    let mut sigmas: Vec<f32> = (0..steps)
        .map(|x| table[table.len() - 1 - (x as f64 * stride) as usize])
        .collect();
    sigmas.push(0.0);
    sigmas
}

/// `normal_scheduler`: timesteps evenly spaced from t(σ_max) to t(σ_min), both included (sgm:
/// steps + 1 points, the last dropped), each turned back into σ.
fn normal(ms: &ModelSampling, steps: usize, sgm: bool) -> Vec<f32> {
    let start = ms.timestep(ms.sigma_max());
    let end = ms.timestep(ms.sigma_min());
    let mut append_zero = true;
    let timesteps = if sgm {
        let mut t = torch_linspace(start, end, steps + 1);
        t.pop();
        t
    } else {
        let mut steps = steps;
        if (ms.sigma(end) as f64).abs() <= 1e-5 {
            steps += 1;
            append_zero = false;
        }
        torch_linspace(start, end, steps)
    };
    let mut sigmas: Vec<f32> = timesteps.into_iter().map(|t| ms.sigma(t)).collect();
    if append_zero {
        sigmas.push(0.0);
    }
    sigmas
}

/// k-diffusion `get_sigmas_karras` (the karras scheduler uses ρ = 7): the ramp in float32,
/// its ends from Python floats.
pub fn karras(n: usize, sigma_min: f64, sigma_max: f64, rho: f64) -> Vec<f32> {
    let min_inv_rho = sigma_min.powf(1.0 / rho);
    let max_inv_rho = sigma_max.powf(1.0 / rho);
    let span = (min_inv_rho - max_inv_rho) as f32;
    let mut sigmas: Vec<f32> = torch_linspace(0.0, 1.0, n)
        .into_iter()
        .map(|r| (max_inv_rho as f32 + r * span).powf(rho as f32))
        .collect();
    sigmas.push(0.0);
    sigmas
}

/// k-diffusion `get_sigmas_exponential`: evenly spaced in ln σ.
fn exponential(n: usize, sigma_min: f64, sigma_max: f64) -> Vec<f32> {
    let mut sigmas: Vec<f32> = torch_linspace(sigma_max.ln() as f32, sigma_min.ln() as f32, n)
        .into_iter()
        .map(f32::exp)
        .collect();
    sigmas.push(0.0);
    sigmas
}

/// `ddim_scheduler`: every len//steps-th σ of the table from index 1 up, reversed, after a
/// leading 0 (so it can give more steps than asked for).
fn ddim_uniform(ms: &ModelSampling, steps: usize) -> Vec<f32> {
    let table = ms.sigmas();
    let mut steps = steps;
    let mut sigmas = if (table[1] as f64).abs() <= 1e-5 {
        steps += 1;
        vec![]
    } else {
        vec![0.0]
    };
    let stride = (table.len() / steps).max(1);
    sigmas.extend(table.iter().skip(1).step_by(stride));
    sigmas.reverse();
    sigmas
}

/// `beta_scheduler`: timesteps at the Beta(α, β) quantiles of 1 − linspace(0, 1, steps,
/// endpoint=False), rounded to table indices, repeats dropped.
fn beta(ms: &ModelSampling, steps: usize, alpha: f64, beta: f64) -> Vec<f32> {
    let table = ms.sigmas();
    let total = (table.len() - 1) as f64;
    let mut sigmas = Vec::new();
    let mut last = None;
    for i in 0..steps {
        let q = 1.0 - i as f64 / steps as f64;
        let t = (beta_ppf(q, alpha, beta) * total).round_ties_even();
        if last != Some(t) {
            sigmas.push(table[t as usize]);
        }
        last = Some(t);
    }
    sigmas.push(0.0);
    sigmas
}

/// `linear_quadratic_schedule` (threshold 0.025, linear_steps = steps // 2), times σ_max.
fn linear_quadratic(ms: &ModelSampling, steps: usize) -> Vec<f32> {
    let schedule: Vec<f64> = if steps == 1 {
        vec![1.0, 0.0]
    } else {
        let threshold = 0.025f64;
        let linear_steps = steps / 2;
        let (ls, n) = (linear_steps as f64, steps as f64);
        let step_diff = ls - threshold * n;
        let quadratic_steps = n - ls;
        let quadratic_coef = step_diff / (ls * quadratic_steps * quadratic_steps);
        let linear_coef = threshold / ls - 2.0 * step_diff / (quadratic_steps * quadratic_steps);
        let constant = quadratic_coef * ls * ls;
        (0..linear_steps)
            .map(|i| i as f64 * threshold / ls)
            .chain((linear_steps..steps).map(|i| {
                let i = i as f64;
                quadratic_coef * i * i + linear_coef * i + constant
            }))
            .chain([1.0])
            .map(|x| 1.0 - x)
            .collect()
    };
    // torch.FloatTensor(schedule) * sigma_max: float32 on both sides.
    schedule
        .into_iter()
        .map(|x| x as f32 * ms.sigma_max())
        .collect()
}

/// `kl_optimal_scheduler`: tan of evenly spaced angles between atan σ_max and atan σ_min.
fn kl_optimal(n: usize, sigma_min: f64, sigma_max: f64) -> Vec<f32> {
    let (a_min, a_max) = (sigma_min.atan() as f32, sigma_max.atan() as f32);
    let mut sigmas: Vec<f32> = (0..n)
        .map(|i| {
            let adj = i as f32 / (n as f32 - 1.0);
            (adj * a_min + (1.0 - adj) * a_max).tan()
        })
        .collect();
    sigmas.push(0.0);
    sigmas
}

/// The quantile function of Beta(a, b) (scipy `beta.ppf`), by bisection on the regularized
/// incomplete beta function: monotone, so 100 halvings reach float64's resolution.
fn beta_ppf(q: f64, a: f64, b: f64) -> f64 {
    if q <= 0.0 {
        return 0.0;
    }
    if q >= 1.0 {
        return 1.0;
    }
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    for _ in 0..100 {
        let mid = 0.5 * (lo + hi);
        if regularized_incomplete_beta(mid, a, b) < q {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// I_x(a, b) by Lentz's continued fraction (Numerical Recipes `betai`/`betacf`).
fn regularized_incomplete_beta(x: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    if x < (a + 1.0) / (a + b + 2.0) {
        ln_front.exp() * beta_continued_fraction(x, a, b) / a
    } else {
        1.0 - ln_front.exp() * beta_continued_fraction(1.0 - x, b, a) / b
    }
}

fn beta_continued_fraction(x: f64, a: f64, b: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..500 {
        let m = m as f64;
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        d = if d.abs() < TINY { TINY } else { d };
        c = 1.0 + aa / c;
        c = if c.abs() < TINY { TINY } else { c };
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        d = if d.abs() < TINY { TINY } else { d };
        c = 1.0 + aa / c;
        c = if c.abs() < TINY { TINY } else { c };
        d = 1.0 / d;
        let delta = d * c;
        h *= delta;
        if (delta - 1.0).abs() < 1e-16 {
            break;
        }
    }
    h
}

/// ln Γ(x) by the Lanczos approximation (g = 7, n = 9), accurate to ~1e-15 for x > 0.
fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = G[0];
    let t = x + 7.5;
    for (i, g) in G.iter().enumerate().skip(1) {
        a += g / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}
