//! `ddpm train`: config + flags -> a run directory with checkpoints, metrics and sample grids.

use clap::Args;
use std::path::PathBuf;

use ddpm::checkpoint;
use ddpm::config::Config;
use ddpm::device::{self, DeviceSpec};
use ddpm::dist::{self, Comm};
use ddpm::precision::Precision;
use ddpm::train::{self, Event, TrainOptions};

use super::launch::{rank_device, LaunchArgs};
use super::output::{report, stdout_line};
use super::progress::Progress;
use super::signals::interrupt_flag;

pub const EXAMPLES: &str = "\
Examples:
  ddpm train --config configs/digits.toml
  ddpm train --config configs/digits.toml --out runs/d --max-steps 500 --set train.batch_size=64
  ddpm train --out runs/d --resume                                  # continue after Ctrl-C
  ddpm train --out runs/d --resume --set train.steps=3000 --set optim.lr=1e-4
  ddpm train --init-from runs/d/latest.safetensors --out runs/d2 --set train.steps=500
  mpirun -np 2 -x RAYON_NUM_THREADS=1 ddpm train --config configs/digits.toml --out runs/d2
  torchrun --nproc-per-node 8 --no-python ddpm train --config configs/cifar10.toml --device cuda

stdout: the last checkpoint's path (or a JSON summary with --json). Ctrl-C saves a checkpoint
and exits with 130; run again with --resume to continue exactly where it stopped. A resumed
run reads its config from the run directory (or --config), and may change [optim], [ema],
[sample] and train.steps, precision and the logging and checkpoint keys; each change is
logged. --init-from starts a new run (step 0, fresh optimizer) from a checkpoint's weights and
EMA; without --config it takes the checkpoint's config.
Under a launcher each process trains on its part of every batch, the ranks' gradients summed
in rank order: W ranks of one thread compute what one process of W threads computes, bit for
bit. Rank 0 alone writes the run directory and stdout. CPU ranks need a build with
--features mpi; GPU ranks --features nccl.";

/// `ddpm train`
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// The TOML config (see configs/) [default with --resume: the run directory's config.toml;
    /// with --init-from: the checkpoint's config].
    #[arg(long, short, required_unless_present_any = ["resume", "init_from"])]
    pub config: Option<PathBuf>,
    /// Run directory [default: runs/<config name>].
    #[arg(long, short, required_unless_present = "config")]
    pub out: Option<PathBuf>,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
    /// Continue the run in --out from its latest checkpoint.
    #[arg(long, conflicts_with = "init_from")]
    pub resume: bool,
    /// Start a new run from this checkpoint's weights and EMA, with a fresh optimizer at step 0
    /// (fine-tuning); the config must describe the same network.
    #[arg(long, value_name = "CHECKPOINT")]
    pub init_from: Option<PathBuf>,
    /// Stop after this many steps in total (instead of train.steps, which still sets the
    /// learning-rate schedule's length).
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Seed for every random stream (overrides train.seed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Compute precision, f32 or bf16 (CUDA only; overrides train.precision).
    #[arg(long)]
    pub precision: Option<Precision>,
    /// Override a config value: --set section.key=value (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// No progress or log lines.
    #[arg(long, short)]
    pub quiet: bool,
    /// Print a JSON summary line on stdout (steps, images/s, final loss, checkpoint).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub launch: LaunchArgs,
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let mut overrides = args.set.clone();
    if let Some(seed) = args.seed {
        overrides.push(format!("train.seed={seed}"));
    }
    if let Some(p) = args.precision {
        overrides.push(format!("train.precision=\"{p}\""));
    }
    let cfg = match (&args.config, &args.out, &args.init_from) {
        (Some(path), _, _) => Config::load(path, &overrides)?,
        (None, Some(out), _) if args.resume => train::resume_config(out, &overrides)?,
        (None, _, Some(ckpt)) => {
            let text = checkpoint::load(ckpt)?.config()?.to_string();
            Config::parse(
                &text,
                &format!("{} (stored config)", ckpt.display()),
                &overrides,
            )?
        }
        // clap requires --config unless --resume (which requires --out) or --init-from.
        _ => anyhow::bail!("--config is required unless --resume --out R or --init-from C"),
    };
    let launch = args.launch.launch()?;
    let (device, notice) = rank_device(&launch, args.device)?;
    let world = dist::connect(&launch, &device)?;
    // A rank that fails says why and ends the job, so no other rank waits for it.
    match train_rank(&args, &cfg, &device, notice, world.as_ref()) {
        Err(e) if world.size() > 1 && !interrupted(&e) => {
            report(&e.context(launch.describe()));
            world.abort(1)
        }
        // Interrupted: every rank exits 130 (`report` prints only the outer message here).
        Err(e) if world.size() > 1 => {
            let said = format!("{}: {e}", launch.describe());
            Err(e.context(said))
        }
        done => done,
    }
}

fn interrupted(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<ddpm::Error>(),
        Some(ddpm::Error::Interrupted { .. })
    )
}

/// This process's part of the run: everything after it joined the others.
fn train_rank(
    args: &TrainArgs,
    cfg: &Config,
    device: &candle_core::Device,
    notice: Option<String>,
    world: &dyn Comm,
) -> anyhow::Result<()> {
    let run_dir = match (&args.out, &args.config) {
        (Some(out), _) => out.clone(),
        (None, Some(config)) => {
            let stem = config
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "run".into());
            PathBuf::from("runs").join(stem)
        }
        (None, None) => anyhow::bail!("--out is required without --config"),
    };
    // After the engine started: the handler is ours, whatever MPI installs.
    let interrupt = interrupt_flag()?;
    let opts = TrainOptions {
        run_dir: run_dir.clone(),
        resume: args.resume,
        init_from: args.init_from.clone(),
        max_steps: args.max_steps,
        interrupt,
    };
    // Rank 0 speaks for the job; the others only report errors.
    let root = world.rank() == 0;
    let quiet = args.quiet || !root;
    let total = args.max_steps.unwrap_or(cfg.train.steps);
    // Vector data trains on points, not images.
    let per_sec = match cfg.data.dataset.is_points() {
        true => "points/s",
        false => "img/s",
    };
    let device_name = device::name(device);
    let mut progress = Progress::new(total, "steps", quiet);
    if let Some(n) = notice {
        progress.note(quiet, &format!("ddpm: {n}"));
    }
    let ranks = match world.size() {
        1 => String::new(),
        n => format!(" x {n} ranks ({})", world.engine()),
    };
    let summary = train::train_in(world, cfg, device, &opts, &mut |event| {
        match event {
            Event::Started {
                step,
                total,
                parameters,
            } => {
                progress.set_position(step);
                progress.note(
                    quiet,
                    &format!(
                        "ddpm: training {parameters} parameters on {device_name}{ranks}, step {step} of {total}, run directory {}{}",
                        run_dir.display(),
                        match &args.init_from {
                            Some(c) => format!(", from the weights of {}", c.display()),
                            None => String::new(),
                        }
                    ),
                );
            }
            Event::Step {
                step,
                stats,
                images_per_sec,
            } => progress.update(step, || {
                format!("loss {:.4} {:.1} {per_sec}", stats.loss, images_per_sec)
            }),
            Event::Logged {
                step,
                stats,
                images_per_sec,
            } => progress.line(true, || {
                format!(
                    "step {step}/{total} loss {:.5} lr {:.2e} grad_norm {:.3} {:.1} {per_sec}",
                    stats.loss, stats.lr, stats.grad_norm, images_per_sec
                )
            }),
            Event::Changed(c) => progress.note(quiet, &format!("ddpm: --resume: {c}")),
            Event::Resumed {
                checkpoint,
                step,
                passed_over,
            } => {
                // A newer checkpoint that did not load is news even with --quiet.
                let warn = !passed_over.is_empty();
                for e in passed_over {
                    progress.note(false, &format!("ddpm: passed over {e}"));
                }
                progress.note(
                    quiet && !warn,
                    &format!("ddpm: resuming from {} (step {step})", checkpoint.display()),
                );
            }
            Event::Finished(note) => progress.note(quiet, &format!("ddpm: {note}")),
            Event::Checkpoint(p) => progress.line(true, || format!("checkpoint {}", p.display())),
            Event::Samples(p) => progress.line(true, || format!("samples {}", p.display())),
            Event::Notice(n) => progress.note(quiet, &format!("ddpm: {n}")),
        }
        Ok(())
    });
    progress.finish();
    let summary = summary?;
    if !root {
        return Ok(());
    }
    if args.json {
        let json = serde_json::json!({
            "command": "train",
            "step": summary.step,
            "steps_run": summary.steps_run,
            "images_per_sec": summary.images_per_sec,
            "final_loss": summary.final_loss,
            "checkpoint": summary.checkpoint,
            "device": device_name,
            "precision": cfg.train.precision.to_string(),
            "ranks": world.size(),
            "engine": world.engine(),
        });
        stdout_line(&json.to_string())?;
    } else {
        stdout_line(&summary.checkpoint.display().to_string())?;
    }
    Ok(())
}
