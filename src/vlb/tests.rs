use std::f64::consts::LN_2;

use candle_core::{DType, Device, Tensor};

use super::*;
use crate::diffusion::{Prediction, VarianceType};
use crate::rng::{Purpose, Stream};
use crate::schedule::BetaSchedule;

mod bound;

fn vec1(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn scalar_f64(values: &[f64]) -> Tensor {
    Tensor::new(values, &Device::Cpu).unwrap()
}

fn linear_1000() -> Schedule {
    Schedule::new(BetaSchedule::Linear, 1000, 1e-4, 0.02, false).unwrap()
}

#[test]
fn normal_kl_is_zero_for_identical_gaussians_and_matches_the_1d_closed_form() {
    let mean = Tensor::new(&[[0.3f32, -1.2, 4.0]], &Device::Cpu).unwrap();
    let logvar = Tensor::new(&[[-2.0f32, 0.0, 1.5]], &Device::Cpu).unwrap();
    for kl in vec1(&normal_kl(&mean, &logvar, &mean, &logvar).unwrap()) {
        assert!(kl.abs() < 1e-7, "{kl}");
    }
    // KL(N(m1, s1^2) || N(m2, s2^2)) = ln(s2 / s1) + (s1^2 + (m1 - m2)^2) / (2 s2^2) - 1/2
    let cases: [(f64, f64, f64, f64); 3] = [
        (0.0, 1.0, 0.0, 2.0),
        (1.0, 0.5, -0.5, 1.5),
        (-2.0, 0.1, 3.0, 0.7),
    ];
    for (m1, s1, m2, s2) in cases {
        let want: f64 = (s2 / s1).ln() + (s1 * s1 + (m1 - m2) * (m1 - m2)) / (2.0 * s2 * s2) - 0.5;
        let lv = |s: f64| scalar_f64(&[2.0 * s.ln()]);
        let got =
            vec1(&normal_kl(&scalar_f64(&[m1]), &lv(s1), &scalar_f64(&[m2]), &lv(s2)).unwrap());
        assert!(
            (got[0] - want).abs() < 1e-12 * want.max(1.0),
            "{got:?} vs {want}"
        );
    }
}

#[test]
fn log_ndtr_matches_erfc_in_both_tails() {
    // python3: math.log(0.5 * math.erfc(-z / math.sqrt(2)))
    let golden = [
        (3.0, -0.0013508099647482027),
        (0.0, -LN_2),
        (-1.5, -2.7059444008238893),
        (-4.0, -10.36010148652729),
        (-4.5, -12.592419735713078),
        (-10.0, -53.23128515051246),
        (-30.0, -454.3212439563431),
    ];
    let z: Vec<f64> = golden.iter().map(|g| g.0).collect();
    let got = vec1(&log_ndtr(&scalar_f64(&z)).unwrap());
    for ((z, want), got) in golden.iter().zip(got) {
        assert!(
            (got - want).abs() < 1e-11 * want.abs().max(1.0),
            "z={z}: {got} vs {want}"
        );
    }
}

/// log P of every one of the 256 levels under N(mean, scale^2).
fn level_log_probs(mean: f64, scale: f64) -> Vec<f64> {
    let levels: Vec<f64> = (0..256).map(|k| 2.0 * k as f64 / 255.0 - 1.0).collect();
    let x = scalar_f64(&levels);
    let means = Tensor::full(mean, 256, &Device::Cpu).unwrap();
    let log_scales = Tensor::full(scale.ln(), 256, &Device::Cpu).unwrap();
    vec1(&discretized_gaussian_log_likelihood(&x, &means, &log_scales).unwrap())
}

#[test]
fn the_256_bin_probabilities_sum_to_one() {
    let means = [0.0, 0.37, -0.999, 1.0, -1.0, 1.3, -2.0];
    let scales = [1e-4, 1.0 / 255.0, 0.05, 0.6, 3.0];
    for mean in means {
        for scale in scales {
            let total: f64 = level_log_probs(mean, scale).iter().map(|l| l.exp()).sum();
            assert!(
                (total - 1.0).abs() < 1e-12,
                "mean {mean} scale {scale}: {total}"
            );
        }
    }
}

#[test]
fn far_tail_bins_keep_their_probability() {
    // python3, exact bin masses from math.erfc (both CDF values taken on the tail they lie in):
    //   d = 1/255
    //   edges: log(0.5 erfc(-(x + d - m) / (s sqrt2))) for x = -1, log(0.5 erfc((x - d - m) / (s sqrt2))) for x = 1
    //   interior: log(0.5 erfc((x-d-m)/(s sqrt2)) - 0.5 erfc((x+d-m)/(s sqrt2))) above the mean,
    //             log(0.5 erfc(-(x+d-m)/(s sqrt2)) - 0.5 erfc(-(x-d-m)/(s sqrt2))) otherwise
    let golden = [
        (0.5, 0.0, 0.02, -311.74887611602486),
        (-0.5, 0.0, 0.02, -311.74887611602486),
        (1.0, -0.3, 0.05, -340.1393567329994),
        (-1.0, 0.6, 0.1, -131.06627889256546),
        (3.0 / 255.0, 0.01, 0.003, -0.30802441582852413),
        (-1.0, -1.0, 0.01, -0.4268999377263294),
        (1.0, 0.98, 0.2, -0.7593667248839117),
    ];
    for (x, mean, scale, want) in golden {
        let got = vec1(
            &discretized_gaussian_log_likelihood(
                &scalar_f64(&[x]),
                &scalar_f64(&[mean]),
                &scalar_f64(&[f64::ln(scale)]),
            )
            .unwrap(),
        )[0];
        assert!(
            (got - want).abs() < 1e-9 * want.abs().max(1.0),
            "x={x}: {got} vs {want}"
        );
    }
}

#[test]
fn far_tail_bins_have_finite_gradients() {
    let means = candle_core::Var::new(&[0.0f32, 0.3, -0.9], &Device::Cpu).unwrap();
    let x = Tensor::new(&[0.6f32, -1.0, 1.0], &Device::Cpu).unwrap();
    let log_scales = Tensor::new(&[-4.0f32, -5.0, -3.0], &Device::Cpu).unwrap();
    let ll = discretized_gaussian_log_likelihood(&x, means.as_tensor(), &log_scales).unwrap();
    let grads = ll.sum_all().unwrap().backward().unwrap();
    let g = vec1(grads.get(means.as_tensor()).unwrap());
    // d/dmean log P ~ (x - mean) / scale^2 far in the tail: large, of the sign of x - mean.
    assert!(g.iter().all(|v| v.is_finite()), "{g:?}");
    assert!(g[0] > 100.0 && g[1] < -100.0 && g[2] > 100.0, "{g:?}");
}

/// x0 on the 8-bit levels (two of them on the edges), noise and x_t at index `t` for every row.
fn quantised_batch(schedule: &Schedule, t: usize) -> (Tensor, Tensor, Tensor) {
    let levels = [0usize, 255, 128, 17, 200, 64];
    let x0: Vec<f32> = levels
        .iter()
        .map(|&k| 2.0 * k as f32 / 255.0 - 1.0)
        .collect();
    let x0 = Tensor::from_vec(x0, (2, 3), &Device::Cpu).unwrap();
    let eps = Stream::new(3, Purpose::Eval, 0)
        .randn((2, 3), &Device::Cpu)
        .unwrap();
    let x_t = q_sample(schedule, &x0, &[t, t], &eps).unwrap();
    (x0, x_t, eps)
}

#[test]
fn decoder_with_the_true_mean_costs_the_bin_mass_of_the_posterior_width() {
    let s = linear_1000();
    let (x0, x_t, eps) = quantised_batch(&s, 0);
    let param = Parameterization::default();
    let got = vec1(&vb_term_bpd(&s, param, &eps, &x0, &x_t, &[0, 0], false).unwrap());
    // python3, s = sqrt(beta~_1) = sqrt(5.4531876613021935e-05), d = 1/255:
    //   interior: -log2(erf(d / (s sqrt2))) = 1.30537765556172
    //   edge:     -log2(0.5 erfc(-d / (s sqrt2))) = 0.5098250702149605
    let (interior, edge) = (1.30537765556172, 0.5098250702149605);
    // Row 0 holds levels 0, 255 (edge bins) and 128; row 1 holds 17, 200 and 64.
    let want = [(2.0 * edge + interior) / 3.0, interior];
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 1e-4, "{g} vs {w}");
    }
}

#[test]
fn kl_term_with_the_true_mean_is_the_variance_mismatch_alone() {
    let s = linear_1000();
    let param = Parameterization {
        prediction: Prediction::Eps,
        variance: VarianceType::FixedLarge,
    };
    for t in [1, 10, 500] {
        let (x0, x_t, eps) = quantised_batch(&s, t);
        let got = vec1(&vb_term_bpd(&s, param, &eps, &x0, &x_t, &[t, t], false).unwrap());
        // KL(N(m, beta~) || N(m, beta)) = 0.5 (-1 + ln beta - ln beta~ + beta~ / beta) per dim
        let (b, bt) = (s.betas[t], s.posterior_variance[t]);
        let want = 0.5 * (-1.0 + b.ln() - bt.ln() + bt / b) / LN_2;
        for g in got {
            assert!(
                (g - want).abs() < 1e-4 * want + 1e-6,
                "t={t}: {g} vs {want}"
            );
        }
    }
}

#[test]
fn prior_is_the_kl_to_the_standard_normal() {
    // abar_{N-1} = 0.9^5 = 0.59, far from 0, so both parts of the KL matter.
    let s = Schedule::from_betas(vec![0.1; 5]).unwrap();
    let rows = [[0.5, -1.0, 1.0], [0.0, 0.2, -0.7]];
    let x0 = Tensor::new(&[[0.5f32, -1.0, 1.0], [0.0, 0.2, -0.7]], &Device::Cpu).unwrap();
    let got = vec1(&prior_bpd(&s, &x0).unwrap());
    let abar = 0.9f64.powi(5);
    for (row, g) in rows.iter().zip(got) {
        // KL(N(m1, s1^2) || N(0, 1)) = ln(1 / s1) + (s1^2 + m1^2) / 2 - 1/2
        let kl = |x: &f64| {
            let (m1, s1) = (abar.sqrt() * x, (1.0 - abar).sqrt());
            s1.recip().ln() + (s1 * s1 + m1 * m1) / 2.0 - 0.5
        };
        let want = row.iter().map(kl).sum::<f64>() / 3.0 / LN_2;
        assert!((g - want).abs() < 1e-6 * want, "{g} vs {want}");
    }
}

#[test]
fn vb_term_mixes_decoder_and_kl_per_example() {
    let s = linear_1000();
    let param = Parameterization::default();
    let (x0, _, eps) = quantised_batch(&s, 0);
    let t = [0, 300];
    let x_t = q_sample(&s, &x0, &t, &eps).unwrap();
    let both = vec1(&vb_term_bpd(&s, param, &eps, &x0, &x_t, &t, false).unwrap());
    for (b, &ti) in t.iter().enumerate() {
        let row = |x: &Tensor| x.narrow(0, b, 1).unwrap();
        let one =
            vec1(&vb_term_bpd(&s, param, &row(&eps), &row(&x0), &row(&x_t), &[ti], false).unwrap());
        assert!((both[b] - one[0]).abs() < 1e-6, "{both:?} vs {one:?}");
    }
}

struct Zero;

impl Denoiser for Zero {
    fn forward(&self, x_t: &Tensor, _t: &[usize]) -> Result<Tensor> {
        Ok(x_t.zeros_like()?)
    }
}

#[test]
fn bound_adds_up_and_reports_every_step() {
    let s = Schedule::new(BetaSchedule::Linear, 1000, 1e-4, 0.02, false)
        .unwrap()
        .for_sampling(20, crate::schedule::Spacing::Linspace)
        .unwrap();
    let (x0, _, _) = quantised_batch(&s, 0);
    let mut noise = BatchNoise::new(1, Purpose::Eval, 0, 2);
    let mut seen = Vec::new();
    let b = variational_bound(
        &Zero,
        &s,
        Parameterization::default(),
        false,
        &x0,
        &mut noise,
        &mut |done, total| {
            seen.push((done, total));
            Ok(())
        },
    )
    .unwrap();
    assert_eq!(seen, (1..=20).map(|d| (d, 20)).collect::<Vec<_>>());
    assert_eq!(b.terms.len(), 20);
    assert_eq!(b.decoder, b.terms[0]);
    for e in 0..2 {
        let sum = b.prior[e] + b.terms.iter().map(|row| row[e]).sum::<f64>();
        assert!((b.total[e] - sum).abs() < 1e-12);
        assert!(b.terms.iter().all(|row| row[e] >= -1e-6));
    }
    let mut noise = BatchNoise::new(1, Purpose::Eval, 0, 2);
    let stopped = variational_bound(
        &Zero,
        &s,
        Parameterization::default(),
        false,
        &x0,
        &mut noise,
        &mut |done, _| {
            if done == 3 {
                Err(Error::Invalid("stop".into()))
            } else {
                Ok(())
            }
        },
    );
    assert!(stopped.is_err());
}
