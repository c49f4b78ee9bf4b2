//! The training objectives: L_simple (Ho et al. 2020), optionally min-SNR-gamma weighted
//! (Hang et al. 2023), L_hybrid = L_simple + lambda L_vlb (Nichol & Dhariwal 2021) and the bare
//! variational bound. It turns one model output into the scalar `backward()` is called on plus
//! per-example terms for logging; it draws no timesteps or noise (the training step does) and
//! computes no bound terms itself (`vlb` does).

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::diffusion::{target, Parameterization, Prediction, VarianceType};
use crate::error::{Error, Result};
use crate::schedule::Schedule;
use crate::vlb::vb_term_bpd;

/// Which objective trains the model (`diffusion.loss`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum LossKind {
    /// L_simple: the mean squared error of the prediction (Ho et al. 2020, eq. 14).
    #[default]
    Simple,
    /// L_simple + lambda T L_t, the bound term seeing the predicted mean frozen, so it trains
    /// only the variance (Nichol & Dhariwal 2021, sec. 3.1).
    Hybrid,
    /// T L_t: the variational bound alone, through mean and variance.
    Kl,
}

/// The objective and its knobs; the keys live in the `[diffusion]` section.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossOptions {
    /// `diffusion.loss`
    pub kind: LossKind,
    /// `diffusion.min_snr_gamma`: weight the mse of example b by the min-SNR-gamma weight.
    pub min_snr_gamma: Option<f64>,
    /// `diffusion.vlb_weight`: lambda in L_hybrid (improved-diffusion's 0.001).
    pub vlb_weight: f64,
}

impl Default for LossOptions {
    fn default() -> Self {
        LossOptions {
            kind: LossKind::Simple,
            min_snr_gamma: None,
            vlb_weight: 0.001,
        }
    }
}

impl LossOptions {
    /// Reject combinations that cannot train what `param` asks for, naming the config keys.
    pub fn validate(&self, param: Parameterization) -> Result<()> {
        if param.variance == VarianceType::Learned && self.kind == LossKind::Simple {
            return Err(Error::Config(
                "diffusion.variance = \"learned\" needs diffusion.loss = \"hybrid\" or \"kl\": \
                 the simple loss never trains the variance channels"
                    .into(),
            ));
        }
        if let Some(gamma) = self.min_snr_gamma {
            if !(gamma > 0.0 && gamma.is_finite()) {
                return Err(Error::Config(format!(
                    "diffusion.min_snr_gamma = {gamma}: must be a positive number (5 is usual)"
                )));
            }
            if self.kind == LossKind::Kl {
                return Err(Error::Config(
                    "diffusion.min_snr_gamma weights the mse, which diffusion.loss = \"kl\" does \
                     not use; remove it or use loss = \"simple\" or \"hybrid\""
                        .into(),
                ));
            }
        }
        if !(self.vlb_weight >= 0.0 && self.vlb_weight.is_finite()) {
            return Err(Error::Config(format!(
                "diffusion.vlb_weight = {}: must be a finite number >= 0 (0.001 is usual)",
                self.vlb_weight
            )));
        }
        Ok(())
    }
}

/// What one training batch costs.
#[derive(Debug, Clone)]
pub struct LossTerms {
    /// The scalar to call `backward()` on: the batch mean of the per-example objective.
    pub loss: Tensor,
    /// (B,) mean squared error of the prediction, unweighted.
    pub mse: Tensor,
    /// (B,) the bound term L_t in bits/dim, for the hybrid and kl objectives.
    pub vlb: Option<Tensor>,
}

/// Min-SNR-gamma weights (Hang et al. 2023) for examples at schedule indices `t`, such that the
/// weighted mse of `prediction` equals min(SNR_t, gamma) times the x0 mse:
/// eps: min(SNR, gamma) / SNR (1 where SNR = 0, the limit), x0: min(SNR, gamma),
/// v: min(SNR, gamma) / (SNR + 1).
pub fn min_snr_weights(
    schedule: &Schedule,
    prediction: Prediction,
    gamma: f64,
    t: &[usize],
) -> Result<Vec<f64>> {
    t.iter()
        .map(|&i| {
            let snr = *schedule.snr.get(i).ok_or_else(|| {
                Error::Invalid(format!(
                    "timestep {i} is outside the schedule of {} steps",
                    schedule.len()
                ))
            })?;
            let clipped = snr.min(gamma);
            Ok(match prediction {
                Prediction::Eps if snr <= gamma => 1.0,
                Prediction::Eps => gamma / snr,
                Prediction::X0 => clipped,
                Prediction::V => clipped / (snr + 1.0),
            })
        })
        .collect()
}

/// The training objective for one batch (improved-diffusion's `training_losses`), per example:
/// - mse_b = mean over non-batch dims of (target - pred)^2, target the eps, x0 or v of
///   `diffusion::target`; times the min-SNR-gamma weight when `min_snr_gamma` is set.
/// - simple: mse_b; hybrid: mse_b + lambda T L_t(b), with L_t computed on the model output with
///   its prediction channels detached (improved-diffusion's `frozen_out`), so the bound trains
///   only the variance channels; kl: T L_t(b) with nothing detached. T = `schedule.len()`, L_t
///   is `vlb::vb_term_bpd` in bits/dim (the decoder NLL where t = 0), never clipped. With a
///   fixed variance the hybrid's bound term has nothing left to train: it is reported, constant.
///
/// The loss is the batch mean. `t` are indices into `schedule` (the training schedule);
/// x0, x_t, eps: (B, C, ...); model_output: (B, C, ...) or (B, 2C, ...) with a learned variance.
#[allow(clippy::too_many_arguments)]
pub fn training_losses(
    schedule: &Schedule,
    param: Parameterization,
    opts: &LossOptions,
    model_output: &Tensor,
    x0: &Tensor,
    x_t: &Tensor,
    t: &[usize],
    eps: &Tensor,
) -> Result<LossTerms> {
    opts.validate(param)?;
    let [model_output, x0, x_t, eps] = [model_output, x0, x_t, eps].map(|x| x.to_dtype(DType::F32));
    let (model_output, x0, x_t, eps) = (model_output?, x0?, x_t?, eps?);
    let channels = x0.dim(1)?;
    let expected = param.out_channels(channels);
    if model_output.dim(1)? != expected || t.len() != x0.dim(0)? {
        return Err(Error::Invalid(format!(
            "model output {:?} and {} timesteps for data {:?}: expected {expected} channels \
             and one timestep per example",
            model_output.dims(),
            t.len(),
            x0.dims()
        )));
    }
    let (pred, var_values) = param.split(&model_output, channels)?;
    let target = target(schedule, param.prediction, &x0, t, &eps)?;
    let mse = (target - &pred)?.sqr()?.flatten_from(1)?.mean(1)?;
    let weighted = match opts.min_snr_gamma {
        Some(gamma) => {
            let w: Vec<f32> = min_snr_weights(schedule, param.prediction, gamma, t)?
                .into_iter()
                .map(|w| w as f32)
                .collect();
            (&mse * Tensor::from_vec(w, t.len(), mse.device())?)?
        }
        None => mse.clone(),
    };
    let steps = schedule.len() as f64;
    let (per_example, vlb) = match opts.kind {
        LossKind::Simple => (weighted, None),
        LossKind::Hybrid => {
            let frozen = match var_values {
                Some(v) => Tensor::cat(&[&pred.detach(), &v], 1)?,
                None => model_output.detach(),
            };
            let vb = vb_term_bpd(schedule, param, &frozen, &x0, &x_t, t, false)?;
            let total = (weighted + vb.affine(opts.vlb_weight * steps, 0.0)?)?;
            (total, Some(vb))
        }
        LossKind::Kl => {
            let vb = vb_term_bpd(schedule, param, &model_output, &x0, &x_t, t, false)?;
            (vb.affine(steps, 0.0)?, Some(vb))
        }
    };
    Ok(LossTerms {
        loss: per_example.mean_all()?,
        mse,
        vlb,
    })
}

#[cfg(test)]
mod tests;
