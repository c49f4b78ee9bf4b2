//! 3x3 convolution with stride 1 and padding 1 by Winograd's minimal filtering F(2x2, 3x3)
//! (Lavin & Gray 2016): each 2x2 output tile is A^T [(G g G^T) . (B^T d B)] A for its 4x4 input
//! patch d, so a tile costs 16 multiply-adds per (input, output) channel pair instead of 36.
//! Summed over input channels, the 16 transform points become 16 independent GEMMs.
//!
//! Work items are chunks of tile rows, sized so the transformed inputs V (16, cin, n) and
//! outputs M (16, cout, n) of a chunk stay in cache: transform in, 16 GEMMs, transform out. The
//! gradient of the input is the same convolution of dy with the flipped, transposed kernel; the
//! gradient of the weight is dU = sum over tiles of (A dy A^T) (B^T d B)^T per point, then
//! dW = G^T dU G (the transpose of the forward map in g).

use super::conv::Geom;
use super::par::{self, gemm, multiversion, Shared};

/// Transform points per tile (4 x 4).
const POINTS: usize = 16;

/// (tile rows per image, tiles per tile row) for an h x w map: 2x2 output tiles, the last ones
/// padded when h or w is odd.
fn tiles(g: &Geom) -> (usize, usize) {
    (g.h.div_ceil(2), g.w.div_ceil(2))
}

/// Tile rows per work item, so a chunk's V and M (16 (k + m) n floats) stay near 1 MB.
fn rows_per_chunk(g: &Geom, k: usize, m: usize) -> usize {
    let (_, tw) = tiles(g);
    let tiles = (16_384 / (k + m).max(1)).clamp(16, 512);
    (tiles / tw).max(1)
}

/// G v for a 3-vector v: [v0, (v0 + v1 + v2) / 2, (v0 - v1 + v2) / 2, v2].
#[inline(always)]
fn g_rows(v: [f32; 3]) -> [f32; 4] {
    let (s, d) = (0.5 * (v[0] + v[2]), 0.5 * v[1]);
    [v[0], s + d, s - d, v[2]]
}

/// G^T u for a 4-vector u: [u0 + (u1 + u2) / 2, (u1 - u2) / 2, (u1 + u2) / 2 + u3].
#[inline(always)]
fn gt_rows(u: [f32; 4]) -> [f32; 3] {
    let (s, d) = (0.5 * (u[1] + u[2]), 0.5 * (u[1] - u[2]));
    [u[0] + s, d, s + u[3]]
}

/// U[xi][r][c] = (G g G^T)[xi] for the GEMM lhs (16, rows, cols). Forward: rows = cout,
/// cols = cin, g = w[co, ci]. `flip` (for the input gradient): rows = cin, cols = cout and
/// g = w[co, ci] rotated by 180 degrees.
pub fn transform_weights(w: &[f32], cout: usize, cin: usize, flip: bool) -> Vec<f32> {
    let mut u = vec![0f32; POINTS * cout * cin];
    let plane = cout * cin;
    for co in 0..cout {
        for ci in 0..cin {
            let k = &w[(co * cin + ci) * 9..][..9];
            let at = |y: usize, x: usize| {
                if flip {
                    k[(2 - y) * 3 + 2 - x]
                } else {
                    k[y * 3 + x]
                }
            };
            // Columns first (over ky), then rows (over kx).
            let cols: [[f32; 4]; 3] =
                std::array::from_fn(|x| g_rows([at(0, x), at(1, x), at(2, x)]));
            let dst = if flip { ci * cout + co } else { co * cin + ci };
            for i in 0..4 {
                let row = g_rows([cols[0][i], cols[1][i], cols[2][i]]);
                for (k, v) in row.into_iter().enumerate() {
                    u[(4 * i + k) * plane + dst] = v;
                }
            }
        }
    }
    u
}

/// dW[co, ci] = G^T dU[co, ci] G from dU (16, cout, cin); dw: (cout, cin, 3, 3).
fn weights_from_points(du: &[f32], cout: usize, cin: usize, dw: &mut [f32]) {
    let plane = cout * cin;
    for (idx, out) in dw.chunks_exact_mut(9).enumerate() {
        let p = |i: usize, k: usize| du[(4 * i + k) * plane + idx];
        // Rows (over the first point index) first, then columns.
        let rows: [[f32; 3]; 4] =
            std::array::from_fn(|k| gt_rows([p(0, k), p(1, k), p(2, k), p(3, k)]));
        for a in 0..3 {
            let v = gt_rows([rows[0][a], rows[1][a], rows[2][a], rows[3][a]]);
            out[a * 3..a * 3 + 3].copy_from_slice(&v);
        }
    }
}

/// Split image row `src` (w values, or None for a padding row) into the columns E[j] = row[2j - 1]
/// and O[j] = row[2j], j = 0..=tw, zero outside the image (E[0] is the left padding column).
#[inline(always)]
fn split_columns(src: Option<&[f32]>, w: usize, e: &mut [f32], o: &mut [f32]) {
    let Some(src) = src else {
        e.fill(0.0);
        o.fill(0.0);
        return;
    };
    let tw = w.div_ceil(2);
    let (e1, o1) = (&mut e[1..=w / 2], &mut o[..w / 2]);
    for ((pair, ej), oj) in src.chunks_exact(2).zip(e1).zip(o1) {
        *oj = pair[0];
        *ej = pair[1];
    }
    if w % 2 == 1 {
        o[w / 2] = src[w - 1];
        e[tw] = 0.0;
    }
    e[0] = 0.0;
    o[tw] = 0.0;
}

multiversion! {
/// V[xi][c][j] = (B^T d B)[xi] for every tile j of tile rows r0..r1 and channel c of x
/// (b, chans, h, w); B^T = [[1,0,-1,0],[0,1,1,0],[0,-1,1,0],[0,1,0,-1]]. Tile tx reads padded
/// columns 2tx..2tx+3 = (E[tx], O[tx], E[tx+1], O[tx+1]). `buf`: 16 (tw + 1).
fn input_transform(
    g: &Geom,
    chans: usize,
    x: &[f32],
    r0: usize,
    r1: usize,
    v: &mut [f32],
    buf: &mut [f32],
) {
    let (th, tw) = tiles(g);
    let n = (r1 - r0) * tw;
    let half = tw + 1;
    let (d, t) = buf[..16 * half].split_at_mut(8 * half);
    for c in 0..chans {
        for r in r0..r1 {
            let (b, ty) = (r / th, r % th);
            let plane = &x[(b * chans + c) * g.h * g.w..][..g.h * g.w];
            for (i, row) in d.chunks_exact_mut(2 * half).enumerate() {
                let iy = (2 * ty + i).wrapping_sub(1);
                let src = (iy < g.h).then(|| &plane[iy * g.w..][..g.w]);
                let (e, o) = row.split_at_mut(half);
                split_columns(src, g.w, e, o);
            }
            // Rows: t = B^T d over the 4 input rows, on the split columns.
            let (d0, rest) = d.split_at(2 * half);
            let (d1, rest) = rest.split_at(2 * half);
            let (d2, d3) = rest.split_at(2 * half);
            let (t0, rest) = t.split_at_mut(2 * half);
            let (t1, rest) = rest.split_at_mut(2 * half);
            let (t2, t3) = rest.split_at_mut(2 * half);
            for q in 0..2 * half {
                t0[q] = d0[q] - d2[q];
                t1[q] = d1[q] + d2[q];
                t2[q] = d2[q] - d1[q];
                t3[q] = d1[q] - d3[q];
            }
            let j0 = (r - r0) * tw;
            let stride = chans * n;
            for (i, ti) in [&*t0, &*t1, &*t2, &*t3].into_iter().enumerate() {
                let (e, o) = ti.split_at(half);
                let base = 4 * i * stride + c * n + j0;
                let (o0, rest) = v[base..].split_at_mut(stride);
                let (o1, rest) = rest.split_at_mut(stride);
                let (o2, o3) = rest.split_at_mut(stride);
                let (o0, o1, o2, o3) = (&mut o0[..tw], &mut o1[..tw], &mut o2[..tw], &mut o3[..tw]);
                let (e0, e1, od0, od1) = (&e[..tw], &e[1..=tw], &o[..tw], &o[1..=tw]);
                for tx in 0..tw {
                    o0[tx] = e0[tx] - e1[tx];
                    o1[tx] = od0[tx] + e1[tx];
                    o2[tx] = e1[tx] - od0[tx];
                    o3[tx] = od0[tx] - od1[tx];
                }
            }
        }
    }
}
}

multiversion! {
/// y[b, co, 2 ty + r, 2 tx + c] = (A^T M A)[r][c] + bias[b, co] for the tiles of tile rows
/// r0..r1; A^T = [[1,1,1,0],[0,1,-1,-1]]. M: (16, couts, n). `buf`: 4 tw.
fn output_transform(
    g: &Geom,
    couts: usize,
    m: &[f32],
    bias: Option<&[f32]>,
    r0: usize,
    r1: usize,
    y: Shared,
    buf: &mut [f32],
) {
    let (th, tw) = tiles(g);
    let n = (r1 - r0) * tw;
    let (ev0, rest) = buf[..4 * tw].split_at_mut(tw);
    let (od0, rest) = rest.split_at_mut(tw);
    let (ev1, od1) = rest.split_at_mut(tw);
    for co in 0..couts {
        for r in r0..r1 {
            let (b, ty) = (r / th, r % th);
            let j0 = (r - r0) * tw;
            let at = |xi: usize| &m[xi * couts * n + co * n + j0..][..tw];
            let bias = bias.map_or(0.0, |bias| bias[b * couts + co]);
            let (m0, m1, m2, m3) = (at(0), at(1), at(2), at(3));
            let (m4, m5, m6, m7) = (at(4), at(5), at(6), at(7));
            let (m8, m9, m10, m11) = (at(8), at(9), at(10), at(11));
            let (m12, m13, m14, m15) = (at(12), at(13), at(14), at(15));
            for tx in 0..tw {
                // Rows: s0 = m0 + m1 + m2, s1 = m1 - m2 - m3 per column; then the same on columns.
                let s00 = m0[tx] + m4[tx] + m8[tx];
                let s01 = m1[tx] + m5[tx] + m9[tx];
                let s02 = m2[tx] + m6[tx] + m10[tx];
                let s03 = m3[tx] + m7[tx] + m11[tx];
                let s10 = m4[tx] - m8[tx] - m12[tx];
                let s11 = m5[tx] - m9[tx] - m13[tx];
                let s12 = m6[tx] - m10[tx] - m14[tx];
                let s13 = m7[tx] - m11[tx] - m15[tx];
                ev0[tx] = s00 + s01 + s02 + bias;
                od0[tx] = s01 - s02 - s03 + bias;
                ev1[tx] = s10 + s11 + s12 + bias;
                od1[tx] = s11 - s12 - s13 + bias;
            }
            for (dy, (ev, od)) in [(&*ev0, &*od0), (&*ev1, &*od1)].into_iter().enumerate() {
                let oy = 2 * ty + dy;
                if oy < g.h {
                    let start = ((b * couts + co) * g.h + oy) * g.w;
                    // SAFETY: output row (b, co, oy) belongs to tile row r, owned by this chunk.
                    let row = unsafe { y.slice(start, g.w) };
                    interleave(ev, od, row);
                }
            }
        }
    }
}
}

/// row[2j] = ev[j], row[2j + 1] = od[j], as far as row reaches.
#[inline(always)]
fn interleave(ev: &[f32], od: &[f32], row: &mut [f32]) {
    for ((pair, e), o) in row.chunks_exact_mut(2).zip(ev).zip(od) {
        pair[0] = *e;
        pair[1] = *o;
    }
    if row.len() % 2 == 1 {
        let last = row.len() - 1;
        row[last] = ev[last / 2];
    }
}

multiversion! {
/// D[xi][co][j] = (A dy A^T)[xi] for the tiles of tile rows r0..r1 (dy zero outside the map);
/// A (a0, a1) = (a0, a0 + a1, a0 - a1, -a1). Tile tx reads columns (E[tx], O[tx]) = dy[2tx],
/// dy[2tx + 1]. `buf`: 12 tw.
fn grad_output_transform(
    g: &Geom,
    dy: &[f32],
    r0: usize,
    r1: usize,
    d: &mut [f32],
    buf: &mut [f32],
) {
    let (th, tw) = tiles(g);
    let n = (r1 - r0) * tw;
    let (rows, u) = buf[..12 * tw].split_at_mut(4 * tw);
    for co in 0..g.cout {
        for r in r0..r1 {
            let (b, ty) = (r / th, r % th);
            let plane = &dy[(b * g.cout + co) * g.h * g.w..][..g.h * g.w];
            for (i, row) in rows.chunks_exact_mut(2 * tw).enumerate() {
                let oy = 2 * ty + i;
                let (e, o) = row.split_at_mut(tw);
                if oy < g.h {
                    let src = &plane[oy * g.w..][..g.w];
                    for ((pair, ej), oj) in src.chunks_exact(2).zip(e.iter_mut()).zip(o.iter_mut()) {
                        *ej = pair[0];
                        *oj = pair[1];
                    }
                    if g.w % 2 == 1 {
                        e[tw - 1] = src[g.w - 1];
                        o[tw - 1] = 0.0;
                    }
                } else {
                    e.fill(0.0);
                    o.fill(0.0);
                }
            }
            let (a0, a1) = rows.split_at(2 * tw);
            let (u0, rest) = u.split_at_mut(2 * tw);
            let (u1, rest) = rest.split_at_mut(2 * tw);
            let (u2, u3) = rest.split_at_mut(2 * tw);
            for q in 0..2 * tw {
                u0[q] = a0[q];
                u1[q] = a0[q] + a1[q];
                u2[q] = a0[q] - a1[q];
                u3[q] = -a1[q];
            }
            let j0 = (r - r0) * tw;
            let stride = g.cout * n;
            for (i, ui) in [&*u0, &*u1, &*u2, &*u3].into_iter().enumerate() {
                let (e, o) = ui.split_at(tw);
                let base = 4 * i * stride + co * n + j0;
                let (o0, rest) = d[base..].split_at_mut(stride);
                let (o1, rest) = rest.split_at_mut(stride);
                let (o2, o3) = rest.split_at_mut(stride);
                let (o0, o1, o2, o3) = (&mut o0[..tw], &mut o1[..tw], &mut o2[..tw], &mut o3[..tw]);
                for tx in 0..tw {
                    o0[tx] = e[tx];
                    o1[tx] = e[tx] + o[tx];
                    o2[tx] = e[tx] - o[tx];
                    o3[tx] = -o[tx];
                }
            }
        }
    }
}
}

/// y = x * g + bias with U = `transform_weights(..)` of shape (16, couts, cins): the forward
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
    let out = Shared::new(y);
    par::for_each(total.div_ceil(rows), |item, _| {
        let r0 = item * rows;
        let r1 = (r0 + rows).min(total);
        let n = (r1 - r0) * tw;
        let (vlen, mlen) = (POINTS * cins * n, POINTS * couts * n);
        par::with_scratch(vlen + mlen + 16 * (tw + 1), |scratch| {
            let (v, rest) = scratch.split_at_mut(vlen);
            let (m, buf) = rest.split_at_mut(mlen);
            input_transform(g, cins, x, r0, r1, v, buf);
            for xi in 0..POINTS {
                // SAFETY: M[xi] (couts, n), U[xi] (couts, cins), V[xi] (cins, n), all in bounds
                // of their buffers; m does not overlap u or v.
                unsafe {
                    gemm(
                        (couts, n, cins),
                        (m[xi * couts * n..].as_mut_ptr(), n, 1),
                        (u[xi * couts * cins..].as_ptr(), cins, 1),
                        (v[xi * cins * n..].as_ptr(), n, 1),
                        false,
                    )
                }
            }
            output_transform(g, couts, m, bias, r0, r1, out, buf);
        });
    });
}

/// dW (cout, cin, 3, 3) from x (b, cin, h, w) and dy (b, cout, h, w).
pub fn grad_weight(g: &Geom, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    let (th, tw) = tiles(g);
    let rows = (2 * rows_per_chunk(g, g.cin, g.cout)).min(g.b * th);
    let total = g.b * th;
    let per_slot = POINTS * g.cout * g.cin;
    let items = total.div_ceil(rows);
    // Per-slot partials summed in slot order: deterministic whatever the thread scheduling.
    let mut partial = vec![0f32; par::slots(items) * per_slot];
    let parts = Shared::new(&mut partial);
    par::for_each_in_slots(items, |item, slot| {
        let r0 = item * rows;
        let r1 = (r0 + rows).min(total);
        let n = (r1 - r0) * tw;
        let (vlen, dlen) = (POINTS * g.cin * n, POINTS * g.cout * n);
        par::with_scratch(vlen + dlen + 16 * (tw + 1), |scratch| {
            let (v, rest) = scratch.split_at_mut(vlen);
            let (d, buf) = rest.split_at_mut(dlen);
            input_transform(g, g.cin, x, r0, r1, v, buf);
            grad_output_transform(g, dy, r0, r1, d, buf);
            for xi in 0..POINTS {
                let plane = g.cout * g.cin;
                // SAFETY: each slot (one thread) accumulates into its own partial dU[xi]; D[xi]
                // is (cout, n) and V[xi]^T (n, cin) a transposed view of (cin, n).
                unsafe {
                    gemm(
                        (g.cout, g.cin, n),
                        (parts.ptr(slot * per_slot + xi * plane), g.cin, 1),
                        (d[xi * g.cout * n..].as_ptr(), n, 1),
                        (v[xi * g.cin * n..].as_ptr(), 1, n),
                        true,
                    )
                }
            }
        });
    });
    let mut du = vec![0f32; per_slot];
    for part in partial.chunks_exact(per_slot) {
        du.iter_mut().zip(part).for_each(|(d, v)| *d += v);
    }
    weights_from_points(&du, g.cout, g.cin, dw);
}
