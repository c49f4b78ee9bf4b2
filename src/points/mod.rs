//! Vector data: point clouds of shape (N, D), for learning diffusion on distributions that can
//! be drawn exactly and measured. It owns the built-in 2-D generators (two moons, swiss roll,
//! 8 gaussians), reading points from .csv/.npy and writing CSV (`io`), the per-dimension
//! standardisation the network trains in, the energy distance
//! (`energy`) and a scatter-plot rasteriser (`scatter`). The network that denoises them is
//! `nn::mlp`; the training loop and samplers are the images' own.

pub mod energy;
pub mod io;
pub mod scatter;

use std::f64::consts::PI;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::rng::Stream;

pub use energy::energy_distance;

/// N points of dimension D, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Points {
    pub dim: usize,
    pub values: Vec<f64>,
}

impl Points {
    /// Points from row-major `values`; their length must be a multiple of `dim` >= 1.
    pub fn new(dim: usize, values: Vec<f64>) -> Result<Self> {
        if dim == 0 || values.len() % dim != 0 {
            return Err(Error::Invalid(format!(
                "{} values do not form rows of {dim}",
                values.len()
            )));
        }
        Ok(Points { dim, values })
    }

    /// Number of points N.
    pub fn len(&self) -> usize {
        self.values.len() / self.dim
    }

    /// True when there are no points.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Point i.
    pub fn row(&self, i: usize) -> &[f64] {
        &self.values[i * self.dim..(i + 1) * self.dim]
    }

    /// The points of an (N, D) tensor.
    pub fn from_tensor(x: &candle_core::Tensor) -> Result<Self> {
        let (_, d) = x.dims2()?;
        let v: Vec<f32> = x
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        Points::new(d, v.into_iter().map(f64::from).collect())
    }
}

/// The built-in 2-D distributions. Each draws a point independently, so a fresh sample of any
/// size is a sample of the true distribution; `noise` is the standard deviation of the isotropic
/// Gaussian added to each point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Toy {
    /// Two interleaved half circles (scikit-learn's make_moons, angles drawn uniformly): with
    /// probability 1/2 (cos a, sin a), else (1 - cos a, 1/2 - sin a), a ~ U[0, pi]. Mean
    /// (1/2, 1/4).
    Moons,
    /// A 2-D swiss roll: (t cos t, t sin t) / 5, t = 1.5 pi (1 + 2u), u ~ U[0, 1] (scikit-learn's
    /// make_swiss_roll in the (x, z) plane, scaled by 1/5 as in FFJORD). Radius t / 5 in
    /// [0.3 pi, 0.9 pi].
    SwissRoll,
    /// A mixture of 8 equal Gaussians centred on the circle of radius 2 sqrt(2) at angles
    /// k pi / 4, k = 0..7 (FFJORD's "8gaussians": unit-circle centres times 4, over sqrt(2)).
    EightGaussians,
}

/// Radius of the 8-gaussians circle, 4 / sqrt(2).
pub const EIGHT_GAUSSIANS_RADIUS: f64 = 2.0 * std::f64::consts::SQRT_2;

impl Toy {
    /// The default noise: moons 0.05, swiss roll 0.2 (FFJORD's 1.0 before the 1/5 scaling),
    /// 8 gaussians 0.5 / sqrt(2) (FFJORD's).
    pub fn default_noise(self) -> f64 {
        match self {
            Toy::Moons => 0.05,
            Toy::SwissRoll => 0.2,
            Toy::EightGaussians => 0.5 / std::f64::consts::SQRT_2,
        }
    }

    /// `n` independent points with Gaussian noise of standard deviation `noise`.
    pub fn sample(self, n: usize, noise: f64, stream: &mut Stream) -> Points {
        let mut values = Vec::with_capacity(2 * n);
        for _ in 0..n {
            let (x, y) = match self {
                Toy::Moons => {
                    let a = PI * stream.uniform();
                    if stream.uniform() < 0.5 {
                        (a.cos(), a.sin())
                    } else {
                        (1.0 - a.cos(), 0.5 - a.sin())
                    }
                }
                Toy::SwissRoll => {
                    let t = 1.5 * PI * (1.0 + 2.0 * stream.uniform());
                    (t * t.cos() / 5.0, t * t.sin() / 5.0)
                }
                Toy::EightGaussians => {
                    let a = stream.below(8) as f64 * PI / 4.0;
                    (
                        EIGHT_GAUSSIANS_RADIUS * a.cos(),
                        EIGHT_GAUSSIANS_RADIUS * a.sin(),
                    )
                }
            };
            values.push(x + noise * stream.normal());
            values.push(y + noise * stream.normal());
        }
        Points { dim: 2, values }
    }
}

/// Per-dimension standardisation z = (x - mean) / scale, fitted on the training set, stored in
/// the checkpoint and undone on sampling: the network then sees unit-scale data whatever the
/// units of the file, as the noise schedule (x_T ~ N(0, I)) assumes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Standardization {
    pub mean: Vec<f64>,
    /// The standard deviation of each dimension (1 where it is 0, so a constant column stays
    /// finite).
    pub scale: Vec<f64>,
}

impl Standardization {
    /// The mean and population standard deviation of each dimension of `points`.
    pub fn fit(points: &Points) -> Self {
        let (d, n) = (points.dim, points.len().max(1) as f64);
        let mut mean = vec![0.0; d];
        for i in 0..points.len() {
            for (m, v) in mean.iter_mut().zip(points.row(i)) {
                *m += v / n;
            }
        }
        let mut var = vec![0.0; d];
        for i in 0..points.len() {
            for ((s, v), m) in var.iter_mut().zip(points.row(i)).zip(&mean) {
                *s += (v - m).powi(2) / n;
            }
        }
        let scale = var
            .into_iter()
            .map(|v| if v > 0.0 { v.sqrt() } else { 1.0 })
            .collect();
        Standardization { mean, scale }
    }

    /// x -> (x - mean) / scale, row by row.
    pub fn apply(&self, points: &Points) -> Points {
        self.map(points, |v, m, s| (v - m) / s)
    }

    /// z -> z scale + mean, row by row.
    pub fn undo(&self, points: &Points) -> Points {
        self.map(points, |v, m, s| v * s + m)
    }

    fn map(&self, points: &Points, f: impl Fn(f64, f64, f64) -> f64) -> Points {
        let d = points.dim;
        let values = points
            .values
            .iter()
            .enumerate()
            .map(|(k, &v)| f(v, self.mean[k % d], self.scale[k % d]))
            .collect();
        Points { dim: d, values }
    }

    /// As stored in a checkpoint's metadata (JSON).
    pub fn to_meta(&self) -> Result<String> {
        serde_json::to_string(self)
            .map_err(|e| Error::Invalid(format!("cannot serialise the standardisation: {e}")))
    }

    /// Read back `to_meta`'s text.
    pub fn from_meta(text: &str) -> Result<Self> {
        let s: Standardization = serde_json::from_str(text)
            .map_err(|e| Error::Invalid(format!("bad standardisation metadata: {e}")))?;
        if s.mean.len() != s.scale.len() || s.scale.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
            return Err(Error::Invalid(
                "bad standardisation metadata: mean and scale differ in length or a scale is not positive".into(),
            ));
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests;
