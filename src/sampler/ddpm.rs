//! Ancestral sampling (Ho et al. 2020, Algorithm 2) over a respaced schedule: each step draws
//! x_{t-1} ~ p(x_{t-1} | x_t) with the mean and variance `diffusion::p_mean_variance` gives
//! (fixed-small, fixed-large or learned, all over the respaced betas, as improved-diffusion does).

use candle_core::Tensor;

use super::{Context, Step, Stepper};
use crate::diffusion::p_mean_variance;
use crate::error::Result;
use crate::rng::BatchNoise;

/// The ancestral sampler; stateless.
#[derive(Clone, Copy, Debug, Default)]
pub struct Ancestral;

impl Stepper for Ancestral {
    /// x_{i-1} = mu_theta(x_i, i) + sigma_i z, z ~ N(0, I) from each sample's stream;
    /// no noise after index 0, whose mean is the sample.
    fn step(
        &mut self,
        ctx: &Context,
        i: usize,
        x_t: &Tensor,
        noise: &mut BatchNoise,
    ) -> Result<Step> {
        let output = ctx.output(x_t, i)?;
        let idx = vec![i; x_t.dim(0)?];
        let p = p_mean_variance(ctx.schedule, ctx.param, x_t, &idx, &output, ctx.clip_x0)?;
        let x = if i == 0 {
            p.mean
        } else {
            let z = noise.randn(&x_t.dims()[1..], x_t.device())?;
            let sigma = (p.log_variance * 0.5)?.exp()?;
            (p.mean + z.broadcast_mul(&sigma)?)?
        };
        Ok(Step { x, x0: p.x0 })
    }
}
