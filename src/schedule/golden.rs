//! Golden values for the schedules and timestep spacings, produced by this independent numpy
//! script (numpy 2.4; linear and cosine betas as in improved-diffusion, spacings as in diffusers'
//! `DDIMScheduler.set_timesteps`):
//!
//! ```python
//! import math
//! import numpy as np
//!
//! T = 1000
//! def linear(T):
//!     scale = 1000 / T
//!     return np.linspace(scale * 0.0001, scale * 0.02, T, dtype=np.float64)
//! def cosine(T, s=0.008):
//!     f = lambda t: math.cos((t + s) / (1 + s) * math.pi / 2) ** 2
//!     return np.array([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)])
//! for name, betas in [("linear", linear(T)), ("cosine", cosine(T))]:
//!     ab = np.cumprod(1.0 - betas)
//!     ab_prev = np.append(1.0, ab[:-1])
//!     pv = betas * (1.0 - ab_prev) / (1.0 - ab)
//!     print(name, "alphas_cumprod", [(t, repr(ab[t])) for t in (0, 1, 10, 100, 250, 500, 750, 999)])
//!     print(name, "posterior_variance", [(t, repr(pv[t])) for t in (0, 1, 10, 100, 500, 999)])
//! for K in (10, 50, 7, 30):
//!     lin = np.linspace(0, T - 1, K).round()[::-1].copy().astype(np.int64)
//!     lead = (np.arange(0, K) * (T // K)).round()[::-1].copy().astype(np.int64)
//!     trail = np.round(np.arange(T, 0, -T / K)).astype(np.int64) - 1
//!     for n, ts in [("linspace", lin), ("leading", lead), ("trailing", trail)]:
//!         print(K, n, sorted(set(ts.tolist())))
//! ```

use super::*;

fn assert_close(name: &str, got: &[f64], golden: &[(usize, f64)]) {
    for &(t, want) in golden {
        let g = got[t];
        assert!(
            (g - want).abs() <= 1e-12 * want.abs(),
            "{name}[{t}] = {g:e}, numpy {want:e}"
        );
    }
}

#[test]
fn linear_schedule_matches_numpy() {
    let s = Schedule::new(BetaSchedule::Linear, 1000, 1e-4, 0.02, false).unwrap();
    assert_close(
        "alphas_cumprod",
        &s.alphas_cumprod,
        &[
            (0, 0.9999),
            (1, 0.9997800920720721),
            (10, 0.997806572507846),
            (100, 0.8951415908975365),
            (250, 0.5214230306185275),
            (500, 0.07779665836502389),
            (750, 0.003300158361569426),
            (999, 4.035829765375676e-05),
        ],
    );
    assert_close(
        "posterior_variance",
        &s.posterior_variance,
        &[
            (0, 0.0),
            (1, 5.4531876613021935e-05),
            (10, 0.0002584636204081144),
            (100, 0.002054553529969665),
            (500, 0.010051335778909593),
            (999, 0.01999998352656061),
        ],
    );
}

#[test]
fn cosine_schedule_matches_numpy() {
    let s = Schedule::new(BetaSchedule::Cosine, 1000, 1e-4, 0.02, false).unwrap();
    assert_close(
        "alphas_cumprod",
        &s.alphas_cumprod,
        &[
            (0, 0.999958715775178),
            (1, 0.9999125759273678),
            (10, 0.9992789037733427),
            (100, 0.9715756818078386),
            (250, 0.8458879864968832),
            (500, 0.49228517244880304),
            (750, 0.14317864642609812),
            (999, 2.4287669070348567e-09),
        ],
    );
    assert_close(
        "posterior_variance",
        &s.posterior_variance,
        &[
            (0, 0.0),
            (1, 2.178949614569182e-05),
            (10, 7.867762336998671e-05),
            (100, 0.0005222235927197719),
            (500, 0.0031460051254634824),
            (999, 0.9989975760881921),
        ],
    );
}

fn spaced(k: usize, spacing: Spacing) -> Vec<usize> {
    spaced_timesteps(1000, k, spacing).unwrap()
}

#[test]
fn spacings_match_diffusers_for_divisible_step_counts() {
    assert_eq!(
        spaced(10, Spacing::Linspace),
        [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]
    );
    assert_eq!(
        spaced(10, Spacing::Leading),
        [0, 100, 200, 300, 400, 500, 600, 700, 800, 900]
    );
    assert_eq!(
        spaced(10, Spacing::Trailing),
        [99, 199, 299, 399, 499, 599, 699, 799, 899, 999]
    );
    assert_eq!(
        spaced(50, Spacing::Linspace),
        [
            0, 20, 41, 61, 82, 102, 122, 143, 163, 183, 204, 224, 245, 265, 285, 306, 326, 347,
            367, 387, 408, 428, 449, 469, 489, 510, 530, 550, 571, 591, 612, 632, 652, 673, 693,
            714, 734, 754, 775, 795, 816, 836, 856, 877, 897, 917, 938, 958, 979, 999
        ]
    );
    assert_eq!(
        spaced(50, Spacing::Leading),
        (0..50).map(|k| 20 * k).collect::<Vec<_>>()
    );
    assert_eq!(
        spaced(50, Spacing::Trailing),
        (1..=50).map(|k| 20 * k - 1).collect::<Vec<_>>()
    );
}

#[test]
fn spacings_match_diffusers_for_uneven_step_counts() {
    assert_eq!(
        spaced(7, Spacing::Linspace),
        [0, 166, 333, 500, 666, 832, 999]
    );
    assert_eq!(
        spaced(7, Spacing::Leading),
        [0, 142, 284, 426, 568, 710, 852]
    );
    assert_eq!(
        spaced(7, Spacing::Trailing),
        [142, 285, 428, 570, 713, 856, 999]
    );
    assert_eq!(
        spaced(30, Spacing::Linspace),
        [
            0, 34, 69, 103, 138, 172, 207, 241, 276, 310, 344, 379, 413, 448, 482, 517, 551, 586,
            620, 655, 689, 723, 758, 792, 827, 861, 896, 930, 965, 999
        ]
    );
    assert_eq!(
        spaced(30, Spacing::Leading),
        (0..30).map(|k| 33 * k).collect::<Vec<_>>()
    );
    assert_eq!(
        spaced(30, Spacing::Trailing),
        [
            32, 66, 99, 132, 166, 199, 232, 266, 299, 332, 366, 399, 432, 466, 499, 532, 566, 599,
            632, 666, 699, 732, 766, 799, 832, 866, 899, 932, 966, 999
        ]
    );
}
