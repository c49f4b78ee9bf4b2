//! The noise latent as a handle on an image: deterministic DDIM inversion maps an image to the
//! latent that DDIM (eta = 0) maps back to it, `sample_from_latent` runs any sampler from a
//! given latent, and `slerp` interpolates latents along the sphere where Gaussian noise lives
//! (Song et al. 2021, section 5; Dhariwal & Nichol 2021, appendix).
//!
//! Inversion stops below `SIGMA_MAX`: its latent is x at the highest respaced index m - 1 whose
//! sigma = sqrt((1 - abar) / abar) is at most 80, and the way back starts there. A step from
//! higher up reads an eps-model's x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar), its eps error
//! times sigma (2e4 at the top of the cosine schedule), so the x_T that inverts it hangs on
//! that error: the digits model's end frames came back as pure 0/255 whatever the refinements.
//! Up there x_t is noise to within 1/80 of the signal, and skipping those steps both ways is
//! taking them as the ODE for E[x0] = 0 does, x_{m-1} = sqrt((1 - abar_{m-1}) / (1 - abar_T)) x_T:
//! a scale, which `slerp` commutes with.

use candle_core::{DType, Tensor};

use super::{check_shape, denoise, sigma_of, Context, SampleOptions, StepInfo, SIGMA_MAX};
use crate::denoiser::Denoiser;
use crate::diffusion::Parameterization;
use crate::error::{Error, Result};
use crate::rng::{BatchNoise, Purpose};
use crate::schedule::{Schedule, Spacing};

/// How `ddim_invert` walks up the schedule.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct InvertOptions {
    /// Number of DDIM steps K of the schedule; sample back with the same steps and spacing.
    pub steps: usize,
    pub spacing: Spacing,
    /// Fixed-point refinements per step (0: plain inversion, first-order accurate; each one
    /// re-evaluates eps at the new point and shrinks the step's mismatch with the DDIM step
    /// that undoes it, at one model call each).
    pub refine: usize,
}

impl Default for InvertOptions {
    fn default() -> Self {
        InvertOptions {
            steps: 50,
            spacing: Spacing::default(),
            refine: 0,
        }
    }
}

/// The steps DDIM inversion takes on a respaced schedule: those that end at sigma <= SIGMA_MAX
/// (sigma = sqrt((1 - abar_i) / abar_i) grows with i). Its latent is x at index `from - 1`,
/// and sampling back starts there (`sample_from_latent` with this `from`).
pub fn inversion_steps(respaced: &Schedule) -> Result<usize> {
    let from = respaced
        .alphas_cumprod
        .iter()
        .take_while(|&&abar| sigma_of(abar) <= SIGMA_MAX)
        .count();
    if from == 0 {
        return Err(Error::Invalid(format!(
            "all {} sampling steps start above sigma = {SIGMA_MAX} (t = {}), where x_t is noise: \
             nothing to invert; use more steps",
            respaced.len(),
            respaced.timesteps.first().copied().unwrap_or(0)
        )));
    }
    Ok(from)
}

/// An image's latent from `ddim_invert`: x at respaced index `from - 1` of the K-step schedule.
#[derive(Clone, Debug)]
pub struct Latent {
    /// (B, ...) like the images.
    pub x: Tensor,
    /// The steps that lead back to the images (`inversion_steps`).
    pub from: usize,
}

/// Deterministic DDIM inversion (improved-diffusion's `ddim_reverse_sample`, over the respaced
/// schedule): from x_{-1} = x0 (B, ...) up to x_{m-1}, m = `inversion_steps`,
/// x_i = (alpha_i / alpha_{i-1}) x_{i-1} + (sigma_i - alpha_i sigma_{i-1} / alpha_{i-1}) eps,
/// alpha = sqrt(abar), sigma = sqrt(1 - abar), abar_{-1} = 1: the DDIM (eta = 0) step i solved
/// for x_i, with eps = eps(x_{i-1}, t_i) standing in for eps(x_i, t_i), which the DDIM step
/// will see. Each refinement replaces eps by eps(x_i, t_i) at the current x_i (a fixed-point
/// iteration of that equation). No x0 clipping (it would not be invertible). `on_step` sees
/// each step, index 0 first, with t the timestep reached and x0 the x0 implied by x_{i-1}, eps.
pub fn ddim_invert(
    model: &dyn Denoiser,
    schedule: &Schedule,
    param: Parameterization,
    opts: &InvertOptions,
    x0: &Tensor,
    on_step: &mut dyn FnMut(&StepInfo) -> Result<()>,
) -> Result<Latent> {
    check_shape(x0.dims())?;
    let respaced = schedule.for_sampling(opts.steps, opts.spacing)?;
    let total = inversion_steps(&respaced)?;
    let ctx = Context {
        model,
        schedule: &respaced,
        param,
        clip_x0: false,
    };
    let mut x = x0.to_dtype(DType::F32)?;
    for i in 0..total {
        let (abar, abar_prev) = (respaced.alphas_cumprod[i], respaced.alphas_cumprod_prev[i]);
        let (alpha, sigma) = (abar.sqrt(), (1.0 - abar).sqrt());
        let (alpha_prev, sigma_prev) = (abar_prev.sqrt(), (1.0 - abar_prev).sqrt());
        let c_eps = sigma - alpha * sigma_prev / alpha_prev;
        let up = |eps: &Tensor| -> Result<Tensor> {
            Ok(((&x * (alpha / alpha_prev))? + (eps * c_eps)?)?)
        };
        let eps_at = |x_t: &Tensor| -> Result<Tensor> {
            let output = ctx.output(x_t, i)?;
            Ok(ctx.x0_and_eps(x_t, i, &output)?.1)
        };
        let mut eps = eps_at(&x)?;
        let mut next = up(&eps)?;
        for _ in 0..opts.refine {
            eps = eps_at(&next)?;
            next = up(&eps)?;
        }
        // x0 implied by the point we left and the eps we used: (x_{i-1} - sigma_{i-1} eps) / alpha_{i-1}.
        let x0_hat = ((&x - (&eps * sigma_prev)?)? / alpha_prev)?;
        x = next;
        on_step(&StepInfo {
            index: i,
            total,
            t: respaced.timesteps[i],
            x: &x,
            x0: &x0_hat,
        })?;
    }
    Ok(Latent { x, from: total })
}

/// Run `opts.sampler` from a given latent x (B, ...) at respaced index `from - 1` (x_T when
/// `from` = opts.steps; a `ddim_invert` latent's own `from`; or `slerp`s of either) down to the
/// samples; stochastic samplers draw from each sample's stream as `sample` does, but without
/// the draws `sample` spends on x_T. The device is x's.
pub fn sample_from_latent(
    model: &dyn Denoiser,
    schedule: &Schedule,
    param: Parameterization,
    opts: &SampleOptions,
    x: &Tensor,
    from: usize,
    on_step: &mut dyn FnMut(&StepInfo) -> Result<()>,
) -> Result<Tensor> {
    let mut noise = BatchNoise::new(opts.seed, Purpose::SampleNoise, opts.first_index, x.dim(0)?);
    run_from_latent(
        model,
        schedule,
        param,
        opts,
        x,
        Some(from),
        &mut noise,
        on_step,
    )
}

/// `sample_from_latent` with every noise draw of the sampler given: `draws` (S, B, ...) are
/// handed out in the order the steps ask for them (the ancestral sampler and DDIM with eta > 0
/// draw once per step but the last, so S = steps - 1), to reproduce another program's run
/// from its noise. Fewer draws than the sampler takes is an error, and so are more.
pub fn sample_replaying(
    model: &dyn Denoiser,
    schedule: &Schedule,
    param: Parameterization,
    opts: &SampleOptions,
    x_t: &Tensor,
    draws: &Tensor,
    on_step: &mut dyn FnMut(&StepInfo) -> Result<()>,
) -> Result<Tensor> {
    let mut noise = BatchNoise::new(
        opts.seed,
        Purpose::SampleNoise,
        opts.first_index,
        x_t.dim(0)?,
    )
    .with_given(draws.to_dtype(DType::F32)?);
    let x = run_from_latent(model, schedule, param, opts, x_t, None, &mut noise, on_step)?;
    let left = noise.given_left()?;
    if left > 0 {
        return Err(Error::Invalid(format!(
            "the given noise holds {left} more draws per image than the sampler took; give x_T and one draw per step but the last"
        )));
    }
    Ok(x)
}

/// The loop of `sample_from_latent` over `noise`.
#[allow(clippy::too_many_arguments)]
fn run_from_latent(
    model: &dyn Denoiser,
    schedule: &Schedule,
    param: Parameterization,
    opts: &SampleOptions,
    x_t: &Tensor,
    from: Option<usize>,
    noise: &mut BatchNoise,
    on_step: &mut dyn FnMut(&StepInfo) -> Result<()>,
) -> Result<Tensor> {
    opts.validate(schedule.len())?;
    check_shape(x_t.dims())?;
    let respaced = opts.respace(schedule)?;
    let ctx = Context {
        model,
        schedule: &respaced,
        param,
        clip_x0: opts.clip_x0,
    };
    let mut stepper = opts.sampler.stepper(opts);
    denoise(
        &ctx,
        stepper.as_mut(),
        x_t.to_dtype(DType::F32)?,
        from.unwrap_or(respaced.len()),
        noise,
        on_step,
    )
}

/// Spherical interpolation, per example, of a and b (B, ...):
/// slerp(a, b, w) = sin((1 - w) theta) / sin(theta) a + sin(w theta) / sin(theta) b,
/// cos(theta) = <a, b> / (|a| |b|) (Shoemake 1985). w = 0 gives a, w = 1 gives b; between two
/// latents of equal norm the norm stays that norm, where a straight line would shrink it
/// (independent N(0, I) latents are nearly orthogonal: the midpoint of a lerp has ~0.71 the
/// norm a sampler expects). Falls back to the straight line where sin(theta) < 1e-6 (parallel
/// or opposite rows, where no one great circle is defined) or a row is 0.
pub fn slerp(a: &Tensor, b: &Tensor, w: f64) -> Result<Tensor> {
    if a.dims() != b.dims() || a.rank() < 2 {
        return Err(Error::Invalid(format!(
            "slerp needs two (B, ...) tensors of one shape, got {:?} and {:?}",
            a.dims(),
            b.dims()
        )));
    }
    let rows = |t: &Tensor| -> Result<Vec<Vec<f64>>> {
        Ok(t.to_dtype(DType::F64)?.flatten_from(1)?.to_vec2::<f64>()?)
    };
    let (ra, rb) = (rows(a)?, rows(b)?);
    let mut coef_a = Vec::with_capacity(ra.len());
    let mut coef_b = Vec::with_capacity(ra.len());
    for (p, q) in ra.iter().zip(&rb) {
        let dot: f64 = p.iter().zip(q).map(|(u, v)| u * v).sum();
        let norm = |v: &[f64]| v.iter().map(|u| u * u).sum::<f64>().sqrt();
        let cos = (dot / (norm(p) * norm(q))).clamp(-1.0, 1.0);
        let theta = cos.acos();
        let s = theta.sin();
        let (ca, cb) = if s > 1e-6 {
            (((1.0 - w) * theta).sin() / s, (w * theta).sin() / s)
        } else {
            (1.0 - w, w)
        };
        coef_a.push(ca as f32);
        coef_b.push(cb as f32);
    }
    let mut dims = vec![1usize; a.rank()];
    dims[0] = a.dim(0)?;
    let ca = Tensor::from_vec(coef_a, dims.as_slice(), a.device())?;
    let cb = Tensor::from_vec(coef_b, dims.as_slice(), a.device())?;
    let a = a.to_dtype(DType::F32)?;
    let b = b.to_dtype(DType::F32)?;
    Ok((a.broadcast_mul(&ca)? + b.broadcast_mul(&cb)?)?)
}
