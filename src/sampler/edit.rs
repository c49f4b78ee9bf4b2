//! SDEdit (Meng et al. 2022): start the reverse process from a given image noised to
//! t = strength T instead of from pure noise, so the result keeps the image's coarse structure
//! (strength near 0) or only its faintest trace (strength near 1). Any sampler runs the rest.

use candle_core::{DType, Tensor};

use super::{check_shape, denoise, Context, SampleOptions, StepInfo};
use crate::denoiser::Denoiser;
use crate::diffusion::{q_sample, Parameterization};
use crate::error::{Error, Result};
use crate::rng::{BatchNoise, Purpose};
use crate::schedule::Schedule;

/// How many of the respaced steps (ascending model timesteps `timesteps`) lie at or below
/// t = strength T in the paper's 1-based numbering: those with t_k + 1 <= strength T. Trailing
/// spacing makes it floor(strength K), as diffusers' img2img runs.
pub(crate) fn steps_below(timesteps: &[usize], strength: f64, num_timesteps: usize) -> usize {
    let t_start = strength * num_timesteps as f64;
    // The 1e-9 keeps 0.5 * 1000 from missing t = 499 through rounding.
    timesteps
        .iter()
        .filter(|&&t| (t + 1) as f64 <= t_start + 1e-9)
        .count()
}

/// SDEdit: x0_init (B, C, H, W) or (B, D) becomes x_k = sqrt(abar_k) x0_init + sqrt(1 - abar_k) z
/// (q(x_k | x0), z from each sample's stream (seed, SampleNoise, first_index + i)) at the
/// highest respaced index k with model timestep t_k + 1 <= strength T, then `opts.sampler` runs
/// from k down to the sample, `on_step` after each step. Strength 0 (or one below the lowest
/// respaced step) returns x0_init unchanged (as f32), without calling the model; strength 1
/// starts from the top step, where x_k is all but pure noise (sqrt(abar_T) = 0.006 for the
/// linear schedule). The device is x0_init's.
pub fn sample_from(
    model: &dyn Denoiser,
    schedule: &Schedule,
    param: Parameterization,
    opts: &SampleOptions,
    x0_init: &Tensor,
    strength: f64,
    on_step: &mut dyn FnMut(&StepInfo) -> Result<()>,
) -> Result<Tensor> {
    opts.validate(schedule.len())?;
    check_shape(x0_init.dims())?;
    if !(0.0..=1.0).contains(&strength) {
        return Err(Error::Invalid(format!(
            "strength = {strength} is outside [0, 1]"
        )));
    }
    let x0_init = x0_init.to_dtype(DType::F32)?;
    let respaced = opts.respace(schedule)?;
    let from = steps_below(&respaced.timesteps, strength, schedule.len());
    if from == 0 {
        return Ok(x0_init);
    }
    let b = x0_init.dim(0)?;
    let mut noise = BatchNoise::new(opts.seed, Purpose::SampleNoise, opts.first_index, b);
    let z = noise.randn(&x0_init.dims()[1..], x0_init.device())?;
    let x = q_sample(&respaced, &x0_init, &vec![from - 1; b], &z)?;
    let ctx = Context {
        model,
        schedule: &respaced,
        param,
        clip_x0: opts.clip_x0,
    };
    let mut stepper = opts.sampler.stepper(opts);
    denoise(&ctx, stepper.as_mut(), x, from, &mut noise, on_step)
}
