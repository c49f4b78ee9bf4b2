//! The samplers driven by exact denoisers produce the right distributions: a Gaussian, whose
//! sampled moments are known exactly, and a two-component mixture.

use super::tests::{draw, eps_fixed, linear_schedule, mean_var, opts};
use super::*;
use crate::diffusion::VarianceType;
use crate::oracle::{Component, MixtureOracle};

/// x0 ~ N(0.4, 0.3^2 I), linear schedule, T = 1000, exact eps, no clipping.
///
/// Expected moments: with a Gaussian and its exact eps every step is affine in x plus
/// independent Gaussian noise, so mean and variance propagate exactly
/// (x' = A x + B + sigma z: m' = A m + B, v' = A^2 v + sigma^2) from x_T ~ N(0, 1). This
/// script (plain Python, f64) gives the moments each sampler is meant to produce:
///
/// ```text
/// import math, sys
/// T, mu, s = 1000, 0.4, float(sys.argv[1]) if len(sys.argv) > 1 else 0.3
/// betas = [1e-4 + (0.02 - 1e-4) * i / (T - 1) for i in range(T)]
/// abar_full, acc = [], 1.0
/// for b in betas:
///     acc *= 1 - b; abar_full.append(acc)
/// trailing = lambda K: sorted(set(int(round(T - i * T / K)) - 1 for i in range(K)))
/// def run(keep, kind, eta=0.0):
///     ab = [abar_full[k] for k in keep]; ab_prev = [1.0] + ab[:-1]; m, v = 0.0, 1.0
///     for i in reversed(range(len(keep))):
///         # eps = ae x + be (exact E[eps | x_t]); x0 = (x - sqrt(1 - abar) eps) / sqrt(abar) = a0 x + b0
///         d = ab[i] * s * s + 1 - ab[i]
///         ae, be = math.sqrt(1 - ab[i]) / d, -math.sqrt(1 - ab[i]) * math.sqrt(ab[i]) * mu / d
///         a0 = (1 - math.sqrt(1 - ab[i]) * ae) / math.sqrt(ab[i])
///         b0 = -math.sqrt(1 - ab[i]) * be / math.sqrt(ab[i])
///         beta = 1 - ab[i] / ab_prev[i]
///         if kind == "ddim":
///             sig2 = eta**2 * (1 - ab_prev[i]) / (1 - ab[i]) * beta
///             c = math.sqrt(max(1 - ab_prev[i] - sig2, 0.0))
///             A, B = math.sqrt(ab_prev[i]) * a0 + c * ae, math.sqrt(ab_prev[i]) * b0 + c * be
///         else:
///             c1 = beta * math.sqrt(ab_prev[i]) / (1 - ab[i])
///             c2 = (1 - ab_prev[i]) * math.sqrt(1 - beta) / (1 - ab[i])
///             A, B = c1 * a0 + c2, c1 * b0
///             sig2 = 0.0 if i == 0 else (beta * (1 - ab_prev[i]) / (1 - ab[i]) if kind == "small" else beta)
///         m, v = A * m + B, A * A * v + sig2
///     return m, v
/// for args in [(range(T), "small"), (range(T), "large"), (range(T), "ddim"), (trailing(50), "ddim")]:
///     print(args[1], len(args[0]), "%.6f %.6f" % run(*args))
/// ```
///
/// prints small 1000 (0.399999, 0.087766), large 1000 (0.399999, 0.090554), ddim 1000
/// (0.399241, 0.089127) and ddim 50 (0.399306, 0.074686); with argument 0.1, small 1000 gives
/// variance 0.009276.
/// So the 1000-step samplers land within 2.5% of s^2 = 0.09 (fixed-small loses beta~ vs the
/// true reverse variance, DDIM-1000 carries x_T's missing sqrt(abar_T) mu), while DDIM-50
/// under-disperses by 17%: that is its discretisation error, not a tolerance to hide behind, so
/// each sampler is held to its own exact moments.
///
/// Tolerance: n = B D = 64 * 128 = 8192 independent coordinates (the oracle is isotropic and
/// each coordinate has its own noise), so SE(mean) = sqrt(v / n) <= 0.3 / 90.5 = 0.0033 and
/// SE(var) = v sqrt(2 / n) <= 0.09 * 0.0156 = 0.0014; we allow 4 SE (0.0133 and 0.0056), which a
/// correct sampler exceeds with probability ~1e-4 and which separates DDIM-50 from DDIM-1000
/// (0.0144 apart) and both from the data variance.
#[test]
fn gaussian_data_gives_each_samplers_exact_moments() {
    let s = linear_schedule();
    let oracle = MixtureOracle::gaussian(0.4, 0.3, s.alphas_cumprod.clone()).unwrap();
    let cases = [
        (
            SamplerKind::Ddpm,
            VarianceType::FixedSmall,
            1000,
            0.399999,
            0.087766,
        ),
        (
            SamplerKind::Ddpm,
            VarianceType::FixedLarge,
            1000,
            0.399999,
            0.090554,
        ),
        (
            SamplerKind::Ddim,
            VarianceType::FixedSmall,
            1000,
            0.399241,
            0.089127,
        ),
        (
            SamplerKind::Ddim,
            VarianceType::FixedSmall,
            50,
            0.399306,
            0.074686,
        ),
    ];
    let n = 64 * 128;
    for (kind, variance, steps, want_mean, want_var) in cases {
        let o = opts(kind, steps, Spacing::Trailing, 0.0);
        let x = draw(&oracle, &s, eps_fixed(variance), &o, &[64, 128]);
        let (mean, var) = mean_var(&x);
        let se_mean = (want_var / n as f64).sqrt();
        let se_var = want_var * (2.0 / n as f64).sqrt();
        let label = format!("{kind} {variance:?} {steps} steps: mean {mean}, var {var}");
        assert!((mean - want_mean).abs() < 4.0 * se_mean, "{label}");
        assert!((var - want_var).abs() < 4.0 * se_var, "{label}");
    }
}

/// The two-mode mixture 0.3 N(mu_1, 0.1^2 I) + 0.7 N(mu_2, 0.1^2 I) in D = 4.
pub(super) fn two_modes() -> (MixtureOracle, [Vec<f64>; 2]) {
    let mu_1 = vec![-0.6, -0.4, -0.8, -0.6];
    let mu_2 = vec![0.5, 0.7, 0.3, 0.5];
    let comps = vec![
        Component {
            weight: 0.3,
            mean: mu_1.clone(),
            std: 0.1,
        },
        Component {
            weight: 0.7,
            mean: mu_2.clone(),
            std: 0.1,
        },
    ];
    let oracle = MixtureOracle::new(comps, linear_schedule().alphas_cumprod).unwrap();
    (oracle, [mu_1, mu_2])
}

/// B = 2000 samples of `two_modes` with `o`, checked for the weights and modes (see below);
/// returns each mode's deviations from its mean, coordinate by coordinate.
pub(super) fn check_two_modes(o: &SampleOptions) -> [Vec<f64>; 2] {
    let (oracle, mus) = two_modes();
    let (b, d) = (2000, 4);
    let s = linear_schedule();
    let x = draw(&oracle, &s, eps_fixed(VarianceType::FixedSmall), o, &[b, d]);
    let dist =
        |row: &[f64], mu: &[f64]| -> f64 { row.iter().zip(mu).map(|(a, m)| (a - m).powi(2)).sum() };
    let mut clusters: [Vec<&[f64]>; 2] = [Vec::new(), Vec::new()];
    for row in x.chunks(d) {
        let k = usize::from(dist(row, &mus[1]) < dist(row, &mus[0]));
        clusters[k].push(row);
    }
    let label = format!("{} {} steps", o.sampler, o.steps);
    let frac_1 = clusters[0].len() as f64 / b as f64;
    assert!(
        (frac_1 - 0.3).abs() < 0.041,
        "{label}: weight of mode 1: {frac_1}"
    );
    let mut out = [Vec::new(), Vec::new()];
    for ((rows, mu), deviations) in clusters.iter().zip(&mus).zip(&mut out) {
        for (j, &m) in mu.iter().enumerate() {
            let column: Vec<f64> = rows.iter().map(|r| r[j]).collect();
            let (mean, _) = mean_var(&column);
            assert!(
                (mean - m).abs() < 0.018,
                "{label}: mode {mu:?}, dim {j}: mean {mean}"
            );
            deviations.extend(column.iter().map(|v| v - m));
        }
        let worst = deviations.iter().fold(0.0f64, |a, v| a.max(v.abs()));
        assert!(
            worst < 0.55,
            "{label}: mode {mu:?}: a sample {worst} away, between the modes"
        );
    }
    out
}

/// `two_modes`, B = 2000, ancestral (fixed-small) over all 1000 steps.
///
/// - Bimodal: the modes are 2.2 apart (|mu_1 - mu_2|) against a spread of 0.1 per coordinate,
///   so every sample lies within 0.55 (5.5 std) of a mode in each coordinate, and nearest-mode
///   assignment is exact.
/// - Weights: the count in mode 1 is Binomial(2000, 0.3), SE = sqrt(0.21 / 2000) = 0.0102 on the
///   fraction; we allow 4 SE = 0.041.
/// - Modes: per coordinate, each cluster mean has SE 0.1 / sqrt(n_k) <= 0.1 / sqrt(500) =
///   0.0045; we allow 0.018. The spread: once a sample has committed to a mode the oracle acts
///   as that Gaussian, whose exact ancestral variance (the script above with s = 0.1) is
///   0.009276 (7% under 0.01, as for the Gaussian test); with n_k D >= 2000 coordinates its SE is
///   0.009276 sqrt(2 / 2000) = 0.0003, and we allow 4 SE = 0.0012.
#[test]
fn a_two_mode_mixture_keeps_its_weights_and_modes() {
    let o = opts(SamplerKind::Ddpm, 1000, Spacing::Trailing, 0.0);
    for deviations in check_two_modes(&o) {
        let var = deviations.iter().map(|v| v * v).sum::<f64>() / deviations.len() as f64;
        assert!((var - 0.009276).abs() < 0.0012, "spread {var}");
    }
}
