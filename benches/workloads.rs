//! The reference workloads end to end, timed the way benches/reference/bench.py times PyTorch
//! (as ../shared/bench/ref_bench.py did before it), so the two print comparable JSON lines: W1/W3 = warm-up steps, then the median of
//! timed AdamW training steps (L_simple forward + backward + update); W2 = one whole 50-step
//! DDIM sampling of 16 images; W4 = 100 ancestral steps of the 1000, scaled x10. Each workload
//! runs in its own child process so peak RSS (VmHWM) is per workload.
//!
//! `cargo bench --bench workloads -- W1 W3` (default: all four). Not a criterion bench.

mod common;

use std::process::Command;
use std::time::Instant;

use candle_core::Device;
use ddpm::diffusion::Parameterization;
use ddpm::named::named_vars;
use ddpm::nn::kernels::{on_pool, with_candle_ops};
use ddpm::nn::shard;
use ddpm::optim::{AdamW, OptimConfig};
use ddpm::rng::{BatchNoise, Purpose};
use ddpm::sampler::{sample, Ancestral, Context, SampleOptions, SamplerKind, Stepper};
use ddpm::schedule::Spacing;

use common::{build, data_batch, draws, l_simple_part, randn, schedule, w1, w3, Workload};

/// Counted GFLOP per image (REFERENCE.md: conv/matmul only): W1 train 8.67, W2 50 x 2.89,
/// W3 train 0.368, W4 1000 x 0.123.
fn gflop_per_image(name: &str) -> f64 {
    match name {
        "W1" => 8.67,
        "W2" => 50.0 * 2.89,
        "W3" => 0.368,
        _ => 1000.0 * 0.123,
    }
}

/// Busy jiffies of the whole machine and CPU jiffies of this process.
fn cpu_snapshot() -> (Instant, f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let busy = v.iter().sum::<f64>() - v.get(3).unwrap_or(&0.0) - v.get(4).unwrap_or(&0.0);
    let own = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = own
        .rsplit_once(')')
        .map_or("", |(_, r)| r)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|x| x.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime, stime are fields 14 and 15 of /proc/pid/stat (11 and 12 after the command name).
    (
        Instant::now(),
        busy / 100.0,
        (ticks(11) + ticks(12)) / 100.0,
    )
}

/// Cores other processes kept busy between two snapshots (~0 on a quiet machine).
fn other_cores(a: (Instant, f64, f64), b: (Instant, f64, f64)) -> f64 {
    ((b.1 - a.1) - (b.2 - a.2)).max(0.0) / (b.0 - a.0).as_secs_f64()
}

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// Seconds per training step, each timed step = L_simple forward + backward + AdamW.
fn train(w: &Workload, warmup: usize, timed: usize) -> (Vec<f64>, (Instant, f64, f64)) {
    let (varmap, unet) = build(w, 0);
    let sched = schedule();
    let x0 = data_batch(w, 1);
    let cfg = OptimConfig {
        warmup_steps: 0,
        grad_clip: None,
        // torch.optim.AdamW's default, so both sides do the same work.
        weight_decay: 0.01,
        ..OptimConfig::default()
    };
    let mut opt = AdamW::new(&named_vars(&varmap).unwrap(), cfg).unwrap();
    let mut times = Vec::new();
    let mut snap = cpu_snapshot();
    for step in 0..warmup + timed {
        if step == warmup {
            snap = cpu_snapshot();
        }
        let t0 = Instant::now();
        // As `ddpm train` does it: the batch in shards (one per thread), gradients weighted.
        let b = x0.dim(0).unwrap();
        let ranges = shard::ranges(b, shard::count(b, &Device::Cpu));
        let d = draws(&sched, &x0, step as u64);
        let shards = shard::run(&ranges, |_, r| {
            let loss = l_simple_part(&unet, &d, r.clone());
            Ok((loss.backward()?, r.len() as f64 / b as f64))
        })
        .unwrap();
        let mut acc = opt.accumulator();
        for (g, weight) in &shards {
            acc.add_weighted(g, *weight).unwrap();
        }
        opt.step(&acc.finish().unwrap(), 2e-4).unwrap();
        if step >= warmup {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    (times, snap)
}

/// Seconds of one whole 50-step DDIM sampling of w.batch images (after 2 warm-up forwards).
fn ddim(w: &Workload) -> (Vec<f64>, (Instant, f64, f64)) {
    let (_varmap, unet) = build(w, 0);
    let x = randn(5, 0, &w.dims());
    for _ in 0..2 {
        ddpm::denoiser::Denoiser::forward(&unet, &x, &vec![999; w.batch]).unwrap();
    }
    let opts = SampleOptions {
        sampler: SamplerKind::Ddim,
        steps: 50,
        spacing: Spacing::Leading,
        eta: 0.0,
        clip_x0: true,
        ..SampleOptions::default()
    };
    let snap = cpu_snapshot();
    let t0 = Instant::now();
    sample(
        &unet,
        &schedule(),
        Parameterization::default(),
        &opts,
        &w.dims(),
        &Device::Cpu,
        &mut |_| Ok(()),
    )
    .unwrap();
    (vec![t0.elapsed().as_secs_f64()], snap)
}

/// Seconds of `steps` ancestral steps from x_T (after 3 warm-up steps), w.batch images.
fn ancestral(w: &Workload, steps: usize) -> (Vec<f64>, (Instant, f64, f64)) {
    let (_varmap, unet) = build(w, 0);
    let sched = schedule();
    let ctx = Context {
        model: &unet,
        schedule: &sched,
        param: Parameterization::default(),
        clip_x0: true,
    };
    let mut noise = BatchNoise::new(0, Purpose::SampleNoise, 0, w.batch);
    let mut x = noise.randn(&w.dims()[1..], &Device::Cpu).unwrap();
    let mut stepper = Ancestral;
    let last = sched.len() - 1;
    for i in 0..3 {
        stepper.step(&ctx, last - i, &x, &mut noise).unwrap();
    }
    let snap = cpu_snapshot();
    let t0 = Instant::now();
    for i in 0..steps {
        x = stepper.step(&ctx, last - i, &x, &mut noise).unwrap().x;
    }
    (vec![t0.elapsed().as_secs_f64()], snap)
}

/// One workload in this process: prints its JSON line.
fn child(name: &str, candle: bool) {
    let (kind, w) = match name {
        "W1" => ("train", w1(32)),
        "W2" => ("ddim", w1(16)),
        "W3" => ("train", w3(64)),
        _ => ("ddpm", w3(64)),
    };
    let run = || match name {
        "W1" => train(&w, 2, 6),
        "W3" => train(&w, 5, 30),
        "W2" => ddim(&w),
        _ => ancestral(&w, 100),
    };
    // As the binary does: the whole workload on the CPU pool's first thread.
    let (mut times, snap) = on_pool(|| if candle { with_candle_ops(run) } else { run() });
    let other = other_cores(snap, cpu_snapshot());
    let (min, max) = (
        times.iter().cloned().fold(f64::MAX, f64::min),
        times.iter().cloned().fold(0.0, f64::max),
    );
    let med = median(&mut times);
    // Seconds for the whole unit of work: one step (train), or the whole sampling.
    let (unit, step_ms) = match kind {
        "train" => (med, med * 1e3),
        "ddim" => (med, med / 50.0 * 1e3),
        _ => (med * 10.0, med / 100.0 * 1e3),
    };
    let ips = w.batch as f64 / unit;
    println!(
        "{{\"workload\": \"{name}\", \"impl\": \"{}\", \"batch\": {}, \"threads\": {}, \"images_per_s\": {ips:.4}, \"step_ms_median\": {step_ms:.2}, \"step_ms_min\": {:.2}, \"step_ms_max\": {:.2}, \"timed\": {}, \"gflops_per_s\": {:.1}, \"peak_rss_mb\": {:.1}, \"other_load_cores\": {other:.3}}}",
        if candle { "ddpm-candle-ops" } else { "ddpm" },
        w.batch,
        candle_core::utils::get_num_threads(),
        min * 1e3,
        max * 1e3,
        times.len(),
        ips * gflop_per_image(name),
        peak_rss_mb(),
    );
}

fn main() {
    common::setup();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        let name = args.get(i + 1).map_or("W1", String::as_str);
        child(name, args.iter().any(|a| a == "--candle"));
        return;
    }
    let mut names: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| ["W1", "W2", "W3", "W4"].contains(a))
        .collect();
    if names.is_empty() {
        names = vec!["W1", "W2", "W3", "W4"];
    }
    let candle = args.iter().any(|a| a == "--candle");
    let exe = std::env::current_exe().unwrap();
    for name in names {
        let mut cmd = Command::new(&exe);
        cmd.args(["--child", name]);
        if candle {
            cmd.arg("--candle");
        }
        let out = cmd.output().unwrap();
        print!("{}", String::from_utf8_lossy(&out.stdout));
        if !out.status.success() {
            eprint!("{}", String::from_utf8_lossy(&out.stderr));
        }
    }
}
