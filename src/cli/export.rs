//! `ddpm export`: a checkpoint -> a folder diffusers' DDPMPipeline, DDIMPipeline and
//! UNet2DModel load.

use std::path::PathBuf;

use clap::Args;

use super::output::stdout_line;

pub const EXAMPLES: &str = "\
Examples:
  ddpm export runs/digits/latest.safetensors --out digits-diffusers
  ddpm export C --out raw-weights --no-ema

In Python, DDPMPipeline.from_pretrained(\"digits-diffusers\") (or DDIMPipeline) loads the folder.
Writes model_index.json, unet/config.json, unet/diffusion_pytorch_model.safetensors (f32) and
scheduler/scheduler_config.json into a new or empty folder. A checkpoint diffusers cannot
express (the MLP for vector data; GroupNorms with fewer channels than model.norm_groups;
model.num_heads giving heads of different widths) is refused, naming the key. A class-
conditional model's last class is ddpm's \"no class\" label. stdout: the files written.";

/// `ddpm export`
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The checkpoint (.safetensors).
    #[arg(value_name = "CHECKPOINT")]
    pub checkpoint: PathBuf,
    /// The folder to write (new or empty).
    #[arg(long, short)]
    pub out: PathBuf,
    /// Export the raw weights instead of the EMA.
    #[arg(long)]
    pub no_ema: bool,
}

pub fn run(args: ExportArgs) -> anyhow::Result<()> {
    let exported = ddpm::interop::export(&args.checkpoint, &args.out, !args.no_ema)?;
    for f in &exported.files {
        stdout_line(&f.display().to_string())?;
    }
    Ok(())
}
