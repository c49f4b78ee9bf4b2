//! The loop's mechanics: options, noise bookkeeping, the step callback, and the plumbing from a
//! model output (eps, x0 or v; fixed or learned variance) to a step. The distributions the
//! samplers produce are checked against exact oracles in `oracle_tests`.

use candle_core::{DType, Device, Tensor};

use super::*;
use crate::diffusion::{Prediction, VarianceType};
use crate::oracle::MixtureOracle;
use crate::schedule::BetaSchedule;

/// The DDPM paper's linear schedule, T = 1000.
pub(super) fn linear_schedule() -> Schedule {
    Schedule::new(BetaSchedule::Linear, 1000, 1e-4, 0.02, false).unwrap()
}

pub(super) fn opts(
    sampler: SamplerKind,
    steps: usize,
    spacing: Spacing,
    eta: f64,
) -> SampleOptions {
    SampleOptions {
        sampler,
        steps,
        spacing,
        eta,
        corrector_steps: 2,
        snr: 0.16,
        clip_x0: false,
        seed: 11,
        first_index: 0,
        ..SampleOptions::default()
    }
}

/// Mean and (biased) variance of the values.
pub(super) fn mean_var(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    (mean, v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n)
}

pub(super) fn eps_fixed(variance: VarianceType) -> Parameterization {
    Parameterization {
        prediction: Prediction::Eps,
        variance,
    }
}

/// Samples as one flat f64 vector, with no callback.
pub(super) fn draw(
    model: &dyn Denoiser,
    schedule: &Schedule,
    param: Parameterization,
    o: &SampleOptions,
    shape: &[usize],
) -> Vec<f64> {
    let x = sample(model, schedule, param, o, shape, &Device::Cpu, &mut |_| {
        Ok(())
    })
    .unwrap();
    flat(&x)
}

pub(super) fn flat(x: &Tensor) -> Vec<f64> {
    x.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

pub(super) fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(p, q)| (p - q).abs())
        .fold(0.0, f64::max)
}

/// The eps oracle re-expressed as an x0- or v-predictor (host-side f64, independently of
/// `diffusion`'s conversions), optionally with C extra learned-variance channels fixed at `v`.
struct Reparam {
    oracle: MixtureOracle,
    alphas_cumprod: Vec<f64>,
    prediction: Prediction,
    learned_v: Option<f64>,
}

impl Denoiser for Reparam {
    fn forward(&self, x_t: &Tensor, t: &[usize]) -> Result<Tensor> {
        let eps = self.oracle.forward(x_t, t)?;
        let (b, c) = (x_t.dim(0)?, x_t.dim(1)?);
        let rows = |v: &Tensor| v.to_dtype(DType::F64)?.reshape((b, ()))?.to_vec2::<f64>();
        let (xs, es) = (rows(x_t)?, rows(&eps)?);
        let mut out = Vec::new();
        for ((x, e), &ti) in xs.iter().zip(&es).zip(t) {
            let ab = self.alphas_cumprod[ti];
            for (xi, ei) in x.iter().zip(e) {
                // x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar);  v = sqrt(abar) eps - sqrt(1 - abar) x0
                let x0 = (xi - (1.0 - ab).sqrt() * ei) / ab.sqrt();
                out.push(match self.prediction {
                    Prediction::Eps => *ei,
                    Prediction::X0 => x0,
                    Prediction::V => ab.sqrt() * ei - (1.0 - ab).sqrt() * x0,
                } as f32);
            }
            if let Some(v) = self.learned_v {
                out.extend(std::iter::repeat_n(v as f32, x.len()));
            }
        }
        let mut dims = x_t.dims().to_vec();
        dims[1] = if self.learned_v.is_some() { 2 * c } else { c };
        Ok(Tensor::from_vec(out, dims, x_t.device())?)
    }
}

#[test]
fn sampler_kind_round_trips_and_names_a_bad_value() {
    #[derive(serde::Deserialize)]
    struct Section {
        sampler: SamplerKind,
    }
    for k in SamplerKind::ALL {
        assert_eq!(k.to_string().parse::<SamplerKind>().unwrap(), k);
        // A config spells a sampler as the CLI does.
        let section: Section = toml::from_str(&format!("sampler = {:?}", k.name())).unwrap();
        assert_eq!(section.sampler, k);
    }
    assert_eq!(SamplerKind::DpmSolver2M.to_string(), "dpm++2m");
    assert_eq!(SamplerKind::default(), SamplerKind::Ddpm);
    let err = "plms".parse::<SamplerKind>().unwrap_err().to_string();
    assert!(err.contains("plms") && err.contains("dpm++2m"), "{err}");
}

#[test]
fn options_outside_their_range_are_named() {
    let good = opts(SamplerKind::Ddim, 50, Spacing::Trailing, 0.5);
    good.validate(1000).unwrap();
    let bad_eta = SampleOptions { eta: 1.5, ..good }
        .validate(1000)
        .unwrap_err();
    assert!(bad_eta.to_string().contains("1.5"), "{bad_eta}");
    let nan_eta = SampleOptions {
        eta: f64::NAN,
        ..good
    }
    .validate(1000);
    assert!(nan_eta.is_err());
    for snr in [0.0, -0.1, f64::INFINITY] {
        let e = SampleOptions { snr, ..good }.validate(1000).unwrap_err();
        assert!(e.to_string().contains("snr"), "{e}");
    }
    for steps in [0, 1001] {
        let e = SampleOptions { steps, ..good }.validate(1000).unwrap_err();
        assert!(e.to_string().contains(&format!("steps = {steps}")), "{e}");
    }
    SampleOptions {
        steps: 1000,
        ..good
    }
    .validate(1000)
    .unwrap();
}

#[test]
fn bad_shapes_and_start_points_are_errors() {
    let s = linear_schedule();
    let o = MixtureOracle::gaussian(0.0, 1.0, s.alphas_cumprod.clone()).unwrap();
    let p = eps_fixed(VarianceType::FixedSmall);
    let run = |shape: &[usize]| {
        let opts = opts(SamplerKind::Ddim, 5, Spacing::Trailing, 0.0);
        sample(&o, &s, p, &opts, shape, &Device::Cpu, &mut |_| Ok(()))
    };
    assert!(run(&[4]).is_err());
    assert!(run(&[0, 3]).is_err());
    assert!(run(&[2, 3]).is_ok());
    let respaced = s.for_sampling(5, Spacing::Trailing).unwrap();
    let ctx = Context {
        model: &o,
        schedule: &respaced,
        param: p,
        clip_x0: false,
    };
    let mut noise = BatchNoise::new(0, Purpose::SampleNoise, 0, 1);
    let x = Tensor::zeros((1, 2), DType::F32, &Device::Cpu).unwrap();
    let e = denoise(
        &ctx,
        &mut Ddim::default(),
        x,
        6,
        &mut noise,
        &mut |_| Ok(()),
    );
    assert!(e.is_err());
}

/// Sample `first + 3` is the same bits drawn as row 3 of a batch of 7 or alone (PC included:
/// its Langevin step size is per example).
#[test]
fn a_sample_does_not_depend_on_its_batch() {
    let s = linear_schedule();
    let o = MixtureOracle::gaussian(0.2, 0.5, s.alphas_cumprod.clone()).unwrap();
    let p = eps_fixed(VarianceType::FixedSmall);
    for (kind, eta) in [
        (SamplerKind::Ddpm, 0.0),
        (SamplerKind::Ddim, 0.5),
        (SamplerKind::Pc, 0.0),
        (SamplerKind::DpmSolver2M, 0.0),
        (SamplerKind::Heun, 0.0),
    ] {
        let batch = SampleOptions {
            first_index: 10,
            ..opts(kind, 50, Spacing::Trailing, eta)
        };
        let alone = SampleOptions {
            first_index: 13,
            ..batch
        };
        let seven = draw(&o, &s, p, &batch, &[7, 2, 3, 3]);
        let one = draw(&o, &s, p, &alone, &[1, 2, 3, 3]);
        assert_eq!(&seven[3 * 18..4 * 18], &one[..], "{kind}");
        assert_ne!(&seven[2 * 18..3 * 18], &one[..], "{kind}: rows must differ");
    }
}

#[test]
fn on_step_sees_every_step_with_decreasing_t() {
    let s = linear_schedule();
    let o = MixtureOracle::gaussian(0.2, 0.5, s.alphas_cumprod.clone()).unwrap();
    let p = eps_fixed(VarianceType::FixedSmall);
    for (kind, spacing, first_t) in [
        (SamplerKind::Ddpm, Spacing::Trailing, 999),
        (SamplerKind::Ddim, Spacing::Trailing, 999),
        // Leading: k * (1000 div 40) = 0, 25, ..., 975.
        (SamplerKind::Ddim, Spacing::Leading, 975),
    ] {
        let o2 = opts(kind, 40, spacing, 0.0);
        let mut seen: Vec<(usize, usize, usize)> = Vec::new();
        let mut last = None;
        let out = sample(&o, &s, p, &o2, &[3, 4], &Device::Cpu, &mut |info| {
            seen.push((info.index, info.total, info.t));
            last = Some((flat(info.x), flat(info.x0)));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen.len(), 40, "{kind}");
        assert!(seen.iter().enumerate().all(|(k, s)| s.0 == k && s.1 == 40));
        assert!(seen.windows(2).all(|w| w[0].2 > w[1].2), "{seen:?}");
        assert_eq!(seen[0].2, first_t, "{kind} {spacing:?}");
        let (x, x0) = last.unwrap();
        assert_eq!(x, flat(&out));
        if kind == SamplerKind::Ddim {
            // abar_prev = 1 after the last step: DDIM returns its x0 prediction.
            assert!(max_abs_diff(&x, &x0) < 1e-6);
        }
    }
}

#[test]
fn a_callback_error_stops_sampling() {
    let s = linear_schedule();
    let o = MixtureOracle::gaussian(0.2, 0.5, s.alphas_cumprod.clone()).unwrap();
    let mut calls = 0;
    let r = sample(
        &o,
        &s,
        eps_fixed(VarianceType::FixedSmall),
        &opts(SamplerKind::Ddpm, 10, Spacing::Trailing, 0.0),
        &[2, 2],
        &Device::Cpu,
        &mut |_| {
            calls += 1;
            Err(Error::Invalid("stop".into()))
        },
    );
    assert!(r.is_err());
    assert_eq!(calls, 1);
}

/// An x0- or v-predicting model equal to the eps oracle gives the eps oracle's samples.
/// Tolerance: the adapters round x0 or v to f32 and the sampler converts back, so the two runs
/// differ by f32 rounding only; measured maximum 5e-7 over both samplers, allowed 1e-5. A
/// wrong conversion (a sign, a swapped coefficient) moves samples by O(0.1).
#[test]
fn x0_and_v_predictions_give_the_eps_samples() {
    let s = linear_schedule();
    let oracle = MixtureOracle::gaussian(0.4, 0.3, s.alphas_cumprod.clone()).unwrap();
    let model = |prediction| Reparam {
        oracle: oracle.clone(),
        alphas_cumprod: s.alphas_cumprod.clone(),
        prediction,
        learned_v: None,
    };
    for o in [
        opts(SamplerKind::Ddim, 50, Spacing::Trailing, 0.0),
        opts(SamplerKind::Ddpm, 100, Spacing::Linspace, 0.0),
    ] {
        let eps = draw(
            &oracle,
            &s,
            eps_fixed(VarianceType::FixedSmall),
            &o,
            &[16, 8],
        );
        for prediction in [Prediction::X0, Prediction::V] {
            let param = Parameterization {
                prediction,
                variance: VarianceType::FixedSmall,
            };
            let got = draw(&model(prediction), &s, param, &o, &[16, 8]);
            let d = max_abs_diff(&eps, &got);
            assert!(d < 1e-5, "{} {prediction:?}: {d}", o.sampler);
        }
    }
}

/// Learned-variance channels at v = -1 give log sigma^2 = log beta~ (fixed-small) and at v = +1
/// log beta (fixed-large; the two differ only at index 0, where no noise is added).
#[test]
fn learned_variance_at_its_ends_is_fixed_small_and_fixed_large() {
    let s = linear_schedule();
    let oracle = MixtureOracle::gaussian(0.4, 0.3, s.alphas_cumprod.clone()).unwrap();
    let o = opts(SamplerKind::Ddpm, 100, Spacing::Trailing, 0.0);
    for (v, fixed) in [
        (-1.0, VarianceType::FixedSmall),
        (1.0, VarianceType::FixedLarge),
    ] {
        let want = draw(&oracle, &s, eps_fixed(fixed), &o, &[16, 8]);
        let model = Reparam {
            oracle: oracle.clone(),
            alphas_cumprod: s.alphas_cumprod.clone(),
            prediction: Prediction::Eps,
            learned_v: Some(v),
        };
        let got = draw(&model, &s, eps_fixed(VarianceType::Learned), &o, &[16, 8]);
        let d = max_abs_diff(&want, &got);
        // Measured: bit-identical; allowed: f32 rounding of exp(log sigma^2).
        assert!(d < 1e-6, "v = {v}: {d}");
    }
    // The two ends really differ, so the comparison above can fail.
    let small = draw(
        &oracle,
        &s,
        eps_fixed(VarianceType::FixedSmall),
        &o,
        &[16, 8],
    );
    let large = draw(
        &oracle,
        &s,
        eps_fixed(VarianceType::FixedLarge),
        &o,
        &[16, 8],
    );
    assert!(max_abs_diff(&small, &large) > 1e-2);
}

/// DDIM at eta = 1 has sigma^2 = beta~ and mean sqrt(abar_prev) x0 + sqrt(1 - abar_prev - beta~)
/// eps = the posterior mean, and draws noise on the same steps: it is the ancestral sampler with
/// fixed-small variance, sample for sample.
#[test]
fn ddim_at_eta_one_is_ancestral_fixed_small() {
    let s = linear_schedule();
    let oracle = MixtureOracle::gaussian(0.4, 0.3, s.alphas_cumprod.clone()).unwrap();
    let p = eps_fixed(VarianceType::FixedSmall);
    let ddpm = draw(
        &oracle,
        &s,
        p,
        &opts(SamplerKind::Ddpm, 50, Spacing::Trailing, 0.0),
        &[16, 8],
    );
    let ddim = draw(
        &oracle,
        &s,
        p,
        &opts(SamplerKind::Ddim, 50, Spacing::Trailing, 1.0),
        &[16, 8],
    );
    let d = max_abs_diff(&ddpm, &ddim);
    // Measured 2.4e-7: the two compute the same numbers in a different order in f32.
    assert!(d < 1e-5, "{d}");
}

/// Data far outside [-1, 1]: clipping keeps every DDIM sample (= its last x0) inside it.
#[test]
fn clipping_bounds_the_predicted_x0() {
    let s = linear_schedule();
    let oracle = MixtureOracle::gaussian(3.0, 0.3, s.alphas_cumprod.clone()).unwrap();
    let p = eps_fixed(VarianceType::FixedSmall);
    let mut o = opts(SamplerKind::Ddim, 20, Spacing::Trailing, 0.0);
    let free = draw(&oracle, &s, p, &o, &[8, 4]);
    assert!(free.iter().all(|&v| v > 1.5), "{free:?}");
    o.clip_x0 = true;
    let mut x0_max: f64 = 0.0;
    let x = sample(&oracle, &s, p, &o, &[8, 4], &Device::Cpu, &mut |info| {
        x0_max = flat(info.x0).iter().fold(x0_max, |m, v| m.max(v.abs()));
        Ok(())
    })
    .unwrap();
    assert!(x0_max <= 1.0, "{x0_max}");
    assert!(flat(&x).iter().all(|&v| (v - 1.0).abs() < 1e-6));
}
