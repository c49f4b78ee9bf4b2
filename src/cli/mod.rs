//! Command-line types (clap) and the glue from arguments to library calls. Architecture lives
//! in the config and the checkpoint; flags are for paths, counts, seeds and the device.

mod classes;
mod completions;
mod eval;
mod export;
mod fid;
mod format;
mod import;
mod init;
mod interpolate;
mod launch;
mod output;
mod points;
mod progress;
mod reproduce;
mod sample;
mod schedule;
mod signals;
mod sizes;
mod train;

use clap::{Parser, Subcommand};

pub use output::{report, usage_error};

const EXAMPLES: &str = "\
Examples:
  ddpm train --config configs/digits.toml --out runs/digits
  ddpm sample --checkpoint runs/digits/latest.safetensors -n 64 --steps 50 --ddim --grid --out grid.png
  ddpm sample --checkpoint C -n 10 --class 0,1,2,3,4,5,6,7,8,9 --guidance 2 --grid --out g.png
  ddpm sample --checkpoint C -n 1 --init photo.png --strength 0.6 --out edited.png
  ddpm interpolate --checkpoint C --seeds 1,2 --frames 8 --out strip.png
  ddpm sample --checkpoint C -n 16 --format npy --out - | python3 -c 'import io, numpy, sys; print(numpy.load(io.BytesIO(sys.stdin.buffer.read())).shape)'
  ddpm eval --checkpoint runs/digits/latest.safetensors -n 64 --method both
  ddpm fid samples/ cifar10-train.npz --inception pt_inception-2015-12-05-6726825d.pth
  ddpm schedule --config configs/digits.toml --steps 10
  ddpm info runs/digits/latest.safetensors
  ddpm init --preset points > moons.toml

Exit codes: 0 ok, 1 error, 2 usage, 130 interrupted (a checkpoint was saved).";

/// Train denoising diffusion models and sample from them, on CPU or CUDA.
#[derive(Parser, Debug)]
#[command(name = "ddpm", version, about, after_help = EXAMPLES)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// The most memory a command may use, e.g. 8G; a run estimated to need more is refused
    /// before it starts [default: what is free: the least of MemAvailable, the cgroup's limit
    /// and ulimit -v].
    #[arg(long, global = true, value_name = "SIZE", value_parser = ddpm::limits::parse_size)]
    pub max_memory: Option<u64>,
}

// One value, parsed once per process: the size of its largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train a model from a TOML config; writes a run directory.
    #[command(after_help = train::EXAMPLES)]
    Train(train::TrainArgs),
    /// Generate images from a checkpoint.
    #[command(after_help = sample::EXAMPLES)]
    Sample(sample::SampleArgs),
    /// Frames between two seeds or two images, through the noise latent.
    #[command(after_help = interpolate::EXAMPLES)]
    Interpolate(interpolate::InterpolateArgs),
    /// Likelihood of a dataset in bits/dim: the variational bound and the probability-flow ODE.
    #[command(after_help = eval::EXAMPLES)]
    Eval(eval::EvalArgs),
    /// FID (and KID) between two image sets with pytorch-fid's Inception features.
    #[command(after_help = fid::EXAMPLES)]
    Fid(fid::FidArgs),
    /// Print a config's or a checkpoint's noise schedule as CSV.
    Schedule(schedule::ScheduleArgs),
    /// Print a checkpoint's config, step and parameter count.
    Info(schedule::InfoArgs),
    /// Print a complete, commented config to start from.
    #[command(after_help = init::EXAMPLES)]
    Init(init::InitArgs),
    /// Print a shell completion script.
    #[command(after_help = completions::COMPLETIONS_EXAMPLES)]
    Completions(completions::CompletionsArgs),
    /// Print a man page (roff), of ddpm or of one command.
    #[command(after_help = completions::MAN_EXAMPLES)]
    Man(completions::ManArgs),
    /// Read a diffusers pipeline or UNet2DModel folder into a checkpoint.
    #[command(after_help = import::EXAMPLES)]
    Import(import::ImportArgs),
    /// Write a checkpoint as a folder diffusers loads (DDPMPipeline, UNet2DModel).
    #[command(after_help = export::EXAMPLES)]
    Export(export::ExportArgs),
}

/// Run the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(bytes) = cli.max_memory {
        ddpm::limits::set_max_memory(bytes);
    }
    match cli.command {
        Command::Train(a) => train::run(a),
        Command::Sample(a) => sample::run(a),
        Command::Interpolate(a) => interpolate::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Fid(a) => fid::run(a),
        Command::Schedule(a) => schedule::run(a),
        Command::Info(a) => schedule::info(a),
        Command::Import(a) => import::run(a),
        Command::Export(a) => export::run(a),
        Command::Init(a) => init::run(a),
        Command::Completions(a) => completions::completions(a),
        Command::Man(a) => completions::man(a),
    }
}
