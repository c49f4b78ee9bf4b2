//! Inpainting by replacement (Song et al. 2021, appendix I; Lugmayr et al. 2022, "RePaint"):
//! the sampler regenerates the masked pixels while the known ones are, after every step, reset
//! to a fresh draw of q(x_{t-1} | x0_known), and to x0_known itself after the last, so they end
//! bit-equal to the input. RePaint's resampling (jump length 1) repeats each step r times,
//! re-noising x_{t-1} back to x_t with q(x_t | x_{t-1}) in between, so the regenerated pixels
//! get r chances to agree with the known ones. A `Stepper` wrapper: the loop is `denoise`.

use candle_core::{DType, Tensor};

use super::{check_shape, denoise, Context, SampleOptions, Step, StepInfo, Stepper};
use crate::denoiser::Denoiser;
use crate::diffusion::{q_sample, Parameterization};
use crate::error::{Error, Result};
use crate::rng::{BatchNoise, Purpose};
use crate::schedule::Schedule;

/// What to inpaint: the known image x0_known (B, C, H, W) or (B, D); a mask broadcastable to it
/// with values 1 (regenerate) or 0 (keep); and RePaint's resampling count r >= 1 (1: plain
/// replacement).
#[derive(Clone, Copy, Debug)]
pub struct Inpainting<'a> {
    pub known: &'a Tensor,
    pub mask: &'a Tensor,
    pub resample: usize,
}

/// The inpainting wrapper around any stepper.
pub struct Inpaint {
    inner: Box<dyn Stepper>,
    known: Tensor,
    /// u8, the shape of `known`: 1 where the sampler's pixels are kept.
    regenerate: Tensor,
    resample: usize,
}

impl Inpaint {
    /// Wrap `inner`; the mask must be 0/1 and broadcastable to `known`, resample >= 1.
    pub fn new(inner: Box<dyn Stepper>, spec: &Inpainting) -> Result<Self> {
        check_shape(spec.known.dims())?;
        if spec.resample == 0 {
            return Err(Error::Invalid(
                "resample = 0: each step runs at least once (1 = no resampling)".into(),
            ));
        }
        let known = spec.known.to_dtype(DType::F32)?;
        let mask = spec
            .mask
            .to_dtype(DType::F32)?
            .to_device(known.device())?
            .broadcast_as(known.shape())
            .map_err(|_| {
                Error::Invalid(format!(
                    "mask of shape {:?} does not broadcast to the image's {:?}",
                    spec.mask.dims(),
                    known.dims()
                ))
            })?
            .contiguous()?;
        let values: Vec<f32> = mask.flatten_all()?.to_vec1()?;
        if let Some(v) = values.iter().find(|&&v| v != 0.0 && v != 1.0) {
            return Err(Error::Invalid(format!(
                "mask value {v}: a mask holds 1 (regenerate) or 0 (keep)"
            )));
        }
        Ok(Inpaint {
            inner,
            known,
            regenerate: mask.ne(0f32)?,
            resample: spec.resample,
        })
    }

    /// x where regenerated, else the known image at respaced index i (x0_known itself for
    /// i = -1, written `None`): sqrt(abar_i) x0_known + sqrt(1 - abar_i) z, z from the streams.
    fn paste(
        &self,
        ctx: &Context,
        i: Option<usize>,
        x: &Tensor,
        noise: &mut BatchNoise,
    ) -> Result<Tensor> {
        let known = match i {
            None => self.known.clone(),
            Some(i) => {
                let z = noise.randn(&x.dims()[1..], x.device())?;
                q_sample(ctx.schedule, &self.known, &vec![i; x.dim(0)?], &z)?
            }
        };
        Ok(self.regenerate.where_cond(x, &known)?)
    }
}

impl Stepper for Inpaint {
    /// r times: step i -> i - 1 with the inner stepper and paste the known pixels at i - 1; between
    /// rounds, x_i = sqrt(alpha_i) x_{i-1} + sqrt(beta_i) z ~ q(x_i | x_{i-1}) (respaced alpha, beta).
    fn step(
        &mut self,
        ctx: &Context,
        i: usize,
        x_t: &Tensor,
        noise: &mut BatchNoise,
    ) -> Result<Step> {
        let mut x_t = x_t.clone();
        let mut round = 1;
        loop {
            let step = self.inner.step(ctx, i, &x_t, noise)?;
            let x = self.paste(ctx, i.checked_sub(1), &step.x, noise)?;
            if round == self.resample {
                return Ok(Step { x, x0: step.x0 });
            }
            let z = noise.randn(&x.dims()[1..], x.device())?;
            let (alpha, beta) = (ctx.schedule.alphas[i], ctx.schedule.betas[i]);
            x_t = ((x * alpha.sqrt())? + (z * beta.sqrt())?)?;
            round += 1;
        }
    }
}

/// Inpaint `spec.known` where `spec.mask` is 1 with `opts.sampler` (any), `on_step` after each
/// step: x_T is N(0, I) where regenerated and q(x_T | x0_known) elsewhere, both from the same
/// per-sample draw; the result equals x0_known bit for bit where the mask is 0. The device is
/// the known image's.
pub fn inpaint(
    model: &dyn Denoiser,
    schedule: &Schedule,
    param: Parameterization,
    opts: &SampleOptions,
    spec: &Inpainting,
    on_step: &mut dyn FnMut(&StepInfo) -> Result<()>,
) -> Result<Tensor> {
    opts.validate(schedule.len())?;
    let mut stepper = Inpaint::new(opts.sampler.stepper(opts), spec)?;
    let respaced = opts.respace(schedule)?;
    let known = &stepper.known;
    let b = known.dim(0)?;
    let mut noise = BatchNoise::new(opts.seed, Purpose::SampleNoise, opts.first_index, b);
    let z = noise.randn(&known.dims()[1..], known.device())?;
    let top = respaced.len() - 1;
    let x_t = stepper
        .regenerate
        .where_cond(&z, &q_sample(&respaced, known, &vec![top; b], &z)?)?;
    let ctx = Context {
        model,
        schedule: &respaced,
        param,
        clip_x0: opts.clip_x0,
    };
    denoise(&ctx, &mut stepper, x_t, respaced.len(), &mut noise, on_step)
}
