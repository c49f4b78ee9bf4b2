//! One 3x3 convolution (padding 1, stride 1) at the shapes that dominate W1, batch 32: forward,
//! and forward + backward (gradients of input, weight and bias), candle's stock op against
//! ours (`ddpm::nn::kernels::conv2d`). FLOPs: 2 B Cout Cin 9 H W per pass, x3 with backward.
//! Also GroupNorm + SiLU (32 groups) forward and forward + backward at W1 and W3 shapes.

mod common;

use std::time::Duration;

use candle_core::{Tensor, Var};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode};
use ddpm::nn::kernels;

use common::randn;

/// (channels, height = width): 64->64 at 32x32, 128->128 at 16x16 and 8x8.
const SHAPES: [(usize, usize); 3] = [(64, 32), (128, 16), (128, 8)];
const BATCH: usize = 32;

type ConvFn = fn(&Tensor, &Tensor, &Tensor) -> Tensor;

fn candle_conv(x: &Tensor, w: &Tensor, b: &Tensor) -> Tensor {
    let y = x.conv2d(w, 1, 1, 1, 1).unwrap();
    y.broadcast_add(&b.reshape((1, (), 1, 1)).unwrap()).unwrap()
}

fn our_conv(x: &Tensor, w: &Tensor, b: &Tensor) -> Tensor {
    kernels::conv2d(x, w, b, 1, 1).unwrap()
}

fn conv(c: &mut Criterion) {
    common::setup();
    let mut g = c.benchmark_group("conv3x3");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let impls: [(&str, ConvFn); 2] = [("candle", candle_conv), ("ours", our_conv)];
    for (ch, hw) in SHAPES {
        let x = Var::from_tensor(&randn(3, 0, &[BATCH, ch, hw, hw])).unwrap();
        let w = Var::from_tensor(&(randn(3, 1, &[ch, ch, 3, 3]) * 0.05).unwrap()).unwrap();
        let b = Var::from_tensor(&randn(3, 2, &[ch])).unwrap();
        let dy = randn(3, 3, &[BATCH, ch, hw, hw]);
        let id = format!("{ch}x{hw}x{hw}");
        for (name, f) in impls {
            g.bench_function(BenchmarkId::new(format!("{name}/forward"), &id), |bch| {
                bch.iter(|| f(&x, &w, &b))
            });
            g.bench_function(
                BenchmarkId::new(format!("{name}/forward_backward"), &id),
                |bch| {
                    bch.iter(|| {
                        let y = f(&x, &w, &b);
                        (y * &dy).unwrap().sum_all().unwrap().backward().unwrap()
                    })
                },
            );
        }
    }
    g.finish();
}

fn group_norm(c: &mut Criterion) {
    let mut g = c.benchmark_group("group_norm_silu");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    // (batch, channels, height = width): W1's 64 x 32x32 and W3's 32 x 16x16 and 64 x 8x8.
    for (b, ch, hw) in [(32, 64, 32), (64, 32, 16), (64, 64, 8)] {
        let x = Var::from_tensor(&randn(4, 0, &[b, ch, hw, hw])).unwrap();
        let gamma = Var::from_tensor(&randn(4, 1, &[ch])).unwrap();
        let beta = Var::from_tensor(&randn(4, 2, &[ch])).unwrap();
        let dy = randn(4, 3, &[b, ch, hw, hw]);
        let id = format!("{b}x{ch}x{hw}x{hw}");
        let run = || kernels::group_norm(&x, &gamma, &beta, 32, 1e-5, true).unwrap();
        g.bench_function(BenchmarkId::new("ours/forward", &id), |bch| bch.iter(run));
        g.bench_function(BenchmarkId::new("ours/forward_backward", &id), |bch| {
            bch.iter(|| {
                (run() * &dy)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, conv, group_norm);
criterion_main!(benches);
