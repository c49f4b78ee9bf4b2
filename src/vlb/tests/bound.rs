//! The bound against the entropy of a known discrete distribution.
//!
//! Data: M = 4 prototype vectors of D = 3 quantised pixels with probabilities p_k, so the
//! entropy is H = -sum p_k log2 p_k bits per example, H / D per dimension. For any model,
//! E_data[bound] = H + KL(q(x_{0:T}) || p(x_{0:T})) >= H (the chain's joint KL). Every example
//! of a prototype is evaluated R times with independent noise and the prototypes are weighted by
//! p_k, so the data expectation is exact and only the Monte Carlo error over eps remains.
//!
//! How close the exact model (the mixture oracle with std-0 components) comes: with the true
//! posterior mean and fixed-small variance, the term at step t is 0.5 (SNR_{t-1} - SNR_t)
//! |x0 - E[x0|x_t]|^2, whose mean is a left Riemann sum of the I-MMSE integral
//! I = 0.5 int mmse(snr) dsnr = H (Guo, Shamai & Verdu 2005) taken at the noisier end of each
//! step. With log-SNR lambda spaced evenly by d, the excess is about
//! sum 0.5 snr (-dmmse/dlambda) d^2 / 2 = (d / 4) int snr (-dmmse/dlambda) dlambda = (d / 2) H
//! (integrating by parts: int snr mmse dlambda = 2H). The prior (abar_{T-1} = sigmoid(-10)) and the
//! decoder (its std sqrt(beta~_1) ~ 1.4e-4 is 27 times below the half bin 1/255) add under 1e-4.
//! So the oracle's bound should exceed H/D by about (d / 2) H/D = 0.0074 bits/dim here (d = 24/999);
//! the test allows twice that plus four standard errors (an example's bound varies by about 0.1
//! bits/dim: which steps reveal its prototype is random). Measured while writing this test with
//! 1024 repeats per prototype and seeds 1, 2, 3: 0.6254, 0.6230, 0.6234 (standard error 0.0016)
//! against the predicted H/D + 0.0074 = 0.6229.

use super::*;
use crate::oracle::{Component, MixtureOracle};

const STEPS: usize = 1000;
const LAMBDA_MAX: f64 = 14.0;
const LAMBDA_MIN: f64 = -10.0;

/// abar_i = sigmoid(lambda_i), lambda from +14 down to -10 evenly: sharp at index 0, noise at the end.
fn log_snr_schedule() -> Schedule {
    let d = (LAMBDA_MAX - LAMBDA_MIN) / (STEPS - 1) as f64;
    let abar: Vec<f64> = (0..STEPS)
        .map(|i| 1.0 / (1.0 + (-(LAMBDA_MAX - d * i as f64)).exp()))
        .collect();
    let mut prev = 1.0;
    let betas = abar
        .iter()
        .map(|&a| {
            let b = 1.0 - a / prev;
            prev = a;
            b
        })
        .collect();
    Schedule::from_betas(betas).unwrap()
}

const LEVELS: [[usize; 3]; 4] = [[0, 128, 255], [255, 64, 0], [128, 128, 128], [30, 220, 100]];
const PROBS: [f64; 4] = [0.4, 0.3, 0.2, 0.1];

fn prototype(k: usize) -> Vec<f64> {
    LEVELS[k]
        .iter()
        .map(|&l| 2.0 * l as f64 / 255.0 - 1.0)
        .collect()
}

fn discrete_oracle(weights: [f64; 4], schedule: &Schedule) -> MixtureOracle {
    let components = (0..4)
        .map(|k| Component {
            weight: weights[k],
            mean: prototype(k),
            std: 0.0,
        })
        .collect();
    MixtureOracle::new(components, schedule.alphas_cumprod.clone()).unwrap()
}

/// The data-weighted mean bound in bits/dim and its standard error.
fn expected_bound(model: &dyn Denoiser, schedule: &Schedule, repeats: usize) -> (f64, f64) {
    let rows: Vec<f32> = (0..4)
        .flat_map(|k| std::iter::repeat_n(prototype(k), repeats).flatten())
        .map(|v| v as f32)
        .collect();
    let x0 = Tensor::from_vec(rows, (4 * repeats, 3), &Device::Cpu).unwrap();
    let mut noise = BatchNoise::new(11, Purpose::Eval, 0, 4 * repeats);
    let param = Parameterization::default();
    let b = variational_bound(
        model,
        schedule,
        param,
        false,
        &x0,
        &mut noise,
        &mut |_, _| Ok(()),
    )
    .unwrap();
    let (mut mean, mut var_of_mean) = (0.0, 0.0);
    for (k, rows) in b.total.chunks(repeats).enumerate() {
        let m = rows.iter().sum::<f64>() / repeats as f64;
        let v = rows.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (repeats - 1) as f64;
        mean += PROBS[k] * m;
        var_of_mean += PROBS[k] * PROBS[k] * v / repeats as f64;
    }
    (mean, var_of_mean.sqrt())
}

/// -sum p_k log2 q_k / D: the cross-entropy per dimension (the entropy when q = p).
fn cross_entropy_per_dim(q: [f64; 4]) -> f64 {
    -PROBS.iter().zip(q).map(|(p, q)| p * q.log2()).sum::<f64>() / 3.0
}

#[test]
fn the_oracle_bound_is_just_above_the_entropy_and_a_poor_model_far_above() {
    let s = log_snr_schedule();
    let d = (LAMBDA_MAX - LAMBDA_MIN) / (STEPS - 1) as f64;
    let entropy = cross_entropy_per_dim(PROBS);
    let excess = d / 2.0 * entropy;

    let (oracle, se0) = expected_bound(&discrete_oracle(PROBS, &s), &s, 256);
    assert!(
        oracle >= entropy - 4.0 * se0,
        "{oracle} < H/D = {entropy} (se {se0})"
    );
    assert!(
        oracle <= entropy + 2.0 * excess + 4.0 * se0,
        "{oracle} vs H/D = {entropy}, expected excess {excess} (se {se0})"
    );

    // An exact model of the wrong weights q pays the cross-entropy -sum p log2 q >= H instead:
    // its reverse chain is the time reversal of a forward process started at q, so the bound is
    // -log2 q(x0) per example up to a discretisation excess of the same (d / 2) order.
    let q = [0.1, 0.2, 0.3, 0.4];
    let cross = cross_entropy_per_dim(q);
    let (wrong, se) = expected_bound(&discrete_oracle(q, &s), &s, 128);
    assert!(
        wrong >= cross - 4.0 * se && wrong <= cross + 2.0 * d / 2.0 * cross + 4.0 * se,
        "{wrong} vs cross-entropy {cross} (se {se})"
    );

    // Predicting eps = 0 leaves x0_hat = x_t / sqrt(abar): each step costs about
    // 0.5 d nats per dim, 0.5 (14 + 10) / ln 2 = 17 bits/dim in all.
    let (poor, _) = expected_bound(&Zero, &s, 4);
    assert!(poor > entropy + 10.0, "{poor}");
}
