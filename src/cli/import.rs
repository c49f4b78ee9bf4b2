//! `ddpm import`: a diffusers pipeline or UNet2DModel folder -> one of our checkpoints.

use std::path::PathBuf;

use clap::Args;

use super::output::{check_out_folder, stdout_line};

pub const EXAMPLES: &str = "\
Examples:
  ddpm import ddpm-cifar10-32 --out cifar10.safetensors
  ddpm sample --checkpoint cifar10.safetensors -n 16 --sampler ddim --steps 50 --grid --out c.png
  ddpm import my-unet --scheduler my-unet/scheduler_config.json --out mine.safetensors

DIR is a folder as diffusers saves it (nothing is downloaded): a pipeline (model_index.json,
unet/, scheduler/) or a UNet2DModel (config.json and diffusion_pytorch_model.safetensors or
.bin), with an optional scheduler config (without one, DDPMScheduler's defaults). The
checkpoint's model and EMA weights are both the imported ones; its config says what the
model is, and every sampler, editing, inpainting and eval take it. A field ddpm cannot honour
is refused, naming it. stdout: the checkpoint's path.";

/// `ddpm import`
#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The diffusers folder.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// The checkpoint to write (.safetensors).
    #[arg(long, short)]
    pub out: PathBuf,
    /// A DDPMScheduler or DDIMScheduler config to use instead of the folder's own.
    #[arg(long, value_name = "FILE.json")]
    pub scheduler: Option<PathBuf>,
    /// No summary on stderr.
    #[arg(long, short)]
    pub quiet: bool,
}

pub fn run(args: ImportArgs) -> anyhow::Result<()> {
    check_out_folder("--out", &args.out)?;
    let imported = ddpm::interop::import(&args.dir, args.scheduler.as_deref(), &args.out)?;
    if !args.quiet {
        let scheduler = match &imported.scheduler_config {
            Some(p) => p.display().to_string(),
            None => "none (DDPMScheduler's defaults)".to_string(),
        };
        eprintln!(
            "ddpm: imported {} parameters from {} (scheduler: {scheduler})",
            imported.parameters(),
            imported.unet_weights.display()
        );
    }
    stdout_line(&args.out.display().to_string())
}
