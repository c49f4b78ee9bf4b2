use std::f64::consts::{LN_2, PI};

use candle_core::{Device, Tensor};

use super::*;
use crate::oracle::{Component, MixtureOracle};
use crate::rng::Stream;
use crate::schedule::BetaSchedule;

/// `MixtureOracle`'s eps in candle ops, so that autograd sees through it (the oracle itself
/// computes on the host): for x_t (B, ...) flattened to (B, D), with a = sqrt(abar),
/// v_k = abar s_k^2 + 1 - abar and r = softmax_k(log w_k - D/2 log v_k - |x - a mu_k|^2 / (2 v_k)),
/// eps = sqrt(1 - abar) sum_k r_k (x - a mu_k) / v_k.
pub(super) struct DiffMixture {
    pub components: Vec<Component>,
    pub alphas_cumprod: Vec<f64>,
}

impl Denoiser for DiffMixture {
    fn forward(&self, x_t: &Tensor, t: &[usize]) -> Result<Tensor> {
        let (dev, batch) = (x_t.device(), x_t.dim(0)?);
        let x = x_t.flatten_from(1)?;
        let d = x.dim(1)?;
        let abar: Vec<f64> = t.iter().map(|&i| self.alphas_cumprod[i]).collect();
        let column = |f: &dyn Fn(f64) -> f64| {
            let v: Vec<f32> = abar.iter().map(|&a| f(a) as f32).collect();
            Tensor::from_vec(v, (batch, 1), dev)
        };
        let total_weight: f64 = self.components.iter().map(|c| c.weight).sum();
        let (mut logits, mut dirs) = (Vec::new(), Vec::new());
        for c in &self.components {
            let mu: Vec<f32> = (0..d)
                .map(|i| c.mean[if c.mean.len() == 1 { 0 } else { i }] as f32)
                .collect();
            let mu = Tensor::from_vec(mu, (1, d), dev)?;
            let var = column(&|a| a * c.std * c.std + 1.0 - a)?;
            let diff = x.broadcast_sub(&mu.broadcast_mul(&column(&|a| a.sqrt())?)?)?;
            let log_norm = column(&|a| {
                (c.weight / total_weight).ln() - 0.5 * d as f64 * (a * c.std * c.std + 1.0 - a).ln()
            })?;
            let logit = (diff.sqr()?.sum_keepdim(1)?.broadcast_div(&var)? * -0.5)?;
            logits.push((logit + log_norm)?);
            dirs.push(diff.broadcast_div(&var)?);
        }
        let logits = Tensor::cat(&logits, 1)?;
        let e = logits
            .broadcast_sub(&logits.max_keepdim(1)?.detach())?
            .exp()?;
        let r = e.broadcast_div(&e.sum_keepdim(1)?)?;
        let mut eps = dirs[0].broadcast_mul(&r.narrow(1, 0, 1)?)?;
        for (k, dir) in dirs.iter().enumerate().skip(1) {
            eps = (eps + dir.broadcast_mul(&r.narrow(1, k, 1)?)?)?;
        }
        Ok(eps
            .broadcast_mul(&column(&|a| (1.0 - a).sqrt())?)?
            .reshape(x_t.shape())?)
    }
}

fn linear_1000() -> Schedule {
    Schedule::new(BetaSchedule::Linear, 1000, 1e-4, 0.02, false).unwrap()
}

fn gaussian(mean: f64, std: f64, schedule: &Schedule) -> DiffMixture {
    DiffMixture {
        components: vec![Component {
            weight: 1.0,
            mean: vec![mean],
            std,
        }],
        alphas_cumprod: schedule.alphas_cumprod.clone(),
    }
}

fn two_bumps() -> Vec<Component> {
    vec![
        Component {
            weight: 0.3,
            mean: vec![-0.5, 0.2, 0.4],
            std: 0.2,
        },
        Component {
            weight: 0.7,
            mean: vec![0.4, -0.3, 0.1],
            std: 0.4,
        },
    ]
}

fn rows(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn the_differentiable_mixture_is_the_oracle() {
    let s = linear_1000();
    let comps = two_bumps();
    let ours = DiffMixture {
        components: comps.clone(),
        alphas_cumprod: s.alphas_cumprod.clone(),
    };
    let oracle = MixtureOracle::new(comps, s.alphas_cumprod.clone()).unwrap();
    let x = Stream::new(3, Purpose::Eval, 0)
        .randn((4, 3), &Device::Cpu)
        .unwrap();
    let t = [0, 150, 500, 999];
    for (a, b) in rows(&ours.forward(&x, &t).unwrap())
        .iter()
        .zip(rows(&oracle.forward(&x, &t).unwrap()))
    {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
}

#[test]
fn nodes_run_from_the_first_to_the_last_timestep_evenly_in_log_sigma() {
    let s = linear_1000();
    let nodes = ode_nodes(&s, 50).unwrap();
    assert_eq!(nodes[0], 0);
    assert_eq!(*nodes.last().unwrap(), 999);
    assert!(nodes.windows(2).all(|w| w[0] < w[1]));
    assert!(nodes.len() <= 51 && nodes.len() > 40, "{}", nodes.len());
    // Past the first few (where timesteps are coarser than the grid) the steps in lambda are
    // (lambda_998 - lambda_0) / 49 = (ln 155.4 - ln 0.0100) / 49 = 0.197, to rounding.
    let lambda = |i: usize| 0.5 * ((1.0 - s.alphas_cumprod[i]) / s.alphas_cumprod[i]).ln();
    for w in nodes[10..nodes.len() - 1].windows(2) {
        let dl = lambda(w[1]) - lambda(w[0]);
        assert!((dl - 0.197).abs() < 0.05, "{w:?}: {dl}");
    }
    // The cosine schedule's last step spans 3.4 in lambda and is not part of the grid, so 100
    // steps stay 100 but for the few timesteps near 0 that round together.
    let cosine = Schedule::new(BetaSchedule::Cosine, 1000, 1e-4, 0.02, false).unwrap();
    let steps = ode_nodes(&cosine, 100).unwrap().len() - 1;
    assert!(steps > 80, "{steps}");
    assert_eq!(ode_nodes(&s, 1).unwrap(), [0, 999]);
    let zero_snr = Schedule::new(BetaSchedule::Linear, 1000, 1e-4, 0.02, true).unwrap();
    assert!(ode_nodes(&zero_snr, 50).is_err());
    assert!(ode_nodes(&s, 0).is_err());
}

/// The exact answer for N(mu, std^2 I) data: the flow is linear, y_N - mu = (y_0 - mu) r with
/// r = sqrt((std^2 + sigma_N^2) / (std^2 + sigma_0^2)) per dimension, so the ODE's estimate is
/// log N(s_N y_N; 0, I) + D log s_N + D log r.
fn gaussian_flow_log_p(y0: &[f64], mean: f64, std: f64, s: &Schedule) -> f64 {
    let n = s.len() - 1;
    let sig2 = |i: usize| (1.0 - s.alphas_cumprod[i]) / s.alphas_cumprod[i];
    let r = ((std * std + sig2(n)) / (std * std + sig2(0))).sqrt();
    let s_n = s.sqrt_alphas_cumprod[n];
    let d = y0.len() as f64;
    let sq: f64 = y0
        .iter()
        .map(|y| (s_n * (mean + (y - mean) * r)).powi(2))
        .sum();
    -0.5 * sq - 0.5 * d * (2.0 * PI).ln() + d * s_n.ln() + d * r.ln()
}

/// log N(y0; mu, (std^2 + sigma_0^2) I): the data's own density at the first timestep.
fn gaussian_log_density(y0: &[f64], mean: f64, std: f64, s: &Schedule) -> f64 {
    let var = std * std + (1.0 - s.alphas_cumprod[0]) / s.alphas_cumprod[0];
    y0.iter()
        .map(|y| -0.5 * (y - mean).powi(2) / var - 0.5 * (2.0 * PI * var).ln())
        .sum()
}

fn no_progress() -> impl FnMut(usize, usize) -> Result<()> {
    |_, _| Ok(())
}

fn log_p(model: &dyn Denoiser, s: &Schedule, z: &Tensor, opts: OdeOptions) -> OdeLikelihood {
    let mut noise = ode_noise(0, 0, z.dim(0).unwrap());
    let param = Parameterization::default();
    ode_log_likelihood(model, s, param, z, &opts, &mut noise, &mut no_progress()).unwrap()
}

/// Measured errors against `gaussian_flow_log_p` (nats, D = 4), which are the integration error:
/// 100 steps 4.2e-3, 9.9e-3, 1.1e-4; 25 steps 6.4e-2, 1.5e-1, 9e-5 (second order: x15).
/// An independent pure-Python integration of the same scheme in 1-D gave 3.7e-3 at u0 = 0.9.
#[test]
fn gaussian_data_log_likelihood_is_the_analytic_density() {
    let s = linear_1000();
    let (mean, std) = (0.3, 0.5);
    let model = gaussian(mean, std, &s);
    let points = [
        [0.1, -0.4, 0.9, 0.3],
        [1.2, 0.3, -0.8, 0.0],
        [0.3, 0.3, 0.3, 0.3],
    ];
    let flat: Vec<f32> = points.iter().flatten().map(|&v| v as f32).collect();
    let z = Tensor::from_vec(flat, (3, 4), &Device::Cpu).unwrap();
    let opts = |steps, probe| OdeOptions {
        steps,
        probes: 1,
        probe,
    };
    let exact = log_p(&model, &s, &z, opts(100, Probe::Exact)).log_p()[0].clone();
    let coarse = log_p(&model, &s, &z, opts(25, Probe::Exact)).log_p()[0].clone();
    // d eps / dx = c I for isotropic Gaussian data, and v^T (c I) v = c D for every v in {-1, 1}^D.
    let rademacher = log_p(&model, &s, &z, opts(100, Probe::Rademacher)).log_p()[0].clone();
    for (b, p) in points.iter().enumerate() {
        let flow = gaussian_flow_log_p(p, mean, std, &s);
        let err = exact[b] - flow;
        assert!(err.abs() < 0.015, "point {b}: {} vs {flow}", exact[b]);
        // The data's own density at sigma_0 differs from the flow's by the prior's mismatch
        // (N(0, I) for x_T ~ N(0.0019, 1 - 3e-5)): 1.1e-3, 2.0e-3, 0.
        let truth = gaussian_log_density(p, mean, std, &s);
        assert!(
            (exact[b] - truth).abs() < 0.02,
            "point {b}: {} vs {truth}",
            exact[b]
        );
        assert!((rademacher[b] - exact[b]).abs() < 1e-9);
        if b < 2 {
            let ratio = (coarse[b] - flow) / err;
            assert!(
                ratio > 8.0,
                "point {b}: 25 vs 100 steps error ratio {ratio}"
            );
        }
    }
}

/// log sum_k w_k N(y0; mu_k, (s_k^2 + sigma_0^2) I): a mixture's own density at the first
/// timestep.
fn mixture_log_density(y0: &[f64], components: &[Component], s: &Schedule) -> f64 {
    let sigma2 = (1.0 - s.alphas_cumprod[0]) / s.alphas_cumprod[0];
    let total: f64 = components.iter().map(|c| c.weight).sum();
    components
        .iter()
        .map(|c| {
            let var = c.std * c.std + sigma2;
            let log_n: f64 = y0
                .iter()
                .zip(&c.mean)
                .map(|(y, m)| -0.5 * (y - m).powi(2) / var - 0.5 * (2.0 * PI * var).ln())
                .sum();
            c.weight / total * log_n.exp()
        })
        .sum::<f64>()
        .ln()
}

/// The same for a two-component mixture, whose flow bends: the ODE with the exact score carries
/// the mixture at sigma_0 to N(0, I) up to the prior's mismatch. Measured errors (nats, D = 3):
/// in a bump, between the bumps, far out: 2.2e-3, 1.5e-4, 1.3e-2 at 100 steps; 1.8e-3, 1.2e-4,
/// -5.0e-3 at 400, what remains there being the prior's mismatch and f32.
#[test]
fn mixture_data_log_likelihood_is_the_analytic_density() {
    let s = linear_1000();
    let components = two_bumps();
    let model = DiffMixture {
        components: components.clone(),
        alphas_cumprod: s.alphas_cumprod.clone(),
    };
    let points = [[-0.45, 0.25, 0.35], [0.0, 0.0, 0.25], [1.5, -1.2, 0.8]];
    let flat: Vec<f32> = points.iter().flatten().map(|&v| v as f32).collect();
    let z = Tensor::from_vec(flat, (3, 3), &Device::Cpu).unwrap();
    let opts = OdeOptions {
        steps: 100,
        probes: 1,
        probe: Probe::Exact,
    };
    let got = log_p(&model, &s, &z, opts).log_p()[0].clone();
    for (b, p) in points.iter().enumerate() {
        let truth = mixture_log_density(p, &components, &s);
        assert!(
            (got[b] - truth).abs() < 0.03,
            "point {b}: {} vs {truth}",
            got[b]
        );
    }
}

fn repeated(point: &[f32], n: usize) -> Tensor {
    let data: Vec<f32> = (0..n).flat_map(|_| point.iter().copied()).collect();
    Tensor::from_vec(data, (n, point.len()), &Device::Cpu).unwrap()
}

/// One point of a two-component mixture (a non-constant, non-diagonal Jacobian) in 256 copies:
/// each copy has its own probes and the same path, so the copies' mean must be the exact-trace
/// value within 4 standard errors. Measured (10 steps): exact -1.2968, Rademacher -1.3364 +-
/// 0.0335, Gaussian -1.3319 +- 0.2622 (the Gaussian probes' larger variance is why Rademacher is
/// the default).
#[test]
fn hutchinson_estimates_are_unbiased() {
    let s = linear_1000();
    let model = DiffMixture {
        components: two_bumps(),
        alphas_cumprod: s.alphas_cumprod.clone(),
    };
    let point = [0.1f32, 0.0, 0.5];
    let opts = |probe| OdeOptions {
        steps: 10,
        probes: 1,
        probe,
    };
    let exact = log_p(&model, &s, &repeated(&point, 1), opts(Probe::Exact)).log_p()[0][0];
    for probe in [Probe::Rademacher, Probe::Gaussian] {
        let ll = log_p(&model, &s, &repeated(&point, 256), opts(probe));
        assert!(ll.prior.iter().all(|p| (p - ll.prior[0]).abs() < 1e-9));
        let e = crate::likelihood::Estimate::of(&ll.log_p()[0]);
        assert!(e.se > 1e-3, "{probe}: the probes should disagree");
        assert!(
            (e.mean - exact).abs() < 4.0 * e.se,
            "{probe}: {} +- {} vs {exact}",
            e.mean,
            e.se
        );
    }
}

#[test]
fn an_example_gets_the_same_numbers_in_any_batch() {
    let s = linear_1000();
    let model = DiffMixture {
        components: two_bumps(),
        alphas_cumprod: s.alphas_cumprod.clone(),
    };
    let x0 = Tensor::new(
        &[[0.2f32, -0.4, 0.6], [0.0, 0.1, -0.9], [1.0, -1.0, 0.5]],
        &Device::Cpu,
    )
    .unwrap();
    let opts = OdeOptions {
        steps: 5,
        probes: 2,
        probe: Probe::Rademacher,
    };
    let param = Parameterization::default();
    let all = ode_nll(
        &model,
        &s,
        param,
        &x0,
        &opts,
        &mut ode_noise(7, 10, 3),
        &mut no_progress(),
    )
    .unwrap();
    let one = ode_nll(
        &model,
        &s,
        param,
        &x0.narrow(0, 2, 1).unwrap(),
        &opts,
        &mut ode_noise(7, 12, 1),
        &mut no_progress(),
    )
    .unwrap();
    assert_eq!(all.bpd.len(), 2);
    for k in 0..2 {
        assert_eq!(all.bpd[k][2], one.bpd[k][0]);
    }
    assert_ne!(all.bpd[0][2], all.bpd[1][2], "the two probe series differ");
    assert_eq!(all.evaluations, 2 * (all.nodes.len() - 1));
}

/// bpd = -log p(x0 + u) / (D ln 2) + log2(127.5), u drawn first from the example's stream: checked
/// with Gaussian data, where log p is `gaussian_flow_log_p` up to the integration error (1e-2
/// nats at 100 steps, 0.0036 bits/dim for D = 4).
#[test]
fn bits_per_dim_add_the_dequantisation_offset() {
    let s = linear_1000();
    let (mean, std) = (0.0, 0.6);
    let model = gaussian(mean, std, &s);
    let x0 = Tensor::new(&[[0.5f32, -0.25, 1.0, -1.0]], &Device::Cpu).unwrap();
    let opts = OdeOptions {
        steps: 100,
        probes: 1,
        probe: Probe::Exact,
    };
    let (seed, index) = (11, 4);
    let nll = ode_nll(
        &model,
        &s,
        Parameterization::default(),
        &x0,
        &opts,
        &mut ode_noise(seed, index, 1),
        &mut no_progress(),
    )
    .unwrap();
    let mut stream = Stream::new(seed, Purpose::Eval, ODE_STREAMS + index);
    let z: Vec<f64> = [0.5, -0.25, 1.0, -1.0]
        .iter()
        .map(|x| x + (2.0 * stream.uniform() - 1.0) / 255.0)
        .collect();
    let want = -gaussian_flow_log_p(&z, mean, std, &s) / (4.0 * LN_2) + 127.5f64.log2();
    assert!(
        (nll.bpd[0][0] - want).abs() < 0.004,
        "{} vs {want}",
        nll.bpd[0][0]
    );
    // Not the value without dequantisation, which the test must be able to tell apart.
    let plain = -gaussian_flow_log_p(&[0.5, -0.25, 1.0, -1.0], mean, std, &s) / (4.0 * LN_2)
        + 127.5f64.log2();
    assert!((plain - want).abs() > 0.004, "{plain} vs {want}");
}
