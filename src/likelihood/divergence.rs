//! Hutchinson's trace estimator (Hutchinson 1989; Grathwohl et al. 2019) for the divergence of
//! a model's eps_hat, through candle's autograd: for a probe v with E[v v^T] = I,
//! E[v^T J v] = tr J, and v^T J v = v . (J^T v) where J^T v is the gradient of v . eps_hat(x)
//! with respect to x: one backward pass per probe, against D for the exact trace.

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Tensor, Var};

use crate::denoiser::Denoiser;
use crate::diffusion::{x0_and_eps, Parameterization};
use crate::error::{Error, Result};
use crate::rng::BatchNoise;
use crate::schedule::Schedule;

/// How the divergence tr(d eps_hat / dx) is estimated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Probe {
    /// Hutchinson with v uniform in {-1, 1}^D: E[v^T J v] = tr J, variance 2 sum_{i != j} J_ij^2
    /// (for symmetric J), never more than the Gaussian's.
    #[default]
    Rademacher,
    /// Hutchinson with v ~ N(0, I): variance 2 ||J||_F^2 for symmetric J.
    Gaussian,
    /// The exact trace: D backward passes with the basis vectors (small D only, e.g. tests).
    Exact,
}

impl Probe {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Probe::Rademacher => "rademacher",
            Probe::Gaussian => "gaussian",
            Probe::Exact => "exact",
        }
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Probe {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        [Probe::Rademacher, Probe::Gaussian, Probe::Exact]
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "unknown probe {s:?}; expected rademacher, gaussian or exact"
                ))
            })
    }
}

/// Which probes, and how many independent series of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Probes {
    pub probe: Probe,
    /// Series K (1 for the exact trace).
    pub series: usize,
}

/// (eps_hat(x) at schedule index i, unclipped and detached; q[k][b] = v_k^T (d eps_hat / dx) v_k
/// for example b, one probe v_k per series from example b's stream in `noise`, or the exact
/// trace). eps_hat is read from the model output through `param`, whatever it predicts.
pub(super) fn eps_and_divergence(
    model: &dyn Denoiser,
    schedule: &Schedule,
    param: Parameterization,
    x: &Tensor,
    i: usize,
    probes: Probes,
    noise: &mut BatchNoise,
) -> Result<(Tensor, Vec<Vec<f64>>)> {
    let batch = x.dim(0)?;
    let x = Var::from_tensor(x)?;
    let output = model
        .forward(x.as_tensor(), &vec![schedule.timesteps[i]; batch])?
        .to_dtype(DType::F32)?;
    let (pred, _) = param.split(&output, x.dim(1)?)?;
    let idx = vec![i; batch];
    let (_, eps) = x0_and_eps(
        schedule,
        param.prediction,
        x.as_tensor(),
        &idx,
        &pred,
        false,
    )?;
    let per_example = x.dims()[1..].to_vec();
    let quad = |v: &Tensor| -> Result<Vec<f64>> {
        let grads = (&eps * v)?.sum_all()?.backward()?;
        let jtv = grads.get(x.as_tensor()).ok_or_else(|| {
            Error::Invalid(
                "the model's output is not differentiable with respect to its input; the ODE \
                 likelihood needs candle's autograd through the model"
                    .into(),
            )
        })?;
        let q: Vec<f32> = (jtv * v)?.flatten_from(1)?.sum(1)?.to_vec1()?;
        Ok(q.into_iter().map(f64::from).collect())
    };
    let q = match probes.probe {
        Probe::Exact => {
            let dims: usize = per_example.iter().product();
            let mut total = vec![0.0; batch];
            for j in 0..dims {
                let mut basis = vec![0f32; dims];
                basis[j] = 1.0;
                let v = Tensor::from_vec(basis, per_example.as_slice(), x.device())?
                    .unsqueeze(0)?
                    .broadcast_as(x.shape())?
                    .contiguous()?;
                for (acc, q) in total.iter_mut().zip(quad(&v)?) {
                    *acc += q;
                }
            }
            vec![total]
        }
        probe => (0..probes.series)
            .map(|_| quad(&draw_probe(probe, noise, &per_example, x.as_tensor())?))
            .collect::<Result<_>>()?,
    };
    Ok((eps.detach(), q))
}

/// One probe (B, ...): row b from example b's stream.
fn draw_probe(
    probe: Probe,
    noise: &mut BatchNoise,
    per_example: &[usize],
    like: &Tensor,
) -> Result<Tensor> {
    if probe == Probe::Gaussian {
        return noise.randn(per_example, like.device());
    }
    let n: usize = per_example.iter().product();
    let mut data = Vec::with_capacity(n * noise.len());
    for b in 0..noise.len() {
        let stream = noise.stream(b);
        data.extend((0..n).map(|_| {
            if stream.next_u64() >> 63 == 0 {
                1f32
            } else {
                -1f32
            }
        }));
    }
    Ok(Tensor::from_vec(data, like.shape(), like.device())?)
}
