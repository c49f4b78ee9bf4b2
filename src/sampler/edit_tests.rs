//! SDEdit (and, in `inpaint_tests`, inpainting) on the exact Gaussian oracle, where everything a
//! step does is affine plus Gaussian noise, so the conditional law of the output given the input
//! is known exactly.
//!
//! The expected numbers come from this script, appended to oracle_tests' (which defines T, mu,
//! s, abar_full and trailing):
//!
//! ```text
//! def step(ab, abp, kind, i):  # x' = A x + B + sqrt(sig2) z with the exact eps
//!     d = ab * s * s + 1 - ab
//!     ae, be = math.sqrt(1 - ab) / d, -math.sqrt(1 - ab) * math.sqrt(ab) * mu / d
//!     a0, b0 = (1 - math.sqrt(1 - ab) * ae) / math.sqrt(ab), -math.sqrt(1 - ab) * be / math.sqrt(ab)
//!     beta = 1 - ab / abp
//!     if kind == "ddim":
//!         c = math.sqrt(1 - abp)
//!         return math.sqrt(abp) * a0 + c * ae, math.sqrt(abp) * b0 + c * be, 0.0
//!     c1, c2 = beta * math.sqrt(abp) / (1 - ab), (1 - abp) * math.sqrt(1 - beta) / (1 - ab)
//!     return c1 * a0 + c2, c1 * b0, 0.0 if i == 0 else beta * (1 - abp) / (1 - ab)
//! def run(keep, kind, start, m, v, resample=1):
//!     # from x at index start - 1 with moments (m, v) to the sample; A_tot = d out / d x_start
//!     ab = [abar_full[k] for k in keep]; ab_prev = [1.0] + ab[:-1]; A_tot = 1.0
//!     for i in reversed(range(start)):
//!         for rep in range(resample):
//!             A, B, sig2 = step(ab[i], ab_prev[i], kind, i)
//!             m, v, A_tot = A * m + B, A * A * v + sig2, A * A_tot
//!             if rep + 1 < resample:  # q(x_i | x_{i-1}) = N(sqrt(alpha_i) x, beta_i)
//!                 al = ab[i] / ab_prev[i]
//!                 m, v, A_tot = math.sqrt(al) * m, al * v + 1 - al, math.sqrt(al) * A_tot
//!     return m, v, A_tot
//! keep = trailing(50); ab = [abar_full[k] for k in keep]
//! for kind in ["ddim", "ancestral"]:
//!     for strength in [0.2, 0.5, 0.8, 1.0]:
//!         start = sum(1 for t in keep if t + 1 <= strength * T + 1e-9); a = ab[start - 1]
//!         # x_start = sqrt(a) x_in + sqrt(1 - a) z: slope A sqrt(a), intercept and residual
//!         # variance from x_in = 0
//!         m, v, A = run(keep, kind, start, 0.0, 1 - a)
//!         print(kind, strength, start, "%.6f %.6f %.6f" % (A * math.sqrt(a), m, v))
//! for r in [1, 3]:
//!     print("inpaint", r, "%.6f %.6f" % run(keep, "ancestral", 50, 0.0, 1.0, r)[:2])
//! ```
//!
//! which prints (kind, strength, steps run, slope of E[x_out | x_in], intercept, Var(x_out | x_in)):
//!
//! ```text
//! ddim 0.2 10 0.352058 0.259177 0.064124
//! ddim 0.5 25 0.079525 0.368190 0.074149
//! ddim 0.8 40 0.010704 0.395718 0.074674
//! ddim 1.0 50 0.001736 0.399306 0.074683
//! ancestral 0.2 10 0.148182 0.340727 0.062206
//! ancestral 0.5 25 0.007618 0.396953 0.063964
//! ancestral 0.8 40 0.000138 0.399945 0.063969
//! ancestral 1.0 50 0.000004 0.399999 0.063969
//! inpaint 1 0.399999 0.063969
//! inpaint 3 0.400000 0.055142
//! ```
//!
//! (DDIM 1.0 is DDIM-50 from noise, 0.399306 / 0.074686, but for the 0.006 x_in it keeps.)

use super::tests::{eps_fixed, flat, linear_schedule, mean_var, opts};
use super::*;
use crate::diffusion::VarianceType;
use crate::oracle::MixtureOracle;

pub(super) fn gaussian() -> (Schedule, MixtureOracle) {
    let s = linear_schedule();
    let oracle = MixtureOracle::gaussian(0.4, 0.3, s.alphas_cumprod.clone()).unwrap();
    (s, oracle)
}

/// A model that must not be called.
struct Unused;

impl Denoiser for Unused {
    fn forward(&self, _: &Tensor, _: &[usize]) -> Result<Tensor> {
        Err(Error::Invalid("the model was called".into()))
    }
}

pub(super) fn no_callback(_: &StepInfo) -> Result<()> {
    Ok(())
}

/// Inputs x_in on an even grid over [-2, 2]: mean 0, variance 4/3.
fn grid(b: usize, d: usize) -> Tensor {
    let n = b * d;
    let v: Vec<f32> = (0..n)
        .map(|j| (-2.0 + 4.0 * (j as f64 + 0.5) / n as f64) as f32)
        .collect();
    Tensor::from_vec(v, (b, d), &Device::Cpu).unwrap()
}

/// Least squares of y on x: (slope, intercept, residual variance).
fn regress(x: &[f64], y: &[f64]) -> (f64, f64, f64) {
    let ((mx, vx), (my, _)) = (mean_var(x), mean_var(y));
    let cov = x
        .iter()
        .zip(y)
        .map(|(a, b)| (a - mx) * (b - my))
        .sum::<f64>()
        / x.len() as f64;
    let slope = cov / vx;
    let intercept = my - slope * mx;
    let res: Vec<f64> = x
        .iter()
        .zip(y)
        .map(|(a, b)| b - intercept - slope * a)
        .collect();
    (slope, intercept, mean_var(&res).1)
}

#[test]
fn sdedit_at_strength_zero_returns_the_input() {
    let s = linear_schedule();
    let p = eps_fixed(VarianceType::FixedSmall);
    let o = opts(SamplerKind::Ddim, 50, Spacing::Trailing, 0.0);
    let x_in = grid(3, 5);
    // 0, and 0.01 < 20 / 1000, the lowest trailing step's noise level: nothing to run.
    for strength in [0.0, 0.01] {
        let x = sample_from(&Unused, &s, p, &o, &x_in, strength, &mut no_callback).unwrap();
        assert_eq!(flat(&x), flat(&x_in), "strength {strength}");
    }
    // 0.02 reaches t + 1 = 20: one step, one model call.
    let e = sample_from(&Unused, &s, p, &o, &x_in, 0.02, &mut no_callback).unwrap_err();
    assert!(e.to_string().contains("called"), "{e}");
    for bad in [-0.1, 1.5, f64::NAN] {
        let e = sample_from(&Unused, &s, p, &o, &x_in, bad, &mut no_callback).unwrap_err();
        assert!(e.to_string().contains("strength"), "{e}");
    }
}

/// n = 64 * 128 = 8192 inputs on the [-2, 2] grid. For each case the regression of x_out on
/// x_in must give the script's slope, intercept and residual variance. Standard errors:
/// slope sd_res / (sqrt(n) sd_in) <= 0.273 / (90.5 * 1.155) = 0.0026, intercept
/// sd_res / sqrt(n) <= 0.0030, residual variance v sqrt(2 / n) <= 0.0012; we allow 4 SE. The
/// slope falls from 0.35 (strength 0.2) through 0.080 (0.5) to 0.011 (0.8) for DDIM: the lower
/// the strength, the more of the input survives; and at strength 1 the output is DDIM-50 (or
/// ancestral-50) from noise, which the tolerance cannot tell from the x_in it keeps (0.002).
#[test]
fn sdedit_keeps_more_of_the_input_the_lower_the_strength() {
    let (s, oracle) = gaussian();
    let p = eps_fixed(VarianceType::FixedSmall);
    let x_in = grid(64, 128);
    let xs = flat(&x_in);
    let n: f64 = 8192.0;
    let cases = [
        (SamplerKind::Ddim, 0.2, 0.352058, 0.259177, 0.064124),
        (SamplerKind::Ddim, 0.5, 0.079525, 0.368190, 0.074149),
        (SamplerKind::Ddim, 0.8, 0.010704, 0.395718, 0.074674),
        (SamplerKind::Ddim, 1.0, 0.001736, 0.399306, 0.074683),
        (SamplerKind::Ddpm, 0.2, 0.148182, 0.340727, 0.062206),
        (SamplerKind::Ddpm, 1.0, 0.000004, 0.399999, 0.063969),
    ];
    let mut last_slope = f64::INFINITY;
    for (kind, strength, want_slope, want_intercept, want_var) in cases {
        let o = opts(kind, 50, Spacing::Trailing, 0.0);
        let x = sample_from(&oracle, &s, p, &o, &x_in, strength, &mut no_callback).unwrap();
        let (slope, intercept, var) = regress(&xs, &flat(&x));
        let label =
            format!("{kind} strength {strength}: slope {slope}, intercept {intercept}, var {var}");
        let sd = f64::sqrt(want_var);
        assert!(
            (slope - want_slope).abs() < 4.0 * sd / (n.sqrt() * 1.1547),
            "{label}"
        );
        assert!(
            (intercept - want_intercept).abs() < 4.0 * sd / n.sqrt(),
            "{label}"
        );
        assert!(
            (var - want_var).abs() < 4.0 * want_var * (2.0 / n).sqrt(),
            "{label}"
        );
        if kind == SamplerKind::Ddim {
            assert!(slope < last_slope, "{label}");
            last_slope = slope;
        }
    }
}

/// Sample `first + 3` of an SDEdit or inpainting batch is the same bits in a batch of 7 as alone
/// (its own input row and noise stream).
#[test]
fn edits_do_not_depend_on_their_batch() {
    let (s, oracle) = gaussian();
    let p = eps_fixed(VarianceType::FixedSmall);
    let x_in = grid(7, 12).reshape((7, 3, 2, 2)).unwrap();
    let row = x_in.narrow(0, 3, 1).unwrap();
    let mask = Tensor::from_vec(vec![1f32, 0.0, 0.0, 1.0], (1, 1, 2, 2), &Device::Cpu).unwrap();
    for kind in [SamplerKind::Ddpm, SamplerKind::Pc] {
        let batch = SampleOptions {
            first_index: 10,
            ..opts(kind, 20, Spacing::Trailing, 0.0)
        };
        let alone = SampleOptions {
            first_index: 13,
            ..batch
        };
        let edit = |o: &SampleOptions, x: &Tensor| {
            flat(&sample_from(&oracle, &s, p, o, x, 0.6, &mut no_callback).unwrap())
        };
        let fill = |o: &SampleOptions, x: &Tensor| {
            let spec = Inpainting {
                known: x,
                mask: &mask,
                resample: 2,
            };
            flat(&inpaint(&oracle, &s, p, o, &spec, &mut no_callback).unwrap())
        };
        for (name, seven, one) in [
            ("sdedit", edit(&batch, &x_in), edit(&alone, &row)),
            ("inpaint", fill(&batch, &x_in), fill(&alone, &row)),
        ] {
            assert_eq!(&seven[3 * 12..4 * 12], &one[..], "{name} {kind}");
            assert_ne!(
                &seven[2 * 12..3 * 12],
                &one[..],
                "{name} {kind}: rows must differ"
            );
        }
    }
}
