use candle_core::Device;

use super::ode_tests::DiffMixture;
use super::*;
use crate::data::ImageSize;
use crate::oracle::Component;
use crate::schedule::BetaSchedule;

#[test]
fn estimate_is_the_mean_and_its_standard_error() {
    // numpy: x = [1, 2, 4, 7]; x.mean() = 3.5; x.std(ddof=1) / 2 = 1.3228756555322954
    let e = Estimate::of(&[1.0, 2.0, 4.0, 7.0]);
    assert_eq!(e.mean, 3.5);
    assert!((e.se - 1.3228756555322954).abs() < 1e-12);
    assert!(Estimate::of(&[2.0]).se.is_nan());
}

#[test]
fn the_probes_share_of_the_error_comes_from_the_spread_within_examples() {
    // Example variances over K = 2 series: (1 - 3)^2 / 2 = 2 and (5 - 5)^2 / 2 = 0, so
    // sqrt((2 + 0) / 2) / 2 = 0.5.
    let rows = vec![vec![1.0, 3.0], vec![5.0, 5.0]];
    assert_eq!(hutchinson_se(&rows), Some(0.5));
    assert_eq!(hutchinson_se(&[vec![1.0], vec![2.0]]), None);
}

/// Five 1x2x2 "images" with values on the 8-bit grid.
struct Tiny;

impl Dataset for Tiny {
    fn len(&self) -> usize {
        5
    }
    fn channels(&self) -> usize {
        1
    }
    fn image_size(&self) -> ImageSize {
        ImageSize::square(2)
    }
    fn example(&self, i: usize, _flip: bool, out: &mut [f32]) -> Result<Option<u32>> {
        for (j, o) in out.iter_mut().enumerate() {
            *o = ((37 * i + 91 * j) % 256) as f32 / 127.5 - 1.0;
        }
        Ok(None)
    }
    fn num_classes(&self) -> Option<usize> {
        None
    }
    fn class_names(&self) -> Option<&[String]> {
        None
    }
}

/// The exact eps of two Gaussian bumps on `s`: d eps / dx is not diagonal, so Rademacher
/// probes disagree.
fn two_bumps(s: &Schedule) -> DiffMixture {
    DiffMixture {
        components: vec![
            Component {
                weight: 1.0,
                mean: vec![-0.5],
                std: 0.3,
            },
            Component {
                weight: 1.0,
                mean: vec![0.5],
                std: 0.3,
            },
        ],
        alphas_cumprod: s.alphas_cumprod.clone(),
    }
}

#[test]
fn evaluation_adds_up_and_does_not_depend_on_the_batch_size() {
    let s = Schedule::new(BetaSchedule::Linear, 50, 1e-4, 0.02, false).unwrap();
    let model = two_bumps(&s);
    let report = |batch_size| {
        let opts = EvalOptions {
            method: Method::Both,
            examples: 5,
            batch_size,
            seed: 3,
            clip: true,
            ode: OdeOptions {
                steps: 8,
                probes: 2,
                probe: Probe::Rademacher,
            },
        };
        let mut calls = Vec::new();
        let param = Parameterization::default();
        let r = evaluate(
            &model,
            &s,
            param,
            &Tiny,
            &Device::Cpu,
            &opts,
            &mut |d, t| {
                calls.push((d, t));
                Ok(())
            },
        )
        .unwrap();
        let total = total_evaluations(&s, &opts).unwrap();
        assert_eq!(calls.last(), Some(&(total, total)));
        assert!(calls.windows(2).all(|w| w[0].0 < w[1].0));
        r
    };
    let (one, all) = (report(2), report(5));
    let (b1, b5) = (one.bound.unwrap(), all.bound.unwrap());
    let (o1, o5) = (one.ode.unwrap(), all.ode.unwrap());
    for (x, y) in b1.per_example.iter().zip(&b5.per_example) {
        assert!((x - y).abs() < 1e-5, "{x} vs {y}");
    }
    for (x, y) in o1.per_example.iter().zip(&o5.per_example) {
        assert!((x - y).abs() < 1e-5, "{x} vs {y}");
    }
    let parts = b5.prior.mean + b5.diffusion.mean + b5.decoder.mean;
    assert!((parts - b5.total.mean).abs() < 1e-12);
    let profile: f64 = b5.per_timestep.iter().map(|r| r.bpd.mean).sum();
    assert!((profile + b5.prior.mean - b5.total.mean).abs() < 1e-12);
    assert_eq!(b5.per_timestep.len(), 50);
    assert!(o5.hutchinson_se.unwrap() > 0.0);
    let csv = per_timestep_csv(&b5);
    assert_eq!(csv.lines().count(), 51);
    assert_eq!(
        csv.lines().nth(1).unwrap(),
        format!("0,0,{},{}", b5.decoder.mean, b5.decoder.se)
    );
}

/// The ODE of a batch in 3 shards (on the pool's threads; the first on this thread, reporting
/// progress) gives each example the estimate it gets in one piece.
#[test]
fn the_ode_in_shards_equals_the_ode_in_one_piece() {
    let s = Schedule::new(BetaSchedule::Linear, 50, 1e-4, 0.02, false).unwrap();
    let model = two_bumps(&s);
    let opts = EvalOptions {
        method: Method::Ode,
        examples: 5,
        batch_size: 5,
        seed: 4,
        clip: true,
        ode: OdeOptions {
            steps: 6,
            probes: 2,
            probe: Probe::Gaussian,
        },
    };
    let x0 = load_batch(&Tiny, 0, 5, &Device::Cpu).unwrap();
    let param = Parameterization::default();
    let run = |shards, steps: &mut Vec<usize>| {
        let report = &mut |d, _| {
            steps.push(d);
            Ok(())
        };
        ode_nll_in_shards(&model, &s, param, &x0, 7, &opts, shards, report).unwrap()
    };
    let (mut one_steps, mut three_steps) = (Vec::new(), Vec::new());
    let one = run(1, &mut one_steps);
    let three = run(3, &mut three_steps);
    assert_eq!(one_steps, three_steps);
    assert!(!one_steps.is_empty());
    assert_eq!(
        (one.nodes.clone(), one.evaluations),
        (three.nodes.clone(), three.evaluations)
    );
    assert_eq!(three.bpd.len(), 2);
    for (a, b) in one.bpd.iter().zip(&three.bpd) {
        assert_eq!(b.len(), 5);
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-6, "{x} vs {y}");
        }
    }
    // The examples' estimates differ, so a shuffled assembly would fail.
    assert!((one.bpd[0][0] - one.bpd[0][4]).abs() > 1e-3);
}
