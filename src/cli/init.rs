//! `ddpm init`: a complete, commented config to start from, on stdout.

use clap::Args;

use ddpm::config::Preset;

use super::output::stdout_bytes;

pub const EXAMPLES: &str = "\
Examples:
  ddpm init > my.toml
  ddpm init --preset points > moons.toml
  ddpm init --preset folder > faces.toml   # then set data.path

Each preset is one of the shipped configs (configs/digits.toml, cifar10.toml, folder.toml,
moons.toml) written out with every key and a line on what it does; it validates as is.";

/// `ddpm init`
#[derive(Args, Debug)]
pub struct InitArgs {
    /// digits (embedded, trains in minutes on a CPU), cifar10 (the DDPM paper's model), folder
    /// (your own images) or points (2-D data and the MLP).
    #[arg(long, default_value = "digits")]
    pub preset: Preset,
}

pub fn run(args: InitArgs) -> anyhow::Result<()> {
    stdout_bytes(args.preset.commented()?.as_bytes())
}
