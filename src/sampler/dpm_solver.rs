//! DPM-Solver++ 2M (Lu et al. 2022, "DPM-Solver++", Algorithm 2): a deterministic second-order
//! multistep solver of the probability-flow ODE in its data-prediction form, over the respaced
//! schedule. With alpha_i = sqrt(abar_i), sigma_i = sqrt(1 - abar_i) and the half log-SNR
//! lambda_i = log(alpha_i / sigma_i), the exact solution from index i to i - 1 is
//! x_{i-1} = (sigma_{i-1} / sigma_i) x_i + alpha_{i-1} int_{lambda_i}^{lambda_{i-1}} e^{-(lambda_{i-1} - l)} x0(l) dl,
//! and the solver extrapolates x0 linearly in lambda from the last two model calls.
//!
//! Use it with trailing spacing (the default; diffusers' grid for this solver). Linspace and
//! leading spacing visit t = 0 (abar = 0.9999), so the step into index 0 spans most of the
//! log-SNR range (h ~ 7 h_prev at 20 steps) and the extrapolation overshoots: on the Gaussian
//! oracle of the tests (data variance 0.09) 20 linspace steps give variance 0.151, against
//! 0.067 with trailing spacing and DDIM's 0.057.

use candle_core::Tensor;

use super::{Context, Step, Stepper};
use crate::error::Result;
use crate::rng::BatchNoise;

/// Below this many steps the step into index 0 is first order too (Lu et al.'s "lower order
/// final", with their and diffusers' threshold), for stability.
const LOWER_ORDER_FINAL_BELOW: usize = 15;

/// DPM-Solver++ 2M. It keeps the x0 predicted at the last two indices it stepped from, so a
/// wrapper may repeat a step at the same index (RePaint) and the next step still finds the x0
/// of the index above it.
#[derive(Clone, Debug, Default)]
pub struct DpmSolver2M {
    /// (respaced index, x0 predicted there), newest first.
    history: Vec<(usize, Tensor)>,
}

/// lambda = log(sqrt(abar) / sqrt(1 - abar)): +inf at abar = 1 (the clean end), -inf at abar = 0.
fn lambda(abar: f64) -> f64 {
    0.5 * (abar.ln() - (1.0 - abar).ln())
}

impl DpmSolver2M {
    fn remember(&mut self, i: usize, x0: &Tensor) {
        self.history.retain(|(j, _)| *j != i);
        self.history.insert(0, (i, x0.clone()));
        self.history.truncate(2);
    }

    fn x0_at(&self, i: usize) -> Option<&Tensor> {
        self.history.iter().find(|(j, _)| *j == i).map(|(_, x0)| x0)
    }
}

impl Stepper for DpmSolver2M {
    /// x_{i-1} = (sigma_{i-1} / sigma_i) x_i + alpha_{i-1} (1 - e^{-h}) D, h = lambda_{i-1} - lambda_i,
    /// where (1 - e^{-h}) alpha_{i-1} = alpha_{i-1} - alpha_i sigma_{i-1} / sigma_i is computed in that
    /// form so that h = inf (abar_i = 0 or abar_{i-1} = 1) needs no case.
    /// First order (D = x0_i, which is DDIM with eta = 0): the first step, the last (into abar = 1,
    /// where it gives x = x0_i, as in diffusers' final sigma 0) and, under 15 steps, the one
    /// before it. Second order otherwise: r = h_prev / h with h_prev = lambda_i - lambda_{i+1},
    /// D = (1 + 1 / (2 r)) x0_i - 1 / (2 r) x0_{i+1}.
    fn step(
        &mut self,
        ctx: &Context,
        i: usize,
        x_t: &Tensor,
        _noise: &mut BatchNoise,
    ) -> Result<Step> {
        let s = ctx.schedule;
        let output = ctx.output(x_t, i)?;
        let (x0, _) = ctx.x0_and_eps(x_t, i, &output)?;
        let (abar, abar_prev) = (s.alphas_cumprod[i], s.alphas_cumprod_prev[i]);
        let (alpha, sigma) = (abar.sqrt(), (1.0 - abar).sqrt());
        let (alpha_prev, sigma_prev) = (abar_prev.sqrt(), (1.0 - abar_prev).sqrt());
        let c_x = sigma_prev / sigma;
        let c_d = alpha_prev - alpha * c_x;
        let first_order = i == 0 || (i == 1 && s.len() < LOWER_ORDER_FINAL_BELOW);
        let d = match self.x0_at(i + 1) {
            Some(x0_next) if !first_order => {
                let h = lambda(abar_prev) - lambda(abar);
                let h_prev = lambda(abar) - lambda(s.alphas_cumprod[i + 1]);
                // r = inf (the previous step came from abar = 0) makes this first order.
                let k = 0.5 * h / h_prev;
                ((&x0 * (1.0 + k))? - (x0_next * k)?)?
            }
            _ => x0.clone(),
        };
        let x = ((x_t * c_x)? + (d * c_d)?)?;
        self.remember(i, &x0);
        Ok(Step { x, x0 })
    }
}
