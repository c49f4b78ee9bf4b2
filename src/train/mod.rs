//! The training loop: data in, checkpoints, metrics and sample grids out. The step itself is in
//! `step` (pure), the carried state in `state`, the files in `run_dir`, what differs on one rank
//! of many in `ranks`. The loop never prints; it reports through `on_event`, and stops cleanly —
//! checkpoint first — when `interrupt` is set.

mod grid;
mod ranks;
mod resume;
mod run_dir;
mod state;
mod step;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::Device;

pub use resume::{changes, resume_config, Change};
pub use run_dir::{RunDir, CONFIG, LOSS_PLOT, METRICS_HEADER};
pub use state::TrainState;
pub use step::{train_step, StepStats};

use crate::budget;
use crate::checkpoint;
use crate::config::Config;
use crate::data::{self, Loader, LoaderOptions, Part};
use crate::dist::{self, Comm, Single};
use crate::error::{Error, Result};
use crate::limits;

/// How to run: where, how far, and the flag that asks the loop to stop.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    pub run_dir: PathBuf,
    /// Continue from the run directory's latest checkpoint.
    pub resume: bool,
    /// Start a new run from this checkpoint's weights and EMA (fresh optimizer, step 0).
    pub init_from: Option<PathBuf>,
    /// Stop after this many total steps instead of train.steps.
    pub max_steps: Option<u64>,
    /// Set (by a signal handler) to stop after the current step with a checkpoint.
    pub interrupt: Arc<AtomicBool>,
}

/// What the loop reports.
#[derive(Debug)]
pub enum Event<'a> {
    /// A resumed run's config differs from its checkpoint's here (reported before `Started`).
    Changed(&'a Change),
    /// Training starts (or resumes) at `step` of `total`.
    Started {
        step: u64,
        total: u64,
        parameters: usize,
    },
    /// A step finished.
    Step {
        step: u64,
        stats: StepStats,
        images_per_sec: f64,
    },
    /// A row was written to metrics.csv (every train.log_every steps).
    Logged {
        step: u64,
        stats: StepStats,
        images_per_sec: f64,
    },
    /// `--resume` continues from `checkpoint` (at `step`); `passed_over` holds the errors of
    /// newer checkpoint files that did not load.
    Resumed {
        checkpoint: &'a Path,
        step: u64,
        passed_over: &'a [Error],
    },
    /// `--resume` found the run already at its last step: nothing is trained or written, and
    /// this says so (the run directory, its step, how to continue).
    Finished(&'a str),
    /// A checkpoint was written.
    Checkpoint(&'a Path),
    /// A sample grid was written.
    Samples(&'a Path),
    /// Something the user should know (a resumed checkpoint had no checksum to verify).
    Notice(String),
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    /// Steps completed in total (including any before a resume).
    pub step: u64,
    /// Steps run by this invocation.
    pub steps_run: u64,
    /// The last step's loss.
    pub final_loss: f32,
    /// Examples per second over this invocation's steps after the first (warm-up) one.
    pub images_per_sec: f64,
    /// The last checkpoint written (or, when a resumed run had nothing left to do, the one it
    /// resumed from).
    pub checkpoint: PathBuf,
}

/// Train `cfg` on `device`. Returns `Error::Interrupted` (after saving) when asked to stop.
pub fn train(
    cfg: &Config,
    device: &Device,
    opts: &TrainOptions,
    on_event: &mut dyn FnMut(Event) -> Result<()>,
) -> Result<Summary> {
    train_in(&Single, cfg, device, opts, on_event)
}

/// `train` as one rank of `world`: every rank starts from rank 0's state and trains on its part
/// of each batch; rank 0 alone reads and writes the run directory. Every rank returns the same
/// summary, and `Error::Interrupted` when any rank was asked to stop (rank 0 saved first).
pub fn train_in(
    world: &dyn Comm,
    cfg: &Config,
    device: &Device,
    opts: &TrainOptions,
    on_event: &mut dyn FnMut(Event) -> Result<()>,
) -> Result<Summary> {
    cfg.train.precision.check(device)?;
    // Before anything is allocated: a run too big for the machine fails now, not hours in.
    budget::training(cfg, device).check("training", device, limits::available().as_ref())?;
    if cfg.train.micro_batch() < world.size() {
        return Err(Error::Config(format!(
            "train.batch_size = {} in micro-batches of {} cannot be split across {} ranks; \
             give every rank at least one example",
            cfg.train.batch_size,
            cfg.train.micro_batch(),
            world.size()
        )));
    }
    let schedule = cfg.diffusion.schedule()?;
    let dataset = data::open(&cfg.data)?;
    let resolved = with_data_dim(cfg, dataset.as_ref());
    let cfg = &resolved;
    check_classes(cfg, dataset.num_classes())?;
    let standardization = dataset.standardization().cloned();
    let data_meta = data_metadata(dataset.as_ref())?;
    // Rank 0 alone opens (and locks) the run directory.
    let dir = match world.rank() {
        0 => Some(RunDir::open(&opts.run_dir, opts.resume)?),
        _ => None,
    };
    let total = opts.max_steps.unwrap_or(cfg.train.steps);
    // The newest checkpoint on disk that is known good: what a NaN stop keeps.
    let mut good_ckpt = None;
    let mut changed = Vec::new();
    let mut state = match &dir {
        Some(dir) if opts.resume => {
            let (ckpt, passed_over) = dir.resume_checkpoint()?;
            let (state, changes) = resume::resume_state(cfg, device, &ckpt)?;
            on_event(Event::Resumed {
                checkpoint: &ckpt.path,
                step: state.step,
                passed_over: &passed_over,
            })?;
            if let Some(n) = ckpt.notice() {
                on_event(Event::Notice(n))?;
            }
            changed = changes;
            good_ckpt = Some(ckpt.path);
            state
        }
        Some(dir) => {
            if dir.has_checkpoints()? {
                return Err(Error::Invalid(format!(
                    "{} already holds a run's checkpoints; pass --resume to continue it or choose another --out",
                    dir.root.display()
                )));
            }
            match &opts.init_from {
                Some(path) => resume::init_state(cfg, device, path)?,
                None => TrainState::fresh(cfg, device)?,
            }
        }
        None => TrainState::fresh(cfg, device)?,
    };
    state = ranks::sync_state(world, cfg, device, state)?;
    if dir.is_none() && opts.resume {
        good_ckpt = Some(rank0_checkpoint(opts, state.step));
    }
    // Every rank knows the step now, so all of them stop here together.
    if opts.resume {
        if let Some(note) = finished(opts, state.step, total)? {
            // Nothing to do, and nothing is written: re-running a finished run (as recovery
            // from a crash after its last save does) succeeds with the checkpoint it has.
            on_event(Event::Finished(&note))?;
            return Ok(Summary {
                step: state.step,
                steps_run: 0,
                final_loss: f32::NAN,
                images_per_sec: 0.0,
                checkpoint: good_ckpt.unwrap_or_else(|| rank0_checkpoint(opts, state.step)),
            });
        }
    }
    for c in &changed {
        on_event(Event::Changed(c))?;
    }
    let mut metrics = match &dir {
        Some(dir) => {
            dir.write_config(&cfg.to_toml()?)?;
            Some(dir.metrics(state.step)?)
        }
        None => None,
    };
    let accum = cfg.train.grad_accum as u64;
    let mut loader = Loader::new(
        dataset,
        LoaderOptions {
            part: Part {
                index: world.rank(),
                count: world.size(),
            },
            ..LoaderOptions::from_config(
                &cfg.data,
                cfg.train.micro_batch(),
                cfg.train.seed,
                state.step * accum,
            )
        },
    )?;
    on_event(Event::Started {
        step: state.step,
        total,
        parameters: state.vars.iter().map(|(_, v)| v.elem_count()).sum(),
    })?;

    let first = state.step;
    let start = Instant::now();
    let mut steady_start: Option<(Instant, u64)> = None;
    let mut last_log = (Instant::now(), state.step);
    let mut last = StepStats {
        loss: f32::NAN,
        grad_norm: 0.0,
        lr: 0.0,
    };
    let mut last_ckpt = opts.run_dir.join(checkpoint::run_dir::LATEST);
    while state.step < total {
        // Every rank stops at the same step: when any of them was asked to.
        if dist::any(world, opts.interrupt.load(Ordering::SeqCst), device)? {
            if let Some(dir) = &dir {
                let path = save(cfg, dir, &state, &data_meta)?;
                on_event(Event::Checkpoint(&path))?;
            }
            world.barrier()?;
            return Err(Error::Interrupted { step: state.step });
        }
        let batches = (0..accum)
            .map(|_| {
                loader
                    .next()
                    .unwrap_or_else(|| Err(Error::Data("the data loader stopped".into())))
            })
            .collect::<Result<Vec<_>>>()?;
        last = train_step(cfg, &schedule, &mut state, batches, world).map_err(|e| match e {
            Error::NonFinite {
                what, step, value, ..
            } => Error::NonFinite {
                what,
                step,
                value,
                kept: good_ckpt.clone(),
            },
            e => e,
        })?;
        let step = state.step;
        if steady_start.is_none() {
            steady_start = Some((Instant::now(), step));
        }
        let since = last_log.0.elapsed().as_secs_f64().max(1e-9);
        let ips = (step - last_log.1) as f64 * cfg.train.batch_size as f64 / since;
        on_event(Event::Step {
            step,
            stats: last,
            images_per_sec: ips,
        })?;
        if step % cfg.train.log_every == 0 || step == total {
            if let Some(metrics) = metrics.as_mut() {
                metrics.row(
                    step,
                    last.loss,
                    last.lr,
                    last.grad_norm,
                    ips,
                    start.elapsed().as_secs_f64(),
                )?;
            }
            on_event(Event::Logged {
                step,
                stats: last,
                images_per_sec: ips,
            })?;
            last_log = (Instant::now(), step);
        }
        let grid_due = step % cfg.train.sample_every.max(1) == 0 || step == total;
        if let Some(dir) = dir
            .as_ref()
            .filter(|_| cfg.train.sample_every > 0 && grid_due)
        {
            let path = dir.sample_path(step);
            grid::training_grid(cfg, &schedule, &state, standardization.as_ref(), &path)?;
            on_event(Event::Samples(&path))?;
        }
        if step % cfg.train.checkpoint_every == 0 || step == total {
            match &dir {
                Some(dir) => {
                    last_ckpt = save(cfg, dir, &state, &data_meta)?;
                    on_event(Event::Checkpoint(&last_ckpt))?;
                    good_ckpt = Some(last_ckpt.clone());
                }
                None => good_ckpt = Some(rank0_checkpoint(opts, step)),
            }
        }
    }
    // A fresh run of zero steps (--max-steps 0) still leaves the checkpoint it reports: the
    // initial weights, an untrained baseline for `ddpm eval`.
    if let Some(dir) = dir.as_ref().filter(|_| !last_ckpt.exists()) {
        last_ckpt = save(cfg, dir, &state, &data_meta)?;
        on_event(Event::Checkpoint(&last_ckpt))?;
    }
    // The other ranks return once rank 0's last checkpoint is on disk: a launcher may end the
    // job as soon as one rank exits.
    world.barrier()?;
    let images_per_sec = match steady_start {
        Some((t0, s0)) if state.step > s0 => {
            (state.step - s0) as f64 * cfg.train.batch_size as f64
                / t0.elapsed().as_secs_f64().max(1e-9)
        }
        _ => 0.0,
    };
    Ok(Summary {
        step: state.step,
        steps_run: state.step - first,
        final_loss: last.loss,
        images_per_sec,
        checkpoint: last_ckpt,
    })
}

/// The checkpoint rank 0 writes at `step`, named on the other ranks (a NaN stop there says
/// which checkpoint is kept).
fn rank0_checkpoint(opts: &TrainOptions, step: u64) -> PathBuf {
    opts.run_dir.join(checkpoint::run_dir::ckpt_name(step))
}

/// A labelled dataset must have exactly the model's model.num_classes classes: the label
/// embedding has one row per class plus the null label, which a larger class would hit.
fn check_classes(cfg: &Config, found: Option<usize>) -> Result<()> {
    if !cfg.data.class_labels || found == cfg.model.num_classes {
        return Ok(());
    }
    let source = match &cfg.data.path {
        Some(p) => format!("{} (one class per subfolder)", p.display()),
        None => "the digits dataset".into(),
    };
    Err(Error::Config(match (cfg.model.num_classes, found) {
        (Some(want), Some(n)) => format!(
            "model.num_classes = {want} but {source} has {n} classes; set model.num_classes = {n}"
        ),
        _ => format!("data.class_labels = true but {source} gives no labels"),
    }))
}

/// For vector data, `cfg` with data.dim set to the data's dimension (checked against any given
/// one by `data::open`), so the stored config says what the network takes.
fn with_data_dim(cfg: &Config, dataset: &dyn data::Dataset) -> Config {
    let mut cfg = cfg.clone();
    if cfg.data.dataset.is_points() {
        cfg.data.dim = Some(dataset.channels());
    }
    cfg
}

/// What the data adds to every checkpoint's metadata: vector data's standardisation (undone on
/// sampling) and the class names of labelled data (`--class` takes them).
fn data_metadata(dataset: &dyn data::Dataset) -> Result<BTreeMap<String, String>> {
    let mut meta = BTreeMap::new();
    if let Some(s) = dataset.standardization() {
        meta.insert(checkpoint::META_STANDARDIZATION.to_string(), s.to_meta()?);
    }
    if let Some(names) = dataset.class_names() {
        let text = checkpoint::class_names_meta(names)?;
        meta.insert(checkpoint::META_CLASS_NAMES.to_string(), text);
    }
    Ok(meta)
}

fn save(
    cfg: &Config,
    dir: &RunDir,
    state: &TrainState,
    data_meta: &BTreeMap<String, String>,
) -> Result<PathBuf> {
    let (tensors, mut metadata) = state.checkpoint_contents(cfg)?;
    metadata.extend(data_meta.clone());
    dir.save_checkpoint(state.step, cfg.train.keep_checkpoints, &tensors, &metadata)
}

/// Whether a resumed run at `step` is done: None while steps are left before `total`
/// (train.steps, or --max-steps when given), else what to tell the user; an error when
/// the run is already past `total`.
fn finished(opts: &TrainOptions, step: u64, total: u64) -> Result<Option<String>> {
    let run = opts.run_dir.display();
    let max_steps = opts.max_steps.is_some();
    if step < total {
        Ok(None)
    } else if step == total && max_steps {
        Ok(Some(format!(
            "run {run} is at step {step}; --max-steps {total} leaves nothing to do"
        )))
    } else if step == total {
        Ok(Some(format!(
            "run {run} finished at step {step} of {total}; raise train.steps to continue \
             (e.g. --set train.steps={})",
            2 * total
        )))
    } else {
        let what = if max_steps {
            format!("--max-steps {total}")
        } else {
            format!("train.steps = {total}")
        };
        Err(Error::Invalid(format!(
            "--resume: run {run} is at step {step}, past {what}; raise it to continue"
        )))
    }
}
