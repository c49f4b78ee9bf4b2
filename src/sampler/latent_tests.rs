//! DDIM inversion on the exact Gaussian oracle (where inversion and sampling are exact affine
//! maps) and slerp's geometry.

use super::tests::{eps_fixed, flat, linear_schedule, max_abs_diff, opts};
use super::*;
use crate::diffusion::VarianceType;
use crate::oracle::MixtureOracle;
use crate::rng::Stream;
use crate::schedule::BetaSchedule;

/// x0 ~ N(0.4, 0.3^2 I), T = 1000, 50 trailing steps; eps = the exact E[eps | x_t] + `bias`.
/// Inversion is affine in x0 and DDIM (eta = 0) affine in x, so the latent is P x0 + Q and the
/// reconstruction P' x0 + Q'. This script, appended to oracle_tests' (which defines T, mu, s,
/// abar_full and trailing), gives them, inverting the `top` lowest steps (`inversion_steps`:
/// 46 linear, 49 cosine) or, as before the fix, all 50:
///
/// ```text
/// def coeffs(ab):  # eps = ae x + be, x0 = a0 x + b0 (the exact E[eps | x_t])
///     d = ab * s * s + 1 - ab
///     ae, be = math.sqrt(1 - ab) / d, -math.sqrt(1 - ab) * math.sqrt(ab) * mu / d
///     return ae, be, (1 - math.sqrt(1 - ab) * ae) / math.sqrt(ab), -math.sqrt(1 - ab) * be / math.sqrt(ab)
/// if sys.argv[2:] == ["cosine"]:
///     f = lambda t: math.cos(((t / T + 0.008) / 1.008) * math.pi / 2) ** 2
///     betas = [min(1 - f(i + 1) / f(i), 0.999) for i in range(T)]
///     abar_full, acc = [], 1.0
///     for b in betas:
///         acc *= 1 - b; abar_full.append(acc)
/// def invert(K, refine, top, bias):
///     ab = [abar_full[k] for k in trailing(K)]; P, Q, prev = 1.0, 0.0, 1.0
///     for i in range(top):
///         ae, be, _, _ = coeffs(ab[i]); be += bias
///         al, sg, alp, sgp = math.sqrt(ab[i]), math.sqrt(1 - ab[i]), math.sqrt(prev), math.sqrt(1 - prev)
///         c = sg - al * sgp / alp
///         nP, nQ = al / alp * P + c * ae * P, al / alp * Q + c * (ae * Q + be)
///         for _ in range(refine):  # eps re-evaluated at the new point
///             nP, nQ = al / alp * P + c * ae * nP, al / alp * Q + c * (ae * nQ + be)
///         P, Q, prev = nP, nQ, ab[i]
///     latent, ab_prev = (P, Q), [1.0] + ab[:-1]
///     for i in reversed(range(top)):
///         ae, be, _, _ = coeffs(ab[i]); be += bias
///         a0, b0 = (1 - math.sqrt(1 - ab[i]) * ae) / math.sqrt(ab[i]), -math.sqrt(1 - ab[i]) * be / math.sqrt(ab[i])
///         c = math.sqrt(1 - ab_prev[i])
///         A, B = math.sqrt(ab_prev[i]) * a0 + c * ae, math.sqrt(ab_prev[i]) * b0 + c * be
///         P, Q = A * P, A * Q + B
///     return latent, (P, Q)
/// ```
///
/// Linear (`invert(50, refine, 46, 0.0)`):
///
/// ```text
/// refine  latent                  reconstruction          max |x_rec - x0| on [-1, 1]
/// 0       3.230917 x0 - 1.235102  0.883030 x0 + 0.060930  1.8e-1
/// 3       3.658425 x0 - 1.457782  0.999870 x0 + 0.000070  2.0e-4
/// 5       3.658894 x0 - 1.458035  0.999999 x0 + 0.000001  2.2e-6
/// ```
///
/// Plain inversion (refine 0) is only first-order accurate: on data this narrow (s = 0.3, where
/// eps changes fast with x near t = 0) it loses 12% of x0's deviation at 50 steps, O(1/K); each
/// refinement divides the error by ~10. (Inverting all 50 steps, up to t = 999, as before
/// the cosine fix, reconstructed as well here: 0.883019 x0 + 0.061077 at refine 0,
/// 0.999999 x0 + 0.000001 at 5.)
///
/// Tolerance: f32 over 50-300 model calls, measured at most 4e-6 on the latent (values up to
/// ~5) and 2e-6 on the reconstruction; allowed 5e-5, far below the 4e-3 the nearest rows
/// differ by on [-1, 1].
#[test]
fn ddim_inversion_and_reconstruction_are_the_exact_affine_maps() {
    let s = Schedule::new(BetaSchedule::Linear, 1000, 1e-4, 0.02, false).unwrap();
    let oracle = MixtureOracle::gaussian(0.4, 0.3, s.alphas_cumprod.clone()).unwrap();
    for (refine, latent, reconstruction, worst) in [
        (0, (3.230917, -1.235102), (0.883030, 0.060930), 0.19),
        (3, (3.658425, -1.457782), (0.999870, 0.000070), 2.5e-4),
        (5, (3.658894, -1.458035), (0.999999, 0.000001), 3e-5),
    ] {
        let seen = check_round_trip(&oracle, &s, refine, latent, reconstruction, worst);
        assert_eq!(seen.len(), 46);
        assert!(seen.iter().enumerate().all(|(k, v)| v.0 == k && v.1 == 46));
        assert_eq!(
            (seen[0].2, seen[45].2),
            (19, 919),
            "t climbs from 19 to 919, the last step below sigma = 80"
        );
    }
}

/// The cosine schedule's abar_T = 2.4e-9 puts x_T at sigma = 2e4, and the step from there reads
/// x0 as the eps error times 2e4. An eps-model off by 0.01 everywhere (the exact eps + 0.01;
/// a trained network is never exact) showed it: inverting all 50 steps, refine 5, the
/// reconstruction was 0.999493 x0 - 1.786814, off by up to 1.79 on [-1, 1] (the digits model's
/// end frames were pure 0/255); inverting the 49 steps below sigma = 80 (t = 979, sigma = 32),
/// it is 0.999974 x0 + 0.000025, latent 3.492632 x0 - 1.324390
/// (`invert(50, 5, 49, 0.01)` in the script above, with arguments `0.3 cosine`).
#[test]
fn inversion_on_a_cosine_schedule_reconstructs_despite_an_eps_error() {
    let s = Schedule::new(BetaSchedule::Cosine, 1000, 1e-4, 0.02, false).unwrap();
    let oracle = MixtureOracle::gaussian(0.4, 0.3, s.alphas_cumprod.clone()).unwrap();
    let model = OffBy {
        model: &oracle,
        bias: 0.01,
    };
    let respaced = s.for_sampling(50, Spacing::Trailing).unwrap();
    assert_eq!(inversion_steps(&respaced).unwrap(), 49);
    let seen = check_round_trip(
        &model,
        &s,
        5,
        (3.492632, -1.324390),
        (0.999974, 0.000025),
        1e-4,
    );
    assert_eq!((seen.len(), seen[48].2), (49, 979));
}

/// With one step every step starts at t = 999 (sigma 2e4 on the cosine schedule): nothing lies
/// below sigma = 80 to invert to, which is an error, not a latent.
#[test]
fn inversion_needs_a_step_below_sigma_max() {
    let s = Schedule::new(BetaSchedule::Cosine, 1000, 1e-4, 0.02, false).unwrap();
    let msg = inversion_steps(&s.for_sampling(1, Spacing::Trailing).unwrap())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("use more steps"), "{msg}");
    assert_eq!(
        inversion_steps(&s.for_sampling(2, Spacing::Trailing).unwrap()).unwrap(),
        1
    );
}

/// An eps-model: `model`'s output plus a constant.
struct OffBy<'a> {
    model: &'a dyn Denoiser,
    bias: f64,
}

impl Denoiser for OffBy<'_> {
    fn forward(&self, x_t: &Tensor, t: &[usize]) -> Result<Tensor> {
        Ok((self.model.forward(x_t, t)? + self.bias)?)
    }
}

/// Invert a grid of x0 over [-1, 1] with 50 trailing steps and `refine`, sample it back with
/// DDIM-50 (eta 0, no clipping) from the latent's own step, and check both against their exact
/// affine maps (P, Q) and the reconstruction error against `worst`. Returns what the inversion
/// reported per step: (index, total, t).
fn check_round_trip(
    model: &dyn Denoiser,
    s: &Schedule,
    refine: usize,
    (p_lat, q_lat): (f64, f64),
    (p_rec, q_rec): (f64, f64),
    worst: f64,
) -> Vec<(usize, usize, usize)> {
    let p = eps_fixed(VarianceType::FixedSmall);
    let n = 8 * 16;
    let grid: Vec<f32> = (0..n)
        .map(|j| (-1.0 + 2.0 * j as f64 / (n - 1) as f64) as f32)
        .collect();
    let x0 = Tensor::from_vec(grid, (8, 16), &Device::Cpu).unwrap();
    let xs = flat(&x0);
    let inv = InvertOptions {
        steps: 50,
        spacing: Spacing::Trailing,
        refine,
    };
    let mut seen = Vec::new();
    let latent = ddim_invert(model, s, p, &inv, &x0, &mut |info| {
        seen.push((info.index, info.total, info.t));
        Ok(())
    })
    .unwrap();
    let want: Vec<f64> = xs.iter().map(|x| p_lat * x + q_lat).collect();
    let d = max_abs_diff(&flat(&latent.x), &want);
    assert!(d < 5e-5, "refine {refine}: latent off by {d}");
    let sampling = opts(SamplerKind::Ddim, 50, Spacing::Trailing, 0.0);
    let x_rec = sample_from_latent(model, s, p, &sampling, &latent.x, latent.from, &mut |_| {
        Ok(())
    })
    .unwrap();
    let x_rec = flat(&x_rec);
    let want: Vec<f64> = xs.iter().map(|x| p_rec * x + q_rec).collect();
    let d = max_abs_diff(&x_rec, &want);
    assert!(
        d < 5e-5,
        "refine {refine}: reconstruction off the map by {d}"
    );
    let err = max_abs_diff(&x_rec, &xs);
    assert!(err < worst, "refine {refine}: reconstruction error {err}");
    seen
}

fn norms(x: &Tensor) -> Vec<f64> {
    let rows: Vec<Vec<f64>> = x.to_dtype(DType::F64).unwrap().to_vec2().unwrap();
    rows.iter()
        .map(|r| r.iter().map(|v| v * v).sum::<f64>().sqrt())
        .collect()
}

fn cosines(a: &Tensor, b: &Tensor) -> Vec<f64> {
    let (ra, rb): (Vec<Vec<f64>>, Vec<Vec<f64>>) = (
        a.to_dtype(DType::F64).unwrap().to_vec2().unwrap(),
        b.to_dtype(DType::F64).unwrap().to_vec2().unwrap(),
    );
    ra.iter()
        .zip(&rb)
        .map(|(p, q)| {
            let dot: f64 = p.iter().zip(q).map(|(u, v)| u * v).sum();
            let n = |v: &[f64]| v.iter().map(|u| u * u).sum::<f64>().sqrt();
            dot / (n(p) * n(q))
        })
        .collect()
}

/// slerp's endpoints are a and b; between two rows of equal norm it keeps the norm and turns
/// by w theta (cos(angle(a, slerp)) = cos(w theta)); for two independent N(0, I) latents in
/// D = 1024 (nearly orthogonal) its midpoint has ~the latents' norm where lerp's has ~0.71 of
/// it. f32 tolerances: 1e-5 relative.
#[test]
fn slerp_has_its_endpoints_keeps_the_norm_and_turns_evenly() {
    let dev = Device::Cpu;
    let a = Stream::new(1, Purpose::Eval, 0)
        .randn((3, 1024), &dev)
        .unwrap();
    let b = Stream::new(1, Purpose::Eval, 1)
        .randn((3, 1024), &dev)
        .unwrap();
    assert!(max_abs_diff(&flat(&slerp(&a, &b, 0.0).unwrap()), &flat(&a)) < 1e-5);
    assert!(max_abs_diff(&flat(&slerp(&a, &b, 1.0).unwrap()), &flat(&b)) < 1e-5);
    // Rescale b's rows to a's norms.
    let (na, nb) = (norms(&a), norms(&b));
    let scale: Vec<f32> = na.iter().zip(&nb).map(|(x, y)| (x / y) as f32).collect();
    let b_eq = b
        .broadcast_mul(&Tensor::from_vec(scale, (3, 1), &dev).unwrap())
        .unwrap();
    let theta: Vec<f64> = cosines(&a, &b_eq).iter().map(|c| c.acos()).collect();
    for w in [0.25, 0.5, 0.75] {
        let m = slerp(&a, &b_eq, w).unwrap();
        for (got, want) in norms(&m).iter().zip(&na) {
            assert!(
                (got / want - 1.0).abs() < 1e-5,
                "w {w}: norm {got} vs {want}"
            );
        }
        for (c, th) in cosines(&a, &m).iter().zip(&theta) {
            assert!(
                (c - (w * th).cos()).abs() < 1e-5,
                "w {w}: cos {c} vs {}",
                (w * th).cos()
            );
        }
    }
    let mid = norms(&slerp(&a, &b, 0.5).unwrap());
    let lerp = norms(&((&a + &b).unwrap() * 0.5).unwrap());
    for ((s, l), n) in mid.iter().zip(&lerp).zip(&na) {
        // |a| ~ |b| ~ 32 +- 0.7 and cos ~ 0 +- 0.03: slerp's midpoint within 5%, lerp's near 0.71.
        assert!((s / n - 1.0).abs() < 0.05, "slerp midpoint norm {s} vs {n}");
        assert!((l / n - 0.71).abs() < 0.05, "lerp midpoint norm {l} vs {n}");
    }
}

/// Parallel rows (and a zero row) have no great circle: slerp falls back to the straight line;
/// mismatched shapes are an error.
#[test]
fn slerp_degenerate_rows_and_bad_shapes() {
    let dev = Device::Cpu;
    let a = Tensor::new(&[[1f32, 2.0, 2.0], [0.0, 0.0, 0.0]], &dev).unwrap();
    let b = Tensor::new(&[[2f32, 4.0, 4.0], [1.0, 0.0, 0.0]], &dev).unwrap();
    let m = flat(&slerp(&a, &b, 0.5).unwrap());
    assert_eq!(m, vec![1.5, 3.0, 3.0, 0.5, 0.0, 0.0]);
    let c = Tensor::zeros((2, 4), DType::F32, &dev).unwrap();
    assert!(slerp(&a, &c, 0.5).is_err());
}

/// Given noise replays a run draw for draw: x_T and the ancestral sampler's 9 later draws,
/// taken from the same per-sample streams `sample` draws from, give `sample`'s images bit for
/// bit; one draw too few or too many is an error.
#[test]
fn given_noise_reproduces_a_stochastic_run() {
    let s = linear_schedule();
    let oracle = MixtureOracle::gaussian(0.4, 0.3, s.alphas_cumprod.clone()).unwrap();
    let p = eps_fixed(VarianceType::FixedLarge);
    let o = SampleOptions {
        first_index: 5,
        ..opts(SamplerKind::Ddpm, 10, Spacing::Leading, 0.0)
    };
    let (b, per) = (3, [2usize, 2]);
    let dev = Device::Cpu;
    let want = sample(&oracle, &s, p, &o, &[b, 2, 2], &dev, &mut |_| Ok(())).unwrap();
    let mut noise = BatchNoise::new(o.seed, Purpose::SampleNoise, o.first_index, b);
    let x_t = noise.randn(&per, &dev).unwrap();
    let draws: Vec<Tensor> = (0..10).map(|_| noise.randn(&per, &dev).unwrap()).collect();
    let replay = |k: usize| {
        let d = Tensor::stack(&draws[..k], 0).unwrap();
        sample_replaying(&oracle, &s, p, &o, &x_t, &d, &mut |_| Ok(()))
    };
    assert_eq!(flat(&replay(9).unwrap()), flat(&want));
    assert!(replay(8).unwrap_err().to_string().contains("asks for more"));
    assert!(replay(10)
        .unwrap_err()
        .to_string()
        .contains("1 more draws per image than"));
}
