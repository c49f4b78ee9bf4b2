//! `ddpm eval`: the likelihood of a dataset under a checkpoint, in bits/dim — the variational
//! bound with its terms and per-timestep profile, the probability-flow ODE estimate, or both.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Instant;

use candle_core::DType;
use clap::Args;

use ddpm::budget;
use ddpm::data::{self, DataConfig, DatasetKind};
use ddpm::device::{self, DeviceSpec};
use ddpm::generate::Generator;
use ddpm::likelihood::{self, Estimate, EvalOptions, EvalReport, Method, OdeOptions, Probe};

use super::output::{check_out_folder, stdout_line};
use super::progress::Progress;
use super::signals::interrupt_flag;
use super::sizes;

pub const EXAMPLES: &str = "\
Examples:
  ddpm eval --checkpoint runs/digits/latest.safetensors -n 64
  ddpm eval --checkpoint C -n 256 --method both --json
  ddpm eval --checkpoint C -n 64 --per-timestep terms.csv --quiet
  ddpm eval --checkpoint C -n 16 --method ode --hutchinson 4 --ode-steps 200 --data photos/

The data are the checkpoint's [data] unless --data names `digits` or an image folder (resized
to the checkpoint's size and channels); the first -n examples, in order. Example i's noise is
its own, so the numbers do not depend on --batch-size. stdout: a table, or one JSON line.";

/// `ddpm eval`
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// The checkpoint to evaluate (architecture and schedule come from it).
    #[arg(long, short)]
    pub checkpoint: PathBuf,
    /// `digits` or an image folder [default: the checkpoint's data].
    #[arg(long)]
    pub data: Option<String>,
    /// Number of examples [default: all].
    #[arg(short = 'n', long = "num")]
    pub n: Option<usize>,
    /// Examples per model batch [default: sample.batch_size of the checkpoint].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Seed of the bound's noise, the dequantisation and the probes.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// bound (variational bound), ode (probability-flow ODE) or both.
    #[arg(long, default_value = "bound")]
    pub method: Method,
    /// Hutchinson probe series per example for the ODE's divergence.
    #[arg(long, default_value_t = 1)]
    pub hutchinson: usize,
    /// rademacher, gaussian, or exact (D backward passes per evaluation).
    #[arg(long, default_value = "rademacher")]
    pub probe: Probe,
    /// Heun steps of the ODE (at most; near t = 0 the timesteps are coarser).
    #[arg(long, default_value_t = 100)]
    pub ode_steps: usize,
    /// Write the bound's per-timestep terms as CSV (index,t,bpd,se) to this file.
    #[arg(long)]
    pub per_timestep: Option<PathBuf>,
    /// Evaluate the raw weights instead of the EMA.
    #[arg(long)]
    pub no_ema: bool,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
    /// No progress.
    #[arg(long, short)]
    pub quiet: bool,
    /// Print one JSON line instead of the table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    if args.per_timestep.is_some() && !args.method.bound() {
        anyhow::bail!("--per-timestep needs the bound: use --method bound or both");
    }
    if let Some(path) = &args.per_timestep {
        check_out_folder("--per-timestep", path)?;
    }
    // From the start, so that Ctrl-C while loading also stops at the first evaluation.
    let interrupt = interrupt_flag()?;
    let (device, notice) = device::resolve(args.device)?;
    let gen = Generator::load(&args.checkpoint, !args.no_ema, DType::F32, &device)?;
    if gen.is_points() {
        anyhow::bail!(
            "{} is a vector-data checkpoint; `ddpm eval` reports bits/dim of 8-bit images",
            args.checkpoint.display()
        );
    }
    let cfg = &gen.config;
    let data_cfg = data_config(&cfg.data, args.data.as_deref());
    let dataset = data::open(&data_cfg)?;
    let n = args.n.unwrap_or(dataset.len());
    let opts = EvalOptions {
        method: args.method,
        examples: n,
        batch_size: args.batch_size.unwrap_or(cfg.sample.batch_size),
        seed: args.seed,
        clip: cfg.sample.clip_x0,
        ode: OdeOptions {
            steps: args.ode_steps,
            probes: args.hutchinson,
            probe: args.probe,
        },
    };
    let need = budget::evaluation(cfg, opts.batch_size.min(n), opts.method.ode());
    sizes::check(&need, "evaluation", &device)?;
    let total = likelihood::total_evaluations(&gen.schedule, &opts)?;
    let mut progress = Progress::new(total, "evals", args.quiet);
    for n in notice.iter().chain(&gen.notice) {
        progress.note(args.quiet, &format!("ddpm: {n}"));
    }
    let start = Instant::now();
    let mut evaluated = 0;
    let report = likelihood::evaluate(
        &gen.net,
        &gen.schedule,
        cfg.diffusion.parameterization(),
        dataset.as_ref(),
        &device,
        &opts,
        &mut |done, total| {
            if interrupt.load(Ordering::Relaxed) {
                return Err(ddpm::Error::Stopped);
            }
            evaluated = done;
            progress.update(done, || format!("{n} examples"));
            let eta = progress.eta(done, total);
            progress.line(false, || {
                format!("eval: {done}/{total} model evaluations, {eta}")
            });
            Ok(())
        },
    );
    progress.finish();
    // Stopped by Ctrl-C or SIGTERM: the numbers exist only when every example is done.
    let report = report.map_err(|e| match e {
        ddpm::Error::Stopped => anyhow::Error::new(e).context(format!(
            "interrupted after {evaluated} of {total} model evaluations; nothing written"
        )),
        e => e.into(),
    })?;
    let seconds = start.elapsed().as_secs_f64();

    if let (Some(path), Some(bound)) = (&args.per_timestep, &report.bound) {
        ddpm::atomic::write(path, likelihood::per_timestep_csv(bound).as_bytes())?;
    }
    let source = match &data_cfg.path {
        Some(p) => p.display().to_string(),
        None => "digits".to_string(),
    };
    if args.json {
        let json = serde_json::json!({
            "command": "eval",
            "checkpoint": args.checkpoint.display().to_string(),
            "step": gen.step,
            "ema": !args.no_ema,
            "data": source,
            "examples": report.examples,
            "dims": report.dims,
            "seed": args.seed,
            "bound": report.bound.as_ref().map(|b| serde_json::json!({
                "total": estimate(b.total),
                "prior": estimate(b.prior),
                "diffusion": estimate(b.diffusion),
                "decoder": estimate(b.decoder),
                "timesteps": b.per_timestep.len(),
                "clip": opts.clip,
                "seconds": b.seconds,
            })),
            "ode": report.ode.as_ref().map(|o| serde_json::json!({
                "bpd": estimate(o.bpd),
                "hutchinson_se": o.hutchinson_se,
                "steps": o.nodes.len() - 1,
                "evaluations": o.evaluations,
                "probes": opts.ode.series(),
                "probe": opts.ode.probe.to_string(),
                "seconds": o.seconds,
            })),
            "seconds": seconds,
        });
        stdout_line(&json.to_string())
    } else {
        print_table(&report, &source, &opts)
    }
}

/// The checkpoint's data settings, with the dataset swapped for `--data` when given.
fn data_config(stored: &DataConfig, data: Option<&str>) -> DataConfig {
    let mut cfg = stored.clone();
    match data {
        None => {}
        Some("digits") => {
            cfg.dataset = DatasetKind::Digits;
            cfg.path = None;
        }
        Some(path) => {
            cfg.dataset = DatasetKind::Folder;
            cfg.path = Some(PathBuf::from(path));
        }
    }
    cfg
}

fn estimate(e: Estimate) -> serde_json::Value {
    serde_json::json!({ "mean": e.mean, "se": e.se })
}

fn print_table(report: &EvalReport, source: &str, opts: &EvalOptions) -> anyhow::Result<()> {
    stdout_line(&format!(
        "# {} examples of {source}, {} dims; bits/dim, mean ± standard error over examples",
        report.examples, report.dims
    ))?;
    let row = |method: &str, term: &str, e: Estimate| {
        stdout_line(&format!(
            "{method:<6} {term:<10} {:>9.5} ± {:.5}",
            e.mean, e.se
        ))
    };
    if let Some(b) = &report.bound {
        row("bound", "prior", b.prior)?;
        row("bound", "diffusion", b.diffusion)?;
        row("bound", "decoder", b.decoder)?;
        row("bound", "total", b.total)?;
    }
    if let Some(o) = &report.ode {
        row("ode", "total", o.bpd)?;
        let probes = match opts.ode.probe {
            Probe::Exact => "exact trace".to_string(),
            p => format!(
                "{} {p} probe series; their part of the error {}",
                opts.ode.probes,
                o.hutchinson_se
                    .map_or("needs --hutchinson 2 or more".into(), |s| format!("{s:.5}"))
            ),
        };
        stdout_line(&format!(
            "# ode: {} Heun steps, {} evaluations per example, {probes}",
            o.nodes.len() - 1,
            o.evaluations
        ))?;
    }
    Ok(())
}
