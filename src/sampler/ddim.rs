//! DDIM (Song et al. 2021): the non-Markovian reverse process that shares DDPM's marginals,
//! with stochasticity eta (0: a deterministic ODE-like map; 1: ancestral with fixed-small
//! variance), over a respaced schedule.

use candle_core::Tensor;

use super::{Context, Step, Stepper};
use crate::error::Result;
use crate::rng::BatchNoise;

/// The DDIM sampler with stochasticity `eta` in [0, 1].
#[derive(Clone, Copy, Debug, Default)]
pub struct Ddim {
    pub eta: f64,
}

/// sigma = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev)   (eq. 16)
fn sigma(eta: f64, abar_t: f64, abar_prev: f64) -> f64 {
    eta * ((1.0 - abar_prev) / (1.0 - abar_t)).sqrt() * (1.0 - abar_t / abar_prev).sqrt()
}

impl Stepper for Ddim {
    /// x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z   (eq. 12),
    /// with abar_prev = alphas_cumprod_prev[i], which is 1 at i = 0: sigma = 0 and x_prev = x0
    /// there, so the last step needs no special case.
    fn step(
        &mut self,
        ctx: &Context,
        i: usize,
        x_t: &Tensor,
        noise: &mut BatchNoise,
    ) -> Result<Step> {
        let output = ctx.output(x_t, i)?;
        let (x0, eps) = ctx.x0_and_eps(x_t, i, &output)?;
        let abar_t = ctx.schedule.alphas_cumprod[i];
        let abar_prev = ctx.schedule.alphas_cumprod_prev[i];
        let sigma = sigma(self.eta, abar_t, abar_prev);
        // max(0, .) only guards rounding: 1 - abar_prev - sigma^2 >= 0 for eta <= 1.
        let dir = (1.0 - abar_prev - sigma * sigma).max(0.0).sqrt();
        let mut x = ((&x0 * abar_prev.sqrt())? + (&eps * dir)?)?;
        if sigma > 0.0 {
            let z = noise.randn(&x_t.dims()[1..], x_t.device())?;
            x = (x + (z * sigma)?)?;
        }
        Ok(Step { x, x0 })
    }
}
