//! Loader throughput, measured not asserted: `cargo test --release --test data_throughput --
//! --ignored --nocapture`. Prints images/s for a synthetic folder of 2000 PNGs and the digits.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use ddpm::data::{self, DataConfig, DatasetKind, ImageSize, Loader, LoaderOptions};
use ddpm::rng::{Purpose, Stream};
use image::{Rgb, RgbImage};

/// 2000 noisy RGB PNGs of `side` x `side` in 10 class folders.
fn write_folder(root: &Path, side: u32) {
    let mut s = Stream::new(0, Purpose::Eval, 0);
    for i in 0..2000 {
        let base = (i * 37 % 256) as u8;
        let img = RgbImage::from_fn(side, side, |x, y| {
            let n = (s.next_u64() % 64) as u8;
            Rgb([base.wrapping_add(n), (x * 8) as u8, (y * 8) as u8])
        });
        let dir = root.join(format!("class{}", i % 10));
        std::fs::create_dir_all(&dir).unwrap();
        img.save(dir.join(format!("{i:05}.png"))).unwrap();
    }
}

/// Images per second over `steps` batches of 128 ("cold": the first pass, decoding every file;
/// "warm": ten times as many batches from the cache), counted from the loader's creation.
fn measure(label: &str, cfg: &DataConfig, steps: usize) {
    let t = Instant::now();
    let ds = data::open(cfg).unwrap();
    let open_s = t.elapsed().as_secs_f64();
    let opts = LoaderOptions::from_config(cfg, 128, 1, 0);
    for (pass, steps) in [("cold", steps), ("warm", 10 * steps)] {
        let mut loader = Loader::new(Arc::clone(&ds), opts).unwrap();
        let t = Instant::now();
        let mut n = 0;
        for batch in loader.by_ref().take(steps) {
            n += batch.unwrap().dims[0];
        }
        let s = t.elapsed().as_secs_f64();
        println!(
            "{label} ({pass}): {n} images in {s:.3} s = {:.0} images/s (open {open_s:.3} s)",
            n as f64 / s
        );
    }
}

#[test]
#[ignore = "measurement; run with --ignored --nocapture"]
fn loader_throughput() {
    let dir = tempfile::tempdir().unwrap();
    for (side, sub) in [(32, "native32"), (48, "from48")] {
        let root = dir.path().join(sub);
        write_folder(&root, side);
        let cfg = DataConfig {
            dataset: DatasetKind::Folder,
            path: Some(root),
            image_size: ImageSize::square(32),
            channels: 3,
            random_flip: true,
            class_labels: true,
            ..DataConfig::default()
        };
        // 2000 / 128 = 15.6 batches per epoch: 16 steps is one epoch, so "cold" decodes every file.
        measure(
            &format!("folder 2000 PNG {side}x{side} -> 32x32 RGB"),
            &cfg,
            16,
        );
    }
    for side in [8, 32] {
        let cfg = DataConfig {
            image_size: ImageSize::square(side),
            ..DataConfig::default()
        };
        measure(&format!("digits -> {side}x{side} luma"), &cfg, 15);
    }
}
