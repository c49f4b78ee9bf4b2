//! Kernel Inception Distance (Bińkowski et al. 2018) as torch-fidelity and clean-fid compute
//! it: the unbiased estimate of the squared MMD under the cubic polynomial kernel
//! k(x, y) = (x.y / d + 1)^3, averaged over random subsets of both feature sets, with its
//! standard deviation over the subsets (numpy's `std`, ddof 0). Subsets are drawn without
//! replacement from a seeded stream, so a run repeats exactly (the draws differ from numpy's).

use super::linalg;
use super::stats::Features;
use crate::error::{Error, Result};
use crate::rng::{Purpose, Stream};

/// torch-fidelity's defaults.
pub const DEFAULT_SUBSETS: usize = 100;
pub const DEFAULT_SUBSET_SIZE: usize = 1000;

/// KID over `subsets` subsets of `subset_size` images from each side.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Kid {
    pub mean: f64,
    pub std: f64,
    pub subsets: usize,
    pub subset_size: usize,
}

/// The kernel matrix K[i, j] = (a_i . b_j / d + 1)^3 of rows a (m, d) and b (m, d).
fn poly_kernel(a: &[f64], b: &[f64], m: usize, d: usize) -> Vec<f64> {
    let gamma = 1.0 / d as f64;
    linalg::matmul(a, false, b, true, (m, d, m))
        .into_iter()
        .map(|g| (g * gamma + 1.0).powi(3))
        .collect()
}

/// The unbiased MMD^2 of rows x, y (m, d) each:
/// (sum_{i != j} k(x_i, x_j) + sum_{i != j} k(y_i, y_j)) / (m (m - 1)) - 2 sum_{i, j} k(x_i, y_j) / m^2.
pub fn mmd2_unbiased(x: &[f64], y: &[f64], m: usize, d: usize) -> f64 {
    let off_diagonal =
        |k: &[f64]| k.iter().sum::<f64>() - (0..m).map(|i| k[i * m + i]).sum::<f64>();
    let kxx = off_diagonal(&poly_kernel(x, x, m, d));
    let kyy = off_diagonal(&poly_kernel(y, y, m, d));
    let kxy: f64 = poly_kernel(x, y, m, d).iter().sum();
    let mf = m as f64;
    (kxx + kyy) / (mf * (mf - 1.0)) - 2.0 * kxy / (mf * mf)
}

/// `m` distinct row indices of `n`, drawn uniformly (a partial Fisher-Yates shuffle).
fn choose(n: usize, m: usize, rng: &mut Stream) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    for i in 0..m {
        let j = i + rng.below(n - i);
        idx.swap(i, j);
    }
    idx.truncate(m);
    idx
}

/// The rows `idx` of `f`, concatenated.
fn gather(f: &Features, idx: &[usize]) -> Vec<f64> {
    idx.iter().flat_map(|&i| f.row(i).iter().copied()).collect()
}

/// KID between two feature sets: the mean and standard deviation of `mmd2_unbiased` over
/// `subsets` pairs of random subsets of min(subset_size, n1, n2) rows (clean-fid's cap; at
/// least 2), drawn from stream (seed, Eval, 0).
pub fn kid(
    a: &Features,
    b: &Features,
    subsets: usize,
    subset_size: usize,
    seed: u64,
) -> Result<Kid> {
    if a.dim != b.dim {
        return Err(Error::Invalid(format!(
            "the two sides have features of {} and {} dimensions",
            a.dim, b.dim
        )));
    }
    let m = subset_size.min(a.n).min(b.n);
    if m < 2 || subsets == 0 {
        return Err(Error::Invalid(format!(
            "KID needs subsets of at least 2 images and at least one subset \
             (sides of {} and {} images, --kid-subset-size {subset_size}, --kid-subsets {subsets})",
            a.n, b.n
        )));
    }
    let mut rng = Stream::new(seed, Purpose::Eval, 0);
    let mmds: Vec<f64> = (0..subsets)
        .map(|_| {
            let x = gather(a, &choose(a.n, m, &mut rng));
            let y = gather(b, &choose(b.n, m, &mut rng));
            mmd2_unbiased(&x, &y, m, a.dim)
        })
        .collect();
    let mean = mmds.iter().sum::<f64>() / subsets as f64;
    let var = mmds.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / subsets as f64;
    Ok(Kid {
        mean,
        std: var.sqrt(),
        subsets,
        subset_size: m,
    })
}
