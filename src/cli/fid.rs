//! `ddpm fid`: the Fréchet Inception Distance (and with --kid the Kernel Inception Distance)
//! between two sets of images, each a folder, a .npy array, a pytorch-fid statistics file or a
//! checkpoint sampled on the fly; --save-stats writes the first set's statistics in
//! pytorch-fid's format.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::Context;
use clap::Args;

use ddpm::device::{self, DeviceSpec};
use ddpm::fid::inception::Inception;
use ddpm::fid::inputs::{self, Array, Input};
use ddpm::fid::kid::{self, DEFAULT_SUBSETS, DEFAULT_SUBSET_SIZE};
use ddpm::fid::stats::{self, Features, Statistics};
use ddpm::fid::{npz, weights};
use ddpm::generate::{self, Generator, Request};
use ddpm::sampler::SamplerKind;

use super::output::{check_out_folder, stdout_line};
use super::progress::Progress;
use super::signals::interrupt_flag;

pub const EXAMPLES: &str = "\
Examples:
  ddpm fid samples/ cifar10-train/ --inception pt_inception-2015-12-05-6726825d.pth
  ddpm fid cifar10-train/ --save-stats cifar10-train.npz
  ddpm fid runs/cifar10/latest.safetensors cifar10-train.npz -n 10000 --sampler ddim --steps 50
  ddpm fid samples.npy real/ --kid --json

The Inception weights are pytorch-fid's file (--inception, or the DDPM_INCEPTION environment
variable); ddpm never downloads them. Images are prepared as pytorch-fid does (RGB, bilinear
resize to 299x299). A checkpoint is sampled with its [sample] settings (EMA weights,
unconditional) and its images quantised as their PNG files would be; nothing is written.
A .npy array holds images ((N, C, H, W) or (N, H, W, C) uint8, or floats in [-1, 1] as
`ddpm sample --format npy` writes) or features (N, D). stdout: `FID x`, `KID x ± s`, the
--save-stats path, or one JSON line with --json.";

/// `ddpm fid`
#[derive(Args, Debug)]
pub struct FidArgs {
    /// The first set: a folder of images, a .npy array, a pytorch-fid .npz or a checkpoint.
    pub a: PathBuf,
    /// The second set (same kinds); optional with --save-stats.
    pub b: Option<PathBuf>,
    /// pytorch-fid's Inception weights (pt_inception-2015-12-05-6726825d.pth, or a safetensors
    /// conversion) [default: $DDPM_INCEPTION].
    #[arg(long)]
    pub inception: Option<PathBuf>,
    /// Images per Inception batch.
    #[arg(long, default_value_t = 50)]
    pub batch_size: usize,
    /// Write the first set's statistics (mu, sigma) here in pytorch-fid's .npz format.
    #[arg(long)]
    pub save_stats: Option<PathBuf>,
    /// Also compute KID (needs features on both sides, not statistics files).
    #[arg(long)]
    pub kid: bool,
    /// KID: random subsets per side.
    #[arg(long, default_value_t = DEFAULT_SUBSETS)]
    pub kid_subsets: usize,
    /// KID: images per subset (at most the smaller side's count).
    #[arg(long, default_value_t = DEFAULT_SUBSET_SIZE)]
    pub kid_subset_size: usize,
    /// Images to sample from a checkpoint (required when a side is a checkpoint).
    #[arg(short = 'n', long = "num")]
    pub n: Option<usize>,
    /// Sampler for a checkpoint side [default: its sample.sampler].
    #[arg(long)]
    pub sampler: Option<SamplerKind>,
    /// Denoising steps for a checkpoint side [default: its sample.steps].
    #[arg(long)]
    pub steps: Option<usize>,
    /// Seed of the sampling noise and of the KID subsets.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
    /// No progress.
    #[arg(long, short)]
    pub quiet: bool,
    /// Print one JSON line instead of the text lines.
    #[arg(long)]
    pub json: bool,
}

/// One measured side: its statistics, and its features when it had images.
struct Side {
    input: Input,
    features: Option<Features>,
    stats: Statistics,
    images: usize,
    seconds: f64,
}

pub fn run(args: FidArgs) -> anyhow::Result<()> {
    let inputs: Vec<Input> = std::iter::once(&args.a)
        .chain(&args.b)
        .map(|p| Input::classify(p))
        .collect::<Result<_, _>>()?;
    if inputs.len() == 1 && args.save_stats.is_none() {
        anyhow::bail!(
            "give two sets to compare, or --save-stats FILE to save the first's statistics"
        );
    }
    if args.kid {
        if let Some(Input::Stats(p)) = inputs.iter().find(|i| matches!(i, Input::Stats(_))) {
            anyhow::bail!(
                "--kid needs the images or features of both sets; {} holds only statistics",
                p.display()
            );
        }
    }
    if let Some(p) = &args.save_stats {
        check_out_folder("--save-stats", p)?;
    }
    if inputs.iter().any(|i| matches!(i, Input::Checkpoint(_))) && args.n.is_none() {
        anyhow::bail!("-n is required when a set is a checkpoint: how many images to sample");
    }
    // A missing weights file fails before any other output when a side is sure to need it.
    if inputs
        .iter()
        .any(|i| matches!(i, Input::Folder(_) | Input::Checkpoint(_)))
    {
        weights::locate(args.inception.as_deref())?;
    }
    let (device, notice) = device::resolve(args.device)?;
    if let Some(n) = notice.filter(|_| !args.quiet) {
        eprintln!("ddpm: {n}");
    }
    // The network is loaded when a side has images (not for statistics or feature arrays).
    let mut net: Option<Inception> = None;
    let clock = Instant::now();
    let mut sides = Vec::new();
    for input in inputs {
        let started = Instant::now();
        let features = match &input {
            Input::Stats(p) => {
                let stats = npz::read_stats(p)?;
                sides.push(Side {
                    input,
                    features: None,
                    stats,
                    images: 0,
                    seconds: 0.0,
                });
                continue;
            }
            Input::Folder(root) => {
                let net = network(&mut net, &args, &device)?;
                with_progress(&args, root, |p| {
                    inputs::folder_features(net, root, args.batch_size, p)
                })?
            }
            Input::Array(p) => match inputs::read_array(p)? {
                Array::Features(f) => f,
                Array::Images(images) => {
                    let net = network(&mut net, &args, &device)?;
                    with_progress(&args, p, |pr| {
                        inputs::array_features(net, &images, args.batch_size, pr)
                    })?
                }
            },
            Input::Checkpoint(p) => {
                let net = network(&mut net, &args, &device)?;
                sample_features(&args, net, p)?
            }
        };
        let stats = Statistics::from_features(&features)
            .with_context(|| format!("{}", path_of(&input).display()))?;
        let images = features.n;
        sides.push(Side {
            input,
            features: Some(features),
            stats,
            images,
            seconds: started.elapsed().as_secs_f64(),
        });
    }

    if let Some(p) = &args.save_stats {
        npz::write_stats(p, &sides[0].stats)?;
        if !args.json {
            stdout_line(&p.display().to_string())?;
        }
    }
    let fid = match &sides[..] {
        [a, b] => Some(stats::frechet_distance(&a.stats, &b.stats)?),
        _ => None,
    };
    let kid = match (&sides[..], args.kid) {
        ([a, b], true) => match (&a.features, &b.features) {
            (Some(fa), Some(fb)) => Some(kid::kid(
                fa,
                fb,
                args.kid_subsets,
                args.kid_subset_size,
                args.seed,
            )?),
            _ => None,
        },
        _ => None,
    };
    if args.json {
        let json = serde_json::json!({
            "command": "fid",
            "fid": fid,
            "kid": kid.map(|k| k.mean),
            "kid_std": kid.map(|k| k.std),
            "kid_subsets": kid.map(|k| k.subsets),
            "kid_subset_size": kid.map(|k| k.subset_size),
            "dims": sides[0].stats.dim,
            "sides": sides.iter().map(|s| serde_json::json!({
                "path": path_of(&s.input).display().to_string(),
                "images": s.images,
                "seconds": s.seconds,
            })).collect::<Vec<_>>(),
            "save_stats": args.save_stats.as_ref().map(|p| p.display().to_string()),
            "seconds": clock.elapsed().as_secs_f64(),
            "device": device::name(&device),
        });
        stdout_line(&json.to_string())?;
    } else {
        if let Some(fid) = fid {
            stdout_line(&format!("FID {fid:.6}"))?;
        }
        if let Some(k) = kid {
            stdout_line(&format!("KID {:.8} ± {:.8}", k.mean, k.std))?;
        }
    }
    Ok(())
}

/// The Inception network, loaded from --inception or $DDPM_INCEPTION on first use.
fn network<'a>(
    slot: &'a mut Option<Inception>,
    args: &FidArgs,
    device: &candle_core::Device,
) -> anyhow::Result<&'a Inception> {
    if slot.is_none() {
        let path = weights::locate(args.inception.as_deref())?;
        let mut src = weights::FileSource::open(&path)?;
        *slot = Some(Inception::new(&mut src, device)?);
    }
    slot.as_ref().context("the Inception network is loaded")
}

fn path_of(input: &Input) -> &Path {
    match input {
        Input::Folder(p) | Input::Array(p) | Input::Stats(p) | Input::Checkpoint(p) => p,
    }
}

/// Run an extraction with a progress bar over its images (created at its first report, when
/// the total is known); Ctrl-C stops it with exit 130.
fn with_progress<T>(
    args: &FidArgs,
    what: &Path,
    f: impl FnOnce(inputs::Progress) -> ddpm::Result<T>,
) -> anyhow::Result<T> {
    let interrupt = interrupt_flag()?;
    let mut bar: Option<Progress> = None;
    let result = f(&mut |done, total| {
        if interrupt.load(Ordering::Relaxed) {
            return Err(ddpm::Error::Stopped);
        }
        let bar = bar.get_or_insert_with(|| Progress::new(total as u64, "images", args.quiet));
        bar.update(done as u64, || what.display().to_string());
        bar.line(false, || {
            format!("fid: {}: {done}/{total} images", what.display())
        });
        Ok(())
    });
    if let Some(bar) = &bar {
        bar.finish();
    }
    Ok(result?)
}

/// -n images sampled from the checkpoint `path` with its [sample] settings (or --sampler,
/// --steps), their features computed batch by batch as they come.
fn sample_features(args: &FidArgs, net: &Inception, path: &Path) -> anyhow::Result<Features> {
    let n = args.n.context("-n is required with a checkpoint")?;
    let gen = Generator::load(path, true, candle_core::DType::F32, net.device())?;
    if gen.is_points() {
        anyhow::bail!("{}: a vector-data model; FID is for images", path.display());
    }
    let cfg = &gen.config;
    let mut opts =
        generate::sample_options(cfg, args.sampler.unwrap_or(cfg.sample.sampler), args.seed);
    if let Some(k) = args.steps {
        opts.steps = k;
    }
    opts.validate(gen.schedule.len())?;
    let req = Request::new(n, cfg.sample.batch_size);
    let steps = gen.steps_per_batch(&opts, &req.start)?;
    let total = (n.div_ceil(req.batch_size.max(1)) * steps) as u64;
    let progress = RefCell::new(Progress::new(total, "steps", args.quiet));
    let interrupt = interrupt_flag()?;
    let mut data = Vec::new();
    gen.generate_batches(
        &opts,
        &req,
        &mut |done, n, step, steps| {
            if interrupt.load(Ordering::Relaxed) {
                return Err(ddpm::Error::Stopped);
            }
            let mut p = progress.borrow_mut();
            p.update(
                (done.div_ceil(req.batch_size) * steps + step) as u64,
                || format!("sampling image {}/{n}", (done + 1).min(n)),
            );
            p.line(false, || {
                format!("fid: sampling, batch from image {done} of {n}, step {step}/{steps}")
            });
            Ok(())
        },
        &mut |_, x| -> anyhow::Result<()> {
            let images = inputs::tensor_images(&x)?;
            data.extend(inputs::image_features(net, &images)?);
            Ok(())
        },
    )?;
    progress.borrow().finish();
    Ok(Features::new(data, ddpm::fid::inception::FEATURES)?)
}
