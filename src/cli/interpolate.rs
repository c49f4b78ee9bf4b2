//! `ddpm interpolate`: frames between two seeds (slerp of their noise) or two images (slerp of
//! their DDIM-inverted noise), denoised by a deterministic sampler, as one strip PNG or a folder
//! of frames.

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use anyhow::Context;
use candle_core::Tensor;
use clap::Args;

use ddpm::budget;
use ddpm::data::images;
use ddpm::device::{self, DeviceSpec};
use ddpm::generate::interpolate;
use ddpm::generate::{self, Generator, Request, Start};
use ddpm::precision::Precision;
use ddpm::sampler::{InvertOptions, SamplerKind};

use super::classes::ClassArgs;
use super::format::{self, Format};
use super::output::{check_out_dir, check_out_folder, stdout_line, write_out};
use super::progress::Progress;
use super::signals::interrupt_flag;
use super::sizes;

pub const EXAMPLES: &str = "\
Examples:
  ddpm interpolate --checkpoint C --seeds 1,2 --frames 8 --scale 4 --out strip.png
  ddpm interpolate --checkpoint C --seeds 1,2 --sampler dpm++2m --frames 30 --out-dir frames
  ddpm interpolate --checkpoint C --from a.png --to b.png --frames 8 --out strip.png

With --seeds A,B the end frames are exactly `ddpm sample --seed A -n 1` and `--seed B` with the
same --sampler and --steps (DDIM at eta 0). With --from/--to the images are DDIM-inverted up to
the last step below sigma = 80 (above it x_t is noise to 1/80, and the step from a cosine
schedule's x_T would read the network's eps error times 2e4) and sampled back from there
without x0 clipping (which inversion cannot undo), so the end frames reconstruct them; --refine
sets how closely (plain inversion, 0, is first-order accurate). --out's extension picks the
strip's format. stdout: the written paths, one per line (nothing with --out -).";

/// `ddpm interpolate`
#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("ends").required(true).args(["seeds", "from"])))]
pub struct InterpolateArgs {
    /// The checkpoint to sample from.
    #[arg(long, short)]
    pub checkpoint: PathBuf,
    /// Two seeds, A,B: the end frames are their first samples.
    #[arg(long, value_delimiter = ',', value_name = "A,B")]
    pub seeds: Vec<u64>,
    /// First image, inverted to its noise with DDIM.
    #[arg(long, requires = "to")]
    pub from: Option<PathBuf>,
    /// Last image, inverted to its noise with DDIM.
    #[arg(long, requires = "from")]
    pub to: Option<PathBuf>,
    /// Frames, both ends included.
    #[arg(long, default_value_t = 8)]
    pub frames: usize,
    /// ddim (at eta 0), dpm++2m or heun: deterministic samplers only; --from/--to need ddim
    /// [default: ddim].
    #[arg(long)]
    pub sampler: Option<SamplerKind>,
    /// Denoising (and inversion) steps [default: sample.steps when sample.sampler is this one,
    /// else 50 for ddim, 20 otherwise].
    #[arg(long)]
    pub steps: Option<usize>,
    /// Fixed-point refinements per DDIM inversion step (--from/--to): each costs one more model
    /// call per step on the two end images only, and brings the end frames closer to them.
    #[arg(long, default_value_t = 5)]
    pub refine: usize,
    #[command(flatten)]
    pub classes: ClassArgs,
    /// Frames per model batch [default: sample.batch_size of the checkpoint].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Sample with the raw weights instead of the EMA.
    #[arg(long)]
    pub no_ema: bool,
    /// Write the frames as one strip, left to right, in the format the extension names (png,
    /// jpg, webp, bmp); `-` writes a PNG to stdout [default: interpolation.png].
    #[arg(long, short, conflicts_with = "out_dir")]
    pub out: Option<PathBuf>,
    /// Write frame-000.png, frame-001.png, ... here instead.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// Nearest-neighbour upscaling of the PNGs.
    #[arg(long, default_value_t = 1)]
    pub scale: u32,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
    /// Compute precision, f32 or bf16 (CUDA only).
    #[arg(long, default_value = "f32")]
    pub precision: Precision,
    /// No progress.
    #[arg(long, short)]
    pub quiet: bool,
    /// Print a JSON summary line (frames, sampler, steps, seconds, device) on stdout after the
    /// paths.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: InterpolateArgs) -> anyhow::Result<()> {
    // From the start, so that Ctrl-C while loading also stops at the first step.
    let interrupt = interrupt_flag()?;
    let (device, notice) = device::resolve(args.device)?;
    args.precision.check(&device)?;
    if args.scale == 0 {
        anyhow::bail!("--scale must be at least 1");
    }
    if let Some(out) = &args.out {
        check_out_folder("--out", out)?;
    }
    if let Some(dir) = &args.out_dir {
        check_out_dir(dir)?;
    }
    let strip_format = format::for_path("--out", args.out.as_deref(), None, Format::Png)?;
    let encoding = strip_format.image().ok_or_else(|| {
        anyhow::anyhow!("--out: `ddpm interpolate` writes a picture (.png, .jpg, .webp or .bmp)")
    })?;
    if args.from.is_none() && args.seeds.len() != 2 {
        anyhow::bail!("--seeds takes two seeds, A,B (got {})", args.seeds.len());
    }
    let sampler = args.sampler.unwrap_or(SamplerKind::Ddim);
    match sampler {
        SamplerKind::Ddpm | SamplerKind::Pc => anyhow::bail!(
            "--sampler {sampler} is stochastic; interpolation needs ddim, dpm++2m or heun"
        ),
        SamplerKind::Ddim => {}
        _ if args.from.is_some() => {
            anyhow::bail!("--sampler {sampler}: --from/--to invert DDIM, so they sample with ddim")
        }
        _ => {}
    }
    if args.frames < 2 {
        anyhow::bail!(
            "--frames {}: an interpolation needs at least 2 (its two endpoints)",
            args.frames
        );
    }
    let gen = Generator::load(
        &args.checkpoint,
        !args.no_ema,
        args.precision.dtype(),
        &device,
    )?;
    if gen.is_points() {
        anyhow::bail!(
            "{} is a vector-data checkpoint; `ddpm interpolate` makes image strips",
            args.checkpoint.display()
        );
    }
    let cfg = &gen.config;
    let mut opts = generate::sample_options(cfg, sampler, 0);
    opts.eta = 0.0;
    // DDIM inversion does not clip x0 (clipping is not invertible), so the way back must not
    // either, or the end frames would not reconstruct the images.
    if args.from.is_some() {
        opts.clip_x0 = false;
    }
    if let Some(k) = args.steps {
        opts.steps = k;
    }
    opts.validate(gen.schedule.len())?;
    let (classes, guidance) = args.classes.resolve(&gen)?;
    let batch = args.batch_size.unwrap_or(cfg.sample.batch_size);
    check_memory(&args, &gen, batch, guidance)?;

    let clock = std::time::Instant::now();
    let inv = InvertOptions {
        steps: opts.steps,
        spacing: opts.spacing,
        refine: args.refine,
    };
    // Inverted images start the way back below sigma = 80 (`sampler::latent`), seeds at x_T.
    let (inverting, from) = match args.from {
        Some(_) => (1, gen.inversion_steps(&inv)?),
        None => (0, opts.steps),
    };
    let batches = args.frames.div_ceil(batch.max(1));
    let total = (batches + inverting) * from;
    let mut progress = Progress::new(total as u64, "steps", args.quiet);
    for n in notice.iter().chain(&gen.notice) {
        progress.note(args.quiet, &format!("ddpm: {n}"));
    }
    let shape: [usize; 3] = gen
        .sample_shape()
        .try_into()
        .map_err(|_| anyhow::anyhow!("the checkpoint's samples are not (C, H, W) images"))?;
    let (a, b) = match (&args.from, &args.to) {
        (Some(from), Some(to)) => {
            let load = |p: &PathBuf, flag: &str| {
                images::load_image(p, cfg.data.channels, cfg.data.image_size)
                    .context(flag.to_string())
            };
            let x0 = Tensor::cat(&[load(from, "--from")?, load(to, "--to")?], 0)?;
            let latent = gen
                .invert(&x0, &classes, guidance, &inv, &mut |_, _, step, _| {
                    if interrupt.load(Ordering::Relaxed) {
                        return Err(ddpm::Error::Stopped);
                    }
                    progress.set_position(step as u64);
                    Ok(())
                })
                .map_err(stopped)?;
            (latent.x.narrow(0, 0, 1)?, latent.x.narrow(0, 1, 1)?)
        }
        _ => {
            let latent = |seed| interpolate::seed_latent(seed, 0, shape, &gen.device);
            (latent(args.seeds[0])?, latent(args.seeds[1])?)
        }
    };
    let latents = interpolate::path(&a, &b, args.frames)?;
    let offset = inverting * from;
    let req = Request {
        n: args.frames,
        batch_size: batch,
        classes: &classes,
        guidance,
        start: Start::Latent {
            x: &latents,
            from: Some(from),
        },
    };
    let x = gen.generate(&opts, &req, &mut |done, n, step, steps| {
        if interrupt.load(Ordering::Relaxed) {
            return Err(ddpm::Error::Stopped);
        }
        let pos = (offset + done.div_ceil(batch) * steps + step) as u64;
        progress.update(pos, || format!("frame {}/{n}", (done + 1).min(n)));
        progress.line(false, || {
            format!("interpolating: batch from frame {done} of {n}, step {step}/{steps}")
        });
        Ok(())
    });
    progress.finish();
    let seconds = clock.elapsed().as_secs_f64();
    let x = x.map_err(stopped)?;

    let frames = images::to_images(&x)?;
    let mut written = Vec::new();
    match (&args.out, &args.out_dir) {
        (_, Some(dir)) => {
            ddpm::atomic::create_dir(dir)?;
            for (k, img) in frames.iter().enumerate() {
                let p = dir.join(format!("frame-{k:03}.png"));
                images::save_png(&images::upscale(img, args.scale), &p)?;
                written.push(p);
            }
        }
        (out, None) => {
            let p = out
                .clone()
                .unwrap_or_else(|| PathBuf::from("interpolation.png"));
            let strip = images::upscale(&images::grid(&frames, Some(frames.len()))?, args.scale);
            written.extend(write_out(&p, &images::encode(&strip, encoding)?)?);
        }
    }
    for p in &written {
        stdout_line(&p.display().to_string())?;
    }
    if args.json {
        let json = serde_json::json!({
            "command": "interpolate",
            "frames": args.frames,
            "ends": if inverting == 1 { "images" } else { "seeds" },
            "sampler": sampler.to_string(),
            "steps": opts.steps,
            "seconds": seconds,
            "device": device::name(&device),
            "precision": args.precision.to_string(),
        });
        stdout_line(&json.to_string())?;
    }
    Ok(())
}

/// Refuse, before any work, frames that would not fit the memory: the network and a batch's
/// activations (`budget::sampling`), every frame's latent, path row and sample (f32), and the
/// strip (or one frame at a time for --out-dir) as 8-bit pixels upscaled by --scale.
fn check_memory(
    args: &InterpolateArgs,
    gen: &Generator,
    batch: usize,
    guidance: f64,
) -> anyhow::Result<()> {
    let guided = gen.num_classes().is_some() && guidance != 1.0 && guidance != 0.0;
    let shape = sizes::Shape::of(&gen.sample_shape());
    let n = args.frames;
    let picture = match args.out_dir {
        Some(_) => sizes::picture(1, 1, shape, args.scale, "--frames")?,
        None => sizes::picture(n, n, shape, args.scale, "--frames")?,
    };
    let need = budget::sampling(&gen.config, batch.min(n), guided)
        .with(sizes::tensors(
            "the frames",
            n,
            shape,
            3.5,
            "lower --frames",
        ))
        .with(picture);
    sizes::check(&need, "interpolation", &gen.device)
}

/// Ctrl-C or SIGTERM, said with what it kept: nothing, since the frames are written when all
/// of them are done. Other errors pass through.
fn stopped(e: ddpm::Error) -> anyhow::Error {
    match e {
        ddpm::Error::Stopped => anyhow::Error::new(e)
            .context("interrupted; nothing written (the frames are written when all are done)"),
        e => e.into(),
    }
}
