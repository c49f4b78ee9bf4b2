//! Likelihood evaluation on a dataset, in bits per dimension, by two methods: the variational
//! bound (`vlb`, improved-diffusion's `calc_bpd_loop`) and the exact likelihood of the
//! probability-flow ODE (`ode`). This module owns the loop over batches of a `Dataset`, the
//! per-example statistics (means with standard errors) and the per-timestep table; the formulas
//! of the bound live in `vlb`, the ODE in `ode`, its divergence estimator in `divergence`, the
//! model behind any `Denoiser`.

mod divergence;
mod ode;

use std::fmt;
use std::str::FromStr;
use std::time::Instant;

use candle_core::{Device, Tensor};

pub use divergence::Probe;
pub use ode::{
    ode_log_likelihood, ode_nll, ode_nodes, ode_noise, OdeLikelihood, OdeNll, OdeOptions, HALF_BIN,
    ODE_STREAMS,
};

use crate::data::Dataset;
use crate::denoiser::Denoiser;
use crate::diffusion::Parameterization;
use crate::error::{Error, Result};
use crate::nn::shard;
use crate::rng::{BatchNoise, Purpose};
use crate::schedule::Schedule;
use crate::vlb::variational_bound;

/// Which estimates to compute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Method {
    /// The variational bound (T model calls per example).
    #[default]
    Bound,
    /// The probability-flow ODE (2 model calls and their backward passes per step).
    Ode,
    /// Both, side by side.
    Both,
}

impl Method {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Method::Bound => "bound",
            Method::Ode => "ode",
            Method::Both => "both",
        }
    }

    /// Whether the bound is computed.
    pub fn bound(self) -> bool {
        self != Method::Ode
    }

    /// Whether the ODE is integrated.
    pub fn ode(self) -> bool {
        self != Method::Bound
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Method {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        [Method::Bound, Method::Ode, Method::Both]
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                Error::Invalid(format!("unknown method {s:?}; expected bound, ode or both"))
            })
    }
}

/// A mean over examples with its standard error s / sqrt(n), s the sample standard deviation
/// (n - 1 in the denominator); the error is NaN for fewer than 2 examples.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Estimate {
    pub mean: f64,
    pub se: f64,
}

impl Estimate {
    /// The estimate from per-example values.
    pub fn of(values: &[f64]) -> Estimate {
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
        Estimate {
            mean,
            se: if values.len() < 2 {
                f64::NAN
            } else {
                (var / n).sqrt()
            },
        }
    }
}

/// Everything `evaluate` needs besides the model, the schedule and the data.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EvalOptions {
    pub method: Method,
    /// Evaluate the first `examples` examples of the dataset.
    pub examples: usize,
    /// Examples per model batch (a batch's numbers do not depend on it).
    pub batch_size: usize,
    /// Seed of the bound's noise, the dequantisation and the probes (all `Purpose::Eval`).
    pub seed: u64,
    /// Clamp the bound's predicted x0 to [-1, 1], as when sampling.
    pub clip: bool,
    pub ode: OdeOptions,
}

/// One row of the per-timestep profile.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TimestepTerm {
    /// Schedule index (0: the decoder).
    pub index: usize,
    /// The model timestep of that index.
    pub t: usize,
    pub bpd: Estimate,
}

/// The variational bound over the examples, bits/dim: total = prior + diffusion + decoder, and
/// per example too, so the standard errors are those of per-example sums.
#[derive(Clone, Debug, PartialEq)]
pub struct BoundReport {
    pub total: Estimate,
    /// L_T.
    pub prior: Estimate,
    /// sum_{t >= 1} L_{t-1}: the KL terms.
    pub diffusion: Estimate,
    /// L_0 = -log p(x0 | x1).
    pub decoder: Estimate,
    /// Every index, the decoder first: sum of the means + prior mean = total mean.
    pub per_timestep: Vec<TimestepTerm>,
    /// Each example's total, in dataset order (for paired comparisons of two models).
    pub per_example: Vec<f64>,
    /// Time spent on the bound.
    pub seconds: f64,
}

/// The ODE estimate over the examples, bits/dim.
#[derive(Clone, Debug, PartialEq)]
pub struct OdeReport {
    /// Mean over examples of each example's mean over its probe series; the error is over
    /// examples, so it holds the data, dequantisation and probe noise together.
    pub bpd: Estimate,
    /// The part of that error due to the probes alone, sqrt(sum_b s_b^2 / K) / n with s_b^2 the
    /// sample variance of example b's K series; None for K < 2.
    pub hutchinson_se: Option<f64>,
    /// Each example's mean over its probe series, in dataset order.
    pub per_example: Vec<f64>,
    pub nodes: Vec<usize>,
    /// Model evaluations per example.
    pub evaluations: usize,
    /// Time spent on the ODE.
    pub seconds: f64,
}

/// What `evaluate` returns.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalReport {
    pub examples: usize,
    /// Values per example, D = C H W.
    pub dims: usize,
    pub bound: Option<BoundReport>,
    pub ode: Option<OdeReport>,
}

/// Progress: (model evaluations done, in all).
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64) -> Result<()>;

/// The likelihood of the first `opts.examples` examples of `data` under `model` (trained with
/// `schedule`, read through `param`), `opts.batch_size` at a time. Example i draws the bound's noise from
/// stream (seed, Eval, i) and the ODE's from (seed, Eval, ODE_STREAMS + i), so its numbers do
/// not depend on the batch size.
pub fn evaluate(
    model: &(dyn Denoiser + Sync),
    schedule: &Schedule,
    param: Parameterization,
    data: &dyn Dataset,
    device: &Device,
    opts: &EvalOptions,
    progress: Progress,
) -> Result<EvalReport> {
    let n = opts.examples;
    if n == 0 || opts.batch_size == 0 {
        return Err(Error::Invalid(
            "the number of examples and the batch size must be at least 1".into(),
        ));
    }
    if n > data.len() {
        return Err(Error::Invalid(format!(
            "asked for {n} examples of a dataset of {}",
            data.len()
        )));
    }
    let ode_steps = ode_steps(schedule, opts)?;
    let total_units = total_evaluations(schedule, opts)?;
    let mut units = 0u64;
    let mut seconds = (0.0, 0.0);
    let mut bound = BoundRows::new(schedule.len());
    let mut ode_rows: Vec<Vec<f64>> = Vec::new();
    let mut ode_meta = (Vec::new(), 0);
    let mut first = 0;
    while first < n {
        let b = opts.batch_size.min(n - first);
        let x0 = load_batch(data, first, b, device)?;
        if opts.method.bound() {
            let mut noise = BatchNoise::new(opts.seed, Purpose::Eval, first as u64, b);
            let (base, start) = (units, Instant::now());
            let bd = variational_bound(
                model,
                schedule,
                param,
                opts.clip,
                &x0,
                &mut noise,
                &mut |d, _| progress(base + d as u64, total_units),
            )?;
            seconds.0 += start.elapsed().as_secs_f64();
            units += schedule.len() as u64;
            bound.push(&bd.prior, &bd.terms);
        }
        if opts.method.ode() {
            let (base, start) = (units, Instant::now());
            let shards = shard::count(b, device);
            let nll = ode_nll_in_shards(
                model,
                schedule,
                param,
                &x0,
                first,
                opts,
                shards,
                &mut |d, _| progress(base + 2 * d as u64, total_units),
            )?;
            seconds.1 += start.elapsed().as_secs_f64();
            units += 2 * ode_steps as u64;
            for e in 0..b {
                ode_rows.push(nll.bpd.iter().map(|row| row[e]).collect());
            }
            ode_meta = (nll.nodes, nll.evaluations);
        }
        first += b;
    }
    let ode = opts.method.ode().then(|| {
        let means: Vec<f64> = ode_rows
            .iter()
            .map(|r| r.iter().sum::<f64>() / r.len() as f64)
            .collect();
        OdeReport {
            bpd: Estimate::of(&means),
            hutchinson_se: hutchinson_se(&ode_rows),
            per_example: means,
            nodes: ode_meta.0,
            evaluations: ode_meta.1,
            seconds: seconds.1,
        }
    });
    Ok(EvalReport {
        examples: n,
        dims: data.example_len(),
        bound: opts
            .method
            .bound()
            .then(|| bound.report(schedule, seconds.0)),
        ode,
    })
}

/// `ode_nll` of the batch x0 (examples first ..) computed in `shards` shards (one per CPU
/// thread: `shard::count`): each example draws from its own streams and the ODE treats examples
/// independently, so the shards give the same estimates as one batch, up to rounding. Each
/// shard runs its forward and backward passes on one thread, where the whole batch would
/// run its backward pass (the divergence) through parallel kernels full of barriers.
#[allow(clippy::too_many_arguments)]
fn ode_nll_in_shards(
    model: &(dyn Denoiser + Sync),
    schedule: &Schedule,
    param: Parameterization,
    x0: &Tensor,
    first: usize,
    opts: &EvalOptions,
    shards: usize,
    report: shard::Report,
) -> Result<OdeNll> {
    let b = x0.dim(0)?;
    let ranges = shard::ranges(b, shards.clamp(1, b.max(1)));
    let parts = shard::run_reporting(&ranges, report, |_, r, report| {
        let mut noise = ode_noise(opts.seed, (first + r.start) as u64, r.len());
        let x = x0.narrow(0, r.start, r.len())?;
        ode_nll(model, schedule, param, &x, &opts.ode, &mut noise, report)
    })?;
    let mut parts = parts.into_iter();
    let mut whole = parts
        .next()
        .ok_or_else(|| Error::Invalid("the ODE of an empty batch".into()))?;
    for part in parts {
        for (row, more) in whole.bpd.iter_mut().zip(part.bpd) {
            row.extend(more);
        }
    }
    Ok(whole)
}

/// Heun steps the ODE takes under `opts` (0 when the method has no ODE).
fn ode_steps(schedule: &Schedule, opts: &EvalOptions) -> Result<usize> {
    Ok(if opts.method.ode() {
        ode_nodes(schedule, opts.ode.steps)?.len() - 1
    } else {
        0
    })
}

/// Model evaluations `evaluate` will make in all (what its progress counts up to): per batch,
/// N for the bound and 2 per Heun step for the ODE.
pub fn total_evaluations(schedule: &Schedule, opts: &EvalOptions) -> Result<u64> {
    let per_batch = u64::from(opts.method.bound()) * schedule.len() as u64
        + 2 * ode_steps(schedule, opts)? as u64;
    Ok(opts.examples.div_ceil(opts.batch_size.max(1)) as u64 * per_batch)
}

/// sqrt(sum_b s_b^2 / K) / n over rows of K >= 2 series each.
fn hutchinson_se(rows: &[Vec<f64>]) -> Option<f64> {
    let k = rows.first()?.len();
    if k < 2 {
        return None;
    }
    let sum_var: f64 = rows
        .iter()
        .map(|r| {
            let m = r.iter().sum::<f64>() / k as f64;
            r.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (k as f64 - 1.0)
        })
        .sum();
    Some((sum_var / k as f64).sqrt() / rows.len() as f64)
}

/// The bound's per-example numbers, gathered over batches.
struct BoundRows {
    prior: Vec<f64>,
    /// terms[i][example]
    terms: Vec<Vec<f64>>,
}

impl BoundRows {
    fn new(len: usize) -> Self {
        BoundRows {
            prior: Vec::new(),
            terms: vec![Vec::new(); len],
        }
    }

    fn push(&mut self, prior: &[f64], terms: &[Vec<f64>]) {
        self.prior.extend_from_slice(prior);
        for (all, batch) in self.terms.iter_mut().zip(terms) {
            all.extend_from_slice(batch);
        }
    }

    fn report(&self, schedule: &Schedule, seconds: f64) -> BoundReport {
        let n = self.prior.len();
        let diffusion: Vec<f64> = (0..n)
            .map(|e| self.terms[1..].iter().map(|row| row[e]).sum())
            .collect();
        let total: Vec<f64> = (0..n)
            .map(|e| self.prior[e] + self.terms[0][e] + diffusion[e])
            .collect();
        BoundReport {
            total: Estimate::of(&total),
            prior: Estimate::of(&self.prior),
            diffusion: Estimate::of(&diffusion),
            decoder: Estimate::of(&self.terms[0]),
            per_timestep: self
                .terms
                .iter()
                .enumerate()
                .map(|(index, row)| TimestepTerm {
                    index,
                    t: schedule.timesteps[index],
                    bpd: Estimate::of(row),
                })
                .collect(),
            per_example: total,
            seconds,
        }
    }
}

/// Examples first .. first + b of `data` as a (b, C, H, W) tensor, unflipped.
pub fn load_batch(data: &dyn Dataset, first: usize, b: usize, device: &Device) -> Result<Tensor> {
    let len = data.example_len();
    let mut buf = vec![0f32; len * b];
    for (j, chunk) in buf.chunks_exact_mut(len).enumerate() {
        data.example(first + j, false, chunk)?;
    }
    let size = data.image_size();
    Ok(Tensor::from_vec(
        buf,
        (b, data.channels(), size.height, size.width),
        device,
    )?)
}

/// The per-timestep profile as CSV: `index,t,bpd,se`, one row per index, decoder first; f64s
/// printed exactly (shortest round trip), so the rows add up to the bound to the last digit.
pub fn per_timestep_csv(report: &BoundReport) -> String {
    let mut out = String::from("index,t,bpd,se\n");
    for row in &report.per_timestep {
        out.push_str(&format!(
            "{},{},{},{}\n",
            row.index, row.t, row.bpd.mean, row.bpd.se
        ));
    }
    out
}

#[cfg(test)]
mod ode_tests;
#[cfg(test)]
mod tests;
