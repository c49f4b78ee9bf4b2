//! The `sample` flags for reproducing another program's sampler run: the noise it started from
//! (`--noise`, with every later draw for a stochastic sampler) and diffusers' conventions beyond
//! the spacing (`--steps-offset`, `--set-alpha-to-one`, `--use-clipped-model-output`), so that
//! the same model and noise give the same images.

use std::ops::Range;
use std::path::PathBuf;

use anyhow::Context;
use candle_core::Tensor;
use clap::{ArgAction, Args};

use ddpm::generate::Start;
use ddpm::npy;
use ddpm::sampler::SampleOptions;

/// Given noise and timestep conventions.
#[derive(Args, Debug, Clone)]
pub struct ReproduceArgs {
    /// Start from this x_T instead of seeded noise: a .npy of float32 (N, C, H, W), one image
    /// per row (N = -n, or 1 for all); or (S, N, C, H, W): x_T, then the S - 1 draws the
    /// sampler takes after it, in order (ddpm, and ddim with --eta > 0: one per step but the
    /// last), to reproduce a stochastic run.
    #[arg(long, value_name = "FILE.npy", conflicts_with_all = ["init", "strength", "mask"])]
    pub noise: Option<PathBuf>,
    /// Add N to every timestep of the leading spacing (diffusers' steps_offset)
    /// [default: sample.steps_offset].
    #[arg(long, value_name = "N")]
    pub steps_offset: Option<usize>,
    /// DDIM's last step goes to abar = 1 (true) or to abar at t = 0 (false), diffusers'
    /// set_alpha_to_one [default: sample.set_alpha_to_one].
    #[arg(long, value_name = "BOOL", action = ArgAction::Set)]
    pub set_alpha_to_one: Option<bool>,
    /// With x0 clipping, DDIM derives eps from the clipped x0 (true); false keeps the model's
    /// eps, as diffusers' DDIMPipeline does by default [default:
    /// sample.use_clipped_model_output].
    #[arg(long, value_name = "BOOL", action = ArgAction::Set)]
    pub use_clipped_model_output: Option<bool>,
}

/// --noise as read: x_T, and the later draws when given.
pub struct GivenNoise {
    pub x_t: Tensor,
    pub draws: Option<Tensor>,
}

impl GivenNoise {
    /// Where sampling starts.
    pub fn start(&self) -> Start<'_> {
        match &self.draws {
            None => Start::Latent {
                x: &self.x_t,
                from: None,
            },
            Some(draws) => Start::Replay {
                x_t: &self.x_t,
                draws,
            },
        }
    }
}

impl ReproduceArgs {
    /// The timestep conventions over the checkpoint's defaults in `opts`.
    pub fn apply(&self, opts: &mut SampleOptions) {
        if let Some(k) = self.steps_offset {
            opts.steps_offset = k;
        }
        if let Some(b) = self.set_alpha_to_one {
            opts.set_alpha_to_one = b;
        }
        if let Some(b) = self.use_clipped_model_output {
            opts.use_clipped_model_output = b;
        }
    }

    /// Read --noise for `n` images, of which this process samples `mine` (all of them but
    /// under a launcher).
    pub fn noise(&self, n: usize, mine: Range<usize>) -> anyhow::Result<Option<GivenNoise>> {
        let Some(path) = &self.noise else {
            return Ok(None);
        };
        let what = || format!("--noise {}", path.display());
        let x = npy::read_tensor(path).with_context(what)?;
        let dims = x.dims().to_vec();
        let (x_t, draws) = match dims.len() {
            4 => (x, None),
            5 if dims[0] >= 1 => {
                let s = dims[0];
                (x.get(0)?, Some(x.narrow(0, 1, s - 1)?.contiguous()?))
            }
            _ => anyhow::bail!(
                "{}: an array of shape {}; expected (N, C, H, W) or (S, N, C, H, W)",
                what(),
                npy::tuple(&dims)
            ),
        };
        let rows = x_t.dim(0)?;
        if rows != n && (rows != 1 || draws.is_some()) {
            anyhow::bail!("{} holds {rows} images; pass -n {rows}", what());
        }
        if rows != n || mine.len() == n {
            return Ok(Some(GivenNoise { x_t, draws }));
        }
        // This process's rows of x_T and of every later draw.
        let (lo, len) = (mine.start, mine.len());
        Ok(Some(GivenNoise {
            x_t: x_t.narrow(0, lo, len)?,
            draws: match draws {
                Some(d) => Some(d.narrow(1, lo, len)?.contiguous()?),
                None => None,
            },
        }))
    }
}
