//! DDIM inversion on the exact Gaussian oracle (where inversion and sampling are exact affine
//! maps) and slerp's geometry.

use super::tests::{eps_fixed, flat, linear_schedule, max_abs_diff, opts};
use super::*;
use crate::diffusion::VarianceType;
use crate::oracle::MixtureOracle;
use crate::rng::Stream;

/// x0 ~ N(0.4, 0.3^2 I), linear T = 1000, 50 trailing steps. Inversion is affine in x0 and DDIM
/// (eta = 0) affine in x_T, so the latent is P x0 + Q and the reconstruction P' x0 + Q'. This
/// script, appended to edit_tests' (which defines `step`), gives them:
///
/// ```text
/// def invert(K, refine):
///     ab = [abar_full[k] for k in trailing(K)]; P, Q, prev = 1.0, 0.0, 1.0
///     for i in range(K):
///         d = ab[i] * s * s + 1 - ab[i]
///         ae, be = math.sqrt(1 - ab[i]) / d, -math.sqrt(1 - ab[i]) * math.sqrt(ab[i]) * mu / d
///         al, sg, alp, sgp = math.sqrt(ab[i]), math.sqrt(1 - ab[i]), math.sqrt(prev), math.sqrt(1 - prev)
///         c = sg - al * sgp / alp
///         nP, nQ = al / alp * P + c * ae * P, al / alp * Q + c * (ae * Q + be)
///         for _ in range(refine):  # eps re-evaluated at the new point
///             nP, nQ = al / alp * P + c * ae * nP, al / alp * Q + c * (ae * nQ + be)
///         P, Q, prev = nP, nQ, ab[i]
///     latent, ab_prev = (P, Q), [1.0] + ab[:-1]
///     for i in reversed(range(K)):
///         A, B, _ = step(ab[i], ab_prev[i], "ddim", i); P, Q = A * P, A * Q + B
///     return latent, (P, Q)
/// for refine in [0, 1, 2, 3, 5]:
///     print(refine, invert(50, refine))
/// ```
///
/// ```text
/// refine  latent               reconstruction         max |x_rec - x0| on [-1, 1]
/// 0       3.231101 x0 - 1.237629  0.883019 x0 + 0.061077  1.8e-1
/// 1       3.613902 x0 - 1.437348  0.987634 x0 + 0.006496  1.9e-2
/// 2       3.654532 x0 - 1.458654  0.998737 x0 + 0.000674  1.9e-3
/// 3       3.658677 x0 - 1.460861  0.999870 x0 + 0.000071  2.0e-4
/// 5       3.659146 x0 - 1.461116  0.999999 x0 + 0.000001  2.2e-6
/// ```
///
/// Plain inversion (refine 0) is only first-order accurate: on data this narrow (s = 0.3, where
/// eps changes fast with x near t = 0) it loses 12% of x0's deviation at 50 steps, O(1/K); each
/// refinement divides the error by ~10. (The exact ODE latent would be (x0 - 0.4) / 0.3 =
/// 3.333 x0 - 1.333; DDIM-50's own inverse is 3.659 x0 - 1.461.)
///
/// Tolerance: f32 over 50-300 model calls, measured at most 4e-6 on the latent (values up to
/// ~5) and 2e-6 on the reconstruction; allowed 5e-5, far below the 4e-3 the nearest rows
/// differ by on [-1, 1].
#[test]
fn ddim_inversion_and_reconstruction_are_the_exact_affine_maps() {
    let s = linear_schedule();
    let oracle = MixtureOracle::gaussian(0.4, 0.3, s.alphas_cumprod.clone()).unwrap();
    let p = eps_fixed(VarianceType::FixedSmall);
    let n = 8 * 16;
    let grid: Vec<f32> = (0..n)
        .map(|j| (-1.0 + 2.0 * j as f64 / (n - 1) as f64) as f32)
        .collect();
    let x0 = Tensor::from_vec(grid, (8, 16), &Device::Cpu).unwrap();
    let xs = flat(&x0);
    let sampling = opts(SamplerKind::Ddim, 50, Spacing::Trailing, 0.0);
    for (refine, (p_lat, q_lat), (p_rec, q_rec), worst) in [
        (0, (3.231101, -1.237629), (0.883019, 0.061077), 0.19),
        (3, (3.658677, -1.460861), (0.999870, 0.000071), 2.5e-4),
        (5, (3.659146, -1.461116), (0.999999, 0.000001), 3e-5),
    ] {
        let inv = InvertOptions {
            steps: 50,
            spacing: Spacing::Trailing,
            refine,
        };
        let mut seen = Vec::new();
        let latent = ddim_invert(&oracle, &s, p, &inv, &x0, &mut |info| {
            seen.push((info.index, info.total, info.t));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen.len(), 50);
        assert!(seen.iter().enumerate().all(|(k, v)| v.0 == k && v.1 == 50));
        assert_eq!(
            (seen[0].2, seen[49].2),
            (19, 999),
            "t climbs from 19 to 999"
        );
        let want: Vec<f64> = xs.iter().map(|x| p_lat * x + q_lat).collect();
        let d = max_abs_diff(&flat(&latent), &want);
        assert!(d < 5e-5, "refine {refine}: latent off by {d}");
        let x_rec =
            sample_from_latent(&oracle, &s, p, &sampling, &latent, &mut |_| Ok(())).unwrap();
        let x_rec = flat(&x_rec);
        let want: Vec<f64> = xs.iter().map(|x| p_rec * x + q_rec).collect();
        let d = max_abs_diff(&x_rec, &want);
        assert!(
            d < 5e-5,
            "refine {refine}: reconstruction off the map by {d}"
        );
        let err = max_abs_diff(&x_rec, &xs);
        assert!(err < worst, "refine {refine}: reconstruction error {err}");
    }
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
