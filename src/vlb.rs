//! The variational bound of DDPM in bits per dimension (Ho et al. 2020, eq. 5; Nichol & Dhariwal
//! 2021, sec. 2): L = L_T + sum_{t>0} L_{t-1} + L_0 with the prior L_T = KL(q(x_T|x0) || N(0, I)),
//! the terms L_{t-1} = KL(q(x_{t-1}|x_t, x0) || p(x_{t-1}|x_t)) and the decoder
//! L_0 = -log p(x0|x1), a Gaussian discretised to the 256 levels of 8-bit data. This module owns
//! those formulas and the loop over every timestep (improved-diffusion's `calc_bpd_loop`); the
//! training objectives built on one term live in `loss`, the reverse step itself in `diffusion`.
//! Bits per dimension everywhere: nats / ln 2, averaged over every non-batch dimension.

use std::f64::consts::{LN_2, PI, SQRT_2};

use candle_core::{DType, Tensor};

use crate::denoiser::Denoiser;
use crate::diffusion::{p_mean_variance, q_posterior, q_sample, Parameterization, ReverseStep};
use crate::error::{Error, Result};
use crate::rng::BatchNoise;
use crate::schedule::Schedule;

/// Half the width of a bin of 8-bit data scaled to [-1, 1]: the 256 levels are 2/255 apart.
const HALF_BIN: f64 = 1.0 / 255.0;
/// Data beyond +-0.999 sits in an edge bin, which extends to -inf / +inf.
const EDGE: f64 = 0.999;
/// Below this z, 1 + erf(z / sqrt 2) cancels badly and `log_ndtr` switches to a continued fraction.
const NDTR_SPLIT: f64 = -4.0;
/// Depth of that continued fraction: for z <= -4 its log error is below 1e-12 (checked in f64
/// against log(erfc(-z / sqrt 2) / 2) on z in [-34, -4]).
const CF_DEPTH: usize = 20;

/// KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) elementwise, in nats, broadcasting:
/// 0.5 (-1 + logvar2 - logvar1 + exp(logvar1 - logvar2) + (mean1 - mean2)^2 exp(-logvar2)).
pub fn normal_kl(
    mean1: &Tensor,
    logvar1: &Tensor,
    mean2: &Tensor,
    logvar2: &Tensor,
) -> Result<Tensor> {
    let log_ratio = logvar2.broadcast_sub(logvar1)?;
    let var_ratio = log_ratio.neg()?.exp()?;
    let mean_term = mean1
        .broadcast_sub(mean2)?
        .sqr()?
        .broadcast_mul(&logvar2.neg()?.exp()?)?;
    let sum = log_ratio
        .broadcast_add(&var_ratio)?
        .broadcast_add(&mean_term)?;
    Ok(sum.affine(0.5, -0.5)?)
}

/// A (B, ...) tensor in nats to (B,) bits per dimension: the mean over non-batch dims / ln 2.
pub fn mean_flat_bits(x: &Tensor) -> Result<Tensor> {
    Ok(x.flatten_from(1)?.mean(1)?.affine(1.0 / LN_2, 0.0)?)
}

/// log Phi(z) elementwise for an f64 tensor, Phi the standard normal CDF (scipy's `log_ndtr`):
/// log((1 + erf(z / sqrt 2)) / 2) for z >= -4 (candle's erf is libm's, exact to f64 rounding);
/// below, where 1 + erf cancels, Laplace's continued fraction for the Mills ratio with x = -z:
/// Phi(z) = phi(x) / (x + 1/(x + 2/(x + 3/(x + ...)))). Both branches see clamped inputs so
/// neither makes an infinity whose zero gradient would turn into NaN.
pub fn log_ndtr(z: &Tensor) -> Result<Tensor> {
    let near = (z.maximum(NDTR_SPLIT)? / SQRT_2)?
        .erf()?
        .affine(0.5, 0.5)?
        .log()?;
    let x = z.neg()?.maximum(-NDTR_SPLIT)?;
    let mut denom = x.clone();
    for k in (1..=CF_DEPTH).rev() {
        denom = (&x + denom.recip()?.affine(k as f64, 0.0)?)?;
    }
    let far = (x.sqr()?.affine(-0.5, -0.5 * (2.0 * PI).ln())? - denom.log()?)?;
    Ok(z.lt(NDTR_SPLIT)?.where_cond(&far, &near)?)
}

/// log P(x) in nats, elementwise, for data x in [-1, 1] quantised to 256 levels under
/// N(means, exp(log_scales)^2) (Ho et al. 2020, sec. 3.3): P is the Gaussian mass of the bin
/// [x - 1/255, x + 1/255], the lowest bin extending to -inf and the highest to +inf.
/// `means` and `log_scales` broadcast to the shape of `x`; the result has x's dtype.
///
/// Computed in f64 with the exact CDF (erf, plus a continued fraction in the far tail, see
/// `log_ndtr`), never with improved-diffusion's tanh approximation or its 1e-12 floor: a bin is
/// reflected to the side of the mean where both CDF values are small,
/// P = Phi(u_hi) - Phi(u_lo) with u = (+-1/255 - |x - mean|) / scale, and
/// log P = log Phi(u_hi) + log(1 - exp(log Phi(u_lo) - log Phi(u_hi))), so a bin 30 scales away
/// keeps its (tiny) probability to many digits and a finite gradient.
pub fn discretized_gaussian_log_likelihood(
    x: &Tensor,
    means: &Tensor,
    log_scales: &Tensor,
) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F64)?;
    let centred = x.broadcast_sub(&means.to_dtype(DType::F64)?)?;
    let inv_scale = log_scales
        .to_dtype(DType::F64)?
        .neg()?
        .exp()?
        .broadcast_as(x.shape())?;
    let dist = centred.abs()?.neg()?;
    let log_hi = log_ndtr(&(dist.affine(1.0, HALF_BIN)? * &inv_scale)?)?;
    let log_lo = log_ndtr(&(dist.affine(1.0, -HALF_BIN)? * &inv_scale)?)?;
    let rest = (log_lo - &log_hi)?
        .exp()?
        .affine(-1.0, 1.0)?
        .maximum(f64::MIN_POSITIVE)?
        .log()?;
    let interior = (log_hi + rest)?;
    // Lowest bin: Phi((x + 1/255 - mean) / scale); highest: 1 - Phi((x - 1/255 - mean) / scale).
    let lowest = x.lt(-EDGE)?;
    let edge_z = lowest.where_cond(
        &(centred.affine(1.0, HALF_BIN)? * &inv_scale)?,
        &(centred.affine(-1.0, HALF_BIN)? * &inv_scale)?,
    )?;
    let edge = log_ndtr(&edge_z)?;
    let on_edge = x.abs()?.gt(EDGE)?;
    Ok(on_edge.where_cond(&edge, &interior)?.to_dtype(dtype)?)
}

/// L_T per example in bits/dim: KL(N(sqrt(abar) x0, 1 - abar) || N(0, 1)) averaged over dims,
/// = 0.5 (abar mean(x0^2) - abar - log(1 - abar)) / ln 2 with abar = abar_{N-1}; the x0-free part
/// is formed in f64 because it is the difference of two nearly equal numbers. x0: (B, ...).
pub fn prior_bpd(schedule: &Schedule, x0: &Tensor) -> Result<Tensor> {
    let abar = schedule.alphas_cumprod[schedule.len() - 1];
    let constant = -abar - (-abar).ln_1p();
    let mean_sq = x0.to_dtype(DType::F32)?.sqr()?.flatten_from(1)?.mean(1)?;
    Ok(mean_sq.affine(0.5 * abar / LN_2, 0.5 * constant / LN_2)?)
}

/// One term of the bound per example, (B,) bits/dim, at schedule indices `t`:
/// KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)) for t > 0, the decoder -log p(x0 | x_1) at t = 0
/// (index 0 of `schedule`). `model_output` is read through `param` (C or 2C channels); `clip`
/// clamps the predicted x0 to [-1, 1] as when sampling. All tensors f32, as `diffusion` gathers
/// its coefficients in f32.
pub fn vb_term_bpd(
    schedule: &Schedule,
    param: Parameterization,
    model_output: &Tensor,
    x0: &Tensor,
    x_t: &Tensor,
    t: &[usize],
    clip: bool,
) -> Result<Tensor> {
    Ok(vb_term_and_step(schedule, param, model_output, x0, x_t, t, clip)?.0)
}

/// `vb_term_bpd` together with the reverse step it was computed from. Each half (KL, decoder) is
/// only evaluated when some example needs it: the decoder's f64 CDFs are not free on a GPU.
fn vb_term_and_step(
    schedule: &Schedule,
    param: Parameterization,
    model_output: &Tensor,
    x0: &Tensor,
    x_t: &Tensor,
    t: &[usize],
    clip: bool,
) -> Result<(Tensor, ReverseStep)> {
    let p = p_mean_variance(schedule, param, x_t, t, model_output, clip)?;
    let kl = if t.iter().any(|&i| i > 0) {
        let (true_mean, _, true_log_var) = q_posterior(schedule, x0, x_t, t)?;
        Some(mean_flat_bits(&normal_kl(
            &true_mean,
            &true_log_var,
            &p.mean,
            &p.log_variance,
        )?)?)
    } else {
        None
    };
    let nll = if t.contains(&0) {
        let log_scales = p.log_variance.affine(0.5, 0.0)?;
        let log_p = discretized_gaussian_log_likelihood(x0, &p.mean, &log_scales)?;
        Some(mean_flat_bits(&log_p.neg()?)?)
    } else {
        None
    };
    let term = match (kl, nll) {
        (Some(kl), Some(nll)) => {
            let at_zero: Vec<u8> = t.iter().map(|&i| u8::from(i == 0)).collect();
            Tensor::from_vec(at_zero, t.len(), x0.device())?.where_cond(&nll, &kl)?
        }
        (Some(only), None) | (None, Some(only)) => only,
        (None, None) => return Err(Error::Invalid("an empty batch has no bound".into())),
    };
    Ok((term, p))
}

/// The bound for each example of a batch, split into its terms, all in bits/dim.
#[derive(Clone, Debug, PartialEq)]
pub struct BoundBreakdown {
    /// prior + sum of `terms` over every index, per example: an upper bound on -log2 p(x0) / D.
    pub total: Vec<f64>,
    /// L_T = KL(q(x_T | x0) || N(0, I)), per example.
    pub prior: Vec<f64>,
    /// L_0 = -log p(x0 | x_1), per example (the same numbers as `terms[0]`).
    pub decoder: Vec<f64>,
    /// `terms[i][b]`: the term at schedule index i for example b (the decoder at i = 0).
    pub terms: Vec<Vec<f64>>,
    /// `x0_mse[i][b]`: mean squared error of the predicted x0 at index i, a diagnostic.
    pub x0_mse: Vec<Vec<f64>>,
}

impl BoundBreakdown {
    /// The batch mean of `total`.
    pub fn mean_total(&self) -> f64 {
        self.total.iter().sum::<f64>() / self.total.len().max(1) as f64
    }

    /// The batch mean of each term, indexed like `terms`: the per-timestep profile.
    pub fn mean_terms(&self) -> Vec<f64> {
        self.terms
            .iter()
            .map(|row| row.iter().sum::<f64>() / row.len().max(1) as f64)
            .collect()
    }
}

/// The full variational bound of `model` on the batch x0 (B, C, ...) over every index of
/// `schedule` (a respaced schedule gives the bound of the shorter chain), from index N-1 down to 0.
/// At each index one fresh eps per example comes from `noise` (one stream per example, so an
/// example's numbers do not depend on its batch), x_t = q_sample(x0, eps) and the model is called
/// at `schedule.timesteps[i]`. `on_step(done, total)` is called after each index; an error from
/// it stops the loop.
pub fn variational_bound(
    model: &dyn Denoiser,
    schedule: &Schedule,
    param: Parameterization,
    clip: bool,
    x0: &Tensor,
    noise: &mut BatchNoise,
    on_step: &mut dyn FnMut(usize, usize) -> Result<()>,
) -> Result<BoundBreakdown> {
    let x0 = x0.to_dtype(DType::F32)?;
    let batch = x0.dim(0)?;
    if noise.len() != batch {
        return Err(Error::Invalid(format!(
            "{} noise streams for a batch of {batch}",
            noise.len()
        )));
    }
    let n = schedule.len();
    let per_example = x0.dims()[1..].to_vec();
    let mut terms = vec![Vec::new(); n];
    let mut x0_mse = vec![Vec::new(); n];
    for (done, i) in (0..n).rev().enumerate() {
        let eps = noise.randn(&per_example, x0.device())?;
        let idx = vec![i; batch];
        let x_t = q_sample(schedule, &x0, &idx, &eps)?;
        let output = model
            .forward(&x_t, &vec![schedule.timesteps[i]; batch])?
            .to_dtype(DType::F32)?;
        let (term, step) = vb_term_and_step(schedule, param, &output, &x0, &x_t, &idx, clip)?;
        terms[i] = to_f64_vec(&term)?;
        x0_mse[i] = to_f64_vec(&(step.x0 - &x0)?.sqr()?.flatten_from(1)?.mean(1)?)?;
        on_step(done + 1, n)?;
    }
    let prior = to_f64_vec(&prior_bpd(schedule, &x0)?)?;
    let total = (0..batch)
        .map(|b| prior[b] + terms.iter().map(|row| row[b]).sum::<f64>())
        .collect();
    Ok(BoundBreakdown {
        total,
        prior,
        decoder: terms[0].clone(),
        terms,
        x0_mse,
    })
}

fn to_f64_vec(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_dtype(DType::F64)?.to_vec1::<f64>()?)
}

#[cfg(test)]
mod tests;
