//! `ddpm schedule` (a config's or a checkpoint's noise schedule as CSV) and `ddpm info` (what a
//! checkpoint holds); both also as JSON.

use std::io::Write;
use std::path::PathBuf;

use candle_core::Device;
use clap::{ArgGroup, Args};

use ddpm::checkpoint;
use ddpm::config::Config;
use ddpm::train;

use super::output::{printable, stdout_bytes, stdout_line};

/// `ddpm schedule`
#[derive(Args, Debug)]
#[command(group(ArgGroup::new("source").required(true).args(["config", "checkpoint"])))]
pub struct ScheduleArgs {
    /// The TOML config whose [diffusion] section defines the schedule.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// A checkpoint: the schedule it was trained with.
    #[arg(long, conflicts_with = "config")]
    pub checkpoint: Option<PathBuf>,
    /// Also show the K sampling steps chosen by sample.spacing (the respaced schedule).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Override a config value: --set section.key=value (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Print one JSON object (each CSV column as an array) instead of CSV.
    #[arg(long)]
    pub json: bool,
}

/// `ddpm info`
#[derive(Args, Debug)]
#[command(group(ArgGroup::new("ckpt").required(true).args(["path", "checkpoint"])))]
pub struct InfoArgs {
    /// The checkpoint (.safetensors) to describe.
    #[arg(value_name = "CHECKPOINT")]
    pub path: Option<PathBuf>,
    /// The checkpoint, given as to the other commands.
    #[arg(long, short, conflicts_with = "path")]
    pub checkpoint: Option<PathBuf>,
    /// Print one JSON object (checkpoint, step, parameters, format, config) instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: ScheduleArgs) -> anyhow::Result<()> {
    let cfg = match (&args.config, &args.checkpoint) {
        (Some(path), _) => Config::load(path, &args.set)?,
        (None, Some(path)) => {
            let ckpt = checkpoint::load(path)?;
            let origin = format!("{} (stored config)", path.display());
            Config::parse(ckpt.config()?, &origin, &args.set)?
        }
        // clap requires one of them.
        (None, None) => anyhow::bail!("--config or --checkpoint is required"),
    };
    let base = cfg.diffusion.schedule()?;
    let s = match args.steps {
        Some(k) => base.for_sampling(k, cfg.sample.spacing)?,
        None => base,
    };
    if args.json {
        let json = serde_json::json!({
            "command": "schedule",
            "timesteps": cfg.diffusion.timesteps,
            "beta_schedule": cfg.diffusion.beta_schedule,
            "steps": args.steps,
            "spacing": args.steps.map(|_| cfg.sample.spacing),
            "index": (0..s.len()).collect::<Vec<_>>(),
            "t": s.timesteps,
            "beta": s.betas,
            "alpha_bar": s.alphas_cumprod,
            "posterior_variance": s.posterior_variance,
            "snr": s.snr,
        });
        return stdout_line(&json.to_string());
    }
    let mut csv = String::from("index,t,beta,alpha_bar,posterior_variance,snr\n");
    for i in 0..s.len() {
        csv.push_str(&format!(
            "{i},{},{:.9e},{:.9e},{:.9e},{:.9e}\n",
            s.timesteps[i], s.betas[i], s.alphas_cumprod[i], s.posterior_variance[i], s.snr[i]
        ));
    }
    stdout_bytes(csv.as_bytes())
}

pub fn info(args: InfoArgs) -> anyhow::Result<()> {
    let path = match (&args.path, &args.checkpoint) {
        (Some(p), _) | (None, Some(p)) => p,
        // clap requires one of them.
        (None, None) => anyhow::bail!("the checkpoint is required"),
    };
    let ckpt = checkpoint::load(path)?;
    let cfg = ckpt.stored_config()?;
    let step = ckpt.step()?;
    // Every stored tensor must be one the stored config's network (and its EMA and optimizer)
    // has, in its shape: what resuming would check.
    train::TrainState::restore(&cfg, &Device::Cpu, &ckpt, path)?;
    if let Some(n) = ckpt.notice() {
        let _ = writeln!(std::io::stderr(), "ddpm: {}", printable(&n));
    }
    let params: usize = ckpt
        .tensors
        .iter()
        .filter(|(k, _)| k.starts_with(checkpoint::MODEL_PREFIX))
        .map(|(_, t)| t.elem_count())
        .sum();
    let format = ckpt.meta(checkpoint::META_FORMAT)?;
    let checksum = if ckpt.verified {
        "verified"
    } else {
        "none (written by an older ddpm)"
    };
    let class_names = ckpt.class_names()?;
    let text = cfg.to_toml()?;
    if args.json {
        let config: toml::Table = toml::from_str(&text)?;
        let json = serde_json::json!({
            "command": "info",
            "checkpoint": path,
            "step": step,
            "parameters": params,
            "format": format,
            "checksum": checksum,
            "class_names": class_names,
            "config": config,
        });
        return stdout_line(&json.to_string());
    }
    stdout_line(&format!("# checkpoint: {}", path.display()))?;
    stdout_line(&format!("# step: {step}"))?;
    stdout_line(&format!("# parameters: {params}"))?;
    stdout_line(&format!("# format: {format}"))?;
    if let Some(names) = &class_names {
        let listed: Vec<String> = names
            .iter()
            .enumerate()
            .map(|(i, name)| format!("{i} {name}"))
            .collect();
        stdout_line(&format!(
            "# classes (--class takes the name or the number): {}",
            listed.join(", ")
        ))?;
    }
    stdout_line(&format!("# checksum: {checksum}"))?;
    stdout_line(&text)
}
