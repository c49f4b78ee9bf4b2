//! Each kernel against candle's own op on seeded random inputs: forward values and the
//! gradients candle's backprop computes through it, to a stated tolerance.

use candle_core::{Device, Tensor, Var};

use super::*;
use crate::rng::{Purpose, Stream};

fn randn(index: u64, dims: &[usize]) -> Tensor {
    Stream::new(7, Purpose::Eval, index)
        .randn(dims, &Device::Cpu)
        .unwrap()
}

fn var(index: u64, dims: &[usize]) -> Var {
    Var::from_tensor(&randn(index, dims)).unwrap()
}

/// max |a - b| / max(1, max |b|): the error relative to the reference's scale.
fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
    let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
    let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
    let diff = a
        .iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    diff / scale
}

/// Forward and gradients of `ours` and `reference` applied to the same variables, with the
/// same random upstream gradient r (loss = sum(f(vars) r)); asserts each relative error < tol.
fn check_op(
    vars: &[&Var],
    ours: impl Fn(&[Tensor]) -> Tensor,
    reference: impl Fn(&[Tensor]) -> Tensor,
    tol: f32,
    what: &str,
) {
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let (y, want) = (ours(&ts), reference(&ts));
    let e = rel_err(&y, &want);
    assert!(e < tol, "{what}: forward error {e}");
    let r = randn(99, y.dims());
    let g = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let gw = (want * &r).unwrap().sum_all().unwrap().backward().unwrap();
    for (i, v) in vars.iter().enumerate() {
        let (a, b) = (g.get(v).unwrap(), gw.get(v).unwrap());
        let e = rel_err(a, b);
        assert!(e < tol, "{what}: gradient {i} error {e}");
    }
}

fn candle_conv(t: &[Tensor], stride: usize, pad: usize) -> Tensor {
    let y = t[0].conv2d(&t[1], pad, stride, 1, 1).unwrap();
    let bias = if t[2].rank() == 1 {
        t[2].unsqueeze(0).unwrap()
    } else {
        t[2].clone()
    };
    y.broadcast_add(&bias.unsqueeze(2).unwrap().unsqueeze(3).unwrap())
        .unwrap()
}

#[test]
fn conv2d_matches_candle_forward_and_gradients() {
    // (b, cin, cout, h, w, k, stride, pad, per-example bias): Winograd (wide 3x3, even, odd and
    // one-pixel-wide maps), im2col (thin 3x3, strided 3x3, 1x1). f32 sums over <= 9 * 24 products of N(0, 1)
    // values: 1e-4 of the output scale leaves ~10x margin over the errors seen (< 1e-5).
    let cases = [
        (2, 16, 24, 6, 10, 3, 1, 1, false),
        (3, 24, 16, 5, 7, 3, 1, 1, true),
        (2, 16, 16, 2, 1, 3, 1, 1, false),
        (2, 16, 16, 1, 3, 3, 1, 1, true),
        (2, 3, 16, 6, 6, 3, 1, 1, false),
        (2, 16, 3, 6, 6, 3, 1, 1, true),
        (2, 8, 12, 8, 6, 3, 2, 1, false),
        (2, 8, 8, 7, 5, 3, 2, 1, true),
        (3, 12, 20, 4, 5, 1, 1, 0, false),
    ];
    for (i, (b, cin, cout, h, w, k, stride, pad, per_example)) in cases.into_iter().enumerate() {
        let i = 10 * i as u64;
        let x = var(i, &[b, cin, h, w]);
        let wt = var(i + 1, &[cout, cin, k, k]);
        let bias = if per_example {
            var(i + 2, &[b, cout])
        } else {
            var(i + 2, &[cout])
        };
        check_op(
            &[&x, &wt, &bias],
            |t| conv::conv2d(&t[0], &t[1], &t[2], stride, pad).unwrap(),
            |t| candle_conv(t, stride, pad),
            1e-4,
            &format!("conv case {}", i / 10),
        );
    }
}

#[test]
fn conv2d_add_matches_candle_forward_and_gradients() {
    // (b, cin, cout, h, w, k, stride, pad): Winograd, im2col 3x3 strided, 1x1. The same
    // tolerance as the convolution alone: adding the residual is exact.
    let cases = [
        (2, 16, 24, 6, 10, 3, 1, 1),
        (2, 8, 12, 8, 6, 3, 2, 1),
        (3, 12, 20, 4, 5, 1, 1, 0),
    ];
    for (i, (b, cin, cout, h, w, k, stride, pad)) in cases.into_iter().enumerate() {
        let i = 10 * i as u64 + 500;
        let (ho, wo) = (
            (h + 2 * pad - k) / stride + 1,
            (w + 2 * pad - k) / stride + 1,
        );
        let x = var(i, &[b, cin, h, w]);
        let wt = var(i + 1, &[cout, cin, k, k]);
        let bias = var(i + 2, &[cout]);
        let residual = var(i + 3, &[b, cout, ho, wo]);
        check_op(
            &[&x, &wt, &bias, &residual],
            |t| super::conv2d_add(&t[0], &t[1], &t[2], &t[3], stride, pad).unwrap(),
            |t| (candle_conv(t, stride, pad) + &t[3]).unwrap(),
            1e-4,
            &format!("conv_add case {i}"),
        );
    }
}

#[test]
fn norm_silu_conv2d_matches_candle_forward_and_gradients() {
    // (b, cin, cout, h, w, groups, per-example bias, residual): Winograd with a per-example
    // bias (a block's conv1), Winograd with a residual (conv2), im2col into one channel (the
    // UNet's conv_out). GroupNorm's errors (< 1e-6) feed a convolution checked to 1e-4 above:
    // the same tolerance.
    let cases = [
        (2, 16, 24, 6, 10, 4, true, false),
        (3, 16, 16, 5, 7, 8, false, true),
        (2, 32, 1, 4, 4, 8, false, false),
    ];
    for (i, (b, cin, cout, h, w, groups, per_example, with_residual)) in
        cases.into_iter().enumerate()
    {
        let i = 10 * i as u64 + 700;
        let x = Var::from_tensor(&(randn(i, &[b, cin, h, w]) + 2.0).unwrap()).unwrap();
        let gamma = var(i + 1, &[cin]);
        let beta = var(i + 2, &[cin]);
        let wt = var(i + 3, &[cout, cin, 3, 3]);
        let bias = if per_example {
            var(i + 4, &[b, cout])
        } else {
            var(i + 4, &[cout])
        };
        let residual = var(i + 5, &[b, cout, h, w]);
        let mut vars = vec![&x, &gamma, &beta, &wt, &bias];
        if with_residual {
            vars.push(&residual);
        }
        check_op(
            &vars,
            |t| {
                let gn = GroupNormParams {
                    weight: &t[1],
                    bias: &t[2],
                    groups,
                    eps: 1e-5,
                };
                super::norm_silu_conv2d(&t[0], gn, &t[3], &t[4], t.get(5), 1, 1).unwrap()
            },
            |t| {
                let gn = candle_nn::GroupNorm::new(t[1].clone(), t[2].clone(), cin, groups, 1e-5)
                    .unwrap();
                let act = candle_core::Module::forward(&gn, &t[0])
                    .unwrap()
                    .silu()
                    .unwrap();
                let y = candle_conv(&[act, t[3].clone(), t[4].clone()], 1, 1);
                match t.get(5) {
                    Some(r) => (y + r).unwrap(),
                    None => y,
                }
            },
            1e-4,
            &format!("norm_silu_conv2d case {}", (i - 700) / 10),
        );
    }
}

#[test]
fn norm_silu_conv2d_second_backward_recomputes_the_same_gradients() {
    // The first backward takes the activation the forward kept; a second one recomputes it.
    let x = var(800, &[2, 16, 4, 4]);
    let (gamma, beta) = (var(801, &[16]), var(802, &[16]));
    let (w, bias) = (var(803, &[16, 16, 3, 3]), var(804, &[16]));
    let gn = GroupNormParams {
        weight: &gamma,
        bias: &beta,
        groups: 4,
        eps: 1e-5,
    };
    let y = super::norm_silu_conv2d(&x, gn, &w, &bias, None, 1, 1).unwrap();
    let loss = (y * randn(805, &[2, 16, 4, 4])).unwrap().sum_all().unwrap();
    let (first, second) = (loss.backward().unwrap(), loss.backward().unwrap());
    for v in [&x, &gamma, &beta, &w, &bias] {
        let e = rel_err(first.get(v).unwrap(), second.get(v).unwrap());
        assert!(e < 1e-6, "second backward differs by {e}");
    }
}

#[test]
fn conv2d_skips_the_input_gradient_of_a_constant_input() {
    let x = randn(1, &[2, 16, 4, 4]);
    let w = var(2, &[16, 16, 3, 3]);
    let b = var(3, &[16]);
    let y = conv::conv2d(&x, &w, &b, 1, 1).unwrap();
    let grads = y.sum_all().unwrap().backward().unwrap();
    assert!(grads.get(&x).is_none());
    // d sum(y) / d b[co] = number of outputs per channel summed over the batch.
    let db: Vec<f32> = grads.get(&b).unwrap().to_vec1().unwrap();
    assert!(db.iter().all(|&v| v == 32.0), "{db:?}");
}

#[test]
fn one_image_gives_the_same_bits_with_its_gemms_in_parallel() {
    // A batch of one is one Winograd chunk, whose 36 GEMMs then run in parallel; inside
    // `serial` the same GEMMs run one after the other.
    let x = randn(1, &[1, 16, 16, 16]);
    let (w, b) = (randn(2, &[32, 16, 3, 3]), randn(3, &[32]));
    let bits = |t: Tensor| -> Vec<u32> {
        let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        v.iter().map(|f| f.to_bits()).collect()
    };
    let parallel = bits(conv::conv2d(&x, &w, &b, 1, 1).unwrap());
    let serial = bits(par::serial(|| conv::conv2d(&x, &w, &b, 1, 1).unwrap()));
    assert!(parallel == serial);
    let reference = with_candle_ops(|| conv::conv2d(&x, &w, &b, 1, 1).unwrap());
    assert!(rel_err(&conv::conv2d(&x, &w, &b, 1, 1).unwrap(), &reference) < 1e-4);
}

#[test]
fn fast_exp_and_sigmoid_match_f64() {
    // Taylor degree 6 on |r| <= ln2/2 leaves < 2e-7 relative error, f32 rounding a little
    // more: measured 2.4e-7 (2 ulp) over this grid.
    let mut worst = 0f64;
    for i in 0..=200_000 {
        let x = -87.0 + 175.0 * i as f64 / 200_000.0;
        let got = norm::exp(x as f32) as f64;
        let want = (x as f32 as f64).exp();
        worst = worst.max(((got - want) / want).abs());
    }
    assert!(worst < 4e-7, "exp relative error {worst}");
    for z in [-100f32, -20.0, -1.0, 0.0, 0.5, 30.0, 100.0] {
        let want = 1.0 / (1.0 + (-(z as f64)).exp());
        assert!(
            (norm::sigmoid(z) as f64 - want).abs() < 1e-7,
            "sigmoid({z})"
        );
    }
}

#[test]
fn group_norm_matches_candle_forward_and_gradients() {
    // (dims, groups, silu, offset): 4-d and 3-d inputs, 1 and several channels per group, with
    // a large common offset (the two-pass variance must not lose it). Sums over <= 60 values:
    // 1e-4 of the output scale is ~10x the errors seen.
    let cases: [(&[usize], usize, bool, f64); 4] = [
        (&[2, 8, 5, 3], 4, true, 0.0),
        (&[3, 6, 4, 4], 6, false, 0.0),
        (&[2, 8, 10], 2, true, 10.0),
        (&[1, 4, 3, 5], 1, false, -3.0),
    ];
    for (i, (dims, groups, silu, offset)) in cases.into_iter().enumerate() {
        let i = 10 * i as u64;
        let c = dims[1];
        let x = Var::from_tensor(&(randn(i, dims) + offset).unwrap()).unwrap();
        let gamma = var(i + 1, &[c]);
        let beta = var(i + 2, &[c]);
        check_op(
            &[&x, &gamma, &beta],
            |t| norm::group_norm(&t[0], &t[1], &t[2], groups, 1e-5, silu).unwrap(),
            |t| {
                let gn =
                    candle_nn::GroupNorm::new(t[1].clone(), t[2].clone(), c, groups, 1e-5).unwrap();
                let y = candle_core::Module::forward(&gn, &t[0]).unwrap();
                if silu {
                    y.silu().unwrap()
                } else {
                    y
                }
            },
            1e-4,
            &format!("group norm case {}", i / 10),
        );
    }
}

#[test]
fn upsample_matches_candle_forward_and_gradient() {
    let x = var(5, &[2, 3, 4, 5]);
    check_op(
        &[&x],
        |t| resample::upsample_nearest2x(&t[0]).unwrap(),
        |t| t[0].upsample_nearest2d(8, 10).unwrap(),
        1e-6,
        "upsample",
    );
}

mod unet {
    use candle_nn::VarMap;

    use super::*;
    use crate::denoiser::Denoiser;
    use crate::nn::UNet;

    fn model() -> (VarMap, UNet) {
        crate::nn::testing::seeded_tiny_unet(None)
    }

    #[test]
    fn unet_output_and_gradients_match_candle_ops() {
        // The same model, input and upstream gradient through our kernels and through candle's
        // ops: every output and parameter gradient within 1e-4 of its tensor's scale (the two
        // differ in f32 rounding, Winograd F(4x4, 3x3) included; the largest error seen is 1.1e-5).
        let (varmap, unet) = model();
        let x = randn(1, &[3, 1, 8, 8]);
        let t = [3, 500, 999];
        let r = randn(2, &[3, 1, 8, 8]);
        let run = || {
            let out = unet.forward(&x, &t, None, None).unwrap();
            let grads = (&out * &r).unwrap().sum_all().unwrap().backward().unwrap();
            (out, grads)
        };
        let (ours, g_ours) = run();
        let (want, g_want) = with_candle_ops(run);
        let e = rel_err(&ours, &want);
        assert!(e < 1e-4, "output error {e}");
        let data = varmap.data().lock().unwrap();
        assert!(data.len() > 50);
        for (name, var) in data.iter() {
            let (a, b) = (g_ours.get(var).unwrap(), g_want.get(var).unwrap());
            let e = rel_err(a, b);
            assert!(e < 1e-4, "gradient of {name}: error {e}");
        }
    }

    /// The diffusers options take fallbacks where the fused kernels do not express them (the
    /// scale-shift norm, the asymmetric downsampling pad): the same agreement with candle's
    /// ops, forward and gradients, dropout masks and a class table without a null row included.
    #[test]
    fn unet_with_diffusers_options_matches_candle_ops() {
        use crate::nn::UNetConfig;
        use crate::rng::{Purpose, Stream};
        let cfg = UNetConfig {
            num_heads: 1,
            attention_head_dim: Some(8),
            scale_shift: true,
            downsample_padding: 0,
            norm_eps: 1e-6,
            freq_shift: 0,
            flip_sin_to_cos: true,
            mid_block_scale_factor: 2f64.sqrt(),
            center_input_sample: true,
            dropout: 0.2,
            null_class: false,
            ..crate::nn::testing::tiny_config(Some(3))
        };
        let (varmap, unet) = crate::nn::testing::seeded_unet(&cfg);
        let x = randn(4, &[3, 1, 8, 8]);
        let t = [3, 500, 999];
        let r = randn(5, &[3, 1, 8, 8]);
        let streams: Vec<Stream> = (0..3)
            .map(|i| Stream::new(9, Purpose::Dropout, i))
            .collect();
        let run = || {
            let mut s = streams.clone();
            let out = unet
                .forward(&x, &t, Some(&[0, 1, 2]), Some(&mut s))
                .unwrap();
            let grads = (&out * &r).unwrap().sum_all().unwrap().backward().unwrap();
            (out, grads)
        };
        let (ours, g_ours) = run();
        let (want, g_want) = with_candle_ops(run);
        let e = rel_err(&ours, &want);
        assert!(e < 1e-4, "output error {e}");
        for (name, var) in varmap.data().lock().unwrap().iter() {
            let e = rel_err(g_ours.get(var).unwrap(), g_want.get(var).unwrap());
            assert!(e < 1e-4, "gradient of {name}: error {e}");
        }
    }

    #[test]
    fn sampling_forward_records_no_graph_and_matches_training_forward() {
        let (_varmap, unet) = model();
        let x = randn(3, &[2, 1, 8, 8]);
        let t = [10, 700];
        let tracked = unet.forward(&x, &t, None, None).unwrap();
        let eval = Denoiser::forward(&unet, &x, &t).unwrap();
        assert!(tracked.track_op() && !eval.track_op());
        // Bit-equal in one piece; the eval forward runs in shards where candle's pool is off
        // (CANDLE_NUM_THREADS=1), and a kernel's blocking may then round differently.
        assert!(rel_err(&eval, &tracked) < 1e-5);
    }
}
