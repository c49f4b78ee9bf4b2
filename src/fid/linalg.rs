//! Dense f64 linear algebra for the Fréchet distance: the trace of the square root of a product
//! of two covariance matrices, tr sqrt(S1 S2), in a symmetric form that needs no general
//! (non-symmetric) matrix square root. S1 = L L^T by a pivoted Cholesky factorisation (rank
//! revealing, so singular covariances from fewer samples than dimensions are exact too); then
//! S1 S2 = L (L^T S2 L) L^-1 on the range of L, so the eigenvalues of S1 S2 are those of the
//! symmetric positive semi-definite M = L^T S2 L (and zeros), and tr sqrt(S1 S2) = sum_i
//! sqrt(lambda_i(M)). M's eigenvalues come from a Householder reduction to tridiagonal form and
//! Sturm-sequence bisection. Matrices are row-major `Vec<f64>`; the products run on the `gemm`
//! crate, the rest in parallel over rows on the rayon pool.

use rayon::prelude::*;

/// C = A B for row-major A (m, k) and B (k, n), each optionally read transposed (`ta`: A is
/// stored as (k, m); `tb`: B is stored as (n, k)); C: (m, n), row-major.
pub fn matmul(
    a: &[f64],
    ta: bool,
    b: &[f64],
    tb: bool,
    (m, k, n): (usize, usize, usize),
) -> Vec<f64> {
    assert!(
        a.len() >= m * k && b.len() >= k * n,
        "matmul: operands shorter than their shape"
    );
    let mut c = vec![0.0; m * n];
    if m == 0 || n == 0 {
        return c;
    }
    // (row stride, column stride) of each operand as stored.
    let (a_rs, a_cs) = if ta { (1, m) } else { (k, 1) };
    let (b_rs, b_cs) = if tb { (1, k) } else { (n, 1) };
    let threads = rayon::current_num_threads().max(1);
    // SAFETY: the asserted lengths cover every element the strides address: A (m, k), B (k, n),
    // C (m, n); C is written only, fully (read_dst false).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            if threads > 1 {
                gemm::Parallelism::Rayon(threads)
            } else {
                gemm::Parallelism::None
            },
        );
    }
    c
}

/// The pivoted (rank-revealing) Cholesky factor of a symmetric positive semi-definite S (n, n):
/// S = L L^T + R with L (n, r) row-major in S's own row order, each step pivoting on the
/// largest remaining diagonal entry and stopping when it is at most
/// tol = n eps max_i S_ii (LAPACK dpstrf's default), so R's diagonal is below tol.
pub fn pivoted_cholesky(s: &[f64], n: usize) -> (Vec<f64>, usize) {
    assert_eq!(s.len(), n * n, "pivoted_cholesky: S is not n x n");
    let mut d: Vec<f64> = (0..n).map(|i| s[i * n + i]).collect();
    let max_diag = d.iter().copied().fold(0.0, f64::max);
    let tol = n as f64 * f64::EPSILON * max_diag;
    let mut chosen = vec![false; n];
    // Row i holds L[i, 0..k] for the k columns done so far (capacity n).
    let mut l = vec![0.0; n * n];
    let mut r = 0;
    while r < n {
        let pivot = (0..n)
            .filter(|&i| !chosen[i])
            .max_by(|&a, &b| d[a].total_cmp(&d[b]));
        let Some(j) = pivot else { break };
        // Also stops on NaN (a non-finite S).
        if d[j].is_nan() || d[j] <= tol {
            break;
        }
        chosen[j] = true;
        let ljj = d[j].sqrt();
        let lj = l[j * n..j * n + r].to_vec();
        let (k, sj) = (r, &s[j * n..(j + 1) * n]);
        // L[i, k] = (S[i, j] - sum_{m<k} L[i, m] L[j, m]) / L[j, k];  d_i -= L[i, k]^2.
        l.par_chunks_mut(n)
            .zip(d.par_iter_mut())
            .enumerate()
            .filter(|(i, _)| !chosen[*i])
            .for_each(|(i, (row, di))| {
                let v = (sj[i] - dot(&row[..k], &lj)) / ljj;
                row[k] = v;
                *di -= v * v;
            });
        l[j * n + k] = ljj;
        r += 1;
    }
    let mut out = Vec::with_capacity(n * r);
    for row in l.chunks_exact(n) {
        out.extend_from_slice(&row[..r]);
    }
    (out, r)
}

/// sum_i a_i b_i with four running sums (vectorisable).
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0.0f64; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let tail: f64 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..4 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// The eigenvalues of a symmetric A (n, n), ascending: Householder reduction to a tridiagonal
/// T = Q^T A Q, then bisection on T's Sturm sequence. A is consumed as workspace.
pub fn symmetric_eigenvalues(mut a: Vec<f64>, n: usize) -> Vec<f64> {
    assert_eq!(a.len(), n * n, "symmetric_eigenvalues: A is not n x n");
    let (diag, off) = tridiagonalize(&mut a, n);
    tridiagonal_eigenvalues(&diag, &off)
}

/// Reduce symmetric A (n, n, both triangles stored) to tridiagonal form by Householder
/// reflections H_k = I - tau v v^T, k = 0..n-2, each zeroing column k below the subdiagonal:
/// with p = tau B v, w = p - (tau/2)(v.p) v, the trailing block becomes B - v w^T - w v^T.
/// Returns (diagonal (n), subdiagonal (n - 1)); A is overwritten.
fn tridiagonalize(a: &mut [f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut off = vec![0.0; n.saturating_sub(1)];
    for k in 0..n.saturating_sub(2) {
        let m = n - k - 1;
        // Column k below the diagonal = row k right of it (symmetry).
        let x = a[k * n + k + 1..(k + 1) * n].to_vec();
        let norm = x.iter().map(|v| v * v).sum::<f64>().sqrt();
        let alpha = if x[0] > 0.0 { -norm } else { norm };
        off[k] = alpha;
        let mut v = x;
        v[0] -= alpha;
        let vv: f64 = v.iter().map(|t| t * t).sum();
        if vv == 0.0 {
            // Already tridiagonal in this column (x = 0).
            continue;
        }
        let tau = 2.0 / vv;
        // Trailing block B = A[k+1.., k+1..]: rows of stride n starting at k+1.
        let block = &mut a[(k + 1) * n..];
        let p: Vec<f64> = block
            .par_chunks(n)
            .take(m)
            .map(|row| tau * dot(&row[k + 1..], &v))
            .collect();
        let kk = 0.5 * tau * dot(&v, &p);
        let w: Vec<f64> = p.iter().zip(&v).map(|(pi, vi)| pi - kk * vi).collect();
        block
            .par_chunks_mut(n)
            .take(m)
            .enumerate()
            .for_each(|(i, row)| {
                let (vi, wi) = (v[i], w[i]);
                for ((b, vj), wj) in row[k + 1..].iter_mut().zip(&v).zip(&w) {
                    *b -= vi * wj + wi * vj;
                }
            });
    }
    if n >= 2 {
        off[n - 2] = a[(n - 1) * n + n - 2];
    }
    let diag = (0..n).map(|i| a[i * n + i]).collect();
    (diag, off)
}

/// The number of eigenvalues of the symmetric tridiagonal T (diagonal d, subdiagonal e) below
/// x: the negative pivots of T - x I = L D L^T, q_i = d_i - x - e_{i-1}^2 / q_{i-1}.
fn count_below(d: &[f64], e: &[f64], x: f64) -> usize {
    let mut count = 0;
    let mut q = 1.0;
    for i in 0..d.len() {
        let e2 = if i == 0 { 0.0 } else { e[i - 1] * e[i - 1] };
        q = d[i] - x - e2 / q;
        if q == 0.0 {
            // A zero pivot: perturb it by a relative eps so the recurrence continues (the count
            // is then that of a matrix within rounding of T).
            q = -f64::EPSILON * (x.abs() + 1.0);
        }
        if q < 0.0 {
            count += 1;
        }
    }
    count
}

/// All eigenvalues of the symmetric tridiagonal T (diagonal d, subdiagonal e), ascending, each
/// bisected within its Gershgorin interval to an absolute width of 2 eps max|T| (the accuracy
/// any backward-stable method has).
pub fn tridiagonal_eigenvalues(d: &[f64], e: &[f64]) -> Vec<f64> {
    let n = d.len();
    if n == 0 {
        return Vec::new();
    }
    let radius = |i: usize| {
        (if i > 0 { e[i - 1].abs() } else { 0.0 }) + (if i + 1 < n { e[i].abs() } else { 0.0 })
    };
    let lo = (0..n)
        .map(|i| d[i] - radius(i))
        .fold(f64::INFINITY, f64::min);
    let hi = (0..n)
        .map(|i| d[i] + radius(i))
        .fold(f64::NEG_INFINITY, f64::max);
    let scale = lo.abs().max(hi.abs());
    let tol = 2.0 * f64::EPSILON * scale;
    (0..n)
        .into_par_iter()
        .map(|k| {
            // The k-th smallest: the least x with count_below(x) > k.
            let (mut a, mut b) = (lo - tol, hi + tol);
            for _ in 0..256 {
                if b - a <= tol {
                    break;
                }
                let mid = 0.5 * (a + b);
                if count_below(d, e, mid) > k {
                    b = mid;
                } else {
                    a = mid;
                }
            }
            0.5 * (a + b)
        })
        .collect()
}

/// tr sqrt(S1 S2) for symmetric positive semi-definite S1, S2 (n, n): sum_i sqrt(lambda_i) over
/// the eigenvalues of M = L^T S2 L, S1 = L L^T (`pivoted_cholesky`). Those eigenvalues are
/// S1 S2's own (besides zeros), so this is the trace of scipy's sqrtm(S1 S2) wherever that
/// exists. An eigenvalue below r eps lambda_max is rounding noise around a zero (the accuracy
/// of the eigenvalues of M is about eps |M|) and counts as 0: its square root would add
/// sqrt(noise), far more than the noise itself. Negative ones are such noise too (pytorch-fid
/// keeps the real part of their square root, 0).
pub fn trace_sqrt_product(s1: &[f64], s2: &[f64], n: usize) -> f64 {
    let (l, r) = pivoted_cholesky(s1, n);
    if r == 0 {
        return 0.0;
    }
    let t = matmul(s2, false, &l, false, (n, n, r));
    let mut m = matmul(&l, true, &t, false, (r, n, r));
    // M is symmetric in exact arithmetic; make it so in floating point too.
    for i in 0..r {
        for j in 0..i {
            let v = 0.5 * (m[i * r + j] + m[j * r + i]);
            m[i * r + j] = v;
            m[j * r + i] = v;
        }
    }
    sum_sqrt(&symmetric_eigenvalues(m, r))
}

/// sum_i sqrt(lambda_i) over the eigenvalues of a PSD matrix above its rounding noise,
/// n eps lambda_max (n = their count); the others count as 0.
pub fn sum_sqrt(lambda: &[f64]) -> f64 {
    let max = lambda.iter().copied().fold(0.0, f64::max);
    let floor = lambda.len() as f64 * f64::EPSILON * max;
    lambda
        .iter()
        .filter(|&&l| l > floor)
        .map(|l| l.sqrt())
        .sum()
}

#[cfg(test)]
#[path = "linalg_tests.rs"]
mod tests;
