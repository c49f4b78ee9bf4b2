//! The exact likelihood of the probability-flow ODE (Song et al. 2021, sec. 4.3 and app. D.2;
//! Chen et al. 2018; Grathwohl et al. 2019, "FFJORD"): a data point is carried by the
//! deterministic ODE to the prior, and its log density changes by the integral of the drift's
//! divergence, estimated with Hutchinson's trace estimator through candle's autograd.
//!
//! Which ODE. The network only knows the schedule's integer timesteps, so the ODE is written in
//! terms of the schedule's own abar_t (the DDIM / EDM form) rather than the continuous VP SDE
//! with a beta(t) interpolated from the betas: the latter's abar(t) = exp(-int beta) only
//! approximates prod (1 - beta_i), and evaluating the model between its timesteps would ask it
//! about noise levels it was never trained on. With s = sqrt(abar), sigma = sqrt((1 - abar) / abar)
//! and y = x_t / s (so y = x0 + sigma eps under q: the variance-exploding form), the ODE is
//!   dy/dsigma = eps_hat(s y, t)                 (Song et al. 2021, eq. 13 with the VE score
//!                                                -eps_hat / sigma; Karras et al. 2022, eq. 4)
//! and, by the instantaneous change of variables (Chen et al. 2018, thm. 1),
//!   d log p_sigma(y) / dsigma = -div_y eps_hat = -s div_x eps_hat.
//! Integrated from the first timestep (sigma_0, where y_0 is the data point) to the last:
//!   log p(y_0) = log N(s_N y_N; 0, I) + D log s_N + int_{sigma_0}^{sigma_N} s div_x eps_hat dsigma,
//! the D log s_N because the prior N(0, I) is on x_T = s_N y_N.
//!
//! How it is integrated. y by Heun's method in sigma (EDM's choice: for data snapped to a point
//! eps_hat is constant along the path and a step is exact). The log-density integral by the
//! trapezoid rule in lambda = log sigma over the same evaluations: in sigma its integrand grows
//! like D / sigma as sigma -> 0, and a trapezoid over a step from sigma to r sigma gives
//! (r - 1/r) / 2 for ln r (42% too much at r = 4.5, the first step of a 100-step linear grid in
//! t); in lambda it is sigma s div_x eps_hat = D - div_y x0_hat, smooth, and in [0, D] for a
//! Gaussian. The nodes are uniform in lambda, rounded to timesteps (`ode_nodes`; near t = 0
//! several round to one and the ODE takes fewer, larger steps).

use std::f64::consts::{LN_2, PI};

use candle_core::{DType, Tensor};

use crate::denoiser::Denoiser;
use crate::diffusion::Parameterization;
use crate::error::{Error, Result};
use crate::rng::{BatchNoise, Purpose};
use crate::schedule::Schedule;

use super::divergence::{eps_and_divergence, Probe, Probes};

/// Half the width of a bin of 8-bit data in [-1, 1]: levels 2/255 apart, as in `vlb`'s decoder.
pub const HALF_BIN: f64 = 1.0 / 255.0;

/// Eval streams of the ODE start here (one per example): the bound's noise uses indices from 0,
/// one per example, so the two methods never share draws.
pub const ODE_STREAMS: u64 = 1 << 40;

/// How the ODE is solved and its divergence estimated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OdeOptions {
    /// Heun steps M (at most; see `ode_nodes`).
    pub steps: usize,
    /// Independent probe series K per example (ignored by `Probe::Exact`).
    pub probes: usize,
    pub probe: Probe,
}

impl Default for OdeOptions {
    fn default() -> Self {
        OdeOptions {
            steps: 100,
            probes: 1,
            probe: Probe::Rademacher,
        }
    }
}

impl OdeOptions {
    /// Probe series each example gets: `probes`, or 1 for the exact trace.
    pub fn series(&self) -> usize {
        if self.probe == Probe::Exact {
            1
        } else {
            self.probes
        }
    }
}

/// sigma_i = sqrt((1 - abar_i) / abar_i), the noise level of y = x_t / sqrt(abar_i).
fn sigma(schedule: &Schedule, i: usize) -> f64 {
    let ab = schedule.alphas_cumprod[i];
    ((1.0 - ab) / ab).sqrt()
}

/// The schedule indices the ODE visits, ascending from 0 to N-1: M targets uniform in
/// lambda = log sigma from index 0 to N-2, each rounded to the index of nearest lambda, repeats
/// dropped, then N-1. The last index is left out of the grid because a cosine schedule's last
/// step (beta clipped at 0.999) alone spans 3.4 of lambda's 15, where the drift is linear in
/// sigma and Heun exact: a grid up to it would lose a quarter of its nodes there.
pub fn ode_nodes(schedule: &Schedule, steps: usize) -> Result<Vec<usize>> {
    let n = schedule.len();
    if steps == 0 {
        return Err(Error::Invalid("the ODE needs at least 1 step".into()));
    }
    if n < 2 {
        return Err(Error::Invalid(
            "the ODE needs a schedule of at least 2 steps".into(),
        ));
    }
    if schedule.alphas_cumprod[n - 1] <= 0.0 {
        return Err(Error::Invalid(
            "the ODE likelihood needs abar_T > 0; a zero-terminal-SNR schedule has no finite prior end"
                .into(),
        ));
    }
    let lambda: Vec<f64> = (0..n).map(|i| sigma(schedule, i).ln()).collect();
    let (lo, hi) = (lambda[0], lambda[n - 2]);
    let last = (steps - 1).max(1) as f64;
    let mut nodes: Vec<usize> = (0..steps)
        .map(|k| {
            let target = lo + (hi - lo) * k as f64 / last;
            let above = lambda.partition_point(|&l| l < target).min(n - 2);
            if above > 0 && target - lambda[above - 1] < lambda[above] - target {
                above - 1
            } else {
                above
            }
        })
        .collect();
    nodes.push(n - 1);
    nodes.dedup();
    Ok(nodes)
}

/// What the ODE gives for a batch of points, in nats.
#[derive(Clone, Debug, PartialEq)]
pub struct OdeLikelihood {
    /// log N(x_T; 0, I) + D log sqrt(abar_T) per example: the prior's log density of y_N.
    pub prior: Vec<f64>,
    /// `divergence[k][b]`: probe series k's estimate of int s div_x eps_hat dsigma for example b.
    pub divergence: Vec<Vec<f64>>,
    /// The schedule indices visited.
    pub nodes: Vec<usize>,
    /// Model evaluations (each with its backward passes) per example: 2 per step.
    pub evaluations: usize,
}

impl OdeLikelihood {
    /// `log_p()[k][b]` = prior[b] + divergence[k][b]: each series' estimate of log p(y_0).
    pub fn log_p(&self) -> Vec<Vec<f64>> {
        self.divergence
            .iter()
            .map(|row| row.iter().zip(&self.prior).map(|(d, p)| d + p).collect())
            .collect()
    }
}

/// log p(z) under the model's probability-flow ODE for each point of z (B, ...), the points taken
/// as y at the first timestep. `noise` holds one stream per example; the probes of example b come
/// from its stream only, in a fixed order, so an example's estimate does not depend on its batch.
/// `on_step(done, total)` after each Heun step.
pub fn ode_log_likelihood(
    model: &dyn Denoiser,
    schedule: &Schedule,
    param: Parameterization,
    z: &Tensor,
    opts: &OdeOptions,
    noise: &mut BatchNoise,
    on_step: &mut dyn FnMut(usize, usize) -> Result<()>,
) -> Result<OdeLikelihood> {
    let batch = z.dim(0)?;
    if noise.len() != batch {
        return Err(Error::Invalid(format!(
            "{} noise streams for a batch of {batch}",
            noise.len()
        )));
    }
    if opts.series() == 0 {
        return Err(Error::Invalid(
            "Hutchinson's estimator needs at least 1 probe".into(),
        ));
    }
    let nodes = ode_nodes(schedule, opts.steps)?;
    let field = Field {
        model,
        schedule,
        param,
        opts,
    };
    let mut y = z.to_dtype(DType::F32)?;
    let mut divergence = vec![vec![0.0; batch]; opts.series()];
    let (mut d, mut g) = field.eval(&y, nodes[0], noise)?;
    let steps = nodes.len() - 1;
    for (done, w) in nodes.windows(2).enumerate() {
        let (i, j) = (w[0], w[1]);
        let (sigma_i, sigma_j) = (sigma(schedule, i), sigma(schedule, j));
        let h = sigma_j - sigma_i;
        let y_euler = (&y + (&d * h)?)?;
        let (d_end, g_end) = field.eval(&y_euler, j, noise)?;
        y = (&y + ((&d + &d_end)? * (0.5 * h))?)?;
        let half_dl = 0.5 * (sigma_j.ln() - sigma_i.ln());
        for (row, (a, b)) in divergence.iter_mut().zip(g.iter().zip(&g_end)) {
            for (acc, (ga, gb)) in row.iter_mut().zip(a.iter().zip(b)) {
                *acc += half_dl * (ga + gb);
            }
        }
        if done + 1 < steps {
            (d, g) = field.eval(&y, j, noise)?;
        }
        on_step(done + 1, steps)?;
    }
    let last = nodes[nodes.len() - 1];
    let s_n = schedule.sqrt_alphas_cumprod[last];
    let dims = y.elem_count() / batch.max(1);
    let sq: Vec<f64> = (y * s_n)?
        .to_dtype(DType::F64)?
        .sqr()?
        .flatten_from(1)?
        .sum(1)?
        .to_vec1()?;
    let constant = dims as f64 * (s_n.ln() - 0.5 * (2.0 * PI).ln());
    Ok(OdeLikelihood {
        prior: sq.iter().map(|q| constant - 0.5 * q).collect(),
        divergence,
        evaluations: 2 * steps,
        nodes,
    })
}

/// The model as the ODE sees it.
struct Field<'a> {
    model: &'a dyn Denoiser,
    schedule: &'a Schedule,
    param: Parameterization,
    opts: &'a OdeOptions,
}

impl Field<'_> {
    /// (eps_hat at x = s_i y; g[k][b]) with g = sigma_i s_i v^T (d eps_hat / dx) v for each probe
    /// series k: the integrand of the log density in lambda.
    fn eval(
        &self,
        y: &Tensor,
        i: usize,
        noise: &mut BatchNoise,
    ) -> Result<(Tensor, Vec<Vec<f64>>)> {
        let s = self.schedule.sqrt_alphas_cumprod[i];
        let probes = Probes {
            probe: self.opts.probe,
            series: self.opts.series(),
        };
        let (eps, mut g) = eps_and_divergence(
            self.model,
            self.schedule,
            self.param,
            &(y * s)?,
            i,
            probes,
            noise,
        )?;
        let scale = sigma(self.schedule, i) * s;
        for v in g.iter_mut().flatten() {
            *v *= scale;
        }
        Ok((eps, g))
    }
}

/// The ODE's estimate for 8-bit data x0 (B, ...) in [-1, 1], in bits per dimension.
#[derive(Clone, Debug, PartialEq)]
pub struct OdeNll {
    /// `bpd[k][b]`: probe series k's estimate for example b.
    pub bpd: Vec<Vec<f64>>,
    /// The schedule indices visited.
    pub nodes: Vec<usize>,
    /// Model evaluations per example.
    pub evaluations: usize,
}

/// The ODE's streams for examples first .. first + batch: (seed, Eval, ODE_STREAMS + index).
pub fn ode_noise(seed: u64, first: u64, batch: usize) -> BatchNoise {
    BatchNoise::new(seed, Purpose::Eval, ODE_STREAMS + first, batch)
}

/// Negative log-likelihood of x0 in bits/dim by the ODE, with uniform dequantisation: example b
/// draws u ~ U(-1/255, 1/255)^D, then its probes, from its stream of `noise` (see `ode_noise`),
/// and bpd = -log p(x0 + u) / (D ln 2) + log2(255/2).
///
/// Why the offset: a discrete x0 gets the mass of its bin,
///   P(x0) = int_bin p = (2/255)^D E_u p(x0 + u) >= (2/255)^D exp(E_u log p(x0 + u))   (Jensen),
/// so -log2 P / D <= E_u[-log2 p(x0 + u)] / D + log2(255/2): each sample estimates, without
/// bias, an upper bound on the discrete NLL, like the variational bound, and in the same
/// 2/255-wide bins as its decoder. Song et al.'s offset 7 = log2(256/2) is for 256 bins of width
/// 2/256 tiling [-1, 1]; the 0.0056 bits/dim between the two is the bin convention, not the
/// model. Data on a coarser grid (the digits' 17 levels) keeps disjoint bins: the bound holds.
pub fn ode_nll(
    model: &dyn Denoiser,
    schedule: &Schedule,
    param: Parameterization,
    x0: &Tensor,
    opts: &OdeOptions,
    noise: &mut BatchNoise,
    on_step: &mut dyn FnMut(usize, usize) -> Result<()>,
) -> Result<OdeNll> {
    let batch = x0.dim(0)?;
    if noise.len() != batch {
        return Err(Error::Invalid(format!(
            "{} noise streams for a batch of {batch}",
            noise.len()
        )));
    }
    let per_example = x0.dims()[1..].to_vec();
    let dims: usize = per_example.iter().product();
    let mut u = Vec::with_capacity(dims * batch);
    for b in 0..batch {
        let stream = noise.stream(b);
        u.extend((0..dims).map(|_| ((2.0 * stream.uniform() - 1.0) * HALF_BIN) as f32));
    }
    let z = (x0.to_dtype(DType::F32)? + Tensor::from_vec(u, x0.shape(), x0.device())?)?;
    let ll = ode_log_likelihood(model, schedule, param, &z, opts, noise, on_step)?;
    let offset = (0.5 / HALF_BIN).log2();
    let bpd = ll
        .log_p()
        .iter()
        .map(|row| {
            row.iter()
                .map(|lp| -lp / (dims as f64 * LN_2) + offset)
                .collect()
        })
        .collect();
    Ok(OdeNll {
        bpd,
        nodes: ll.nodes,
        evaluations: ll.evaluations,
    })
}
