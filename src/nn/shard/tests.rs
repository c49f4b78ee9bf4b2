//! Shards against the whole batch: the ranges tile the batch, a sharded forward equals one
//! forward, and the size-weighted shard gradients equal the batch gradient, on a small UNet
//! with every weight nonzero (so every parameter's gradient is tested). Gradient tolerance
//! 1e-4 of each tensor's scale, as the kernel tests; measured worst: 1.6e-5 (2 shards).

use candle_core::{Device, Tensor};
use candle_nn::VarMap;

use super::*;
use crate::error::Error;
use crate::nn::UNet;
use crate::optim::GradAccumulator;
use crate::rng::{Purpose, Stream};
use crate::testing::{max_abs, max_abs_diff};

fn randn(index: u64, dims: &[usize]) -> Tensor {
    Stream::new(5, Purpose::Eval, index)
        .randn(dims, &Device::Cpu)
        .unwrap()
}

/// The kernel tests' model (every weight live) with 10 classes.
fn unet() -> (VarMap, UNet) {
    crate::nn::testing::seeded_tiny_unet(Some(10))
}

/// max |a - b| / max(max |b|, floor). The floor (1e-3 of the largest gradient, for gradients)
/// covers those that are zero in exact arithmetic (attention's key bias: softmax ignores it),
/// which come out as ~1e-10 of rounding noise.
fn max_rel(a: &Tensor, b: &Tensor, floor: f32) -> f32 {
    max_abs_diff(a, b) / max_abs(b).max(floor)
}

#[test]
fn ranges_tile_the_batch_in_order() {
    for batch in [1, 2, 5, 64, 65] {
        for shards in 1..=8 {
            let r = ranges(batch, shards);
            assert_eq!(r.len(), shards);
            assert_eq!(r[0].start, 0);
            assert_eq!(r[shards - 1].end, batch);
            for w in r.windows(2) {
                assert_eq!(w[0].end, w[1].start);
            }
            let sizes: Vec<usize> = r.iter().map(|r| r.len()).collect();
            let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
            assert!(hi - lo <= 1, "{batch} in {shards}: {sizes:?}");
        }
    }
    assert_eq!(ranges(64, 2), vec![0..32, 32..64]);
}

#[test]
fn count_is_one_per_thread_unless_candles_pool_is_on_or_inside_a_shard() {
    // A test process keeps candle's pool unless CANDLE_NUM_THREADS=1 or RAYON_NUM_THREADS=1
    // is set (no configure_cpu here): then it is never sharded.
    let threads = kernels::threads();
    let want = |batch: usize| {
        if candle_pool_on() {
            1
        } else {
            threads.min(batch)
        }
    };
    for batch in [1, 2, 64] {
        assert_eq!(count(batch, &Device::Cpu), want(batch), "batch {batch}");
    }
    assert_eq!(
        run(&ranges(4, 2), |_, _| Ok(count(64, &Device::Cpu))).unwrap(),
        [1, 1]
    );
}

#[test]
fn run_keeps_shard_order_and_returns_the_first_error() {
    let out = run(&ranges(10, 4), |k, r| Ok((k, r))).unwrap();
    assert_eq!(out, vec![(0, 0..2), (1, 2..5), (2, 5..7), (3, 7..10)]);
    let err = run(&ranges(10, 4), |k, _| {
        if k >= 2 {
            Err(Error::Invalid(format!("shard {k}")))
        } else {
            Ok(k)
        }
    });
    assert!(matches!(err, Err(Error::Invalid(m)) if m == "shard 2"));
}

#[test]
fn sharded_forward_equals_one_forward() {
    let (_vars, net) = unet();
    let net = net.detached();
    let x = randn(1, &[5, 1, 8, 8]);
    let t = [3, 999, 0, 500, 42];
    let y = [0, 9, 10, 4, 4];
    let whole = net.forward(&x, &t, Some(&y), None).unwrap();
    for shards in [2, 3, 5] {
        let parts = map_batch(&x, &t, Some(&y), shards, |x, t, y| {
            net.forward(x, t, y, None)
        })
        .unwrap();
        assert_eq!(parts.dims(), whole.dims());
        let rel = max_rel(&parts, &whole, 1e-30);
        assert!(rel < 1e-5, "{shards} shards: max relative difference {rel}");
    }
    // A wrong assembly (shards swapped) is far off: the comparison can fail.
    let swapped = Tensor::cat(
        &[
            whole.narrow(0, 1, 4).unwrap(),
            whole.narrow(0, 0, 1).unwrap(),
        ],
        0,
    )
    .unwrap();
    assert!(max_rel(&swapped, &whole, 1e-30) > 1e-2);
}

#[test]
fn weighted_shard_gradients_equal_the_batch_gradient() {
    let (vars, net) = unet();
    let x = randn(2, &[7, 1, 8, 8]);
    let target = randn(3, &[7, 1, 8, 8]);
    let t = [1, 20, 300, 999, 7, 640, 55];
    let y = [1, 2, 3, 4, 10, 6, 7];
    // Mean squared error over the examples r: one shard's mean loss.
    let loss = |r: std::ops::Range<usize>| -> Result<Tensor> {
        let (lo, n) = (r.start, r.len());
        let out = net.forward(&x.narrow(0, lo, n)?, &t[r.clone()], Some(&y[r]), None)?;
        Ok((out - target.narrow(0, lo, n)?)?.sqr()?.mean_all()?)
    };
    let params: Vec<Tensor> = vars
        .all_vars()
        .iter()
        .map(|v| v.as_tensor().clone())
        .collect();
    let whole = loss(0..7).unwrap().backward().unwrap();
    let largest = params
        .iter()
        .map(|p| max_abs(whole.get(p).unwrap()))
        .fold(0f32, f32::max);
    for shards in [2, 3] {
        let grads = run(&ranges(7, shards), |_, r| {
            Ok((loss(r.clone())?.backward()?, r.len() as f64 / 7.0))
        })
        .unwrap();
        let mut acc = GradAccumulator::new(&params);
        for (g, w) in &grads {
            acc.add_weighted(g, *w).unwrap();
        }
        let sum = acc.finish().unwrap();
        let mut worst = 0f32;
        for p in &params {
            let (a, b) = (sum.get(p).unwrap(), whole.get(p).unwrap());
            worst = worst.max(max_rel(a, b, 1e-3 * largest));
        }
        assert!(
            worst < 1e-4,
            "{shards} shards: worst relative difference {worst}"
        );
    }
}
