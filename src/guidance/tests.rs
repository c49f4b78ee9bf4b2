//! Guidance on exact models: class k's data is N(mu_k, s^2 I) and the unconditional data their
//! equal mixture, so eps_c and eps_u are the `oracle`'s closed forms and every guided output can
//! be recomputed from two separate, independent forwards.

use std::cell::RefCell;

use candle_core::{Device, Tensor};

use super::*;
use crate::diffusion::{Parameterization, Prediction, VarianceType};
use crate::oracle::{Component, MixtureOracle};
use crate::rng::Purpose;
use crate::sampler::{sample, SampleOptions, SamplerKind};
use crate::schedule::{BetaSchedule, Schedule, Spacing};

const MEANS: [f64; 2] = [-1.0, 1.0];
const STD: f64 = 0.5;

/// Per-class Gaussian oracles, their mixture as the null label, and a log of the batch size of
/// every forward.
struct Classes {
    classes: Vec<MixtureOracle>,
    null: MixtureOracle,
    calls: RefCell<Vec<usize>>,
    /// Append a "variance" channel block equal to the label, to see where it comes from.
    variance_channels: bool,
}

impl Classes {
    fn new(abar: &[f64], variance_channels: bool) -> Self {
        let comp = |m: f64| Component {
            weight: 1.0,
            mean: vec![m],
            std: STD,
        };
        Classes {
            classes: MEANS
                .iter()
                .map(|&m| MixtureOracle::gaussian(m, STD, abar.to_vec()).unwrap())
                .collect(),
            null: MixtureOracle::new(MEANS.iter().map(|&m| comp(m)).collect(), abar.to_vec())
                .unwrap(),
            calls: RefCell::new(Vec::new()),
            variance_channels,
        }
    }

    /// eps for one row under label y, computed alone.
    fn eps(&self, x: &Tensor, t: usize, y: u32) -> Tensor {
        let model = self.classes.get(y as usize).unwrap_or(&self.null);
        model.forward(x, &[t]).unwrap()
    }
}

impl Conditional for Classes {
    fn forward_labels(&self, x_t: &Tensor, t: &[usize], labels: &[u32]) -> Result<Tensor> {
        self.calls.borrow_mut().push(labels.len());
        let rows: Vec<Tensor> = (0..labels.len())
            .map(|i| {
                let x = x_t.narrow(0, i, 1).unwrap();
                let eps = self.eps(&x, t[i], labels[i]);
                if self.variance_channels {
                    let v = (eps.ones_like().unwrap() * labels[i] as f64).unwrap();
                    Tensor::cat(&[&eps, &v], 1).unwrap()
                } else {
                    eps
                }
            })
            .collect();
        Ok(Tensor::cat(&rows, 0)?)
    }

    fn num_classes(&self) -> usize {
        self.classes.len()
    }
}

fn schedule() -> Schedule {
    Schedule::new(BetaSchedule::Linear, 1000, 1e-4, 0.02, false).unwrap()
}

fn values(x: &Tensor) -> Vec<f32> {
    x.flatten_all().unwrap().to_vec1().unwrap()
}

/// Three examples of 4 values, at three timesteps.
fn batch() -> (Tensor, Vec<usize>) {
    let x = Tensor::new(
        &[
            [0.3f32, -1.2, 0.8, 2.0],
            [-0.5, 0.1, 1.4, -2.2],
            [1.1, 0.0, -0.7, 0.4],
        ],
        &Device::Cpu,
    )
    .unwrap();
    (x, vec![10, 500, 900])
}

#[test]
fn guided_eps_is_eps_u_plus_w_times_eps_c_minus_eps_u_in_one_forward() {
    let abar = schedule().alphas_cumprod;
    let model = Classes::new(&abar, false);
    let (x, t) = batch();
    let labels = vec![0, 1, 2];
    for w in [0.5, 2.5, 7.5] {
        model.calls.borrow_mut().clear();
        let got = values(
            &Guided::new(&model, labels.clone(), w)
                .unwrap()
                .forward(&x, &t)
                .unwrap(),
        );
        assert_eq!(
            *model.calls.borrow(),
            [6],
            "one forward over the stacked batch"
        );
        for (i, (&ti, &y)) in t.iter().zip(&labels).enumerate() {
            let row = x.narrow(0, i, 1).unwrap();
            let c = values(&model.eps(&row, ti, y));
            let u = values(&model.eps(&row, ti, 2));
            for j in 0..4 {
                let want = u[j] as f64 + w * (c[j] as f64 - u[j] as f64);
                let g = got[4 * i + j] as f64;
                assert!((g - want).abs() < 1e-5, "w {w} row {i}: {g} vs {want}");
            }
        }
    }
}

#[test]
fn scale_one_zero_or_all_null_labels_take_one_forward_of_the_batch() {
    let abar = schedule().alphas_cumprod;
    let model = Classes::new(&abar, false);
    let (x, t) = batch();
    let cases: [(Vec<u32>, f64, Vec<u32>); 3] = [
        (vec![1, 0, 1], 1.0, vec![1, 0, 1]),
        (vec![1, 0, 1], 0.0, vec![2, 2, 2]),
        (vec![2, 2, 2], 4.0, vec![2, 2, 2]),
    ];
    for (labels, w, used) in cases {
        model.calls.borrow_mut().clear();
        let got = values(
            &Guided::new(&model, labels, w)
                .unwrap()
                .forward(&x, &t)
                .unwrap(),
        );
        assert_eq!(*model.calls.borrow(), [3], "w {w}");
        let want = values(&model.forward_labels(&x, &t, &used).unwrap());
        assert_eq!(got, want, "w {w}");
    }
}

#[test]
fn channels_past_the_prediction_come_from_the_conditional_half() {
    let abar = schedule().alphas_cumprod;
    let model = Classes::new(&abar, true);
    let (x, t) = batch();
    let x = x.reshape((3, 1, 4)).unwrap();
    let out = Guided::new(&model, vec![1, 0, 1], 3.0)
        .unwrap()
        .forward(&x, &t)
        .unwrap();
    assert_eq!(out.dims(), [3, 2, 4]);
    // The second channel is the label (conditional half), not the null label 2.
    let var: Vec<f32> = values(&out.narrow(1, 1, 1).unwrap());
    assert_eq!(var, [1., 1., 1., 1., 0., 0., 0., 0., 1., 1., 1., 1.]);
}

#[test]
fn bad_labels_scales_and_batches_are_refused() {
    let abar = schedule().alphas_cumprod;
    let model = Classes::new(&abar, false);
    let e = Guided::new(&model, vec![0, 3], 1.0)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("class 3"), "{e}");
    for w in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        assert!(Guided::new(&model, vec![0], w).is_err(), "{w}");
    }
    // Negative guidance steers away from the class; it is a scale like any other.
    assert!(Guided::new(&model, vec![0], -0.5).is_ok());
    let (x, t) = batch();
    assert!(Guided::new(&model, vec![0, 1], 2.0)
        .unwrap()
        .forward(&x, &t)
        .is_err());
}

/// DDIM from the exact model of class 1 (mean 1, std 0.5; the other class at -1): w = 1 is the
/// class's own model, sample for sample; w = 3 adds 2 grad log p(c = 1 | x), which grows with
/// x, so the samples move away from class 0.
#[test]
fn guidance_pushes_samples_away_from_the_other_class() {
    let sched = schedule();
    let model = Classes::new(&sched.alphas_cumprod, false);
    let param = Parameterization {
        prediction: Prediction::Eps,
        variance: VarianceType::FixedSmall,
    };
    let n = 4000;
    let opts = SampleOptions {
        sampler: SamplerKind::Ddim,
        steps: 20,
        spacing: Spacing::Trailing,
        clip_x0: false,
        seed: 3,
        ..SampleOptions::default()
    };
    let draw = |m: &dyn Denoiser| {
        let x = sample(m, &sched, param, &opts, &[n, 1], &Device::Cpu, &mut |_| {
            Ok(())
        })
        .unwrap();
        values(&x).into_iter().map(f64::from).collect::<Vec<f64>>()
    };
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let plain = draw(&model.classes[1]);
    let w1 = draw(&Guided::new(&model, vec![1; n], 1.0).unwrap());
    assert_eq!(w1, plain);
    // Standard error of the mean 0.5 / sqrt(4000) = 0.008; DDIM-20 keeps the mean of a
    // Gaussian within 0.01 (it shrinks the variance instead: std 0.44 here).
    let m1 = mean(&w1);
    assert!((m1 - 1.0).abs() < 0.04, "w = 1: mean {m1}");
    // Measured: 1.0017 at w = 1, 1.5000 at w = 3.
    let m3 = mean(&draw(&Guided::new(&model, vec![1; n], 3.0).unwrap()));
    assert!(m3 > 1.3, "w = 3 mean {m3} vs w = 1 mean {m1}");
}

#[test]
fn label_dropout_hits_the_rate_and_replays_from_the_stream() {
    let n = 100_000;
    let run = |p: f64| {
        let mut y: Vec<u32> = (0..n).map(|i| (i % 10) as u32).collect();
        drop_labels(&mut y, 10, p, &mut Stream::new(4, Purpose::Labels, 7));
        y
    };
    let original: Vec<u32> = (0..n).map(|i| (i % 10) as u32).collect();
    assert_eq!(run(0.0), original);
    assert!(run(1.0).iter().all(|&y| y == 10));
    let dropped = run(0.25);
    assert_eq!(dropped, run(0.25));
    let rate = dropped.iter().filter(|&&y| y == 10).count() as f64 / n as f64;
    // Binomial standard error sqrt(0.25 * 0.75 / 1e5) = 0.0014.
    assert!((rate - 0.25).abs() < 0.006, "rate {rate}");
    // A kept label is the original one.
    assert!(dropped
        .iter()
        .zip(&original)
        .all(|(&d, &o)| d == o || d == 10));
}

#[test]
fn cycled_classes_depend_on_the_image_index_only() {
    let all: Vec<u32> = (0..10).collect();
    assert_eq!(cycle(&all, 0, 10, 10), all);
    assert_eq!(cycle(&[3, 5], 0, 5, 10), [3, 5, 3, 5, 3]);
    let whole = cycle(&[0, 1, 2], 0, 8, 3);
    assert_eq!(cycle(&[0, 1, 2], 5, 3, 3), whole[5..]);
    assert_eq!(cycle(&[], 2, 3, 7), [7, 7, 7]);
}

/// Names first, then numbers: "dog" is label 1, "2" is the class named "2" (label 0 here),
/// "1" the number 1; an unknown name is refused listing the names.
#[test]
fn class_values_are_names_or_numbers() {
    let names: Vec<String> = ["2", "dog", "cat"].iter().map(|s| s.to_string()).collect();
    assert_eq!(class_label("dog", Some(&names)).unwrap(), 1);
    assert_eq!(class_label("2", Some(&names)).unwrap(), 0);
    assert_eq!(class_label("1", Some(&names)).unwrap(), 1);
    assert_eq!(class_label("7", None).unwrap(), 7);
    let e = class_label("cow", Some(&names)).unwrap_err().to_string();
    assert!(e.contains("\"cow\"") && e.contains("2, dog, cat"), "{e}");
    assert!(class_label("cow", None).is_err());
}
