//! Exact denoisers for data whose noised distribution is known in closed form: a Gaussian
//! mixture sum_k w_k N(mu_k, s_k^2 I) over flattened examples (one component: a Gaussian;
//! s_k = 0: a discrete distribution). They stand in for a network wherever a test needs the
//! *true* model: samplers, the variational bound and the likelihood are checked against them.
//!
//! Under q(x_t | x0) the mixture stays a mixture: x_t | k ~ N(sqrt(abar) mu_k, (abar s_k^2 + 1 - abar) I),
//! so the score is sum_k r_k(x_t) (sqrt(abar) mu_k - x_t) / (abar s_k^2 + 1 - abar) with
//! responsibilities r_k, and E[eps | x_t] = -sqrt(1 - abar) score.

use candle_core::{DType, Tensor};

use crate::denoiser::Denoiser;
use crate::error::{Error, Result};

/// One mixture component: weight, mean vector (length D, or 1 to broadcast) and std.
#[derive(Clone, Debug)]
pub struct Component {
    pub weight: f64,
    pub mean: Vec<f64>,
    pub std: f64,
}

/// The exact eps-predictor of a Gaussian mixture under a schedule with cumulative alphas `abar`
/// (indexed by model timestep).
#[derive(Clone, Debug)]
pub struct MixtureOracle {
    components: Vec<Component>,
    alphas_cumprod: Vec<f64>,
}

impl MixtureOracle {
    /// The oracle for `components` (weights are normalised) under `alphas_cumprod`.
    pub fn new(components: Vec<Component>, alphas_cumprod: Vec<f64>) -> Result<Self> {
        let total: f64 = components.iter().map(|c| c.weight).sum();
        if components.is_empty() || total <= 0.0 {
            return Err(Error::Invalid(
                "a mixture needs components with positive weight".into(),
            ));
        }
        let components = components
            .into_iter()
            .map(|c| Component {
                weight: c.weight / total,
                ..c
            })
            .collect();
        Ok(MixtureOracle {
            components,
            alphas_cumprod,
        })
    }

    /// The Gaussian N(mu, s^2 I): E[eps | x_t] = sqrt(1-abar) (x_t - sqrt(abar) mu) / (abar s^2 + 1 - abar).
    pub fn gaussian(mean: f64, std: f64, alphas_cumprod: Vec<f64>) -> Result<Self> {
        Self::new(
            vec![Component {
                weight: 1.0,
                mean: vec![mean],
                std,
            }],
            alphas_cumprod,
        )
    }

    /// E[eps | x_t] for one flattened example x at cumulative alpha `ab`.
    fn eps(&self, x: &[f64], ab: f64) -> Vec<f64> {
        let d = x.len();
        let mu = |c: &Component, i: usize| c.mean[if c.mean.len() == 1 { 0 } else { i }];
        // log r_k = log w_k - D/2 log var_k - |x - sqrt(ab) mu_k|^2 / (2 var_k), then normalise.
        let stats: Vec<(f64, f64)> = self
            .components
            .iter()
            .map(|c| {
                let var = ab * c.std * c.std + 1.0 - ab;
                let sq: f64 = (0..d).map(|i| (x[i] - ab.sqrt() * mu(c, i)).powi(2)).sum();
                (
                    c.weight.ln() - 0.5 * d as f64 * var.ln() - sq / (2.0 * var),
                    var,
                )
            })
            .collect();
        let max = stats.iter().map(|s| s.0).fold(f64::NEG_INFINITY, f64::max);
        let norm: f64 = stats.iter().map(|s| (s.0 - max).exp()).sum();
        let mut out = vec![0.0; d];
        for (c, (logr, var)) in self.components.iter().zip(&stats) {
            let r = (logr - max).exp() / norm;
            for (i, o) in out.iter_mut().enumerate() {
                *o += r * (x[i] - ab.sqrt() * mu(c, i)) / var;
            }
        }
        out.iter().map(|s| s * (1.0 - ab).sqrt()).collect()
    }
}

impl Denoiser for MixtureOracle {
    fn forward(&self, x_t: &Tensor, t: &[usize]) -> Result<Tensor> {
        let dims = x_t.dims().to_vec();
        let batch = dims[0];
        let rows: Vec<Vec<f64>> = x_t
            .to_dtype(DType::F64)?
            .flatten_from(1)?
            .to_vec2::<f64>()?;
        if rows.len() != t.len() || batch != t.len() {
            return Err(Error::Invalid(format!(
                "{} timesteps for a batch of {batch}",
                t.len()
            )));
        }
        let mut out = Vec::with_capacity(x_t.elem_count());
        for (row, &ti) in rows.iter().zip(t) {
            let ab = *self.alphas_cumprod.get(ti).ok_or_else(|| {
                Error::Invalid(format!("timestep {ti} is outside the oracle's schedule"))
            })?;
            out.extend(self.eps(row, ab).into_iter().map(|v| v as f32));
        }
        Ok(Tensor::from_vec(out, dims, x_t.device())?.to_dtype(x_t.dtype())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn gaussian_oracle_matches_the_closed_form() {
        let abar = vec![0.9, 0.5, 0.1];
        let o = MixtureOracle::gaussian(0.3, 0.5, abar.clone()).unwrap();
        let x = Tensor::new(&[[0.7f32, -1.2]], &Device::Cpu).unwrap();
        let eps: Vec<f32> = o
            .forward(&x, &[1])
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let ab: f64 = 0.5;
        for (xi, e) in [0.7f64, -1.2].iter().zip(eps) {
            let want = (1.0 - ab).sqrt() * (xi - ab.sqrt() * 0.3) / (ab * 0.25 + 1.0 - ab);
            assert!((want - e as f64).abs() < 1e-6, "{want} vs {e}");
        }
    }

    #[test]
    fn two_equal_components_far_apart_act_like_the_nearest() {
        let comps = vec![
            Component {
                weight: 1.0,
                mean: vec![-3.0],
                std: 0.1,
            },
            Component {
                weight: 1.0,
                mean: vec![3.0],
                std: 0.1,
            },
        ];
        let o = MixtureOracle::new(comps, vec![0.99]).unwrap();
        let single = MixtureOracle::gaussian(3.0, 0.1, vec![0.99]).unwrap();
        let x = Tensor::new(&[[2.9f32, 3.1, 3.0]], &Device::Cpu).unwrap();
        let a: Vec<f32> = o
            .forward(&x, &[0])
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let b: Vec<f32> = single
            .forward(&x, &[0])
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for (p, q) in a.iter().zip(&b) {
            assert!((p - q).abs() < 1e-5);
        }
    }
}
