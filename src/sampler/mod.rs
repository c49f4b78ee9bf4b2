//! Sampling: one loop that walks a respaced schedule from x_T down to x0, calling the model and a
//! per-sampler `Stepper` at each step, and reporting every step through a callback. It owns the
//! samplers and their options: ancestral DDPM (`ddpm`), DDIM (`ddim`), predictor-corrector
//! (`pc`), the probability-flow ODE solvers DPM-Solver++ 2M (`dpm_solver`) and Heun (`heun`);
//! and the ways to start or steer the loop: SDEdit (`edit`), inpainting (`inpaint`), DDIM
//! inversion and latent interpolation (`latent`). It does not own the model (any `Denoiser`),
//! the schedule maths (`schedule`, `diffusion`) or randomness (`rng`).
//!
//! How samplers fit without touching the loop: a `Stepper` gets the model through a `Context`
//! and holds its own state, so a multistep solver keeps the previous x0 in `self`, a corrector or
//! an inpainting step wraps another `Stepper` (call it, then refine or overwrite x), and
//! `denoise` starts from any x at any respaced index (SDEdit: a noised image at t = strength T).

mod ddim;
mod ddpm;
mod dpm_solver;
mod edit;
mod heun;
mod inpaint;
mod latent;
mod pc;

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

pub use ddim::Ddim;
pub use ddpm::Ancestral;
pub use dpm_solver::DpmSolver2M;
pub use edit::sample_from;
pub(crate) use edit::steps_below;
pub use heun::Heun;
pub use inpaint::{inpaint, Inpaint, Inpainting};
pub use latent::{
    ddim_invert, inversion_steps, sample_from_latent, sample_replaying, slerp, InvertOptions,
    Latent,
};
pub use pc::{Langevin, PredictorCorrector};

use crate::denoiser::Denoiser;
use crate::diffusion::{score_from_eps, x0_and_eps, Parameterization};
use crate::error::{Error, Result};
use crate::rng::{BatchNoise, Purpose};
use crate::schedule::{spaced_timesteps, Schedule, Spacing};

/// EDM's sigma_max (Karras et al. 2022): the largest sigma = sqrt((1 - abar) / abar) that a
/// step of the probability-flow ODE starts from with the model's slope. Above it x_t is noise
/// to within 1/80 of the signal, and an eps-model's x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)
/// is its eps error times 1/sqrt(abar) = sigma (2e4 at the top of the cosine schedule): Heun
/// takes Euler steps there, DDIM inversion stops below it.
pub const SIGMA_MAX: f64 = 80.0;

/// sigma = sqrt((1 - abar) / abar), the noise level of x / sqrt(abar) (infinite at abar = 0).
pub fn sigma_of(abar: f64) -> f64 {
    ((1.0 - abar) / abar).sqrt()
}

/// Which sampler turns the model into samples.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum SamplerKind {
    /// Ancestral sampling (Ho et al. 2020, Algorithm 2) with the model's variance.
    #[default]
    Ddpm,
    /// DDIM (Song et al. 2021, eq. 12); eta = 0 is deterministic, eta = 1 is ancestral.
    Ddim,
    /// Predictor-corrector (Song et al. 2021, Algorithm 5): an ancestral step, then
    /// `corrector_steps` Langevin steps at signal-to-noise ratio `snr`.
    Pc,
    /// DPM-Solver++ 2M (Lu et al. 2022): second-order multistep on the probability-flow ODE.
    #[serde(rename = "dpm++2m")]
    DpmSolver2M,
    /// Heun's second-order method on the probability-flow ODE (Karras et al. 2022, Algorithm 1).
    Heun,
}

impl SamplerKind {
    /// Every sampler, in the order the CLI lists them.
    pub const ALL: [SamplerKind; 5] = [
        SamplerKind::Ddpm,
        SamplerKind::Ddim,
        SamplerKind::Pc,
        SamplerKind::DpmSolver2M,
        SamplerKind::Heun,
    ];

    /// The stepper this sampler runs with `opts` (DDIM reads eta; PC corrector_steps and snr).
    pub fn stepper(self, opts: &SampleOptions) -> Box<dyn Stepper> {
        match self {
            SamplerKind::Ddpm => Box::new(Ancestral),
            SamplerKind::Ddim => Box::new(Ddim {
                eta: opts.eta,
                use_clipped_model_output: opts.use_clipped_model_output,
            }),
            SamplerKind::Pc => Box::new(PredictorCorrector {
                predictor: Box::new(Ancestral),
                corrector: Langevin {
                    steps: opts.corrector_steps,
                    snr: opts.snr,
                },
            }),
            SamplerKind::DpmSolver2M => Box::new(DpmSolver2M::default()),
            SamplerKind::Heun => Box::new(Heun),
        }
    }

    /// The name used in configs and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            SamplerKind::Ddpm => "ddpm",
            SamplerKind::Ddim => "ddim",
            SamplerKind::Pc => "pc",
            SamplerKind::DpmSolver2M => "dpm++2m",
            SamplerKind::Heun => "heun",
        }
    }
}

impl fmt::Display for SamplerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SamplerKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        SamplerKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = SamplerKind::ALL.iter().map(|k| k.name()).collect();
                Error::Invalid(format!(
                    "unknown sampler {s:?}; expected one of {}",
                    names.join(", ")
                ))
            })
    }
}

/// Everything `sample` needs besides the model, the schedule and the output shape.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SampleOptions {
    pub sampler: SamplerKind,
    /// Number of sampling steps K, 1..=T (K < T respaces the schedule).
    pub steps: usize,
    /// How the K steps are chosen among the T training steps.
    pub spacing: Spacing,
    /// DDIM's stochasticity in [0, 1]; read by DDIM only.
    pub eta: f64,
    /// Langevin corrector steps after each predictor step; read by PC only.
    pub corrector_steps: usize,
    /// The corrector's target signal-to-noise ratio r > 0; read by PC only.
    pub snr: f64,
    /// Clamp each predicted x0 to [-1, 1] (data scaled to [-1, 1]).
    pub clip_x0: bool,
    /// Added to every timestep of the leading spacing (diffusers' `steps_offset`).
    pub steps_offset: usize,
    /// DDIM's last step goes to abar = 1 (x0); false: to the training schedule's abar at
    /// t = 0 (diffusers' `set_alpha_to_one`). Read by DDIM only.
    pub set_alpha_to_one: bool,
    /// With clip_x0, DDIM derives eps from the clipped x0; false keeps the model's eps
    /// (diffusers' DDIMPipeline default, `use_clipped_model_output=False`). Read by DDIM only.
    pub use_clipped_model_output: bool,
    pub seed: u64,
    /// Global index of the batch's first sample: sample `first_index + i` draws its noise from
    /// stream (seed, SampleNoise, first_index + i), whatever the batch.
    pub first_index: u64,
}

impl Default for SampleOptions {
    /// The DDPM paper's sampler: ancestral over all 1000 steps, x0 clipped; PC's defaults are
    /// those of Song et al.'s code (one corrector step, snr 0.16).
    fn default() -> Self {
        SampleOptions {
            sampler: SamplerKind::Ddpm,
            steps: 1000,
            spacing: Spacing::default(),
            eta: 0.0,
            corrector_steps: 1,
            snr: 0.16,
            clip_x0: true,
            steps_offset: 0,
            set_alpha_to_one: true,
            use_clipped_model_output: true,
            seed: 0,
            first_index: 0,
        }
    }
}

impl SampleOptions {
    /// Check eta in [0, 1], snr > 0 and steps in 1..=T for a training schedule of
    /// `num_timesteps` steps.
    pub fn validate(&self, num_timesteps: usize) -> Result<()> {
        if !(0.0..=1.0).contains(&self.eta) {
            return Err(Error::Invalid(format!(
                "eta = {} is outside [0, 1]",
                self.eta
            )));
        }
        if !(self.snr > 0.0 && self.snr.is_finite()) {
            return Err(Error::Invalid(format!(
                "snr = {} must be a positive number (Song et al. use 0.16)",
                self.snr
            )));
        }
        if self.steps == 0 || self.steps > num_timesteps {
            return Err(Error::Invalid(format!(
                "steps = {} must be between 1 and the {num_timesteps} training timesteps",
                self.steps
            )));
        }
        self.timesteps(num_timesteps).map(|_| ())
    }

    /// The model timesteps of the `steps` sampling steps over T = `num_timesteps`, ascending:
    /// chosen by `spacing`, each shifted by `steps_offset` (which, as in diffusers, only the
    /// leading spacing takes).
    pub fn timesteps(&self, num_timesteps: usize) -> Result<Vec<usize>> {
        let ts = spaced_timesteps(num_timesteps, self.steps, self.spacing)?;
        if self.steps_offset == 0 {
            return Ok(ts);
        }
        if self.spacing != Spacing::Leading {
            return Err(Error::Invalid(format!(
                "a steps offset ({}) shifts the leading spacing only; the spacing is {:?}",
                self.steps_offset, self.spacing
            )));
        }
        let last = ts.last().copied().unwrap_or(0) + self.steps_offset;
        if last >= num_timesteps {
            return Err(Error::Invalid(format!(
                "steps offset {} moves the last of {} leading steps to t = {last}, past T - 1 = {}",
                self.steps_offset,
                self.steps,
                num_timesteps - 1
            )));
        }
        Ok(ts.into_iter().map(|t| t + self.steps_offset).collect())
    }

    /// The schedule the sampler walks: `schedule` respaced to `timesteps`, with DDIM's last
    /// step going to 1 or, without `set_alpha_to_one`, to the training schedule's abar_0.
    pub fn respace(&self, schedule: &Schedule) -> Result<Schedule> {
        let respaced = schedule.respace(&self.timesteps(schedule.len())?)?;
        Ok(match self.set_alpha_to_one {
            true => respaced,
            false => respaced.with_final_alpha_cumprod(schedule.alphas_cumprod[0]),
        })
    }
}

/// What `on_step` sees after each step.
#[derive(Debug)]
pub struct StepInfo<'a> {
    /// 0-based number of this step: 0 after the first, total - 1 after the last.
    pub index: usize,
    /// Number of steps in this run.
    pub total: usize,
    /// The model timestep of this step (original 0..T numbering).
    pub t: usize,
    /// x after the step (the sample itself after the last).
    pub x: &'a Tensor,
    /// The x0 predicted at this step.
    pub x0: &'a Tensor,
}

/// What one step produces.
#[derive(Debug, Clone)]
pub struct Step {
    /// x at the previous respaced index (the sample after index 0).
    pub x: Tensor,
    /// The predicted x0 the step used.
    pub x0: Tensor,
}

/// The model and how to read it, over the respaced schedule the steps walk.
pub struct Context<'a> {
    pub model: &'a dyn Denoiser,
    /// The respaced schedule: coefficients at index i, model timestep `timesteps[i]`.
    pub schedule: &'a Schedule,
    pub param: Parameterization,
    pub clip_x0: bool,
}

impl Context<'_> {
    /// The model's score at respaced index i: -eps / sqrt(1 - abar_i), with eps consistent with
    /// the (clipped, when asked) x0.
    pub fn score(&self, x_t: &Tensor, i: usize) -> Result<Tensor> {
        let output = self.output(x_t, i)?;
        let (_, eps) = self.x0_and_eps(x_t, i, &output)?;
        score_from_eps(self.schedule, &eps, &vec![i; x_t.dim(0)?])
    }

    /// The raw model output (as f32) for x_t at respaced index i, called with model timestep
    /// timesteps[i] for every example.
    pub fn output(&self, x_t: &Tensor, i: usize) -> Result<Tensor> {
        let t = *self.schedule.timesteps.get(i).ok_or_else(|| {
            Error::Invalid(format!(
                "step index {i} is outside the {}-step sampling schedule",
                self.schedule.len()
            ))
        })?;
        let out = self.model.forward(x_t, &vec![t; x_t.dim(0)?])?;
        Ok(out.to_dtype(DType::F32)?)
    }

    /// (x0, eps) read from a model output at respaced index i, x0 clipped when asked.
    pub fn x0_and_eps(&self, x_t: &Tensor, i: usize, output: &Tensor) -> Result<(Tensor, Tensor)> {
        let (pred, _) = self.param.split(output, x_t.dim(1)?)?;
        let idx = vec![i; x_t.dim(0)?];
        x0_and_eps(
            self.schedule,
            self.param.prediction,
            x_t,
            &idx,
            &pred,
            self.clip_x0,
        )
    }
}

/// One sampler's update: x_t at respaced index i to x at index i - 1 (x0 after i = 0). A stepper
/// calls the model through `ctx` as often as it needs and draws noise only from `noise`, and
/// only when it uses it, so each sample's stream advances the same in any batch.
pub trait Stepper {
    fn step(
        &mut self,
        ctx: &Context,
        i: usize,
        x_t: &Tensor,
        noise: &mut BatchNoise,
    ) -> Result<Step>;
}

/// Draw samples of `shape` ((B, C, H, W) or (B, D)) from `model`, trained with `schedule` and
/// read through `param`: x_T ~ N(0, I) from each sample's stream, then `opts.steps` steps of
/// `opts.sampler` over `opts.respace(schedule)`, `on_step` after each.
pub fn sample(
    model: &dyn Denoiser,
    schedule: &Schedule,
    param: Parameterization,
    opts: &SampleOptions,
    shape: &[usize],
    device: &Device,
    on_step: &mut dyn FnMut(&StepInfo) -> Result<()>,
) -> Result<Tensor> {
    opts.validate(schedule.len())?;
    check_shape(shape)?;
    let respaced = opts.respace(schedule)?;
    let mut noise = BatchNoise::new(opts.seed, Purpose::SampleNoise, opts.first_index, shape[0]);
    // x_T ~ N(0, I), row i from sample i's stream.
    let x_t = noise.randn(&shape[1..], device)?;
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
        x_t,
        respaced.len(),
        &mut noise,
        on_step,
    )
}

/// A sample shape is (B, C, H, W) or (B, D) with no zero dimension.
fn check_shape(shape: &[usize]) -> Result<()> {
    if shape.len() < 2 || shape.contains(&0) {
        return Err(Error::Invalid(format!(
            "sample shape {shape:?} must be (B, C, H, W) or (B, D) with no zero dimension"
        )));
    }
    Ok(())
}

/// The loop: from x at respaced index `from - 1` (x_T when from = K) down to the sample,
/// one `stepper` step per index, `on_step` after each.
pub fn denoise(
    ctx: &Context,
    stepper: &mut dyn Stepper,
    x: Tensor,
    from: usize,
    noise: &mut BatchNoise,
    on_step: &mut dyn FnMut(&StepInfo) -> Result<()>,
) -> Result<Tensor> {
    if from > ctx.schedule.len() {
        return Err(Error::Invalid(format!(
            "cannot start at step {from} of a {}-step sampling schedule",
            ctx.schedule.len()
        )));
    }
    let mut x = x;
    for (done, i) in (0..from).rev().enumerate() {
        let step = stepper.step(ctx, i, &x, noise)?;
        x = step.x;
        on_step(&StepInfo {
            index: done,
            total: from,
            t: ctx.schedule.timesteps[i],
            x: &x,
            x0: &step.x0,
        })?;
    }
    Ok(x)
}

#[cfg(test)]
mod edit_tests;
#[cfg(test)]
mod inpaint_tests;
#[cfg(test)]
mod latent_tests;
#[cfg(test)]
mod ode_tests;
#[cfg(test)]
mod oracle_tests;
#[cfg(test)]
mod pc_tests;
#[cfg(test)]
mod tests;
