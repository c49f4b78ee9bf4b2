//! Feature sets and their Gaussian statistics, and the Fréchet distance between two such
//! Gaussians (Heusel et al. 2017, as pytorch-fid computes it), all in f64.

use super::linalg;
use crate::error::{Error, Result};

/// Feature vectors, one row per image: (n, dim), row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Features {
    pub n: usize,
    pub dim: usize,
    pub data: Vec<f64>,
}

impl Features {
    /// Rows of `dim` values; `data.len()` must be a multiple of `dim`.
    pub fn new(data: Vec<f64>, dim: usize) -> Result<Self> {
        if dim == 0 || data.len() % dim != 0 {
            return Err(Error::Invalid(format!(
                "{} feature values do not make rows of {dim}",
                data.len()
            )));
        }
        Ok(Features {
            n: data.len() / dim,
            dim,
            data,
        })
    }

    /// Row i.
    pub fn row(&self, i: usize) -> &[f64] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }
}

/// The mean and covariance of a feature set: what pytorch-fid's statistics files hold.
#[derive(Clone, Debug, PartialEq)]
pub struct Statistics {
    /// mu (dim).
    pub mu: Vec<f64>,
    /// sigma (dim, dim), row-major.
    pub sigma: Vec<f64>,
    pub dim: usize,
}

/// Rows per block of the covariance accumulation (bounds the centred copy's memory).
const BLOCK_ROWS: usize = 4096;

impl Statistics {
    /// mu = (1/n) sum_i x_i;  sigma = (1/(n-1)) sum_i (x_i - mu)(x_i - mu)^T  (numpy's
    /// `mean(axis=0)` and `cov(rowvar=False)`); needs n >= 2.
    pub fn from_features(f: &Features) -> Result<Self> {
        if f.n < 2 {
            return Err(Error::Invalid(format!(
                "{} image(s): a covariance needs at least 2",
                f.n
            )));
        }
        let d = f.dim;
        let mut mu = vec![0.0; d];
        for i in 0..f.n {
            mu.iter_mut().zip(f.row(i)).for_each(|(m, x)| *m += x);
        }
        mu.iter_mut().for_each(|m| *m /= f.n as f64);
        let mut sigma = vec![0.0; d * d];
        for start in (0..f.n).step_by(BLOCK_ROWS) {
            let rows = BLOCK_ROWS.min(f.n - start);
            let centred: Vec<f64> = (start..start + rows)
                .flat_map(|i| f.row(i).iter().zip(&mu).map(|(x, m)| x - m))
                .collect();
            let part = linalg::matmul(&centred, true, &centred, false, (d, rows, d));
            sigma.iter_mut().zip(part).for_each(|(s, p)| *s += p);
        }
        let norm = 1.0 / (f.n - 1) as f64;
        sigma.iter_mut().for_each(|s| *s *= norm);
        Ok(Statistics { mu, sigma, dim: d })
    }

    /// Statistics given directly (from a file); checks the shapes and that both are finite.
    pub fn new(mu: Vec<f64>, sigma: Vec<f64>) -> Result<Self> {
        let dim = mu.len();
        if sigma.len() != dim * dim || dim == 0 {
            return Err(Error::Invalid(format!(
                "mu has {dim} values but sigma {}: expected a {dim} x {dim} matrix",
                sigma.len()
            )));
        }
        if mu.iter().chain(&sigma).any(|v| !v.is_finite()) {
            return Err(Error::Invalid(
                "mu or sigma holds NaN or infinite values".into(),
            ));
        }
        Ok(Statistics { mu, sigma, dim })
    }

    /// tr sigma.
    pub fn trace(&self) -> f64 {
        (0..self.dim).map(|i| self.sigma[i * self.dim + i]).sum()
    }
}

/// The Fréchet distance between N(mu1, S1) and N(mu2, S2):
/// d^2 = |mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr sqrt(S1 S2)  (Dowson & Landau 1982), with
/// tr sqrt(S1 S2) by `linalg::trace_sqrt_product`.
pub fn frechet_distance(a: &Statistics, b: &Statistics) -> Result<f64> {
    if a.dim != b.dim {
        return Err(Error::Invalid(format!(
            "the two sides have features of {} and {} dimensions",
            a.dim, b.dim
        )));
    }
    let diff: f64 = a.mu.iter().zip(&b.mu).map(|(x, y)| (x - y) * (x - y)).sum();
    let tr_covmean = linalg::trace_sqrt_product(&a.sigma, &b.sigma, a.dim);
    Ok(diff + a.trace() + b.trace() - 2.0 * tr_covmean)
}
