//! UniPC as ComfyUI runs it (`comfy/extra_samplers/uni_pc.py` `sample_unipc`): multistep,
//! data prediction, B(h) = h (bh1) or eʰ − 1 (bh2), order min(3, N − 1), lower order at the
//! end, a corrector on every step but the last, on the variance-preserving x = x_VE /
//! √(1 + σ²) (`SigmaConvert`). The final σ 0 becomes 0.001, and x is divided by α(0.001) at
//! the end.

use burn::prelude::*;

use super::samplers::{Denoiser, SamplerStep};
use crate::Error;
use crate::pipelines::Flow;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UniPcVariant {
    Bh1,
    Bh2,
}

/// `SigmaConvert`: log α, α, σ_VP and λ = log α − log σ_VP of a VE σ.
fn log_alpha(sigma: f32) -> f32 {
    0.5 * (1.0 / (sigma * sigma + 1.0)).ln()
}

fn alpha(sigma: f32) -> f32 {
    log_alpha(sigma).exp()
}

fn std_vp(sigma: f32) -> f32 {
    (1.0 - (2.0 * log_alpha(sigma)).exp()).sqrt()
}

fn lambda(sigma: f32) -> f32 {
    let lmc = log_alpha(sigma);
    lmc - 0.5 * (1.0 - (2.0 * lmc).exp()).ln()
}

/// The model as x₀ of the VP x at σ (`predict_eps_sigma` then `data_prediction_fn`).
fn data_prediction<B: Backend>(
    model: &mut dyn Denoiser<B>,
    x: &Tensor<B, 4>,
    sigma: f32,
) -> Result<Tensor<B, 4>, Error> {
    let input = x.clone() * (sigma * sigma + 1.0).sqrt();
    let eps = (input.clone() - model.denoise(input, sigma)?) / sigma;
    Ok((x.clone() - eps * std_vp(sigma)) / alpha(sigma))
}

pub fn sample_uni_pc<B: Backend>(
    model: &mut dyn Denoiser<B>,
    x: Tensor<B, 4>,
    sigmas: &[f32],
    variant: UniPcVariant,
    on_step: &mut dyn FnMut(SamplerStep<B>) -> Flow,
) -> Result<Tensor<B, 4>, Error> {
    let mut timesteps = sigmas.to_vec();
    if timesteps.last() == Some(&0.0) {
        *timesteps.last_mut().expect("non-empty") = 0.001;
    }
    let steps = timesteps.len() - 1;
    let order = 3.min(timesteps.len().saturating_sub(2));
    let mut x = x / (1.0 + timesteps[0] * timesteps[0]).sqrt();
    let mut models: Vec<Tensor<B, 4>> = Vec::new();
    let mut times: Vec<f32> = Vec::new();
    let mut report =
        |index: usize, x: &Tensor<B, 4>, denoised: &Tensor<B, 4>| match on_step(SamplerStep {
            index,
            total: steps,
            x,
            denoised,
        }) {
            Flow::Continue => Ok(()),
            Flow::Cancel => Err(Error::Cancelled),
        };
    for step_index in 0..steps {
        if step_index == 0 {
            models.push(data_prediction(model, &x, timesteps[0])?);
            times.push(timesteps[0]);
        } else if step_index < order {
            let t = timesteps[step_index];
            let (next, model_t) = update(model, &x, &models, &times, t, step_index, true, variant)?;
            x = next;
            models.push(match model_t {
                Some(m) => m,
                None => data_prediction(model, &x, t)?,
            });
            times.push(t);
        } else {
            let last = if step_index == steps - 1 {
                steps
            } else {
                step_index
            };
            for (step, &t) in timesteps.iter().enumerate().take(last + 1).skip(step_index) {
                let step_order = order.min(steps + 1 - step);
                let use_corrector = step != steps;
                let (next, model_t) = update(
                    model,
                    &x,
                    &models,
                    &times,
                    t,
                    step_order,
                    use_corrector,
                    variant,
                )?;
                x = next;
                models.remove(0);
                times.remove(0);
                times.push(t);
                // The final model value is not needed.
                if step < steps {
                    models.push(match model_t {
                        Some(m) => m,
                        None => data_prediction(model, &x, t)?,
                    });
                } else {
                    let latest = models.last().expect("history").clone();
                    models.push(latest);
                }
            }
        }
        report(step_index, &x, models.last().expect("history"))?;
    }
    Ok(x / alpha(*timesteps.last().expect("non-empty")))
}

/// `multistep_uni_pc_bh_update` with `predict_x0`: the predictor from the last `order`
/// model values, then (optionally) the corrector with the model at the new point.
#[allow(clippy::too_many_arguments)]
fn update<B: Backend>(
    model: &mut dyn Denoiser<B>,
    x: &Tensor<B, 4>,
    models: &[Tensor<B, 4>],
    times: &[f32],
    t: f32,
    order: usize,
    use_corrector: bool,
    variant: UniPcVariant,
) -> Result<(Tensor<B, 4>, Option<Tensor<B, 4>>), Error> {
    let n = models.len();
    let (t_prev_0, model_prev_0) = (times[n - 1], &models[n - 1]);
    let (lambda_prev_0, lambda_t) = (lambda(t_prev_0), lambda(t));
    let (sigma_prev_0, sigma_t) = (std_vp(t_prev_0), std_vp(t));
    let alpha_t = log_alpha(t).exp();
    let h = lambda_t - lambda_prev_0;

    let mut rks: Vec<f32> = Vec::new();
    let mut d1s: Vec<Tensor<B, 4>> = Vec::new();
    for i in 1..order {
        let rk = (lambda(times[n - 1 - i]) - lambda_prev_0) / h;
        rks.push(rk);
        d1s.push((models[n - 1 - i].clone() - model_prev_0.clone()) / rk);
    }
    rks.push(1.0);

    let hh = -h;
    let h_phi_1 = hh.exp_m1();
    let mut h_phi_k = h_phi_1 / hh - 1.0;
    let mut factorial = 1.0f32;
    let b_h = match variant {
        UniPcVariant::Bh1 => hh,
        UniPcVariant::Bh2 => hh.exp_m1(),
    };
    let mut r = vec![vec![0.0f64; order]; order];
    let mut b = vec![0.0f64; order];
    for i in 1..=order {
        for (k, rk) in rks.iter().enumerate() {
            r[i - 1][k] = rk.powi(i as i32 - 1) as f64;
        }
        b[i - 1] = (h_phi_k * factorial / b_h) as f64;
        factorial *= (i + 1) as f32;
        h_phi_k = h_phi_k / hh - 1.0 / factorial;
    }

    let x_t_ = x.clone() * (sigma_t / sigma_prev_0) - model_prev_0.clone() * (alpha_t * h_phi_1);
    let weighted = |d1s: &[Tensor<B, 4>], rhos: &[f64]| {
        d1s.iter()
            .zip(rhos)
            .map(|(d, &rho)| d.clone() * rho as f32)
            .reduce(|a, b| a + b)
    };
    let x_t = if d1s.is_empty() {
        x_t_.clone()
    } else {
        let rhos_p = if order == 2 {
            vec![0.5]
        } else {
            solve(
                &r[..order - 1]
                    .iter()
                    .map(|row| row[..order - 1].to_vec())
                    .collect::<Vec<_>>(),
                &b[..order - 1],
            )
        };
        x_t_.clone() - weighted(&d1s, &rhos_p).expect("terms") * (alpha_t * b_h)
    };
    if !use_corrector {
        return Ok((x_t, None));
    }
    let rhos_c = if order == 1 { vec![0.5] } else { solve(&r, &b) };
    let model_t = data_prediction(model, &x_t, t)?;
    let d1_t = model_t.clone() - model_prev_0.clone();
    let correction = match weighted(&d1s, &rhos_c[..rhos_c.len() - 1]) {
        Some(c) => c + d1_t * rhos_c[rhos_c.len() - 1] as f32,
        None => d1_t * rhos_c[rhos_c.len() - 1] as f32,
    };
    Ok((x_t_ - correction * (alpha_t * b_h), Some(model_t)))
}

/// A small dense solve (Gaussian elimination with partial pivoting): `torch.linalg.solve`.
fn solve(a: &[Vec<f64>], b: &[f64]) -> Vec<f64> {
    let n = b.len();
    let mut m: Vec<Vec<f64>> = a
        .iter()
        .zip(b)
        .map(|(row, &v)| row.iter().copied().chain([v]).collect())
        .collect();
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&i, &j| m[i][col].abs().total_cmp(&m[j][col].abs()))
            .expect("rows");
        m.swap(col, pivot);
        let pivot_row = m[col].clone();
        for row in m.iter_mut().skip(col + 1) {
            let f = row[col] / pivot_row[col];
            for (v, p) in row.iter_mut().zip(&pivot_row).skip(col) {
                *v -= f * p;
            }
        }
    }
    let mut x = vec![0.0; n];
    for row in (0..n).rev() {
        let s: f64 = (row + 1..n).map(|k| m[row][k] * x[k]).sum();
        x[row] = (m[row][n] - s) / m[row][row];
    }
    x
}
