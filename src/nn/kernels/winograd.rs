//! 3x3 convolution with stride 1 and padding 1 by Winograd's minimal filtering F(4x4, 3x3)
//! (Lavin & Gray 2016): each 4x4 output tile is A^T [(G g G^T) . (B^T d B)] A for its 6x6 input
//! patch d, so a tile costs 36 multiply-adds per (input, output) channel pair instead of 144.
//! Summed over input channels, the 36 transform points become 36 independent GEMMs. The data
//! transforms live in `transforms`.
//!
//! Work items are chunks of tile rows, sized so the transformed inputs V (36, cin, n) and
//! outputs M (36, cout, n) of a chunk stay in cache: transform in, 36 GEMMs, transform out. The
//! gradient of the input is the same convolution of dy with the flipped, transposed kernel; the
//! gradient of the weight is dU = sum over tiles of (A dy A^T) (B^T d B)^T per point, then
//! dW = G^T dU G (the transpose of the forward map in g).

use super::geom::Geom;
use super::par::{self, gemm, multiversion, Partials, Shared};
use super::transforms;

use transforms::{Chunk, Points, ALPHA, POINTS};

/// (tile rows per image, tiles per tile row) of the map: 4x4 output tiles, the last ones
/// padded when h or w is not a multiple of 4.
fn tiles(g: &Geom) -> (usize, usize) {
    transforms::tiles(g.h, g.w)
}

/// Tile rows per work item, so a chunk's V and M (36 (k + m) n floats) stay near 1.5 MB.
fn rows_per_chunk(g: &Geom, k: usize, m: usize) -> usize {
    let (_, tw) = tiles(g);
    let tiles = (10_240 / (k + m).max(1)).clamp(8, 256);
    (tiles / tw).max(1)
}

/// G v for a 3-vector v (G: 6 x 3 of F(4x4, 3x3)):
/// [v0 / 4, -(v0 + v1 + v2) / 6, -(v0 - v1 + v2) / 6, v0 / 24 + v1 / 12 + v2 / 6,
///  v0 / 24 - v1 / 12 + v2 / 6, v2].
#[inline(always)]
fn g_rows(v: [f32; 3]) -> [f32; ALPHA] {
    let (s, d) = (v[0] + v[2], v[1]);
    let (e, f) = (v[0] / 24.0 + v[2] / 6.0, v[1] / 12.0);
    [
        v[0] / 4.0,
        -(s + d) / 6.0,
        -(s - d) / 6.0,
        e + f,
        e - f,
        v[2],
    ]
}

/// G^T u for a 6-vector u: [u0 / 4 - (u1 + u2) / 6 + (u3 + u4) / 24,
/// (u2 - u1) / 6 + (u3 - u4) / 12, -(u1 + u2) / 6 + (u3 + u4) / 6 + u5].
#[inline(always)]
fn gt_rows(u: [f32; ALPHA]) -> [f32; 3] {
    let (s12, s34) = (u[1] + u[2], u[3] + u[4]);
    [
        u[0] / 4.0 - s12 / 6.0 + s34 / 24.0,
        (u[2] - u[1]) / 6.0 + (u[3] - u[4]) / 12.0,
        (s34 - s12) / 6.0 + u[5],
    ]
}

/// (o0..o5)[j] = G (a, b, c)[j], elementwise (see `g_rows`).
#[inline(always)]
fn g_columns(a: &[f32], b: &[f32], c: &[f32], o: [&mut [f32]; ALPHA]) {
    let [o0, o1, o2, o3, o4, o5] = o;
    g_each(a, b, c, o0, o1, o2, o3, o4, o5)
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn g_each(
    a: &[f32],
    b: &[f32],
    c: &[f32],
    o0: &mut [f32],
    o1: &mut [f32],
    o2: &mut [f32],
    o3: &mut [f32],
    o4: &mut [f32],
    o5: &mut [f32],
) {
    let n = o0.len();
    let (a, b, c) = (&a[..n], &b[..n], &c[..n]);
    let (o1, o2, o3, o4, o5) = (
        &mut o1[..n],
        &mut o2[..n],
        &mut o3[..n],
        &mut o4[..n],
        &mut o5[..n],
    );
    for j in 0..n {
        let v = g_rows([a[j], b[j], c[j]]);
        o0[j] = v[0];
        o1[j] = v[1];
        o2[j] = v[2];
        o3[j] = v[3];
        o4[j] = v[4];
        o5[j] = v[5];
    }
}

multiversion! {
/// Row `row` of the 36 planes of U (see `transform_weights`), over all `cols` columns at once:
/// the 9 taps of every column gathered into `scratch` (9 cols), then G applied over ky into
/// 18 arrays (the rest of `scratch`, 18 cols), then over kx into the planes.
fn weight_row(w: &[f32], cin: usize, flip: bool, row: usize, dst: [&mut [f32]; POINTS], scratch: &mut [f32]) {
    let cols = dst[0].len();
    let (taps, t) = scratch.split_at_mut(9 * cols);
    for col in 0..cols {
        let (co, ci) = if flip { (col, row) } else { (row, col) };
        let k = &w[(co * cin + ci) * 9..][..9];
        for tap in 0..9 {
            // The 180-degree rotation maps tap 3y + x to 8 - (3y + x).
            taps[tap * cols + col] = if flip { k[8 - tap] } else { k[tap] };
        }
    }
    let tap = |y: usize, x: usize| &taps[(3 * y + x) * cols..][..cols];
    // t[x][i] = (G over ky of column kx = x)[i].
    let mut t_slices = t[..18 * cols].chunks_exact_mut(cols);
    let mut t: [[&mut [f32]; ALPHA]; 3] = std::array::from_fn(|_| {
        std::array::from_fn(|_| t_slices.next().unwrap_or_default())
    });
    for (x, tx) in t.iter_mut().enumerate() {
        let [o0, o1, o2, o3, o4, o5] = tx;
        g_columns(tap(0, x), tap(1, x), tap(2, x), [&mut **o0, &mut **o1, &mut **o2, &mut **o3, &mut **o4, &mut **o5]);
    }
    let mut dst = dst.into_iter();
    let [t0, t1, t2] = &t;
    for ((a, b), c) in t0.iter().zip(t1.iter()).zip(t2.iter()) {
        let o: [&mut [f32]; ALPHA] = std::array::from_fn(|_| dst.next().unwrap_or_default());
        g_columns(a, b, c, o);
    }
}
}

/// U[xi][r][c] = (G g G^T)[xi] for the GEMM lhs (36, rows, cols). Forward: rows = cout,
/// cols = cin, g = w[co, ci]. `flip` (for the input gradient): rows = cin, cols = cout and
/// g = w[co, ci] rotated by 180 degrees.
pub fn transform_weights(w: &[f32], cout: usize, cin: usize, flip: bool) -> Vec<f32> {
    let (rows, cols) = if flip { (cin, cout) } else { (cout, cin) };
    let plane = rows * cols;
    // SAFETY: item `row` writes row `row` of all 36 planes: every value.
    let mut u = unsafe { par::output(POINTS * plane) };
    let out = Shared::new(&mut u);
    par::for_each(rows, |row, _| {
        // SAFETY: this item alone writes row `row` of each of the 36 planes.
        let dst: [&mut [f32]; POINTS] =
            std::array::from_fn(|xi| unsafe { out.slice(xi * plane + row * cols, cols) });
        par::with_scratch(27 * cols, |scratch| {
            weight_row(w, cin, flip, row, dst, scratch)
        });
    });
    u
}

/// dW[co, ci] = G^T dU[co, ci] G from dU (36, cout, cin); dw: (cout, cin, 3, 3). Parallel
/// over output channels.
fn weights_from_points(du: &[f32], cout: usize, cin: usize, dw: &mut [f32]) {
    let plane = cout * cin;
    let out = Shared::new(dw);
    par::for_each(cout, |co, _| {
        // SAFETY: item co alone writes dw[co].
        let dst = unsafe { out.slice(co * cin * 9, cin * 9) };
        for (ci, out) in dst.chunks_exact_mut(9).enumerate() {
            let idx = co * cin + ci;
            let p = |i: usize, k: usize| du[(ALPHA * i + k) * plane + idx];
            // Over the point rows i first (giving ky), then over the columns k (giving kx).
            let rows: [[f32; 3]; ALPHA] =
                std::array::from_fn(|k| gt_rows(std::array::from_fn(|i| p(i, k))));
            for a in 0..3 {
                let v = gt_rows(std::array::from_fn(|k| rows[k][a]));
                out[a * 3..a * 3 + 3].copy_from_slice(&v);
            }
        }
    });
}

multiversion! {
/// V (36, chans, n) for the chunk r0..r1 of x (b, chans, h, w).
fn input_chunk(g: &Geom, chans: usize, x: &[f32], r0: usize, r1: usize, v: &mut [f32], buf: &mut [f32]) {
    let chunk = Chunk { h: g.h, w: g.w, r0, r1 };
    let (n, hw) = (chunk.len(), g.h * g.w);
    for c in 0..chans {
        let plane = |b: usize| &x[(b * chans + c) * hw..][..hw];
        let at = Points { stride: chans * n, off: c * n };
        transforms::input(&chunk, plane, v, at, buf);
    }
}
}

multiversion! {
/// D (36, cout, n) for the chunk r0..r1 of dy (b, cout, h, w).
fn grad_output_chunk(g: &Geom, dy: &[f32], r0: usize, r1: usize, d: &mut [f32], buf: &mut [f32]) {
    let chunk = Chunk { h: g.h, w: g.w, r0, r1 };
    let (n, hw) = (chunk.len(), g.h * g.w);
    for co in 0..g.cout {
        let plane = |b: usize| &dy[(b * g.cout + co) * hw..][..hw];
        let at = Points { stride: g.cout * n, off: co * n };
        transforms::grad_output(&chunk, plane, d, at, buf);
    }
}
}

multiversion! {
/// The output rows of the chunk r0..r1 from M (36, couts, n), plus bias[b, co].
fn output_chunk(g: &Geom, couts: usize, m: &[f32], bias: Option<&[f32]>, r0: usize, r1: usize, y: Shared, buf: &mut [f32]) {
    let chunk = Chunk { h: g.h, w: g.w, r0, r1 };
    let n = chunk.len();
    for co in 0..couts {
        let at = Points { stride: couts * n, off: co * n };
        let bias = |b: usize| bias.map_or(0.0, |bias| bias[b * couts + co]);
        // SAFETY: the rows of the chunk's tile rows in plane (b, co) belong to this chunk alone,
        // and each tile row's rows are handed out once.
        let rows = |b: usize, first: usize, count: usize| unsafe {
            y.slice(((b * couts + co) * g.h + first) * g.w, count * g.w)
        };
        transforms::output(&chunk, m, at, bias, rows, buf);
    }
}
}

/// Scratch for the transforms of one chunk of `rows` tile rows.
fn transform_scratch(g: &Geom, rows: usize) -> usize {
    let (_, tw) = tiles(g);
    transforms::scratch(rows * tw, tw)
}

/// y = x * g + bias with U = `transform_weights(..)` of shape (36, couts, cins): the forward
/// convolution (cins = cin, couts = cout) or the input gradient (dy in, flipped weights, no bias).
/// x: (b, cins, h, w), y: (b, couts, h, w), bias: (b, couts).
pub fn convolve(
    g: &Geom,
    cins: usize,
    couts: usize,
    x: &[f32],
    u: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    let (th, tw) = tiles(g);
    let rows = rows_per_chunk(g, cins, couts);
    let total = g.b * th;
    let items = total.div_ceil(rows);
    // One chunk (a batch of one, say): its 36 GEMMs run in parallel instead (the loop over
    // chunks then runs on this thread, so the inner loop is not nested in a parallel one).
    // Each is the same GEMM either way, so the values are too. One DDIM-20 image of W1's
    // model on 2 threads, 5 alternating runs: median 0.50 s -> 0.42 s, the same bytes.
    let gemms_in_parallel = items == 1 && par::threads() > 1;
    let out = Shared::new(y);
    par::for_each(items, |item, _| {
        let r0 = item * rows;
        let r1 = (r0 + rows).min(total);
        let n = (r1 - r0) * tw;
        let (vlen, mlen) = (POINTS * cins * n, POINTS * couts * n);
        par::with_scratch(vlen + mlen + transform_scratch(g, rows), |scratch| {
            let (v, rest) = scratch.split_at_mut(vlen);
            let (m, buf) = rest.split_at_mut(mlen);
            input_chunk(g, cins, x, r0, r1, v, buf);
            let planes = Shared::new(m);
            let point = |xi: usize| {
                // SAFETY: M[xi] (couts, n), U[xi] (couts, cins), V[xi] (cins, n), all in bounds
                // of their buffers; m does not overlap u or v, and M[xi] is this call's alone.
                unsafe {
                    gemm(
                        (couts, n, cins),
                        (planes.ptr(xi * couts * n), n, 1),
                        (u[xi * couts * cins..].as_ptr(), cins, 1),
                        (v[xi * cins * n..].as_ptr(), n, 1),
                        false,
                    )
                }
            };
            if gemms_in_parallel {
                par::for_each(POINTS, |xi, _| point(xi));
            } else {
                (0..POINTS).for_each(point);
            }
            output_chunk(g, couts, m, bias, r0, r1, out, buf);
        });
    });
}

/// dW (cout, cin, 3, 3) from x (b, cin, h, w) and dy (b, cout, h, w), the transform-domain
/// dU accumulated per fixed run of tile-row chunks (`par::Partials`) and summed in order, so
/// the result does not depend on thread scheduling.
pub fn grad_weight(g: &Geom, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    let (th, tw) = tiles(g);
    let rows = (2 * rows_per_chunk(g, g.cin, g.cout)).min(g.b * th);
    let total = g.b * th;
    let plane = g.cout * g.cin;
    let mut partial = Partials::new(total.div_ceil(rows), POINTS * plane);
    partial.for_each(|item, du| {
        let r0 = item * rows;
        let r1 = (r0 + rows).min(total);
        let n = (r1 - r0) * tw;
        let (vlen, dlen) = (POINTS * g.cin * n, POINTS * g.cout * n);
        par::with_scratch(vlen + dlen + transform_scratch(g, rows), |scratch| {
            let (v, rest) = scratch.split_at_mut(vlen);
            let (d, buf) = rest.split_at_mut(dlen);
            input_chunk(g, g.cin, x, r0, r1, v, buf);
            grad_output_chunk(g, dy, r0, r1, d, buf);
            for xi in 0..POINTS {
                // SAFETY: du is this item's slot's own partial, dU[xi] (cout, cin) at xi plane;
                // D[xi] is (cout, n) and V[xi]^T (n, cin) a transposed view of (cin, n).
                unsafe {
                    gemm(
                        (g.cout, g.cin, n),
                        (du.add(xi * plane), g.cin, 1),
                        (d[xi * g.cout * n..].as_ptr(), n, 1),
                        (v[xi * g.cin * n..].as_ptr(), 1, n),
                        true,
                    )
                }
            }
        });
    });
    // SAFETY: sum_into assigns every value.
    let mut du = unsafe { par::output(POINTS * plane) };
    partial.sum_into(&mut du);
    weights_from_points(&du, g.cout, g.cin, dw);
}
