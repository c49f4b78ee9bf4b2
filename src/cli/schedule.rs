//! `ddpm schedule` (a config's schedule as CSV) and `ddpm info` (what a checkpoint holds).

use std::io::Write;
use std::path::PathBuf;

use candle_core::Device;
use clap::Args;

use ddpm::checkpoint;
use ddpm::config::Config;
use ddpm::train;

use super::output::{printable, stdout_line};
use super::InfoArgs;

/// `ddpm schedule`
#[derive(Args, Debug)]
pub struct ScheduleArgs {
    /// The TOML config whose [diffusion] section defines the schedule.
    #[arg(long, short)]
    pub config: PathBuf,
    /// Also show the K sampling steps chosen by sample.spacing (the respaced schedule).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Override a config value: --set section.key=value (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

pub fn run(args: ScheduleArgs) -> anyhow::Result<()> {
    let cfg = Config::load(&args.config, &args.set)?;
    let base = cfg.diffusion.schedule()?;
    let s = match args.steps {
        Some(k) => base.for_sampling(k, cfg.sample.spacing)?,
        None => base,
    };
    let mut csv = String::from("index,t,beta,alpha_bar,posterior_variance,snr\n");
    for i in 0..s.len() {
        csv.push_str(&format!(
            "{i},{},{:.9e},{:.9e},{:.9e},{:.9e}\n",
            s.timesteps[i], s.betas[i], s.alphas_cumprod[i], s.posterior_variance[i], s.snr[i]
        ));
    }
    super::output::stdout_bytes(csv.as_bytes())
}

pub fn info(args: InfoArgs) -> anyhow::Result<()> {
    let path = &args.checkpoint;
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
    stdout_line(&format!("# checkpoint: {}", path.display()))?;
    stdout_line(&format!("# step: {step}"))?;
    stdout_line(&format!("# parameters: {params}"))?;
    stdout_line(&format!(
        "# format: {}",
        ckpt.meta(checkpoint::META_FORMAT)?
    ))?;
    stdout_line(&format!(
        "# checksum: {}",
        if ckpt.verified {
            "verified"
        } else {
            "none (written by an older ddpm)"
        }
    ))?;
    stdout_line(&cfg.to_toml()?)
}
