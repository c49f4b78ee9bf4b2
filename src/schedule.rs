//! Beta schedules and every coefficient derived from them, host-side in f64, named as in the
//! papers (and improved-diffusion). Also respacing: a subset of timesteps makes a new schedule
//! with a map back to the original t, so strided ancestral sampling and DDIM share one code path.
//! This module owns no tensors and no model.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The family of beta schedules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BetaSchedule {
    /// Ho et al. 2020: betas linear in t.
    #[default]
    Linear,
    /// Nichol & Dhariwal 2021: abar_t = cos^2(((t/T + s)/(1 + s)) pi/2), s = 0.008.
    Cosine,
    /// Jabri et al. / Chen 2023: abar_t follows a rescaled sigmoid of t.
    Sigmoid,
    /// Latent diffusion's: sqrt(beta_t) linear in t (diffusers' "scaled_linear").
    ScaledLinear,
    /// Given betas, one per step (diffusers' `trained_betas`): `diffusion.betas`.
    Custom,
}

/// How K sampling steps are chosen among T training steps (the names diffusers uses).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Spacing {
    /// round(linspace(0, T-1, K)): both ends visited.
    Linspace,
    /// k * (T div K), k = 0..K: starts at 0 (DDIM paper's choice); never visits T-1.
    Leading,
    /// round(T - k T/K) - 1, k = 0..K: visits t = T-1 (the default, best for few steps).
    #[default]
    Trailing,
}

impl Spacing {
    /// Every spacing, by the name configs and `--spacing` use.
    pub const ALL: [(Spacing, &'static str); 3] = [
        (Spacing::Linspace, "linspace"),
        (Spacing::Leading, "leading"),
        (Spacing::Trailing, "trailing"),
    ];
}

impl std::str::FromStr for Spacing {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Spacing::ALL
            .into_iter()
            .find(|(_, name)| *name == s)
            .map(|(spacing, _)| spacing)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "unknown spacing {s:?}; expected linspace, leading or trailing"
                ))
            })
    }
}

/// Linear betas: beta_t from `start` to `end` in T steps, both ends scaled by 1000/T
/// (improved-diffusion), so other T keep the same overall noise level as T = 1000.
pub fn linear_betas(num_timesteps: usize, start: f64, end: f64) -> Vec<f64> {
    let scale = 1000.0 / num_timesteps as f64;
    linspace(start * scale, end * scale, num_timesteps)
}

/// Scaled-linear betas: sqrt(beta_t) from sqrt(start) to sqrt(end) in T steps, both ends scaled
/// by 1000/T as for `linear_betas` (diffusers' "scaled_linear" at T = 1000).
pub fn scaled_linear_betas(num_timesteps: usize, start: f64, end: f64) -> Vec<f64> {
    let scale = 1000.0 / num_timesteps as f64;
    linspace((start * scale).sqrt(), (end * scale).sqrt(), num_timesteps)
        .into_iter()
        .map(|b| b * b)
        .collect()
}

/// Cosine betas (Nichol & Dhariwal 2021, eq. 17):
/// abar(t) = cos^2(((t/T + s) / (1 + s)) pi/2), beta_t = min(1 - abar(t+1)/abar(t), 0.999),
/// with s = 0.008 and t/T computed in floating point.
pub fn cosine_betas(num_timesteps: usize) -> Vec<f64> {
    const S: f64 = 0.008;
    let t_max = num_timesteps as f64;
    let abar = |t: f64| {
        (((t / t_max + S) / (1.0 + S)) * std::f64::consts::FRAC_PI_2)
            .cos()
            .powi(2)
    };
    (0..num_timesteps)
        .map(|i| (1.0 - abar(i as f64 + 1.0) / abar(i as f64)).min(0.999))
        .collect()
}

/// Sigmoid betas (Chen 2023, "On the importance of noise scheduling"; start -3, end 3, tau 1):
/// v(x) = sigmoid(x / tau), abar(u) = (v(end) - v(u (end - start) + start)) / (v(end) - v(start))
/// for u = t/T in [0, 1]; beta_t = clip(1 - abar(t+1)/abar(t), 0, 0.999).
pub fn sigmoid_betas(num_timesteps: usize) -> Vec<f64> {
    let (start, end, tau) = (-3.0f64, 3.0f64, 1.0f64);
    let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
    let (v_start, v_end) = (sigmoid(start / tau), sigmoid(end / tau));
    let abar = |u: f64| (v_end - sigmoid((u * (end - start) + start) / tau)) / (v_end - v_start);
    let t_max = num_timesteps as f64;
    (0..num_timesteps)
        .map(|i| {
            let b = 1.0 - abar((i + 1) as f64 / t_max) / abar(i as f64 / t_max);
            b.clamp(0.0, 0.999)
        })
        .collect()
}

/// Rescale betas to zero terminal SNR (Lin et al. 2023, Algorithm 1): shift sqrt(abar) so its
/// last value is 0 and scale it so its first is unchanged, then recover betas. The last beta
/// becomes 1 (abar_T = 0, pure noise), which only a v- or x0-predicting model can use.
pub fn rescale_zero_terminal_snr(betas: &[f64]) -> Vec<f64> {
    let mut abar = 1.0;
    let sqrt_abar: Vec<f64> = betas
        .iter()
        .map(|b| {
            abar *= 1.0 - b;
            abar.sqrt()
        })
        .collect();
    let (first, last) = (sqrt_abar[0], sqrt_abar[sqrt_abar.len() - 1]);
    let scaled: Vec<f64> = sqrt_abar
        .iter()
        .map(|s| (s - last) * first / (first - last))
        .map(|s| s * s)
        .collect();
    let mut prev = 1.0;
    scaled
        .iter()
        .map(|&ab| {
            let b = 1.0 - ab / prev;
            prev = ab;
            b
        })
        .collect()
}

/// `n` evenly spaced values from `a` to `b` inclusive (numpy's linspace).
fn linspace(a: f64, b: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![a];
    }
    let step = (b - a) / (n - 1) as f64;
    (0..n).map(|i| a + step * i as f64).collect()
}

/// K of T timesteps, ascending, chosen by `spacing` (diffusers' definitions).
pub fn spaced_timesteps(
    num_timesteps: usize,
    steps: usize,
    spacing: Spacing,
) -> Result<Vec<usize>> {
    if steps == 0 || steps > num_timesteps {
        return Err(Error::Invalid(format!(
            "steps {steps} must be between 1 and the {num_timesteps} training timesteps"
        )));
    }
    let t = num_timesteps as f64;
    let k = steps as f64;
    let mut ts: Vec<usize> = match spacing {
        Spacing::Linspace => linspace(0.0, t - 1.0, steps)
            .into_iter()
            .map(|v| round_half_even(v) as usize)
            .collect(),
        Spacing::Leading => (0..steps).map(|i| i * (num_timesteps / steps)).collect(),
        // numpy: np.round(np.arange(T, 0, -T/K)) - 1
        Spacing::Trailing => (0..steps)
            .map(|i| round_half_even(t - i as f64 * (t / k)) as usize - 1)
            .collect(),
    };
    ts.sort_unstable();
    ts.dedup();
    Ok(ts)
}

/// numpy's rounding: halves go to the even neighbour.
fn round_half_even(v: f64) -> f64 {
    let r = v.round();
    if (v - v.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - v.signum()
    } else {
        r
    }
}

/// A beta schedule and all its derived arrays (index i = 0..N-1), plus the model timestep each
/// index stands for (`timesteps[i]`: i itself for a base schedule, the original t once respaced).
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    /// beta_i
    pub betas: Vec<f64>,
    /// alpha_i = 1 - beta_i
    pub alphas: Vec<f64>,
    /// abar_i = prod_{j <= i} alpha_j
    pub alphas_cumprod: Vec<f64>,
    /// abar_{i-1}, with abar_{-1} = 1
    pub alphas_cumprod_prev: Vec<f64>,
    /// sqrt(abar_i)
    pub sqrt_alphas_cumprod: Vec<f64>,
    /// sqrt(1 - abar_i)
    pub sqrt_one_minus_alphas_cumprod: Vec<f64>,
    /// log(1 - abar_i)
    pub log_one_minus_alphas_cumprod: Vec<f64>,
    /// sqrt(1 / abar_i)
    pub sqrt_recip_alphas_cumprod: Vec<f64>,
    /// sqrt(1 / abar_i - 1)
    pub sqrt_recipm1_alphas_cumprod: Vec<f64>,
    /// beta~_i = beta_i (1 - abar_{i-1}) / (1 - abar_i), the variance of q(x_{i-1} | x_i, x0)
    pub posterior_variance: Vec<f64>,
    /// log beta~_i, with the 0 at i = 0 replaced by beta~_1 (improved-diffusion's clip)
    pub posterior_log_variance_clipped: Vec<f64>,
    /// coefficient of x0 in the posterior mean: beta_i sqrt(abar_{i-1}) / (1 - abar_i)
    pub posterior_mean_coef1: Vec<f64>,
    /// coefficient of x_i in the posterior mean: (1 - abar_{i-1}) sqrt(alpha_i) / (1 - abar_i)
    pub posterior_mean_coef2: Vec<f64>,
    /// SNR_i = abar_i / (1 - abar_i)
    pub snr: Vec<f64>,
    /// The model (original) timestep of index i.
    pub timesteps: Vec<usize>,
    /// The abar a DDIM step from index 0 goes to: 1 (x0 itself), or the training schedule's
    /// abar at t = 0 where diffusers' `set_alpha_to_one` is off (`with_final_alpha_cumprod`).
    pub final_alpha_cumprod: f64,
}

impl Schedule {
    /// A schedule of the given family over `num_timesteps` steps; `start`/`end` are the linear
    /// schedule's ends at T = 1000 (ignored by the others).
    pub fn new(
        kind: BetaSchedule,
        num_timesteps: usize,
        start: f64,
        end: f64,
        zero_terminal_snr: bool,
    ) -> Result<Self> {
        if num_timesteps < 2 {
            return Err(Error::Config(format!(
                "diffusion.timesteps = {num_timesteps}: need at least 2"
            )));
        }
        let check_ends = || {
            if 0.0 < start && start < end && end * 1000.0 / (num_timesteps as f64) < 1.0 {
                Ok(())
            } else {
                Err(Error::Config(format!(
                    "diffusion.beta_start = {start}, beta_end = {end}: need 0 < start < end and end * 1000/T < 1"
                )))
            }
        };
        let mut betas = match kind {
            BetaSchedule::Linear => {
                check_ends()?;
                linear_betas(num_timesteps, start, end)
            }
            BetaSchedule::ScaledLinear => {
                check_ends()?;
                scaled_linear_betas(num_timesteps, start, end)
            }
            BetaSchedule::Cosine => cosine_betas(num_timesteps),
            BetaSchedule::Sigmoid => sigmoid_betas(num_timesteps),
            BetaSchedule::Custom => {
                return Err(Error::Config(
                    "diffusion.beta_schedule = \"custom\" takes its betas from diffusion.betas"
                        .into(),
                ))
            }
        };
        if zero_terminal_snr {
            betas = rescale_zero_terminal_snr(&betas);
        }
        Self::from_betas(betas)
    }

    /// Derive every array from the betas; each beta must lie in (0, 1].
    pub fn from_betas(betas: Vec<f64>) -> Result<Self> {
        let timesteps = (0..betas.len()).collect();
        Self::with_timesteps(betas, timesteps)
    }

    fn with_timesteps(betas: Vec<f64>, timesteps: Vec<usize>) -> Result<Self> {
        if betas.is_empty() {
            return Err(Error::Invalid("a schedule needs at least one beta".into()));
        }
        if let Some((i, b)) = betas
            .iter()
            .enumerate()
            .find(|(_, b)| !(**b > 0.0 && **b <= 1.0))
        {
            return Err(Error::Invalid(format!("beta[{i}] = {b} is outside (0, 1]")));
        }
        let alphas: Vec<f64> = betas.iter().map(|b| 1.0 - b).collect();
        let mut acc = 1.0;
        let alphas_cumprod: Vec<f64> = alphas
            .iter()
            .map(|a| {
                acc *= a;
                acc
            })
            .collect();
        let alphas_cumprod_prev: Vec<f64> = std::iter::once(1.0)
            .chain(alphas_cumprod[..alphas_cumprod.len() - 1].iter().copied())
            .collect();
        let map = |f: &dyn Fn(usize) -> f64| (0..betas.len()).map(f).collect::<Vec<f64>>();
        let ab = &alphas_cumprod;
        let ab_prev = &alphas_cumprod_prev;
        let posterior_variance = map(&|i| betas[i] * (1.0 - ab_prev[i]) / (1.0 - ab[i]));
        let posterior_log_variance_clipped = map(&|i| {
            let v = if i == 0 && betas.len() > 1 {
                posterior_variance[1]
            } else {
                posterior_variance[i]
            };
            v.ln()
        });
        Ok(Schedule {
            sqrt_alphas_cumprod: map(&|i| ab[i].sqrt()),
            sqrt_one_minus_alphas_cumprod: map(&|i| (1.0 - ab[i]).sqrt()),
            log_one_minus_alphas_cumprod: map(&|i| (1.0 - ab[i]).ln()),
            sqrt_recip_alphas_cumprod: map(&|i| (1.0 / ab[i]).sqrt()),
            sqrt_recipm1_alphas_cumprod: map(&|i| (1.0 / ab[i] - 1.0).sqrt()),
            posterior_mean_coef1: map(&|i| betas[i] * ab_prev[i].sqrt() / (1.0 - ab[i])),
            posterior_mean_coef2: map(&|i| (1.0 - ab_prev[i]) * alphas[i].sqrt() / (1.0 - ab[i])),
            snr: map(&|i| ab[i] / (1.0 - ab[i])),
            posterior_variance,
            posterior_log_variance_clipped,
            alphas_cumprod_prev,
            alphas_cumprod,
            alphas,
            betas,
            timesteps,
            final_alpha_cumprod: 1.0,
        })
    }

    /// The same schedule with DDIM's last step going to `abar` instead of 1.
    pub fn with_final_alpha_cumprod(self, abar: f64) -> Schedule {
        Schedule {
            final_alpha_cumprod: abar,
            ..self
        }
    }

    /// Number of steps N (T for a base schedule, K once respaced).
    pub fn len(&self) -> usize {
        self.betas.len()
    }

    /// True for an empty schedule (never produced by the constructors).
    pub fn is_empty(&self) -> bool {
        self.betas.is_empty()
    }

    /// The schedule over the kept indices `keep` (strictly ascending, within 0..N):
    /// beta'_k = 1 - abar_{keep[k]} / abar_{keep[k-1]} (abar_{keep[-1]} = 1), so abar' is abar
    /// at the kept steps, and timesteps'[k] = timesteps[keep[k]].
    pub fn respace(&self, keep: &[usize]) -> Result<Schedule> {
        if keep.is_empty() {
            return Err(Error::Invalid(
                "respacing needs at least one timestep".into(),
            ));
        }
        if keep.windows(2).any(|w| w[0] >= w[1]) || keep[keep.len() - 1] >= self.len() {
            return Err(Error::Invalid(format!(
                "respaced timesteps must be strictly ascending and below {}",
                self.len()
            )));
        }
        let mut prev = 1.0;
        let betas = keep
            .iter()
            .map(|&i| {
                let ab = self.alphas_cumprod[i];
                let b = 1.0 - ab / prev;
                prev = ab;
                b
            })
            .collect();
        let timesteps = keep.iter().map(|&i| self.timesteps[i]).collect();
        Self::with_timesteps(betas, timesteps)
    }

    /// The schedule for K sampling steps chosen by `spacing` (K = N keeps it unchanged).
    pub fn for_sampling(&self, steps: usize, spacing: Spacing) -> Result<Schedule> {
        self.respace(&spaced_timesteps(self.len(), steps, spacing)?)
    }
}

#[cfg(test)]
mod golden;

#[cfg(test)]
mod tests {
    use super::*;

    /// `--spacing` parses the names configs use (serde's), and nothing else.
    #[test]
    fn spacing_names_are_the_config_names() {
        for (spacing, name) in Spacing::ALL {
            assert_eq!(name.parse::<Spacing>().unwrap(), spacing);
            let value = toml::Value::try_from(spacing).unwrap();
            assert_eq!(value.as_str(), Some(name));
        }
        assert!("Trailing".parse::<Spacing>().is_err());
    }

    #[test]
    fn respacing_every_step_is_the_identity() {
        let s = Schedule::new(BetaSchedule::Linear, 1000, 1e-4, 0.02, false).unwrap();
        let r = s.respace(&(0..1000).collect::<Vec<_>>()).unwrap();
        for (a, b) in s.betas.iter().zip(&r.betas) {
            assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        }
        for (a, b) in s.posterior_variance.iter().zip(&r.posterior_variance) {
            assert!((a - b).abs() < 1e-12);
        }
        assert_eq!(s.timesteps, r.timesteps);
    }

    #[test]
    fn respaced_alpha_bar_is_the_original_at_kept_steps() {
        let s = Schedule::new(BetaSchedule::Cosine, 1000, 1e-4, 0.02, false).unwrap();
        let keep = spaced_timesteps(1000, 50, Spacing::Trailing).unwrap();
        let r = s.respace(&keep).unwrap();
        for (k, &i) in keep.iter().enumerate() {
            assert!((r.alphas_cumprod[k] - s.alphas_cumprod[i]).abs() < 1e-12);
            assert_eq!(r.timesteps[k], i);
        }
        assert_eq!(*keep.last().unwrap(), 999);
    }

    #[test]
    fn zero_terminal_snr_ends_in_pure_noise_and_keeps_the_start() {
        let s = Schedule::new(BetaSchedule::Linear, 1000, 1e-4, 0.02, false).unwrap();
        let z = Schedule::new(BetaSchedule::Linear, 1000, 1e-4, 0.02, true).unwrap();
        assert!(z.alphas_cumprod[999].abs() < 1e-15);
        assert!((z.alphas_cumprod[0] - s.alphas_cumprod[0]).abs() < 1e-12);
        assert!(z.snr[999] == 0.0);
    }

    #[test]
    fn bad_parameters_are_errors() {
        assert!(Schedule::new(BetaSchedule::Linear, 1, 1e-4, 0.02, false).is_err());
        assert!(Schedule::new(BetaSchedule::Linear, 1000, 0.02, 1e-4, false).is_err());
        assert!(Schedule::new(BetaSchedule::Linear, 10, 1e-4, 0.02, false).is_err());
        assert!(spaced_timesteps(100, 0, Spacing::Trailing).is_err());
        assert!(spaced_timesteps(100, 101, Spacing::Trailing).is_err());
    }
}
