//! `ddpm sample`: a checkpoint -> images as PNG files, a grid, or raw arrays (.npy) on stdout;
//! of chosen classes (with guidance) and from noise, an image to edit, or an image to inpaint.
//! Vector-data checkpoints write CSV rows instead (`points`).

use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::Context;
use clap::Args;

use ddpm::budget;
use ddpm::data::{images, Part};
use ddpm::device::{self, DeviceSpec};
use ddpm::generate::{self, Generator, Request, Start};
use ddpm::precision::Precision;
use ddpm::sampler::SamplerKind;
use ddpm::schedule::Spacing;

use super::classes::ClassArgs;
use super::format::{self, Format};
use super::launch::{rank_device, LaunchArgs};
use super::output::{check_out_dir, check_out_folder, stdout_line, write_out};
use super::points;
use super::progress::Progress;
use super::reproduce::ReproduceArgs;
use super::signals::interrupt_flag;
use super::sizes;

pub const EXAMPLES: &str = "\
Examples:
  ddpm sample --checkpoint runs/digits/latest.safetensors -n 16 --steps 50 --ddim
  ddpm sample --checkpoint C -n 64 --grid --scale 4 --out grid.png
  ddpm sample --checkpoint C -n 8 --format npy --out - > samples.npy
  for s in 1 2 3; do ddpm sample --checkpoint C -n 1 --seed $s --out - > seed$s.png; done
  ddpm sample --checkpoint C -n 10 --class 0,1,2,3,4,5,6,7,8,9 --guidance 2 --grid --out g.png
  ddpm sample --checkpoint C --init photo.png --strength 0.6 -n 4 --out-dir edits   # SDEdit
  ddpm sample --checkpoint C --init photo.png --mask hole.png --resample 5 -n 4 --out-dir fills
  ddpm sample --checkpoint runs/moons/latest.safetensors -n 2000 --out - > moons.csv
  ddpm sample --checkpoint runs/moons/latest.safetensors -n 2000 --sampler ddim --out m.png

Image i of a run is the same whatever --batch-size: --seed S -n 10 gives the same ten images
as ten calls with -n 1 --first-index 0..9, and --class cycles over that same index. A
class-conditional checkpoint without --class samples unconditionally. --init images are
fitted to the checkpoint's size and channels like training data; masks are white where the
image is regenerated. A vector-data checkpoint (moons, swiss_roll, 8gaussians, points) writes
its samples as CSV with a header, in the units of its training data; --format png draws them
as a scatter plot, beside fresh points of the true distribution for the built-in sets.
stdout: the written paths, one per line, or the bytes with --out -. One PNG per image is
written batch by batch: Ctrl-C keeps the finished ones and says how to sample the rest.
Under a launcher (mpirun, srun, torchrun) -n is split across the processes, rank r taking
the images of its part as --first-index would: the same files one process writes, each rank
writing its own (one PNG per image only).
  mpirun -np 8 ddpm sample --checkpoint C -n 50000 --out-dir fid   # or torchrun --no-python";

/// `ddpm sample`
#[derive(Args, Debug)]
pub struct SampleArgs {
    /// The checkpoint to sample from (all settings come from it).
    #[arg(long, short)]
    pub checkpoint: PathBuf,
    /// Number of images.
    #[arg(short = 'n', long = "num", default_value_t = 16)]
    pub n: usize,
    /// Images per model batch [default: sample.batch_size of the checkpoint].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Denoising steps [default: sample.steps for sample.sampler; any other sampler its own: T
    /// for ddpm and pc, 50 for ddim, 20 for dpm++2m and heun].
    #[arg(long)]
    pub steps: Option<usize>,
    /// Use DDIM (same as --sampler ddim).
    #[arg(long, conflicts_with = "sampler")]
    pub ddim: bool,
    /// ddpm (ancestral), ddim, pc (ancestral + Langevin corrector), dpm++2m or heun (ODE)
    /// [default: sample.sampler].
    #[arg(long)]
    pub sampler: Option<SamplerKind>,
    /// DDIM's eta: 0 deterministic, 1 ancestral-like [default: sample.eta].
    #[arg(long)]
    pub eta: Option<f64>,
    /// Langevin corrector steps per step, for --sampler pc [default: sample.corrector_steps].
    #[arg(long)]
    pub corrector_steps: Option<usize>,
    /// Corrector target signal-to-noise ratio, for --sampler pc [default: sample.snr].
    #[arg(long)]
    pub snr: Option<f64>,
    /// Which of the T training timesteps the steps visit: linspace, leading or trailing
    /// [default: sample.spacing].
    #[arg(long)]
    pub spacing: Option<Spacing>,
    /// Clip each predicted x0 to the image range [-1, 1] [default: sample.clip_x0].
    #[arg(long, overrides_with = "no_clip_x0")]
    pub clip_x0: bool,
    /// Do not clip the predicted x0.
    #[arg(long, overrides_with = "clip_x0")]
    pub no_clip_x0: bool,
    /// Override a stored sampling setting: --set sample.key=value (repeatable; the flags above
    /// override these).
    #[arg(long = "set", value_name = "sample.KEY=VALUE")]
    pub set: Vec<String>,
    /// Seed of the sampling noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Index of the first image (its noise stream), to split a run across calls.
    #[arg(long, default_value_t = 0)]
    pub first_index: u64,
    /// Sample with the raw weights instead of the EMA.
    #[arg(long)]
    pub no_ema: bool,
    #[command(flatten)]
    pub classes: ClassArgs,
    /// Start from this image instead of noise (repeated over the -n images): SDEdit with
    /// --strength, inpainting with --mask.
    #[arg(long, requires = "edit")]
    pub init: Option<PathBuf>,
    /// SDEdit: noise --init to t = strength * T, then denoise; 0 returns it, 1 keeps only a
    /// faint trace.
    #[arg(long, group = "edit", requires = "init")]
    pub strength: Option<f64>,
    /// Inpainting: regenerate --init where this mask is white (luma >= 128), keep it elsewhere.
    #[arg(long, group = "edit", requires = "init")]
    pub mask: Option<PathBuf>,
    /// Inpainting: RePaint resampling, each step repeated R times (1 = plain replacement).
    #[arg(long, requires = "mask", default_value_t = 1)]
    pub resample: usize,
    #[command(flatten)]
    pub reproduce: ReproduceArgs,
    /// Write one file: a PNG (a grid if n > 1) or .npy; `-` writes it to stdout.
    #[arg(long, short, conflicts_with = "out_dir")]
    pub out: Option<PathBuf>,
    /// Write one PNG per image (or grid.png with --grid, samples.npy with --format npy) here.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// Put all images in one grid.
    #[arg(long)]
    pub grid: bool,
    /// Images per grid row [default: the smallest square]: -n 20 --class 0,...,9 --nrow 10
    /// puts each class in a column.
    #[arg(long)]
    pub nrow: Option<usize>,
    /// Nearest-neighbour upscaling of PNG output (8x8 digits are tiny).
    #[arg(long, default_value_t = 1)]
    pub scale: u32,
    /// png, jpeg, webp, bmp, npy or csv [default: the one --out's extension names, else png,
    /// or csv for vector data].
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
    /// Compute precision, f32 or bf16 (CUDA only).
    #[arg(long, default_value = "f32")]
    pub precision: Precision,
    /// No progress.
    #[arg(long, short)]
    pub quiet: bool,
    /// Print a JSON summary line (images, network evaluations per image, seconds, images/s) on
    /// stdout after the paths.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub launch: LaunchArgs,
}

pub fn run(args: SampleArgs) -> anyhow::Result<()> {
    let launch = args.launch.launch()?;
    if args
        .first_index
        .checked_add(args.n.saturating_sub(1) as u64)
        .is_none()
    {
        anyhow::bail!(
            "--first-index {} with -n {}: image indices would pass the last one, {}; lower --first-index",
            args.first_index,
            args.n,
            u64::MAX
        );
    }
    // This process's images: its part of -n, from where --first-index puts them.
    let mine = Part {
        index: launch.rank,
        count: launch.size,
    }
    .range(args.n);
    let (first_index, n) = (args.first_index + mine.start as u64, mine.len());
    let quiet = args.quiet || launch.rank != 0;
    let (device, notice) = rank_device(&launch, args.device)?;
    args.precision.check(&device)?;
    if args.scale == 0 {
        anyhow::bail!("--scale must be at least 1");
    }
    if args.nrow == Some(0) {
        anyhow::bail!("--nrow must be at least 1");
    }
    if let Some(dir) = &args.out_dir {
        check_out_dir(dir)?;
    }
    let gen = Generator::load_with(
        &args.checkpoint,
        args.precision.dtype(),
        &device,
        &mut |cfg| {
            *cfg = cfg.with_sample_overrides(&args.set)?;
            if args.no_ema {
                cfg.sample.use_ema = false;
            }
            Ok(())
        },
    )?;
    if gen.is_points() {
        refuse_image_options(&args)?;
    }
    let cfg = &gen.config;
    let sampler = if args.ddim {
        SamplerKind::Ddim
    } else {
        args.sampler.unwrap_or(cfg.sample.sampler)
    };
    let mut opts = generate::sample_options(cfg, sampler, args.seed);
    if let Some(k) = args.steps {
        opts.steps = k;
    }
    if let Some(eta) = args.eta {
        opts.eta = eta;
    }
    if let Some(n) = args.corrector_steps {
        opts.corrector_steps = n;
    }
    if let Some(r) = args.snr {
        opts.snr = r;
    }
    if let Some(spacing) = args.spacing {
        opts.spacing = spacing;
    }
    if let Some(clip) = clip_x0(&args) {
        opts.clip_x0 = clip;
    }
    opts.first_index = first_index;
    args.reproduce.apply(&mut opts);
    opts.validate(gen.schedule.len())?;
    let batch = args.batch_size.unwrap_or(cfg.sample.batch_size);
    let (classes, guidance) = args.classes.resolve(&gen)?;

    if let Some(s) = args.strength.filter(|s| !(0.0..=1.0).contains(s)) {
        anyhow::bail!("--strength {s} must be within [0, 1]");
    }
    let size = cfg.data.image_size;
    let init = match &args.init {
        Some(p) => Some(images::load_image(p, cfg.data.channels, size).context("--init")?),
        None => None,
    };
    let mask = match &args.mask {
        Some(p) => Some(images::load_mask(p, size).context("--mask")?),
        None => None,
    };
    let given = args.reproduce.noise(args.n, mine)?;
    let start = match (&init, &mask, args.strength, &given) {
        (Some(init), Some(mask), _, _) => Start::Inpaint {
            init,
            mask,
            resample: args.resample,
        },
        (Some(init), None, Some(strength), _) => Start::Edit { init, strength },
        (_, _, _, Some(noise)) => noise.start(),
        _ => Start::Noise,
    };
    let req = Request {
        n,
        batch_size: batch,
        classes: &classes,
        guidance,
        start,
    };

    // Checked before sampling: a bad --format or --out must not cost a whole run.
    let format = match gen.is_points() {
        true => format::for_path("--out", args.out.as_deref(), args.format, Format::Csv)?,
        false => image_format(&args)?,
    };
    if let Some(out) = &args.out {
        check_out_folder("--out", out)?;
    }
    let per_image = (!gen.is_points())
        .then(|| per_image_dir(&args, format))
        .flatten();
    check_memory(&args, &gen, batch, guidance, format, per_image.is_some())?;
    if launch.size > 1 && per_image.is_none() {
        anyhow::bail!(
            "{}: with several processes each writes its own images, one PNG per image in \
             --out-dir; --out, --grid, --format npy and vector-data CSV need one process \
             (--launcher none)",
            launch.describe()
        );
    }
    if n == 0 {
        // More processes than images: nothing for this one.
        return Ok(());
    }
    if let Some(dir) = &per_image {
        ddpm::atomic::create_dir(dir)?;
    }

    let steps = gen.steps_per_batch(&opts, &start)?;
    let total_steps = (n.div_ceil(batch.max(1)) * steps) as u64;
    let progress = RefCell::new(Progress::new(total_steps, "steps", quiet));
    for n in notice.iter().chain(&gen.notice) {
        progress.borrow().note(quiet, &format!("ddpm: {n}"));
    }
    let interrupt = interrupt_flag()?;
    let on_step = &mut |done: usize, n: usize, step: usize, steps: usize| {
        if interrupt.load(Ordering::Relaxed) {
            return Err(ddpm::Error::Stopped);
        }
        let mut progress = progress.borrow_mut();
        let pos = (done.div_ceil(batch) * steps + step) as u64;
        progress.update(pos, || format!("image {}/{n}", (done + 1).min(n)));
        progress.line(false, || {
            format!("sampling: batch from image {done} of {n}, step {step}/{steps}")
        });
        Ok(())
    };
    let clock = Instant::now();
    let evaluated_before = gen.evaluations.load(Ordering::Relaxed);
    // Time spent writing PNGs between batches; not counted as sampling time.
    let (mut kept, mut writing) = (0, std::time::Duration::ZERO);
    let x = match &per_image {
        // One PNG per image: each batch is written (and its paths printed) as soon as it is
        // done, so stopping a long run keeps every finished image.
        Some(dir) => gen
            .generate_batches(
                &opts,
                &req,
                on_step,
                &mut |first, x| -> anyhow::Result<()> {
                    let started = Instant::now();
                    let encoding = format.image().unwrap_or(image::ImageFormat::Png);
                    for (i, img) in images::to_images(&x)?.iter().enumerate() {
                        let index = first_index as usize + first + i;
                        let p = dir.join(format!("sample-{index:05}.{}", format.extension()));
                        images::save(&images::upscale(img, args.scale), &p, encoding)?;
                        progress
                            .borrow()
                            .suspend(|| stdout_line(&p.display().to_string()))?;
                    }
                    kept = first + x.dim(0)?;
                    writing += started.elapsed();
                    Ok(())
                },
            )
            .map(|()| None),
        None => gen
            .generate(&opts, &req, on_step)
            .map(Some)
            .map_err(Into::into),
    };
    progress.borrow().finish();
    let x = x.map_err(|e| stopped_after(e, (first_index, n), per_image.as_deref(), kept))?;
    let seconds = clock.elapsed().saturating_sub(writing).as_secs_f64();
    let evaluated = gen.evaluations.load(Ordering::Relaxed) - evaluated_before;

    if let Some(x) = &x {
        let written = match gen.is_points() {
            true => points::write(
                &gen,
                x,
                format,
                args.out.as_deref(),
                args.out_dir.as_deref(),
                args.seed,
            )?,
            false => write_images(&args, format, x)?,
        };
        for p in &written {
            stdout_line(&p.display().to_string())?;
        }
    }
    if args.json {
        let json = serde_json::json!({
            "command": "sample",
            "images": n,
            "classes": classes,
            "guidance": guidance,
            "batch_size": batch,
            "sampler": sampler.to_string(),
            "steps": opts.steps,
            "network_evaluations_per_image": evaluated as f64 / n as f64,
            "seconds": seconds,
            "images_per_sec": n as f64 / seconds.max(1e-9),
            "device": device::name(&device),
            "precision": args.precision.to_string(),
        });
        stdout_line(&json.to_string())?;
    }
    Ok(())
}

/// Refuse, on a vector-data checkpoint, the options that only mean something for images.
fn refuse_image_options(args: &SampleArgs) -> anyhow::Result<()> {
    let image_only = [
        ("--init", args.init.is_some()),
        ("--mask", args.mask.is_some()),
        ("--strength", args.strength.is_some()),
        ("--grid", args.grid),
        ("--scale", args.scale != 1),
        ("--nrow", args.nrow.is_some()),
        ("--clip-x0", clip_x0(args) == Some(true)),
    ];
    if let Some((flag, _)) = image_only.iter().find(|(_, set)| *set) {
        anyhow::bail!(
            "{flag} is for images, but {} is a vector-data checkpoint (it samples CSV rows)",
            args.checkpoint.display()
        );
    }
    Ok(())
}

/// An interruption, said with what it kept and how to go on from there: the PNGs of finished
/// batches in `dir` (images `first..first + kept` of this process's `first..first + n`), or
/// nothing for output that is written at the end. Other errors pass through.
fn stopped_after(
    e: anyhow::Error,
    (first, n): (u64, usize),
    dir: Option<&std::path::Path>,
    kept: usize,
) -> anyhow::Error {
    if !matches!(e.downcast_ref::<ddpm::Error>(), Some(ddpm::Error::Stopped)) {
        return e;
    }
    let first = first as usize;
    let msg = match dir {
        Some(dir) if kept > 0 => format!(
            "interrupted: images {first}..{} of {first}..{} are in {}; the rest: --first-index {} -n {}",
            first + kept,
            first + n,
            dir.display(),
            first + kept,
            n - kept
        ),
        Some(_) => "interrupted before the first batch was done; nothing written".to_string(),
        None => "interrupted; nothing written (this output is written when all images are done)"
            .to_string(),
    };
    e.context(msg)
}

/// Refuse, before any work, a run whose batches, samples or pictures would not fit the memory:
/// the network's weights and a batch's activations (`budget::sampling`), and the output — a
/// batch's tensors and upscaled PNGs per image, or all samples at once for one file (a grid
/// PNG, a .npy array, or vector data's rows).
fn check_memory(
    args: &SampleArgs,
    gen: &Generator,
    batch: usize,
    guidance: f64,
    format: Format,
    per_image: bool,
) -> anyhow::Result<()> {
    let guided = gen.num_classes().is_some() && guidance != 1.0 && guidance != 0.0;
    let shape = sizes::Shape::of(&gen.sample_shape());
    let n = args.n;
    let need = budget::sampling(&gen.config, batch.min(n), guided);
    let need = match (gen.is_points(), format.image()) {
        // Vector data: the tensor, the points in f64 and their CSV text.
        (true, _) => need.with(sizes::tensors("the samples", n, shape, 10.0, "lower -n")),
        (false, Some(_)) if per_image => need
            .with(sizes::tensors(
                "a batch of samples",
                batch.min(n),
                shape,
                2.0,
                "lower --batch-size",
            ))
            .with(sizes::picture(1, 1, shape, args.scale, "-n")?),
        (false, Some(_)) => {
            let cols = (n as f64).sqrt().ceil() as usize;
            need.with(sizes::tensors("the samples", n, shape, 2.0, "lower -n"))
                .with(sizes::picture(n, cols, shape, args.scale, "-n")?)
        }
        (false, None) => need.with(sizes::tensors("the samples", n, shape, 3.0, "lower -n")),
    };
    sizes::check(&need, "sampling", &gen.device)
}

/// The image format: --format, else the one --out's extension names, else PNG. CSV is for
/// vector data.
fn image_format(args: &SampleArgs) -> anyhow::Result<Format> {
    let format = format::for_path("--out", args.out.as_deref(), args.format, Format::Png)?;
    if format == Format::Csv {
        anyhow::bail!(
            "--format csv is for vector-data checkpoints; images are png, jpeg, webp, bmp or npy"
        );
    }
    Ok(format)
}

/// --clip-x0 or --no-clip-x0 (the last given wins), else None: the checkpoint's sample.clip_x0.
fn clip_x0(args: &SampleArgs) -> Option<bool> {
    match (args.clip_x0, args.no_clip_x0) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    }
}

/// --out-dir, default `samples`.
fn out_dir(args: &SampleArgs) -> PathBuf {
    args.out_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("samples"))
}

/// The directory that gets one picture per image, unless the images go to one file (--out,
/// --grid, --format npy).
fn per_image_dir(args: &SampleArgs, format: Format) -> Option<PathBuf> {
    (args.out.is_none() && !args.grid && format.image().is_some()).then(|| out_dir(args))
}

/// Write all images as one file: --out (a picture, a grid when n > 1, or .npy; `-` is
/// stdout), or grid.<ext> / samples.npy in --out-dir. Returns the paths written.
fn write_images(
    args: &SampleArgs,
    format: Format,
    x: &candle_core::Tensor,
) -> anyhow::Result<Vec<PathBuf>> {
    let bytes = match format.image() {
        None => images::encode_npy(x)?,
        Some(encoding) => {
            let imgs = images::to_images(x)?;
            let img = if imgs.len() == 1 {
                images::upscale(&imgs[0], args.scale)
            } else {
                images::upscale(&images::grid(&imgs, args.nrow)?, args.scale)
            };
            images::encode(&img, encoding)?
        }
    };
    if let Some(p) = &args.out {
        return Ok(write_out(p, &bytes)?.into_iter().collect());
    }
    let dir = out_dir(args);
    ddpm::atomic::create_dir(&dir)?;
    let p = dir.join(match format.image() {
        Some(_) => format!("grid.{}", format.extension()),
        None => "samples.npy".to_string(),
    });
    ddpm::atomic::write(&p, &bytes)?;
    Ok(vec![p])
}
