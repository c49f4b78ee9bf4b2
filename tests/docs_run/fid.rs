//! What a `ddpm fid` line reads and the docs never made. The Inception weights are drawn from
//! a seed (pytorch-fid's 91 MB file is the user's download; the seeded network is the same
//! code with other numbers, as tests/fid.rs uses it), a missing folder of images gets three
//! small images, a missing `.npy` array is written by `ddpm sample --format npy`, missing `.npz`
//! statistics by `ddpm fid --save-stats` of three images; checkpoints come from the sandbox.

use std::path::{Path, PathBuf};

use candle_core::Device;
use ddpm::fid::seeded::{self, TEST_SEED};

/// The seeded weights, under the sandbox; `DDPM_INCEPTION` names them for every line.
pub const WEIGHTS: &str = ".fixtures/inception.safetensors";

/// Flags of `ddpm fid` that take no value.
const SWITCHES: &[&str] = &["--kid", "--json", "--quiet", "--no-ema"];

/// The sets (positional arguments) of a `ddpm fid` invocation (`ddpm fid ...`).
pub fn sets(args: &[String]) -> Vec<&str> {
    let mut out = Vec::new();
    let mut k = 2;
    while k < args.len() {
        let a = &args[k];
        if a.starts_with('-') {
            let takes_value = !a.contains('=') && !SWITCHES.contains(&a.as_str());
            k += if takes_value { 2 } else { 1 };
            continue;
        }
        out.push(a.as_str());
        k += 1;
    }
    out
}

/// The seeded weights at `dir/WEIGHTS`, drawn once per sandbox.
pub fn weights(dir: &Path) -> PathBuf {
    let path = dir.join(WEIGHTS);
    if !path.exists() {
        let (_, drawn) = seeded::network(TEST_SEED, &Device::Cpu).unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        candle_core::safetensors::save(&drawn, &path).unwrap();
    }
    path
}

/// Three different 12x12 colour images in the folder `dir`.
pub fn image_folder(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for k in 0..3u32 {
        image::RgbImage::from_fn(12, 12, |x, y| {
            image::Rgb([
                (x * 20 + k * 60) as u8,
                (y * 20 + k * 30) as u8,
                ((x + y) * 10 * (k + 1)) as u8,
            ])
        })
        .save(dir.join(format!("{k}.png")))
        .unwrap();
    }
}
