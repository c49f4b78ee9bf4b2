use candle_core::Device;

use super::*;
use crate::rng::{Purpose, Stream};
use crate::schedule::BetaSchedule;
use crate::testing::max_abs_diff;

fn linear_1000() -> Schedule {
    Schedule::new(BetaSchedule::Linear, 1000, 1e-4, 0.02, false).unwrap()
}

fn rows(t: &Tensor) -> Vec<Vec<f64>> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_from(1)
        .unwrap()
        .to_vec2()
        .unwrap()
}

#[test]
fn q_sample_has_the_forward_mean_and_variance() {
    let s = linear_1000();
    let n = 100_000;
    let x0_row = [0.8f32, -0.3, 1.0];
    let x0 = Tensor::new(&x0_row, &Device::Cpu)
        .unwrap()
        .broadcast_as((n, 3))
        .unwrap()
        .contiguous()
        .unwrap();
    for (k, t) in [10usize, 500, 999].into_iter().enumerate() {
        let eps = Stream::new(17, Purpose::Eval, k as u64)
            .randn((n, 3), &Device::Cpu)
            .unwrap();
        let x_t = rows(&q_sample(&s, &x0, &vec![t; n], &eps).unwrap());
        let abar = s.alphas_cumprod[t];
        for (j, &x) in x0_row.iter().enumerate() {
            let mean = x_t.iter().map(|r| r[j]).sum::<f64>() / n as f64;
            let var = x_t.iter().map(|r| (r[j] - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            // Standard errors over n = 1e5 draws: sqrt((1 - abar) / n) for the mean,
            // (1 - abar) sqrt(2 / n) for the variance; allow 5 of them.
            let mean_tol = 5.0 * ((1.0 - abar) / n as f64).sqrt();
            let var_tol = 5.0 * (1.0 - abar) * (2.0 / n as f64).sqrt();
            let want_mean = abar.sqrt() * x as f64;
            assert!(
                (mean - want_mean).abs() < mean_tol,
                "t={t}: mean {mean} vs {want_mean}"
            );
            assert!(
                (var - (1.0 - abar)).abs() < var_tol,
                "t={t}: var {var} vs {}",
                1.0 - abar
            );
        }
    }
}

#[test]
fn eps_x0_and_v_round_trip_at_every_noise_level() {
    let s = linear_1000();
    // One example per t, from almost clean to almost pure noise.
    let t = [0usize, 1, 500, 998, 999];
    let mut rng = Stream::new(2, Purpose::Eval, 0);
    let x0 = rng.randn((5, 2, 4), &Device::Cpu).unwrap().tanh().unwrap();
    let eps = rng.randn((5, 2, 4), &Device::Cpu).unwrap();
    let x_t = q_sample(&s, &x0, &t, &eps).unwrap();
    for p in [Prediction::Eps, Prediction::X0, Prediction::V] {
        let pred = target(&s, p, &x0, &t, &eps).unwrap();
        let (x0_back, eps_back) = x0_and_eps(&s, p, &x_t, &t, &pred, false).unwrap();
        // f32 rounding of x_t is amplified by sqrt(1/abar) = 157 at t = 999 for eps-prediction
        // (and by 1/sqrt(1 - abar) = 100 at t = 0 for x0): errors of ~1e-5, well under 1e-3.
        assert!(max_abs_diff(&x0_back, &x0) < 1e-3, "{p:?} x0");
        assert!(max_abs_diff(&eps_back, &eps) < 1e-3, "{p:?} eps");
    }
    // v itself, elementwise against the formula in f64: v = sqrt(abar) eps - sqrt(1 - abar) x0.
    let v = rows(&v_from_x0_eps(&s, &x0, &t, &eps).unwrap());
    let (x0r, epsr) = (rows(&x0), rows(&eps));
    for (b, &ti) in t.iter().enumerate() {
        let abar = s.alphas_cumprod[ti];
        for j in 0..8 {
            let want = abar.sqrt() * epsr[b][j] - (1.0 - abar).sqrt() * x0r[b][j];
            assert!(
                (v[b][j] - want).abs() < 1e-6,
                "t={ti}: {} vs {want}",
                v[b][j]
            );
        }
    }
    // The pairwise inverses.
    let back = x0_from_eps(&s, &x_t, &t, &eps_from_x0(&s, &x_t, &t, &x0).unwrap()).unwrap();
    assert!(max_abs_diff(&back, &x0) < 1e-3);
    let v = v_from_x0_eps(&s, &x0, &t, &eps).unwrap();
    let (x0_v, eps_v) = x0_eps_from_v(&s, &x_t, &t, &v).unwrap();
    assert!(max_abs_diff(&x0_v, &x0) < 1e-5 && max_abs_diff(&eps_v, &eps) < 1e-5);
}

#[test]
fn learned_variance_spans_beta_tilde_to_beta() {
    let s = linear_1000();
    let t = [0usize, 1, 10, 500, 999];
    let param = Parameterization {
        prediction: Prediction::Eps,
        variance: VarianceType::Learned,
    };
    let x_t = Stream::new(4, Purpose::Eval, 0)
        .randn((5, 2, 3), &Device::Cpu)
        .unwrap();
    let pred = x_t.zeros_like().unwrap();
    for v in [1.0, -1.0, 0.0] {
        let values = (x_t.ones_like().unwrap() * v).unwrap();
        let output = Tensor::cat(&[&pred, &values], 1).unwrap();
        let step = p_mean_variance(&s, param, &x_t, &t, &output, false).unwrap();
        assert_eq!(step.log_variance.dims(), &[5, 2, 3]);
        for (row, &ti) in rows(&step.log_variance).iter().zip(&t) {
            let (max, min) = (s.betas[ti].ln(), s.posterior_log_variance_clipped[ti]);
            // v = 1: log beta_t; v = -1: log beta~_t (clipped at t = 0); v = 0: the midpoint.
            let want = (v + 1.0) / 2.0 * max + (1.0 - (v + 1.0) / 2.0) * min;
            for got in row {
                assert!(
                    (got - want).abs() < 1e-5 * want.abs(),
                    "v={v} t={ti}: {got} vs {want}"
                );
            }
        }
    }
    // And the clipped value at t = 0 really is log beta~_1, not log 0.
    assert!((s.posterior_log_variance_clipped[0] - s.posterior_variance[1].ln()).abs() < 1e-12);
}

/// For x0 ~ N(mu, s^2 I), q_t = N(sqrt(abar) mu, (abar s^2 + 1 - abar) I), whose score is
/// -(x - sqrt(abar) mu) / (abar s^2 + 1 - abar); the exact eps oracle must give it back through
/// score_from_eps. A missing sign or a sqrt(1 - abar) where 1 - abar belongs moves it by O(1).
#[test]
fn the_score_of_a_noised_gaussian_is_its_closed_form() {
    let s = linear_1000();
    let (mu, std) = (0.4, 0.3);
    let oracle = crate::oracle::MixtureOracle::gaussian(mu, std, s.alphas_cumprod.clone()).unwrap();
    let t = [0usize, 10, 300, 999];
    let x_t = Stream::new(6, Purpose::Eval, 0)
        .randn((4, 5), &Device::Cpu)
        .unwrap();
    let eps = crate::denoiser::Denoiser::forward(&oracle, &x_t, &t).unwrap();
    let score = score_from_eps(&s, &eps, &t).unwrap();
    for ((xs, got), &ti) in rows(&x_t).iter().zip(rows(&score)).zip(&t) {
        let ab = s.alphas_cumprod[ti];
        for (x, g) in xs.iter().zip(got) {
            let want = -(x - ab.sqrt() * mu) / (ab * std * std + 1.0 - ab);
            // f32 eps divided by sqrt(1 - abar) >= 0.01: relative error ~1e-6.
            assert!(
                (g - want).abs() < 1e-5 * want.abs().max(1.0),
                "t={ti}: {g} vs {want}"
            );
        }
    }
}

/// A batch sharing one timestep (sampling) fills its coefficients in on the device instead of
/// copying them from the host: the values are the very ones a mixed batch gets.
#[test]
fn a_shared_timestep_extracts_the_same_bits() {
    let coef: Vec<f64> = (0..10).map(|i| (0.1 * i as f64).sqrt()).collect();
    let shared: Vec<f32> = extract(&coef, &[7, 7, 7], 4, &Device::Cpu)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let mixed = extract(&coef, &[7, 3, 7], 4, &Device::Cpu).unwrap();
    assert_eq!(mixed.dims(), [3, 1, 1, 1]);
    let mixed: Vec<f32> = mixed.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(shared, vec![mixed[0]; 3]);
    assert_eq!(mixed[0], coef[7] as f32);
    assert!(extract(&coef, &[10, 10], 2, &Device::Cpu).is_err());
}
