//! Generating many images: a checkpoint's network and settings, sampled in batches (sample i
//! is the same image whatever the batch size), with progress reported per denoising step.

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::checkpoint;
use crate::config::Config;
use crate::data::images;
use crate::denoiser::Denoiser;
use crate::error::{Error, Result};
use crate::model;
use crate::nn::UNet;
use crate::sampler::{self, SampleOptions, SamplerKind};
use crate::schedule::Schedule;
use crate::train::{self, TrainState};

/// A trained network ready to sample, with the config it was trained with.
pub struct Generator {
    pub config: Config,
    pub schedule: Schedule,
    pub unet: UNet,
    /// The training step of the checkpoint.
    pub step: u64,
    pub device: Device,
}

impl Generator {
    /// Load `path`: its config, and its EMA weights (`use_ema`) or raw weights, in `dtype`.
    pub fn load(path: &Path, use_ema: bool, dtype: DType, device: &Device) -> Result<Self> {
        let ckpt = checkpoint::load(path)?;
        let config = train::stored_config(&ckpt, path)?;
        let step = ckpt.step()?;
        let prefix = if use_ema {
            train::EMA_PREFIX
        } else {
            train::MODEL_PREFIX
        };
        let weights = train::weights_with_prefix(&ckpt, prefix);
        if weights.is_empty() {
            return Err(Error::checkpoint(
                path,
                format!("holds no `{prefix}*` weights"),
            ));
        }
        let unet = model::from_tensors(&config, weights, dtype, device)
            .map_err(|e| Error::checkpoint(path, e.to_string()))?;
        let schedule = config.diffusion.schedule()?;
        Ok(Generator {
            config,
            schedule,
            unet,
            step,
            device: device.clone(),
        })
    }

    /// Per-sample shape (C, H, W).
    pub fn sample_shape(&self) -> [usize; 3] {
        let (h, w) = model::image_hw(&self.config);
        [self.config.data.channels, h, w]
    }
}

/// A network computing in some dtype, seen by the sampler as an f32 denoiser.
struct CastDenoiser<'a> {
    unet: &'a UNet,
    dtype: DType,
}

impl Denoiser for CastDenoiser<'_> {
    fn forward(&self, x_t: &Tensor, t: &[usize]) -> Result<Tensor> {
        let out = self
            .unet
            .forward(&x_t.to_dtype(self.dtype)?, t, None, None)?;
        Ok(out.to_dtype(DType::F32)?)
    }
}

/// Progress of a generation: images done, images in all, step within the batch, its steps.
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize, usize, usize) -> Result<()>;

/// `n` images (N, C, H, W) in [-1, 1] from `unet`, `batch_size` at a time; image i is drawn
/// with noise stream (opts.seed, first_index + i).
#[allow(clippy::too_many_arguments)]
pub fn generate(
    unet: &UNet,
    dtype: DType,
    cfg: &Config,
    schedule: &Schedule,
    opts: &SampleOptions,
    n: usize,
    batch_size: usize,
    device: &Device,
    progress: Progress,
) -> Result<Tensor> {
    if n == 0 || batch_size == 0 {
        return Err(Error::Invalid(
            "the number of images and the batch size must be at least 1".into(),
        ));
    }
    let model = CastDenoiser { unet, dtype };
    let (h, w) = model::image_hw(cfg);
    let mut parts = Vec::new();
    let mut done = 0;
    while done < n {
        let b = batch_size.min(n - done);
        let batch_opts = SampleOptions {
            first_index: opts.first_index + done as u64,
            ..*opts
        };
        let x = sampler::sample(
            &model,
            schedule,
            cfg.diffusion.parameterization(),
            &batch_opts,
            &[b, cfg.data.channels, h, w],
            device,
            &mut |info| progress(done, n, info.index + 1, info.total),
        )?;
        parts.push(x.to_device(&Device::Cpu)?);
        done += b;
    }
    Ok(Tensor::cat(&parts, 0)?)
}

/// The sampling options of a config's `[sample]` section under `seed`.
pub fn sample_options(cfg: &Config, sampler: SamplerKind, seed: u64) -> SampleOptions {
    let s = &cfg.sample;
    SampleOptions {
        sampler,
        steps: s.steps_for(sampler, cfg.diffusion.timesteps),
        spacing: s.spacing,
        eta: s.eta,
        clip_x0: s.clip_x0,
        seed,
        first_index: 0,
        corrector_steps: s.corrector_steps,
        snr: s.snr,
    }
}

/// The EMA sample grid written during training: train.sample_count images with the `[sample]`
/// settings and the run's seed, so successive grids show the same noise denoised better.
pub fn training_grid(
    cfg: &Config,
    schedule: &Schedule,
    state: &TrainState,
    path: &Path,
) -> Result<()> {
    let dtype = cfg.train.precision.dtype();
    let unet = model::from_tensors(cfg, state.ema_weights(), dtype, &state.device)?;
    let opts = sample_options(cfg, cfg.sample.sampler, cfg.train.seed);
    let x = generate(
        &unet,
        dtype,
        cfg,
        schedule,
        &opts,
        cfg.train.sample_count,
        cfg.sample.batch_size,
        &state.device,
        &mut |_, _, _, _| Ok(()),
    )?;
    // Tiny images (8x8 digits) are upscaled so each cell is at least 32 pixels on its short side.
    let (h, w) = model::image_hw(cfg);
    let scale = (32 / h.min(w).max(1)).max(1) as u32;
    let grid = images::grid(&images::to_images(&x)?, None)?;
    images::save_png(&images::upscale(&grid, scale), path)
}
