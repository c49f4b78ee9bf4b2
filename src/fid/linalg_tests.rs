//! Tests for `linalg` against closed forms: matrices built from known eigenvalues, commuting
//! (diagonal) products, and S1 = S2, where tr sqrt(S S) = tr S.

use super::*;
use crate::rng::{Purpose, Stream};

fn stream() -> Stream {
    Stream::new(7, Purpose::Eval, 0)
}

/// Q diag(lambda) Q^T with Q a product of `n` random Householder reflections (orthogonal).
fn with_eigenvalues(lambda: &[f64], rng: &mut Stream) -> Vec<f64> {
    let n = lambda.len();
    let mut a = vec![0.0; n * n];
    for i in 0..n {
        a[i * n + i] = lambda[i];
    }
    for _ in 0..n.min(6) {
        // A <- H A H, H = I - 2 u u^T / (u.u).
        let u: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
        let uu: f64 = u.iter().map(|x| x * x).sum();
        let au: Vec<f64> = (0..n).map(|i| dot(&a[i * n..(i + 1) * n], &u)).collect();
        let uau = dot(&u, &au);
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] +=
                    -2.0 / uu * (au[i] * u[j] + u[i] * au[j]) + 4.0 * uau / (uu * uu) * u[i] * u[j];
            }
        }
    }
    a
}

/// X^T X / rows for a random X (rows, n): a PSD matrix of rank min(rows, n).
fn gram(rows: usize, n: usize, rng: &mut Stream) -> Vec<f64> {
    let x: Vec<f64> = (0..rows * n).map(|_| rng.normal()).collect();
    matmul(&x, true, &x, false, (n, rows, n))
        .into_iter()
        .map(|v| v / rows as f64)
        .collect()
}

fn trace(a: &[f64], n: usize) -> f64 {
    (0..n).map(|i| a[i * n + i]).sum()
}

#[test]
fn matmul_matches_the_definition_in_every_transposition() {
    let mut rng = stream();
    let (m, k, n) = (5, 7, 3);
    let a: Vec<f64> = (0..m * k).map(|_| rng.normal()).collect();
    let b: Vec<f64> = (0..k * n).map(|_| rng.normal()).collect();
    let want: Vec<f64> = (0..m * n)
        .map(|ij| (0..k).map(|p| a[ij / n * k + p] * b[p * n + ij % n]).sum())
        .collect();
    let at: Vec<f64> = (0..k * m).map(|pi| a[pi % m * k + pi / m]).collect();
    let bt: Vec<f64> = (0..n * k).map(|jp| b[jp % k * n + jp / k]).collect();
    for (x, tx, y, ty) in [
        (&a, false, &b, false),
        (&at, true, &b, false),
        (&a, false, &bt, true),
        (&at, true, &bt, true),
    ] {
        let c = matmul(x, tx, y, ty, (m, k, n));
        for (c, w) in c.iter().zip(&want) {
            assert!((c - w).abs() < 1e-12, "{tx} {ty}: {c} vs {w}");
        }
    }
}

#[test]
fn eigenvalues_of_a_rotated_diagonal_are_its_entries() {
    let mut rng = stream();
    let n = 40;
    let lambda: Vec<f64> = (0..n)
        .map(|i| (i as f64 - 10.0) * 0.37 + rng.uniform())
        .collect();
    let a = with_eigenvalues(&lambda, &mut rng);
    let got = symmetric_eigenvalues(a, n);
    let mut want = lambda.clone();
    want.sort_by(f64::total_cmp);
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 1e-12 * 20.0, "{g} vs {w}");
    }
}

#[test]
fn eigenvalues_keep_repeated_and_zero_values() {
    let mut rng = stream();
    let lambda = [0.0, 0.0, 0.0, 1.0, 1.0, 2.5, 2.5, 2.5, 1e-3, 7.0];
    let a = with_eigenvalues(&lambda, &mut rng);
    let got = symmetric_eigenvalues(a, lambda.len());
    let mut want = lambda.to_vec();
    want.sort_by(f64::total_cmp);
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 1e-13 * 7.0 * 10.0, "{g} vs {w}");
    }
    // A 1x1 and a 2x2 (no reflection needed) too.
    let one = symmetric_eigenvalues(vec![3.0], 1);
    assert!((one[0] - 3.0).abs() < 1e-15, "{one:?}");
    let two = symmetric_eigenvalues(vec![2.0, 1.0, 1.0, 2.0], 2);
    assert!(
        (two[0] - 1.0).abs() < 1e-15 && (two[1] - 3.0).abs() < 1e-15,
        "{two:?}"
    );
}

#[test]
fn pivoted_cholesky_finds_the_rank_and_reconstructs() {
    let mut rng = stream();
    let n = 30;
    for rows in [4, 29, 60] {
        let s = gram(rows, n, &mut rng);
        let (l, r) = pivoted_cholesky(&s, n);
        assert_eq!(r, rows.min(n), "rank of X^T X with X ({rows}, {n})");
        let llt = matmul(&l, false, &l, true, (n, r, n));
        let err = llt
            .iter()
            .zip(&s)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        let scale = s.iter().map(|v| v.abs()).fold(0.0, f64::max);
        assert!(
            err < 1e-13 * scale * n as f64,
            "rows {rows}: |LL^T - S| = {err}"
        );
    }
    assert_eq!(pivoted_cholesky(&[0.0; 9], 3).1, 0);
}

#[test]
fn trace_sqrt_of_commuting_diagonals_is_the_sum_of_root_products() {
    let a = [4.0, 0.0, 9.0, 2.0];
    let b = [1.0, 5.0, 4.0, 8.0];
    let diag = |v: &[f64]| {
        let n = v.len();
        let mut m = vec![0.0; n * n];
        v.iter().enumerate().for_each(|(i, x)| m[i * n + i] = *x);
        m
    };
    // sqrt(4 1) + sqrt(0 5) + sqrt(9 4) + sqrt(2 8) = 2 + 0 + 6 + 4.
    let t = trace_sqrt_product(&diag(&a), &diag(&b), 4);
    assert!((t - 12.0).abs() < 1e-13, "{t}");
}

#[test]
fn trace_sqrt_of_a_square_is_the_trace_even_when_singular() {
    let mut rng = stream();
    let n = 50;
    // Full rank, and rank 7 (fewer samples than dimensions, as FID on small sets).
    for rows in [200, 8] {
        let s = gram(rows, n, &mut rng);
        let t = trace_sqrt_product(&s, &s, n);
        let want = trace(&s, n);
        assert!((t - want).abs() < 1e-9 * want, "rows {rows}: {t} vs {want}");
    }
}

#[test]
fn trace_sqrt_is_symmetric_in_its_arguments() {
    // tr sqrt(S1 S2) = tr sqrt(S2 S1): the products are similar.
    let mut rng = stream();
    let n = 40;
    let (s1, s2) = (gram(100, n, &mut rng), gram(13, n, &mut rng));
    let (a, b) = (
        trace_sqrt_product(&s1, &s2, n),
        trace_sqrt_product(&s2, &s1, n),
    );
    assert!((a - b).abs() < 1e-9 * a, "{a} vs {b}");
    // And against the eigenvalues of S1 S2 computed another way: for S1 = diag(d) scaled
    // rows, S1^(1/2) S2 S1^(1/2) is symmetric with the same eigenvalues.
    let d: Vec<f64> = (0..n).map(|i| 0.5 + i as f64 * 0.1).collect();
    let mut s1d = vec![0.0; n * n];
    d.iter().enumerate().for_each(|(i, x)| s1d[i * n + i] = *x);
    let mut sym = s2.clone();
    for i in 0..n {
        for j in 0..n {
            sym[i * n + j] *= (d[i] * d[j]).sqrt();
        }
    }
    let want = sum_sqrt(&symmetric_eigenvalues(sym, n));
    let got = trace_sqrt_product(&s1d, &s2, n);
    assert!((got - want).abs() < 1e-10 * want, "{got} vs {want}");
}
