//! The 2-D configs measured: each of configs/{moons,swiss_roll,8gaussians}.toml trained in
//! process (release), 2000 samples drawn with DDPM (all T steps) and DDIM-50, and the energy
//! distance of each to 2000 fresh points of the true distribution, next to the null level: the
//! energy distance between two independent true samples of that size (mean and largest of 20).
//! Also writes the README's scatter plots, configs/<name>.png: 2000 true points (left) and the
//! 2000 DDPM samples (right), drawn by `points::scatter` as `ddpm sample --format png` draws them.
//!
//! `cargo bench --bench points -- [moons] [swiss_roll] [8gaussians]` (default: all three).
//! Not a criterion bench: it prints one line per config.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device};
use ddpm::config::Config;
use ddpm::data::images;
use ddpm::generate::{self, Generator, Request};
use ddpm::points::{energy_distance, scatter, Points};
use ddpm::rng::{Purpose, Stream};
use ddpm::sampler::SamplerKind;
use ddpm::train::{self, TrainOptions};

const N: usize = 2000;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let names: Vec<&str> = ["moons", "swiss_roll", "8gaussians"]
        .into_iter()
        .filter(|n| args.is_empty() || args.iter().any(|a| a == n))
        .collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for name in names {
        let cfg = Config::load(&root.join(format!("configs/{name}.toml")), &[]).unwrap();
        let toy = cfg.data.dataset.toy().unwrap();
        let noise = cfg.data.toy_noise(toy);
        let truth = |k: u64| toy.sample(N, noise, &mut Stream::new(1234, Purpose::Eval, k));
        let reference = truth(0);
        let null: Vec<f64> = (1..=20)
            .map(|k| energy_distance(&reference, &truth(k)).unwrap())
            .collect();
        let null_mean = null.iter().sum::<f64>() / null.len() as f64;
        let null_max = null.iter().copied().fold(f64::MIN, f64::max);

        let dir = tempfile::tempdir().unwrap();
        let clock = Instant::now();
        let opts = TrainOptions {
            run_dir: dir.path().to_path_buf(),
            resume: false,
            init_from: None,
            max_steps: None,
            interrupt: Arc::new(AtomicBool::new(false)),
        };
        let summary = train::train(&cfg, &Device::Cpu, &opts, &mut |_| Ok(())).unwrap();
        let train_s = clock.elapsed().as_secs_f64();
        let gen = Generator::load(&summary.checkpoint, true, DType::F32, &Device::Cpu).unwrap();
        let draw = |sampler: SamplerKind| -> (Points, f64) {
            let clock = Instant::now();
            let opts = generate::sample_options(&gen.config, sampler, 1);
            let req = Request::new(N, N);
            let x = gen.generate(&opts, &req, &mut |_, _, _, _| Ok(())).unwrap();
            (gen.to_points(&x).unwrap(), clock.elapsed().as_secs_f64())
        };
        let (ddpm, ddpm_s) = draw(SamplerKind::Ddpm);
        let (ddim, ddim_s) = draw(SamplerKind::Ddim);
        let e_ddpm = energy_distance(&ddpm, &reference).unwrap();
        let e_ddim = energy_distance(&ddim, &reference).unwrap();
        println!(
            "{name}: energy distance at N={N}: DDPM-{} {e_ddpm:.4}, DDIM-50 {e_ddim:.4}; null \
             mean {null_mean:.4}, max of 20 {null_max:.4}; train {train_s:.0} s ({} steps), \
             sample {ddpm_s:.1} s / {ddim_s:.1} s; final loss {:.3}",
            cfg.diffusion.timesteps, summary.step, summary.final_loss
        );
        let img = scatter::scatter(&[("data", &reference), ("samples", &ddpm)], 240).unwrap();
        images::save_png(&img, &root.join(format!("configs/{name}.png"))).unwrap();
    }
}
