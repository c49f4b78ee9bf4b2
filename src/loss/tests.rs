use candle_core::{Device, Var};

use super::*;
use crate::diffusion::{q_sample, x0_and_eps};
use crate::rng::{Purpose, Stream};
use crate::schedule::BetaSchedule;
use crate::testing::max_abs_diff;

fn linear_1000() -> Schedule {
    Schedule::new(BetaSchedule::Linear, 1000, 1e-4, 0.02, false).unwrap()
}

fn vec1(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn learned(prediction: Prediction) -> Parameterization {
    Parameterization {
        prediction,
        variance: VarianceType::Learned,
    }
}

fn config_message(opts: LossOptions, param: Parameterization) -> String {
    match opts.validate(param) {
        Err(Error::Config(msg)) => msg,
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[test]
fn validation_names_the_keys() {
    let default = LossOptions::default();
    assert_eq!(default.vlb_weight, 0.001);
    default.validate(Parameterization::default()).unwrap();
    let hybrid = LossOptions {
        kind: LossKind::Hybrid,
        ..default
    };
    hybrid.validate(learned(Prediction::Eps)).unwrap();

    let msg = config_message(default, learned(Prediction::Eps));
    assert!(msg.contains("diffusion.variance") && msg.contains("diffusion.loss"));
    for gamma in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let opts = LossOptions {
            min_snr_gamma: Some(gamma),
            ..default
        };
        assert!(
            config_message(opts, Parameterization::default()).contains("diffusion.min_snr_gamma")
        );
    }
    let kl_gamma = LossOptions {
        kind: LossKind::Kl,
        min_snr_gamma: Some(5.0),
        ..default
    };
    assert!(
        config_message(kl_gamma, Parameterization::default()).contains("diffusion.min_snr_gamma")
    );
    for w in [-0.1, f64::NAN, f64::INFINITY] {
        let opts = LossOptions {
            vlb_weight: w,
            ..hybrid
        };
        assert!(config_message(opts, learned(Prediction::Eps)).contains("diffusion.vlb_weight"));
    }
}

#[test]
fn loss_kind_reads_snake_case() {
    #[derive(Deserialize)]
    struct Section {
        loss: LossKind,
    }
    let s: Section = toml::from_str("loss = \"hybrid\"").unwrap();
    assert_eq!(s.loss, LossKind::Hybrid);
    assert!(toml::from_str::<Section>("loss = \"Hybrid\"").is_err());
}

#[test]
fn min_snr_weights_match_the_closed_form() {
    let s = linear_1000();
    let gamma = 5.0;
    // abar = 0.9978 (SNR 455), 0.8951 (8.5), 0.5214 (1.09), 4.0e-5 (4.0e-5): above and below gamma
    let t = [10, 100, 250, 999];
    let snr: Vec<f64> = t
        .iter()
        .map(|&i| s.alphas_cumprod[i] / (1.0 - s.alphas_cumprod[i]))
        .collect();
    assert!(snr[0] > gamma && snr[1] > gamma && snr[2] < gamma && snr[3] < gamma);
    let want = |p: Prediction, snr: f64| match p {
        Prediction::Eps => snr.min(gamma) / snr,
        Prediction::X0 => snr.min(gamma),
        Prediction::V => snr.min(gamma) / (snr + 1.0),
    };
    for p in [Prediction::Eps, Prediction::X0, Prediction::V] {
        let got = min_snr_weights(&s, p, gamma, &t).unwrap();
        for (g, &r) in got.iter().zip(&snr) {
            let w = want(p, r);
            assert!(
                (g - w).abs() < 1e-9 * w.max(1.0),
                "{p:?} snr {r}: {g} vs {w}"
            );
        }
    }
    // Zero terminal SNR: the eps weight takes its limit 1, not 0/0.
    let z = Schedule::new(BetaSchedule::Linear, 1000, 1e-4, 0.02, true).unwrap();
    assert_eq!(
        min_snr_weights(&z, Prediction::Eps, gamma, &[999]).unwrap(),
        [1.0]
    );
    assert!(min_snr_weights(&s, Prediction::Eps, gamma, &[1000]).is_err());
}

/// A batch (B = 4, C = 2, 3 x 3) at mixed timesteps, its x_t, and a deliberately wrong x0 guess.
fn batch(t: &[usize], s: &Schedule) -> (Tensor, Tensor, Tensor, Tensor) {
    let dev = Device::Cpu;
    let mut rng = Stream::new(21, Purpose::Eval, 0);
    let x0 = rng.randn((t.len(), 2, 3, 3), &dev).unwrap().tanh().unwrap();
    let eps = rng.randn((t.len(), 2, 3, 3), &dev).unwrap();
    let x_t = q_sample(s, &x0, t, &eps).unwrap();
    let guess = (&x0
        + rng
            .randn((t.len(), 2, 3, 3), &dev)
            .unwrap()
            .affine(0.3, 0.0))
    .unwrap();
    (x0, x_t, eps, guess)
}

#[test]
fn min_snr_weighting_gives_every_prediction_the_same_clipped_x0_loss() {
    let s = linear_1000();
    let t = [10, 100, 250, 900];
    let (x0, x_t, eps, guess) = batch(&t, &s);
    let gamma = 5.0;
    let opts = LossOptions {
        min_snr_gamma: Some(gamma),
        ..Default::default()
    };
    // mean_b min(SNR_b, gamma) |x0 - x0_hat|^2 / dims
    let x0_mse = vec1(
        &(&x0 - &guess)
            .unwrap()
            .sqr()
            .unwrap()
            .flatten_from(1)
            .unwrap()
            .mean(1)
            .unwrap(),
    );
    let want: f64 = t
        .iter()
        .zip(&x0_mse)
        .map(|(&i, m)| s.snr[i].min(gamma) * m)
        .sum::<f64>()
        / t.len() as f64;
    for p in [Prediction::Eps, Prediction::X0, Prediction::V] {
        let param = Parameterization {
            prediction: p,
            ..Default::default()
        };
        // The eps / x0 / v output that means the x0 guess at this x_t.
        let guess_eps = crate::diffusion::eps_from_x0(&s, &x_t, &t, &guess).unwrap();
        let output = target(&s, p, &guess, &t, &guess_eps).unwrap();
        let (back, _) = x0_and_eps(&s, p, &x_t, &t, &output, false).unwrap();
        assert!(max_abs_diff(&back, &guess) < 1e-4);
        let terms = training_losses(&s, param, &opts, &output, &x0, &x_t, &t, &eps).unwrap();
        let got = terms.loss.to_scalar::<f32>().unwrap() as f64;
        assert!((got - want).abs() < 1e-3 * want, "{p:?}: {got} vs {want}");
        assert!(terms.vlb.is_none());
    }
}

/// A learned-variance model output (B, 2C, 3, 3) as a Var: prediction then v in (-1, 1).
fn learned_output(batch: usize) -> Var {
    let dev = Device::Cpu;
    let mut rng = Stream::new(5, Purpose::Eval, 1);
    let pred = rng.randn((batch, 2, 3, 3), &dev).unwrap();
    let v = rng.randn((batch, 2, 3, 3), &dev).unwrap().tanh().unwrap();
    Var::from_tensor(&Tensor::cat(&[&pred, &v], 1).unwrap()).unwrap()
}

fn channel_grads(grad: &Tensor) -> (Vec<f64>, Vec<f64>) {
    let per_example = |g: Tensor| vec1(&g.abs().unwrap().flatten_from(1).unwrap().sum(1).unwrap());
    (
        per_example(grad.narrow(1, 0, 2).unwrap()),
        per_example(grad.narrow(1, 2, 2).unwrap()),
    )
}

#[test]
fn hybrid_bound_trains_only_the_variance_and_kl_trains_both() {
    let s = linear_1000();
    let t = [0, 1, 400, 999];
    let (x0, x_t, eps, _) = batch(&t, &s);
    let out = learned_output(t.len());
    let param = learned(Prediction::Eps);
    let hybrid = LossOptions {
        kind: LossKind::Hybrid,
        ..Default::default()
    };
    let terms = training_losses(&s, param, &hybrid, out.as_tensor(), &x0, &x_t, &t, &eps).unwrap();
    let vlb = terms.vlb.clone().unwrap();
    let grads = vlb.sum_all().unwrap().backward().unwrap();
    let (pred_g, var_g) = channel_grads(grads.get(out.as_tensor()).unwrap());
    assert!(pred_g.iter().all(|&g| g == 0.0), "{pred_g:?}");
    // Near T, beta~_t ~ beta_t leaves the variance little to choose, so its gradients are tiny.
    assert!(
        var_g.iter().all(|&g| g > 0.0) && var_g[0] > 1e-3,
        "{var_g:?}"
    );

    // loss = mean(mse + lambda T vlb), and its prediction gradient is the mse's alone.
    let (mse, vb) = (vec1(&terms.mse), vec1(&vlb));
    let want: f64 = mse
        .iter()
        .zip(&vb)
        .map(|(m, v)| m + 0.001 * 1000.0 * v)
        .sum::<f64>()
        / 4.0;
    let got = terms.loss.to_scalar::<f32>().unwrap() as f64;
    assert!((got - want).abs() < 1e-5 * want, "{got} vs {want}");
    let loss_g = terms.loss.backward().unwrap();
    let mse_g = terms.mse.mean_all().unwrap().backward().unwrap();
    let (a, b) = (
        loss_g.get(out.as_tensor()).unwrap(),
        mse_g.get(out.as_tensor()).unwrap(),
    );
    let diff = max_abs_diff(&a.narrow(1, 0, 2).unwrap(), &b.narrow(1, 0, 2).unwrap());
    assert!(diff < 1e-7, "{diff}");

    let kl = LossOptions {
        kind: LossKind::Kl,
        ..Default::default()
    };
    let terms = training_losses(&s, param, &kl, out.as_tensor(), &x0, &x_t, &t, &eps).unwrap();
    let vb = vec1(terms.vlb.as_ref().unwrap());
    let want = vb.iter().map(|v| 1000.0 * v).sum::<f64>() / 4.0;
    let got = terms.loss.to_scalar::<f32>().unwrap() as f64;
    assert!((got - want).abs() < 1e-5 * want, "{got} vs {want}");
    let grads = terms.loss.backward().unwrap();
    let (pred_g, var_g) = channel_grads(grads.get(out.as_tensor()).unwrap());
    assert!(pred_g.iter().all(|&g| g > 1e-6), "{pred_g:?}");
    assert!(var_g.iter().all(|&g| g > 1e-6), "{var_g:?}");
}

#[test]
fn simple_loss_is_the_batch_mean_mse_and_shapes_are_checked() {
    let s = linear_1000();
    let t = [3, 30, 300, 600];
    let (x0, x_t, eps, guess) = batch(&t, &s);
    let param = Parameterization::default();
    let opts = LossOptions::default();
    let terms = training_losses(&s, param, &opts, &guess, &x0, &x_t, &t, &eps).unwrap();
    let per: Vec<f64> = (0..4)
        .map(|b| {
            let d = (guess.get(b).unwrap() - eps.get(b).unwrap()).unwrap();
            vec1(&d).iter().map(|v| v * v).sum::<f64>() / 18.0
        })
        .collect();
    for (m, p) in vec1(&terms.mse).iter().zip(&per) {
        assert!((m - p).abs() < 1e-5 * p, "{m} vs {p}");
    }
    let got = terms.loss.to_scalar::<f32>().unwrap() as f64;
    assert!((got - per.iter().sum::<f64>() / 4.0).abs() < 1e-5 * got);
    let doubled = Tensor::cat(&[&guess, &guess], 1).unwrap();
    assert!(training_losses(&s, param, &opts, &doubled, &x0, &x_t, &t, &eps).is_err());
    assert!(training_losses(&s, param, &opts, &guess, &x0, &x_t, &t[..3], &eps).is_err());
}
