//! On a GPU machine: every CUDA op of `ddpm::nn::kernels::cuda` against the CPU path on the
//! same inputs, forward and every gradient, and the multi-tensor AdamW, EMA and clipping against
//! the CPU optimizer; then the whole tiny UNet's loss and parameter gradients, f32 and bf16.
//! Prints one `ok`/`FAIL` line per check with the measured numbers and exits 1 if any failed
//! (benches/gpu/check.sh runs it; built by benches/gpu/build-binary.sh with `--features cuda`,
//! as a bench target: `cargo build --release --features cuda --bench gpu_ops`).
//!
//! Tolerances, relative to each tensor's scale (max |reference|):
//! - f32: 1e-4, with TF32 off (check.sh sets NVIDIA_TF32_OVERRIDE=0; with TF32 a convolution
//!   rounds its inputs to 10 mantissa bits, ~5e-4 relative, and `--tf32` checks at 5e-3).
//! - bf16: 8 mantissa bits round each input and output by up to 2^-9 = 2e-3 relative; a sum of
//!   K products with independent rounding errors keeps that relative size (the errors grow as
//!   sqrt(K) like the sum itself), and a gradient passes two or three such roundings: 2e-2
//!   forward and 4e-2 for gradients leave a factor ~3 over that estimate.
//! - optimizer and EMA: bit for bit (the kernels do the CPU's f32 operations unfused).
//!
//!     gpu_ops [--tf32]

use candle_core::{DType, Device, Tensor, Var};
use ddpm::config::Config;
use ddpm::nn::kernels;
use ddpm::optim::{AdamW, OptimConfig};
use ddpm::rng::{Purpose, Stream};

type R<T> = anyhow::Result<T>;

struct Report {
    failed: usize,
}

impl Report {
    /// Compare `got` (any device) with `want` (CPU f32): max |got - want| <= tol max |want|.
    fn close(&mut self, name: &str, got: &Tensor, want: &Tensor, tol: f64) -> R<()> {
        let got = got.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
        let want = want.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
        if got.dims() != want.dims() {
            self.line(
                false,
                name,
                &format!("shape {:?} vs {:?}", got.dims(), want.dims()),
            );
            return Ok(());
        }
        let diff = (&got - &want)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()? as f64;
        let scale = want.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()? as f64;
        let finite = got
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .all(|v| v.is_finite());
        let ok = finite && diff <= tol * scale.max(1e-30);
        let msg = format!(
            "max |diff| {diff:.2e}, scale {scale:.2e} ({:.1e} of scale, tolerance {tol:.0e})",
            diff / scale.max(1e-30)
        );
        self.line(ok, name, &msg);
        Ok(())
    }

    fn line(&mut self, ok: bool, name: &str, msg: &str) {
        if !ok {
            self.failed += 1;
        }
        println!("{} {name}: {msg}", if ok { "ok  " } else { "FAIL" });
    }
}

fn randn(seed: u64, dims: &[usize]) -> R<Tensor> {
    Ok(Stream::new(seed, Purpose::Eval, 0).randn(dims, &Device::Cpu)?)
}

/// `f` on CPU f32 and on the GPU in `dtype`, inputs from the same CPU tensors: the outputs and
/// the gradients of sum(out * r) for every input, compared.
fn check_op(
    rep: &mut Report,
    name: &str,
    gpu: &Device,
    dtype: DType,
    inputs: &[Tensor],
    tol: (f64, f64),
    f: &dyn Fn(&[Tensor]) -> R<Tensor>,
) -> R<()> {
    let run = |dev: &Device, dt: DType| -> R<(Tensor, Vec<Tensor>)> {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|t| Var::from_tensor(&t.to_device(dev)?.to_dtype(dt)?))
            .collect::<candle_core::Result<_>>()?;
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let y = f(&ts)?;
        let r = randn(99, y.dims())?.to_device(dev)?.to_dtype(dt)?;
        let loss = (y.to_dtype(DType::F32)? * r.to_dtype(DType::F32)?)?.sum_all()?;
        let grads = loss.backward()?;
        let gs = vars
            .iter()
            .map(|v| {
                grads
                    .get(v.as_tensor())
                    .cloned()
                    .ok_or_else(|| anyhow::anyhow!("{name}: no gradient"))
            })
            .collect::<R<Vec<_>>>()?;
        Ok((y, gs))
    };
    let (want, want_g) = run(&Device::Cpu, DType::F32)?;
    let (got, got_g) = run(gpu, dtype)?;
    let tag = format!("{name} {dtype:?}");
    rep.close(&format!("{tag} forward"), &got, &want, tol.0)?;
    for (i, (g, w)) in got_g.iter().zip(&want_g).enumerate() {
        rep.close(&format!("{tag} grad {i}"), g, w, tol.1)?;
    }
    Ok(())
}

fn ops(rep: &mut Report, gpu: &Device, dtype: DType, tol: (f64, f64)) -> R<()> {
    for (cin, cout, h, k, stride, per_example) in [
        (64, 64, 32, 3, 1, true),
        (128, 128, 16, 3, 1, false),
        (64, 64, 32, 3, 2, false),
        (192, 128, 8, 1, 1, false),
        (3, 64, 32, 3, 1, false),
    ] {
        let b = 4;
        let x = randn(1, &[b, cin, h, h])?;
        let w = (randn(2, &[cout, cin, k, k])? * (1.0 / ((cin * k * k) as f64).sqrt()))?;
        let bias = if per_example {
            randn(3, &[b, cout])?
        } else {
            randn(3, &[cout])?
        };
        let name = format!("conv2d {cin}->{cout} {h}x{h} k{k} s{stride}");
        check_op(rep, &name, gpu, dtype, &[x, w, bias], tol, &|t| {
            Ok(kernels::conv2d(&t[0], &t[1], &t[2], stride, k / 2)?)
        })?;
    }
    let (x, w, r) = (
        randn(11, &[4, 64, 16, 16])?,
        (randn(12, &[64, 64, 3, 3])? * (1.0 / 24.0))?,
        randn(13, &[4, 64, 16, 16])?,
    );
    let bias = randn(14, &[64])?;
    check_op(
        rep,
        "conv2d + residual",
        gpu,
        dtype,
        &[x, w, bias, r],
        tol,
        &|t| Ok(kernels::conv2d_add(&t[0], &t[1], &t[2], &t[3], 1, 1)?),
    )?;
    // A residual block's two halves: GroupNorm + SiLU + conv with the per-example time bias,
    // and with the residual.
    for residual in [false, true] {
        let mut inputs = vec![
            randn(15, &[4, 64, 16, 16])?,
            randn(16, &[64])?,
            randn(17, &[64])?,
            (randn(18, &[64, 64, 3, 3])? * (1.0 / 24.0))?,
        ];
        inputs.push(if residual {
            randn(19, &[64])?
        } else {
            randn(19, &[4, 64])?
        });
        if residual {
            inputs.push(randn(20, &[4, 64, 16, 16])?);
        }
        let name = format!("norm_silu_conv2d residual={residual}");
        check_op(rep, &name, gpu, dtype, &inputs, tol, &|t| {
            let gn = kernels::GroupNormParams {
                weight: &t[1],
                bias: &t[2],
                groups: 32,
                eps: 1e-5,
            };
            Ok(kernels::norm_silu_conv2d(
                &t[0],
                gn,
                &t[3],
                &t[4],
                t.get(5),
                1,
                1,
            )?)
        })?;
    }
    for silu in [false, true] {
        let (x, g, b) = (
            randn(4, &[4, 128, 8, 8])?,
            randn(5, &[128])?,
            randn(6, &[128])?,
        );
        check_op(
            rep,
            &format!("group_norm silu={silu}"),
            gpu,
            dtype,
            &[x, g, b],
            tol,
            &|t| Ok(kernels::group_norm(&t[0], &t[1], &t[2], 32, 1e-5, silu)?),
        )?;
    }
    let s = randn(7, &[8, 64, 64])?;
    check_op(rep, "softmax (scale 0.125)", gpu, dtype, &[s], tol, &|t| {
        if t[0].device().is_cuda() {
            Ok(kernels::cuda::softmax_last(&t[0], 0.125)?)
        } else {
            Ok(candle_nn::ops::softmax_last_dim(&(&t[0] * 0.125)?)?)
        }
    })?;
    check_op(
        rep,
        "upsample 2x",
        gpu,
        dtype,
        &[randn(8, &[4, 64, 8, 8])?],
        tol,
        &|t| Ok(kernels::upsample_nearest2x(&t[0])?),
    )?;
    Ok(())
}

/// The tiny UNet: L = mean((eps_theta(x_t, t) - eps)^2) and every parameter gradient.
fn model(rep: &mut Report, gpu: &Device, dtype: DType, tol: (f64, f64)) -> R<()> {
    let text = std::fs::read_to_string("configs/tiny.toml")?;
    let cfg = Config::from_toml(&text, "configs/tiny.toml")?;
    let run = |dev: &Device| -> R<ddpm::train::TrainState> {
        let state = ddpm::train::TrainState::fresh(&cfg, dev)?;
        for (i, (_, v)) in state.vars.iter().enumerate() {
            let noise = Stream::new(1, Purpose::Eval, i as u64).randn(v.shape(), &Device::Cpu)?;
            let cur = v.as_tensor().to_device(&Device::Cpu)?;
            v.set(&(cur + (noise * 0.05)?)?.to_device(dev)?)?;
        }
        Ok(state)
    };
    let (cpu, cuda) = (run(&Device::Cpu)?, run(gpu)?);
    let x = randn(2, &[8, 1, 8, 8])?;
    let eps = randn(3, &[8, 1, 8, 8])?;
    let t: Vec<usize> = (0..8).map(|i| i * 12 + 1).collect();
    let loss = |s: &ddpm::train::TrainState,
                dev: &Device,
                dt: DType|
     -> R<(Tensor, candle_core::backprop::GradStore)> {
        let net = s.compute_net(&cfg, dt)?;
        let out = net.forward(&x.to_device(dev)?.to_dtype(dt)?, &t, None, None)?;
        let l = (out.to_dtype(DType::F32)? - eps.to_device(dev)?)?
            .sqr()?
            .mean_all()?;
        let g = l.backward()?;
        Ok((l, g))
    };
    let (lc, gc) = loss(&cpu, &Device::Cpu, DType::F32)?;
    let (lg, gg) = loss(&cuda, gpu, dtype)?;
    rep.close(&format!("tiny UNet loss {dtype:?}"), &lg, &lc, tol.0)?;
    let mut worst = (0f64, String::new());
    let mut failed = false;
    for ((name, vc), (_, vg)) in cpu.vars.iter().zip(&cuda.vars) {
        let (a, b) = (gg.get(vg.as_tensor()), gc.get(vc.as_tensor()));
        let (Some(a), Some(b)) = (a, b) else {
            rep.line(false, &format!("tiny UNet grad {name}"), "missing gradient");
            continue;
        };
        let a = a.to_device(&Device::Cpu)?;
        let d = (&a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()? as f64;
        let s = b.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()? as f64;
        let r = d / s.max(1e-30);
        failed |= r.is_nan() || r > tol.1;
        if r > worst.0 || worst.1.is_empty() {
            worst = (r, name.clone());
        }
    }
    let msg = format!(
        "{} parameters, worst {:.1e} of scale at {} (tolerance {:.0e})",
        cpu.vars.len(),
        worst.0,
        worst.1,
        tol.1
    );
    rep.line(
        !failed,
        &format!("tiny UNet every gradient {dtype:?}"),
        &msg,
    );
    Ok(())
}

/// AdamW (weight decay, clipping), then the EMA, 3 steps on both devices from the same values.
fn optimizer(rep: &mut Report, gpu: &Device) -> R<()> {
    let cfg = OptimConfig {
        weight_decay: 0.01,
        warmup_steps: 0,
        ..OptimConfig::default()
    };
    let shapes: Vec<Vec<usize>> = (0..150)
        .map(|i| vec![1 + i % 7, 3 + i * 13 % 500])
        .collect();
    let make = |dev: &Device| -> R<Vec<(String, Var)>> {
        shapes
            .iter()
            .enumerate()
            .map(|(i, s)| {
                Ok((
                    format!("p{i:03}"),
                    Var::from_tensor(&randn(10 + i as u64, s)?.to_device(dev)?)?,
                ))
            })
            .collect()
    };
    let (vc, vg) = (make(&Device::Cpu)?, make(gpu)?);
    let (mut oc, mut og) = (AdamW::new(&vc, cfg.clone())?, AdamW::new(&vg, cfg.clone())?);
    let ema_cfg = ddpm::ema::EmaConfig::default();
    let (mut ec, mut eg) = (
        ddpm::ema::Ema::new(&vc, ema_cfg.clone())?,
        ddpm::ema::Ema::new(&vg, ema_cfg)?,
    );
    for step in 1..=3u64 {
        let grads = |vars: &[(String, Var)], dev: &Device| -> R<candle_core::backprop::GradStore> {
            let mut g = candle_core::backprop::GradStore::default();
            for (i, (_, v)) in vars.iter().enumerate() {
                let t = (randn(1000 * step + i as u64, v.dims())? * 3.0)?.to_device(dev)?;
                g.insert(v.as_tensor(), t);
            }
            Ok(g)
        };
        let (mut gc, mut gg) = (grads(&vc, &Device::Cpu)?, grads(&vg, gpu)?);
        let nc = oc.clip_grad_norm(&mut gc, 1.0)?;
        let ng = og.clip_grad_norm(&mut gg, 1.0)?;
        let rel = (nc - ng).abs() / nc;
        rep.line(
            rel <= 1e-5,
            &format!("clip norm step {step}"),
            &format!("cpu {nc:.6}, cuda {ng:.6} ({rel:.1e})"),
        );
        oc.step(&gc, 1e-3)?;
        og.step(&gg, 1e-3)?;
        ec.update(step)?;
        eg.update(step)?;
    }
    // Clipping's norm differs in summation order, so the scaled gradients may differ in the
    // last bit: compare at 1e-6 rather than bit for bit.
    for (what, a, b) in [
        (
            "AdamW parameters",
            flat(vc.iter().map(|(_, v)| v.as_tensor()))?,
            flat(vg.iter().map(|(_, v)| v.as_tensor()))?,
        ),
        (
            "EMA weights",
            flat(ec.weights().iter().map(|(_, w)| w))?,
            flat(eg.weights().iter().map(|(_, w)| w))?,
        ),
    ] {
        rep.close(&format!("{what} after 3 steps (150 tensors)"), &b, &a, 1e-6)?;
    }
    Ok(())
}

fn flat<'a>(ts: impl Iterator<Item = &'a Tensor>) -> R<Tensor> {
    let v: Vec<Tensor> = ts
        .map(|t| t.to_device(&Device::Cpu)?.flatten_all())
        .collect::<candle_core::Result<_>>()?;
    Ok(Tensor::cat(&v, 0)?)
}

fn main() -> R<()> {
    let tf32 = std::env::args().any(|a| a == "--tf32");
    let gpu = Device::new_cuda(0)?;
    match ddpm::device::cudnn::get() {
        Ok(c) => println!("cuDNN {} from {}", c.version_string(), c.path.display()),
        Err(m) => println!("cuDNN not used: {}", m.message()),
    }
    let mut rep = Report { failed: 0 };
    let f32_tol = if tf32 { (5e-3, 5e-3) } else { (1e-4, 1e-4) };
    ops(&mut rep, &gpu, DType::F32, f32_tol)?;
    ops(&mut rep, &gpu, DType::BF16, (2e-2, 4e-2))?;
    model(&mut rep, &gpu, DType::F32, f32_tol)?;
    model(&mut rep, &gpu, DType::BF16, (2e-2, 4e-2))?;
    if !tf32 {
        optimizer(&mut rep, &gpu)?;
    }
    println!("{} failed", rep.failed);
    std::process::exit(i32::from(rep.failed > 0));
}
