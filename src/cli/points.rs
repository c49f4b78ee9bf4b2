//! `ddpm sample` on a vector-data checkpoint: the image-only options refused by name, and the
//! samples written in the units of the training data as CSV (default), a scatter plot (PNG, next
//! to fresh points of the true distribution when the data is a built-in generator) or .npy.

use std::path::PathBuf;

use candle_core::{Device, Tensor};

use ddpm::data::images;
use ddpm::generate::Generator;
use ddpm::points::{io, scatter, Points};
use ddpm::rng::{Purpose, Stream};

use super::output::write_out;
use super::sample::{Format, SampleArgs};

/// Side of each scatter-plot panel, in pixels.
const PANEL: u32 = 320;

/// Refuse the options that only mean something for images.
pub fn check_args(args: &SampleArgs) -> anyhow::Result<()> {
    let image_only = [
        ("--init", args.init.is_some()),
        ("--mask", args.mask.is_some()),
        ("--strength", args.strength.is_some()),
        ("--grid", args.grid),
        ("--scale", args.scale != 1),
    ];
    if let Some((flag, _)) = image_only.iter().find(|(_, set)| *set) {
        anyhow::bail!(
            "{flag} is for images, but {} is a vector-data checkpoint (it samples CSV rows)",
            args.checkpoint.display()
        );
    }
    Ok(())
}

/// The format: --format, else from --out's extension (.png, .npy), else CSV.
pub fn format(args: &SampleArgs) -> Format {
    args.format.unwrap_or_else(|| {
        let ext = args
            .out
            .as_ref()
            .and_then(|p| p.extension())
            .map(|e| e.to_ascii_lowercase());
        match ext.as_ref().and_then(|e| e.to_str()) {
            Some("png") => Format::Png,
            Some("npy") => Format::Npy,
            _ => Format::Csv,
        }
    })
}

/// Write the generated `x` (N, D) and return the files written.
pub fn write(args: &SampleArgs, gen: &Generator, x: &Tensor) -> anyhow::Result<Vec<PathBuf>> {
    let points = gen.to_points(x)?;
    let format = format(args);
    let bytes = match format {
        Format::Csv => io::to_csv(&points).into_bytes(),
        Format::Npy => {
            let flat: Vec<f32> = points.values.iter().map(|&v| v as f32).collect();
            let t = Tensor::from_vec(flat, (points.len(), points.dim), &Device::Cpu)?;
            images::encode_npy(&t)?
        }
        Format::Png => {
            let img = match truth(gen, points.len(), args.seed) {
                Some(t) => scatter::scatter(&[&t, &points], PANEL)?,
                None => scatter::scatter(&[&points], PANEL)?,
            };
            images::encode_png(&img)?
        }
    };
    let path = match (&args.out, &args.out_dir) {
        (Some(p), _) => p.clone(),
        (None, dir) => {
            let dir = dir.clone().unwrap_or_else(|| PathBuf::from("samples"));
            ddpm::atomic::create_dir(&dir)?;
            let ext = match format {
                Format::Csv => "csv",
                Format::Npy => "npy",
                Format::Png => "png",
            };
            dir.join(format!("samples.{ext}"))
        }
    };
    Ok(write_out(&path, &bytes)?.into_iter().collect())
}

/// `n` fresh points of the checkpoint's built-in distribution (the stream Eval/`seed`, apart
/// from the training set's), or None for data from a file.
fn truth(gen: &Generator, n: usize, seed: u64) -> Option<Points> {
    let data = &gen.config.data;
    let toy = data.dataset.toy()?;
    let mut stream = Stream::new(seed, Purpose::Eval, 0);
    Some(toy.sample(n, data.toy_noise(toy), &mut stream))
}
