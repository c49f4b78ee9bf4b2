//! The UNet at the reference workloads' shapes: forward (eval) and forward + backward of
//! L_simple at W1 (3x32x32, batch 32) and W3 (1x16x16, batch 64), as one batch with parallel
//! kernels and as `ddpm train` runs it (one shard per thread, `ours_sharded_forward_backward`);
//! one DDIM step at W2 (batch 16);
//! one ancestral step at W4 (batch 64); one AdamW update of W1's 6.5M parameters. Seeded, few
//! samples. `candle_forward_backward` is the same step on candle's own ops (the "before"):
//! `cargo bench --bench unet -- ours` skips it and takes about a minute.

mod common;

use std::time::Duration;

use candle_core::Device;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode};
use ddpm::diffusion::Parameterization;
use ddpm::named::named_vars;
use ddpm::nn::kernels::with_candle_ops;
use ddpm::nn::shard;
use ddpm::optim::{AdamW, OptimConfig};
use ddpm::rng::{BatchNoise, Purpose};
use ddpm::sampler::{Ancestral, Context, Ddim, Stepper};
use ddpm::schedule::Spacing;

use common::{
    build, data_batch, draws, l_simple, l_simple_part, randn, schedule, w1, w3, Workload,
};

fn forward_and_backward(c: &mut Criterion, w: &Workload) {
    let mut g = c.benchmark_group(format!("unet/{}", w.name));
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    let (_varmap, unet) = build(w, 0);
    let sched = schedule();
    let x0 = data_batch(w, 1);
    let x = randn(1, 0, &w.dims());
    let t: Vec<usize> = (0..w.batch).map(|i| (i * 37) % 1000).collect();
    g.bench_function(BenchmarkId::new("ours_forward", w.batch), |b| {
        b.iter(|| unet.forward(&x, &t, None, None).unwrap())
    });
    let mut step = 0;
    g.bench_function(BenchmarkId::new("ours_forward_backward", w.batch), |b| {
        b.iter(|| {
            step += 1;
            l_simple(&unet, &sched, &x0, step).backward().unwrap()
        })
    });
    g.bench_function(
        BenchmarkId::new("ours_sharded_forward_backward", w.batch),
        |b| {
            b.iter(|| {
                step += 1;
                let d = draws(&sched, &x0, step);
                let ranges = shard::ranges(w.batch, shard::count(w.batch, &Device::Cpu));
                shard::run(&ranges, |_, r| Ok(l_simple_part(&unet, &d, r).backward()?)).unwrap()
            })
        },
    );
    g.bench_function(BenchmarkId::new("candle_forward_backward", w.batch), |b| {
        b.iter(|| {
            step += 1;
            with_candle_ops(|| l_simple(&unet, &sched, &x0, step).backward().unwrap())
        })
    });
    g.finish();
}

fn sampler_steps(c: &mut Criterion) {
    let mut g = c.benchmark_group("unet/sample_step");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    let sched = schedule();
    let cases: [(Workload, Box<dyn Stepper>, usize); 2] = [
        (w1(16), Box::new(Ddim::default()), 50),
        (w3(64), Box::new(Ancestral), 1000),
    ];
    for (w, mut stepper, steps) in cases {
        let (_varmap, unet) = build(&w, 0);
        let respaced = sched.for_sampling(steps, Spacing::Leading).unwrap();
        let ctx = Context {
            model: &unet,
            schedule: &respaced,
            param: Parameterization::default(),
            clip_x0: true,
        };
        let x = randn(2, 0, &w.dims());
        let mut noise = BatchNoise::new(0, Purpose::SampleNoise, 0, w.batch);
        let name = if steps == 50 {
            "ours_W2_ddim"
        } else {
            "ours_W4_ancestral"
        };
        // A middle step: the same work as any other.
        let i = steps / 2;
        g.bench_function(BenchmarkId::new(name, w.batch), |b| {
            b.iter(|| stepper.step(&ctx, i, &x, &mut noise).unwrap())
        });
    }
    g.finish();
}

fn optimizer_step(c: &mut Criterion) {
    let mut g = c.benchmark_group("unet/adamw");
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    let w = w1(4);
    let (varmap, unet) = build(&w, 0);
    let grads = l_simple(&unet, &schedule(), &data_batch(&w, 1), 0)
        .backward()
        .unwrap();
    let cfg = OptimConfig {
        warmup_steps: 0,
        grad_clip: None,
        ..OptimConfig::default()
    };
    let mut opt = AdamW::new(&named_vars(&varmap).unwrap(), cfg).unwrap();
    g.bench_function("ours_W1_params", |b| {
        b.iter(|| opt.step(&grads, 2e-4).unwrap())
    });
    g.finish();
}

fn benches(c: &mut Criterion) {
    common::setup();
    forward_and_backward(c, &w1(32));
    forward_and_backward(c, &w3(64));
    sampler_steps(c);
    optimizer_step(c);
}

criterion_group!(unet, benches);
criterion_main!(unet);
