//! `ddpm sample` on a vector-data checkpoint: the samples written in the units of the training
//! data as CSV (default), a scatter plot (PNG, next to fresh points of the true distribution
//! when the data is a built-in generator) or .npy. Which options apply is `sample`'s to check.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use ddpm::data::images;
use ddpm::generate::Generator;
use ddpm::points::{io, scatter, Points};
use ddpm::rng::{Purpose, Stream};

use super::format::Format;
use super::output::write_out;

/// Side of each scatter-plot panel, in pixels.
const PANEL: u32 = 320;

/// Write the generated `x` (N, D) as `format` to `out` (`-` is stdout), else to
/// samples.<ext> in `out_dir` (default `samples`), and return the files written. `seed` draws
/// the true distribution's points beside a scatter plot.
pub fn write(
    gen: &Generator,
    x: &Tensor,
    format: Format,
    out: Option<&Path>,
    out_dir: Option<&Path>,
    seed: u64,
) -> anyhow::Result<Vec<PathBuf>> {
    let points = gen.to_points(x)?;
    let bytes = match format {
        Format::Csv => io::to_csv(&points).into_bytes(),
        Format::Npy => {
            let flat: Vec<f32> = points.values.iter().map(|&v| v as f32).collect();
            let t = Tensor::from_vec(flat, (points.len(), points.dim), &Device::Cpu)?;
            images::encode_npy(&t)?
        }
        Format::Png | Format::Jpeg | Format::Webp | Format::Bmp => {
            let img = match truth(gen, points.len(), seed) {
                Some(t) => scatter::scatter(&[("data", &t), ("samples", &points)], PANEL)?,
                None => scatter::scatter(&[("samples", &points)], PANEL)?,
            };
            images::encode(&img, format.image().unwrap_or(image::ImageFormat::Png))?
        }
    };
    let path = match out {
        Some(p) => p.to_path_buf(),
        None => {
            let dir = out_dir.map_or_else(|| PathBuf::from("samples"), Path::to_path_buf);
            ddpm::atomic::create_dir(&dir)?;
            dir.join(format!("samples.{}", format.extension()))
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
