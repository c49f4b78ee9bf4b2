//! The forward process q(x_t | x0) in closed form and the conversions between what a model may
//! predict (eps, x0 or v). Losses live in `loss`, the variational bound in `vlb`, samplers in
//! `sampler`. Coefficients come from a `Schedule` (f64) and are gathered per example: every
//! function takes a (B,) timestep-index tensor, never one t for the whole batch.

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::schedule::Schedule;

/// What the network's (first C) output channels predict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Prediction {
    /// The noise eps (Ho et al. 2020).
    #[default]
    Eps,
    /// The clean sample x0.
    X0,
    /// v = sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans & Ho 2022).
    V,
}

/// The variance of the reverse step p(x_{t-1} | x_t).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum VarianceType {
    /// sigma_t^2 = beta~_t, the posterior variance (lower bound on the reverse entropy).
    #[default]
    FixedSmall,
    /// sigma_t^2 = beta_t (upper bound; DDPM's choice for CIFAR-10).
    FixedLarge,
    /// Learned: C extra output channels v in [-1, 1] give
    /// log sigma_t^2 = (v+1)/2 log beta_t + (1-(v+1)/2) log beta~_t (Nichol & Dhariwal 2021, eq. 15).
    Learned,
}

/// How a model output is read: what it predicts and whether it carries a variance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Parameterization {
    pub prediction: Prediction,
    pub variance: VarianceType,
}

impl Parameterization {
    /// Output channels the network must produce for `channels` image channels.
    pub fn out_channels(&self, channels: usize) -> usize {
        if self.variance == VarianceType::Learned {
            2 * channels
        } else {
            channels
        }
    }

    /// Split a raw model output into (prediction, variance values or None).
    pub fn split(&self, output: &Tensor, channels: usize) -> Result<(Tensor, Option<Tensor>)> {
        if self.variance == VarianceType::Learned {
            let pred = output.narrow(1, 0, channels)?;
            let var = output.narrow(1, channels, channels)?;
            Ok((pred, Some(var)))
        } else {
            Ok((output.clone(), None))
        }
    }
}

/// Gather coef[t_b] for each example b into a (B, 1, ..., 1) tensor of rank `rank`, dtype f32
/// on `device`: improved-diffusion's `_extract_into_tensor`, done host-side in f64. When every
/// example has the same t (sampling) the value is filled in on the device, so a sampling step
/// copies nothing from the host (a copy from pageable memory waits for the GPU's queue).
pub fn extract(coef: &[f64], t: &[usize], rank: usize, device: &Device) -> Result<Tensor> {
    let values = t
        .iter()
        .map(|&i| {
            coef.get(i).map(|&v| v as f32).ok_or_else(|| {
                Error::Invalid(format!(
                    "timestep {i} is outside the schedule of {} steps",
                    coef.len()
                ))
            })
        })
        .collect::<Result<Vec<f32>>>()?;
    let mut dims = vec![1usize; rank.max(1)];
    dims[0] = t.len();
    match values.split_first() {
        Some((&v, rest)) if rest.iter().all(|&r| r.to_bits() == v.to_bits()) => {
            Ok(Tensor::full(v, dims, device)?)
        }
        _ => Ok(Tensor::from_vec(values, dims, device)?),
    }
}

/// Timestep indices of a (B,) integer tensor as host values.
pub fn timestep_indices(t: &Tensor) -> Result<Vec<usize>> {
    let t = t.to_dtype(DType::U32)?.to_device(&Device::Cpu)?;
    Ok(t.to_vec1::<u32>()?
        .into_iter()
        .map(|v| v as usize)
        .collect())
}

/// x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps   (Ho et al. 2020, eq. 4);
/// x0, eps: (B, ...), t: indices into `schedule`, one per example.
pub fn q_sample(schedule: &Schedule, x0: &Tensor, t: &[usize], eps: &Tensor) -> Result<Tensor> {
    let (dev, rank) = (x0.device(), x0.rank());
    let a = extract(&schedule.sqrt_alphas_cumprod, t, rank, dev)?.to_dtype(x0.dtype())?;
    let s = extract(&schedule.sqrt_one_minus_alphas_cumprod, t, rank, dev)?.to_dtype(x0.dtype())?;
    Ok((x0.broadcast_mul(&a)? + eps.broadcast_mul(&s)?)?)
}

/// Mean and variance of q(x_t | x0): (sqrt(abar_t) x0, 1 - abar_t) per example.
pub fn q_mean_variance(schedule: &Schedule, x0: &Tensor, t: &[usize]) -> Result<(Tensor, Tensor)> {
    let (dev, rank) = (x0.device(), x0.rank());
    let mean = x0.broadcast_mul(&extract(&schedule.sqrt_alphas_cumprod, t, rank, dev)?)?;
    let one_minus: Vec<f64> = schedule.alphas_cumprod.iter().map(|a| 1.0 - a).collect();
    let var = extract(&one_minus, t, rank, dev)?;
    Ok((mean, var))
}

/// Posterior q(x_{t-1} | x_t, x0) = N(coef1_t x0 + coef2_t x_t, beta~_t)   (Ho et al. eq. 6-7).
/// Returns (mean, variance, log variance clipped), the last two as (B, 1, ...).
pub fn q_posterior(
    schedule: &Schedule,
    x0: &Tensor,
    x_t: &Tensor,
    t: &[usize],
) -> Result<(Tensor, Tensor, Tensor)> {
    let (dev, rank) = (x0.device(), x0.rank());
    let c1 = extract(&schedule.posterior_mean_coef1, t, rank, dev)?;
    let c2 = extract(&schedule.posterior_mean_coef2, t, rank, dev)?;
    let mean = (x0.broadcast_mul(&c1)? + x_t.broadcast_mul(&c2)?)?;
    let var = extract(&schedule.posterior_variance, t, rank, dev)?;
    let log_var = extract(&schedule.posterior_log_variance_clipped, t, rank, dev)?;
    Ok((mean, var, log_var))
}

/// x0 = sqrt(1/abar_t) x_t - sqrt(1/abar_t - 1) eps
pub fn x0_from_eps(schedule: &Schedule, x_t: &Tensor, t: &[usize], eps: &Tensor) -> Result<Tensor> {
    let (dev, rank) = (x_t.device(), x_t.rank());
    let a = extract(&schedule.sqrt_recip_alphas_cumprod, t, rank, dev)?;
    let b = extract(&schedule.sqrt_recipm1_alphas_cumprod, t, rank, dev)?;
    Ok((x_t.broadcast_mul(&a)? - eps.broadcast_mul(&b)?)?)
}

/// eps = (sqrt(1/abar_t) x_t - x0) / sqrt(1/abar_t - 1)
pub fn eps_from_x0(schedule: &Schedule, x_t: &Tensor, t: &[usize], x0: &Tensor) -> Result<Tensor> {
    let (dev, rank) = (x_t.device(), x_t.rank());
    let a = extract(&schedule.sqrt_recip_alphas_cumprod, t, rank, dev)?;
    let b = extract(&schedule.sqrt_recipm1_alphas_cumprod, t, rank, dev)?;
    Ok((x_t.broadcast_mul(&a)? - x0)?.broadcast_div(&b)?)
}

/// v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0
pub fn v_from_x0_eps(
    schedule: &Schedule,
    x0: &Tensor,
    t: &[usize],
    eps: &Tensor,
) -> Result<Tensor> {
    let (dev, rank) = (x0.device(), x0.rank());
    let a = extract(&schedule.sqrt_alphas_cumprod, t, rank, dev)?;
    let s = extract(&schedule.sqrt_one_minus_alphas_cumprod, t, rank, dev)?;
    Ok((eps.broadcast_mul(&a)? - x0.broadcast_mul(&s)?)?)
}

/// x0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v;  eps = sqrt(1 - abar_t) x_t + sqrt(abar_t) v
pub fn x0_eps_from_v(
    schedule: &Schedule,
    x_t: &Tensor,
    t: &[usize],
    v: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let (dev, rank) = (x_t.device(), x_t.rank());
    let a = extract(&schedule.sqrt_alphas_cumprod, t, rank, dev)?;
    let s = extract(&schedule.sqrt_one_minus_alphas_cumprod, t, rank, dev)?;
    let x0 = (x_t.broadcast_mul(&a)? - v.broadcast_mul(&s)?)?;
    let eps = (x_t.broadcast_mul(&s)? + v.broadcast_mul(&a)?)?;
    Ok((x0, eps))
}

/// The score of the noised data, grad_x log q_t(x_t) = -eps / sqrt(1 - abar_t), from the
/// model's E[eps | x_t] (Song et al. 2021, the VP SDE's score; Vincent 2011 for the identity);
/// eps: (B, ...), t: indices into `schedule`, one per example. Undefined where abar_t = 1.
pub fn score_from_eps(schedule: &Schedule, eps: &Tensor, t: &[usize]) -> Result<Tensor> {
    let s = extract(
        &schedule.sqrt_one_minus_alphas_cumprod,
        t,
        eps.rank(),
        eps.device(),
    )?;
    Ok(eps.broadcast_div(&s.to_dtype(eps.dtype())?)?.neg()?)
}

/// The model's prediction read as (x0, eps), whatever it predicts. With `clip`, x0 is clamped to
/// [-1, 1] and eps recomputed from the clamped x0, so the two stay consistent.
pub fn x0_and_eps(
    schedule: &Schedule,
    prediction: Prediction,
    x_t: &Tensor,
    t: &[usize],
    pred: &Tensor,
    clip: bool,
) -> Result<(Tensor, Tensor)> {
    let (x0, eps) = match prediction {
        Prediction::Eps => (x0_from_eps(schedule, x_t, t, pred)?, pred.clone()),
        Prediction::X0 => (pred.clone(), eps_from_x0(schedule, x_t, t, pred)?),
        Prediction::V => x0_eps_from_v(schedule, x_t, t, pred)?,
    };
    if clip {
        let x0 = x0.clamp(-1f32, 1f32)?;
        let eps = eps_from_x0(schedule, x_t, t, &x0)?;
        Ok((x0, eps))
    } else {
        Ok((x0, eps))
    }
}

/// The training target for `prediction` given x0 and eps at t.
pub fn target(
    schedule: &Schedule,
    prediction: Prediction,
    x0: &Tensor,
    t: &[usize],
    eps: &Tensor,
) -> Result<Tensor> {
    match prediction {
        Prediction::Eps => Ok(eps.clone()),
        Prediction::X0 => Ok(x0.clone()),
        Prediction::V => v_from_x0_eps(schedule, x0, t, eps),
    }
}

/// The reverse step p(x_{t-1} | x_t) a model output implies.
#[derive(Debug, Clone)]
pub struct ReverseStep {
    /// mu_theta(x_t, t) = coef1_t x0_hat + coef2_t x_t
    pub mean: Tensor,
    /// sigma_t^2, (B, 1, ...) for fixed variances, (B, C, ...) when learned
    pub variance: Tensor,
    /// log sigma_t^2, same shape as `variance`
    pub log_variance: Tensor,
    /// x0_hat, clipped to [-1, 1] when asked
    pub x0: Tensor,
    /// eps_hat consistent with `x0`
    pub eps: Tensor,
}

/// p(x_{t-1} | x_t) from a raw model output (improved-diffusion's `p_mean_variance`):
/// mean = posterior mean at the predicted x0; variance fixed-small (beta~_t), fixed-large
/// (beta_t, with beta~_1 at t = 0 so the log stays finite) or learned
/// (log sigma^2 = frac log beta_t + (1 - frac) log beta~_t, frac = (v + 1) / 2).
pub fn p_mean_variance(
    schedule: &Schedule,
    param: Parameterization,
    x_t: &Tensor,
    t: &[usize],
    model_output: &Tensor,
    clip: bool,
) -> Result<ReverseStep> {
    let channels = x_t.dim(1)?;
    let (dev, rank) = (x_t.device(), x_t.rank());
    let (pred, var_values) = param.split(model_output, channels)?;
    let (log_variance, variance) = match (param.variance, var_values) {
        (VarianceType::Learned, Some(v)) => {
            let min_log = extract(&schedule.posterior_log_variance_clipped, t, rank, dev)?;
            let log_betas: Vec<f64> = schedule.betas.iter().map(|b| b.ln()).collect();
            let max_log = extract(&log_betas, t, rank, dev)?;
            let frac = ((v + 1.0)? / 2.0)?;
            let one_minus = frac.affine(-1.0, 1.0)?;
            let log_var = (frac.broadcast_mul(&max_log)? + one_minus.broadcast_mul(&min_log)?)?;
            let var = log_var.exp()?;
            (log_var, var)
        }
        (VarianceType::FixedLarge, _) => {
            let mut large = schedule.betas.clone();
            if large.len() > 1 {
                large[0] = schedule.posterior_variance[1];
            }
            let log_large: Vec<f64> = large.iter().map(|v| v.ln()).collect();
            (
                extract(&log_large, t, rank, dev)?,
                extract(&large, t, rank, dev)?,
            )
        }
        _ => (
            extract(&schedule.posterior_log_variance_clipped, t, rank, dev)?,
            extract(&schedule.posterior_variance, t, rank, dev)?,
        ),
    };
    let (x0, eps) = x0_and_eps(schedule, param.prediction, x_t, t, &pred, clip)?;
    let (mean, _, _) = q_posterior(schedule, &x0, x_t, t)?;
    Ok(ReverseStep {
        mean,
        variance,
        log_variance,
        x0,
        eps,
    })
}

#[cfg(test)]
mod tests;
