//! The sample grids a run writes every `train.sample_every` steps, from its EMA weights.

use std::path::Path;
use std::sync::atomic::AtomicU64;

use crate::config::Config;
use crate::data::images;
use crate::error::Result;
use crate::generate::{sample_options, Generator, Request};
use crate::model;
use crate::points::scatter::scatter;
use crate::points::{Points, Standardization};
use crate::schedule::Schedule;
use crate::train::TrainState;

/// The EMA sample grid written during training: train.sample_count images with the `[sample]`
/// settings and the run's seed, so successive grids show the same noise denoised better. A
/// class-conditional model cycles its classes over the images (guided by sample.guidance), so
/// a grid with as many columns as classes shows one class per column. Vector data is drawn as
/// a scatter plot in the units of the data (undoing `standardization`): of its first two
/// coordinates, or of (x, 0) in 1-D.
pub fn training_grid(
    cfg: &Config,
    schedule: &Schedule,
    state: &TrainState,
    standardization: Option<&Standardization>,
    path: &Path,
) -> Result<()> {
    let dtype = cfg.train.precision.dtype();
    let gen = Generator {
        config: cfg.clone(),
        schedule: schedule.clone(),
        net: model::from_tensors(cfg, state.ema_weights(), dtype, &state.device)?,
        dtype,
        step: state.step,
        device: state.device.clone(),
        standardization: standardization.cloned(),
        class_names: None,
        evaluations: AtomicU64::new(0),
        notice: None,
    };
    let classes: Vec<u32> = (0..cfg.model.num_classes.unwrap_or(0) as u32).collect();
    let req = Request {
        classes: &classes,
        guidance: cfg.sample.guidance,
        ..Request::new(cfg.train.sample_count, cfg.sample.batch_size)
    };
    let opts = sample_options(cfg, cfg.sample.sampler, cfg.train.seed);
    let x = gen.generate(&opts, &req, &mut |_, _, _, _| Ok(()))?;
    if gen.is_points() {
        let points = gen.to_points(&x)?;
        let plane: Vec<f64> = (0..points.len())
            .flat_map(|i| {
                let r = points.row(i);
                [r[0], r.get(1).copied().unwrap_or(0.0)]
            })
            .collect();
        let plane = Points::new(2, plane)?;
        let title = "samples (EMA)";
        return images::save_png(&scatter(&[(title, &plane)], 256)?, path);
    }
    let grid = images::grid(&images::to_images(&x)?, cfg.model.num_classes)?;
    // Tiny images (8x8 digits) are upscaled so each cell is at least 32 pixels on its short side.
    let (h, w) = model::image_hw(cfg);
    let scale = (32 / h.min(w).max(1)).max(1) as u32;
    images::save_png(&images::upscale(&grid, scale), path)
}
