//! The data transforms of Winograd F(4x4, 3x3) (`winograd`; Lavin & Gray 2016): 6x6 input
//! patches to B^T d B, 6x6 output points to A^T M A, 4x4 output-gradient tiles to A dy A^T.
//!
//! Each works on one channel of a whole chunk of tile rows (which may span several images),
//! rows first then columns: the row pass combines whole image rows (contiguous), the column pass
//! runs once over every tile of the chunk (after splitting columns by their phase mod 4), so
//! all loops are long and vectorised even on 8x8 maps, where an image holds four tiles.
//!
//! Layouts: an h x w map has th = ceil(h / 4) tile rows of tw = ceil(w / 4) tiles; tile
//! (ty, tx) covers output rows 4ty.. and columns 4tx.. and reads the input patch at
//! (4ty - 1, 4tx - 1). A chunk is the global tile rows r0..r1 (r = b th + ty); its tile
//! j = (r - r0) tw + tx. Points xi = 6 i + k (i: row of the 6x6 transform, k: column).
//!
//! B^T = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0; 0 2 -1 -2 1 0; 0 4 0 -5 0 1]
//! A^T = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1]

/// Output tile side, patch side, and transform points.
pub const TILE: usize = 4;
pub const ALPHA: usize = 6;
pub const POINTS: usize = ALPHA * ALPHA;

/// Tile rows and tiles per tile row of an h x w map.
pub fn tiles(h: usize, w: usize) -> (usize, usize) {
    (h.div_ceil(TILE), w.div_ceil(TILE))
}

/// A chunk of global tile rows r0..r1 of b maps of h x w.
#[derive(Clone, Copy, Debug)]
pub struct Chunk {
    pub h: usize,
    pub w: usize,
    pub r0: usize,
    pub r1: usize,
}

impl Chunk {
    fn tw(&self) -> usize {
        self.w.div_ceil(TILE)
    }

    /// Tiles in the chunk.
    pub fn len(&self) -> usize {
        (self.r1 - self.r0) * self.tw()
    }

    /// (local tile row, image, tile row in the image) for each tile row of the chunk.
    fn rows(&self) -> impl Iterator<Item = (usize, usize, usize)> {
        let th = self.h.div_ceil(TILE);
        let r0 = self.r0;
        (r0..self.r1).map(move |r| (r - r0, r / th, r % th))
    }
}

/// Scratch values the transforms need for a chunk of `n` tiles, tw per tile row.
pub fn scratch(n: usize, tw: usize) -> usize {
    // input: 6 row-transformed arrays of 4n, 4 column phases and 2 shifted of n, a zero row;
    // grad_output: 6 x 4n + 4n; output: 24n + 16n.
    40 * n + 4 * tw
}

/// Where a channel's points live: point xi is buf[xi * stride + off..][..len].
#[derive(Clone, Copy)]
pub struct Points {
    pub stride: usize,
    pub off: usize,
}

/// B^T on a 6-vector: the rows of B^T above.
#[inline(always)]
fn bt(d: [f32; 6]) -> [f32; 6] {
    [
        4.0 * d[0] - 5.0 * d[2] + d[4],
        -4.0 * (d[1] + d[2]) + d[3] + d[4],
        4.0 * (d[1] - d[2]) - d[3] + d[4],
        2.0 * (d[3] - d[1]) - d[2] + d[4],
        2.0 * (d[1] - d[3]) - d[2] + d[4],
        4.0 * d[1] - 5.0 * d[3] + d[5],
    ]
}

/// A^T on a 6-vector.
#[inline(always)]
fn at(m: [f32; 6]) -> [f32; 4] {
    let (s12, d12) = (m[1] + m[2], m[1] - m[2]);
    let (s34, d34) = (m[3] + m[4], m[3] - m[4]);
    [
        m[0] + s12 + s34,
        d12 + 2.0 * d34,
        s12 + 4.0 * s34,
        d12 + 8.0 * d34 + m[5],
    ]
}

/// A (= (A^T)^T) on a 4-vector.
#[inline(always)]
fn a(v: [f32; 4]) -> [f32; 6] {
    let (e, o) = (v[0] + v[2], v[1] + v[3]);
    let (e4, o2) = (v[0] + 4.0 * v[2], 2.0 * v[1] + 8.0 * v[3]);
    [v[0], e + o, e - o, e4 + o2, e4 - o2, v[3]]
}

// The loops below take each output as its own `&mut` parameter: the compiler then knows the
// outputs overlap nothing, and vectorises without runtime alias checks.

/// o[.][j] = f(u[0][j], ..., u[5][j]) for six inputs and six outputs.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn map6x6(
    u: [&[f32]; 6],
    f: impl Fn([f32; 6]) -> [f32; 6],
    o0: &mut [f32],
    o1: &mut [f32],
    o2: &mut [f32],
    o3: &mut [f32],
    o4: &mut [f32],
    o5: &mut [f32],
) {
    let n = o0.len();
    let u = u.map(|s| &s[..n]);
    let (o1, o2, o3, o4, o5) = (
        &mut o1[..n],
        &mut o2[..n],
        &mut o3[..n],
        &mut o4[..n],
        &mut o5[..n],
    );
    for j in 0..n {
        let o = f([u[0][j], u[1][j], u[2][j], u[3][j], u[4][j], u[5][j]]);
        o0[j] = o[0];
        o1[j] = o[1];
        o2[j] = o[2];
        o3[j] = o[3];
        o4[j] = o[4];
        o5[j] = o[5];
    }
}

/// o[.][j] = a(u[0][j], ..., u[3][j]): four inputs, six outputs.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn map4x6(
    u: [&[f32]; 4],
    o0: &mut [f32],
    o1: &mut [f32],
    o2: &mut [f32],
    o3: &mut [f32],
    o4: &mut [f32],
    o5: &mut [f32],
) {
    let n = o0.len();
    let u = u.map(|s| &s[..n]);
    let (o1, o2, o3, o4, o5) = (
        &mut o1[..n],
        &mut o2[..n],
        &mut o3[..n],
        &mut o4[..n],
        &mut o5[..n],
    );
    for j in 0..n {
        let o = a([u[0][j], u[1][j], u[2][j], u[3][j]]);
        o0[j] = o[0];
        o1[j] = o[1];
        o2[j] = o[2];
        o3[j] = o[3];
        o4[j] = o[4];
        o5[j] = o[5];
    }
}

/// o[.][j] = at(u[0][j], ..., u[5][j]) + bias: six inputs, four outputs.
#[inline(always)]
fn map6x4(u: [&[f32]; 6], o0: &mut [f32], o1: &mut [f32], o2: &mut [f32], o3: &mut [f32]) {
    let n = o0.len();
    let u = u.map(|s| &s[..n]);
    let (o1, o2, o3) = (&mut o1[..n], &mut o2[..n], &mut o3[..n]);
    for j in 0..n {
        let o = at([u[0][j], u[1][j], u[2][j], u[3][j], u[4][j], u[5][j]]);
        o0[j] = o[0];
        o1[j] = o[1];
        o2[j] = o[2];
        o3[j] = o[3];
    }
}

/// (o0, o1, o2, o3)[j] = x[4j..4j + 4].
#[inline(always)]
fn deinterleave4(x: &[f32], o0: &mut [f32], o1: &mut [f32], o2: &mut [f32], o3: &mut [f32]) {
    let n = o0.len();
    let x = &x[..4 * n];
    let (o1, o2, o3) = (&mut o1[..n], &mut o2[..n], &mut o3[..n]);
    for j in 0..n {
        o0[j] = x[4 * j];
        o1[j] = x[4 * j + 1];
        o2[j] = x[4 * j + 2];
        o3[j] = x[4 * j + 3];
    }
}

/// `R` x `C` consecutive slices of `len` from the front of `buf`.
#[inline(always)]
fn grid<const R: usize, const C: usize>(buf: &mut [f32], len: usize) -> [[&mut [f32]; C]; R] {
    let mut rest = buf;
    std::array::from_fn(|_| {
        std::array::from_fn(|_| {
            let (head, tail) = std::mem::take(&mut rest).split_at_mut(len);
            rest = tail;
            head
        })
    })
}

/// Six disjoint slices of `len` at first, first + step, ... (step >= len).
#[inline(always)]
fn six_mut(buf: &mut [f32], first: usize, step: usize, len: usize) -> [&mut [f32]; 6] {
    let mut rest = &mut buf[first..];
    std::array::from_fn(|_| {
        let now = std::mem::take(&mut rest);
        let (head, tail) = now.split_at_mut(step.min(now.len()));
        rest = tail;
        &mut head[..len]
    })
}

/// V[xi] = (B^T d B)[xi] for every tile of `chunk` in one channel; `plane(b)` is image b's
/// h x w plane of that channel. Zero outside the planes.
#[inline(always)]
pub fn input<'a>(
    chunk: &Chunk,
    plane: impl Fn(usize) -> &'a [f32],
    v: &mut [f32],
    at_v: Points,
    buf: &mut [f32],
) {
    let (h, w, tw, n) = (chunk.h, chunk.w, chunk.tw(), chunk.len());
    let wp = TILE * tw;
    let (rbuf, rest) = buf.split_at_mut(ALPHA * 4 * n);
    let [mut r]: [[&mut [f32]; ALPHA]; 1] = grid(rbuf, 4 * n);
    let (qbuf, rest) = rest.split_at_mut(6 * n);
    let [[q0, q1, q2, q3, prev, next]]: [[&mut [f32]; 6]; 1] = grid(qbuf, n);
    let zero = &mut rest[..w];
    zero.fill(0.0);
    let zero = &*zero;
    // Rows: r[i][(local row) wp + col] = (B^T over the six rows 4ty - 1 .. 4ty + 4)[i].
    for (lr, b, ty) in chunk.rows() {
        let p = plane(b);
        let row = |a: usize| {
            let iy = (TILE * ty + a).wrapping_sub(1);
            if iy < h {
                &p[iy * w..][..w]
            } else {
                zero
            }
        };
        let u = [row(0), row(1), row(2), row(3), row(4), row(5)];
        let [r0, r1, r2, r3, r4, r5] = &mut r;
        let at = lr * wp;
        map6x6(
            u,
            bt,
            &mut r0[at..at + w],
            &mut r1[at..at + w],
            &mut r2[at..at + w],
            &mut r3[at..at + w],
            &mut r4[at..at + w],
            &mut r5[at..at + w],
        );
        for ri in r.iter_mut() {
            ri[at + w..at + wp].fill(0.0);
        }
    }
    // Columns: tile j reads columns 4tx - 1 .. 4tx + 4 of its row = (prev, q0..q3, next)[j].
    for (i, ri) in r.iter().enumerate() {
        deinterleave4(ri, q0, q1, q2, q3);
        prev[0] = 0.0;
        prev[1..].copy_from_slice(&q3[..n - 1]);
        next[..n - 1].copy_from_slice(&q0[1..]);
        for t in (0..n).step_by(tw) {
            prev[t] = 0.0;
            next[t + tw - 1] = 0.0;
        }
        let [o0, o1, o2, o3, o4, o5] =
            six_mut(v, ALPHA * i * at_v.stride + at_v.off, at_v.stride, n);
        map6x6(
            [&*prev, &*q0, &*q1, &*q2, &*q3, &*next],
            bt,
            o0,
            o1,
            o2,
            o3,
            o4,
            o5,
        );
    }
}

/// D[xi] = (A dy A^T)[xi] for every tile of `chunk` in one channel; `plane(b)` is image b's
/// h x w gradient plane (tile (ty, tx) covers rows 4ty.. and columns 4tx.., zero outside).
#[inline(always)]
pub fn grad_output<'a>(
    chunk: &Chunk,
    plane: impl Fn(usize) -> &'a [f32],
    d: &mut [f32],
    at_d: Points,
    buf: &mut [f32],
) {
    let (h, w, tw, n) = (chunk.h, chunk.w, chunk.tw(), chunk.len());
    let wp = TILE * tw;
    let (rbuf, rest) = buf.split_at_mut(ALPHA * 4 * n);
    let [mut r]: [[&mut [f32]; ALPHA]; 1] = grid(rbuf, 4 * n);
    let (qbuf, rest) = rest.split_at_mut(4 * n);
    let [[q0, q1, q2, q3]]: [[&mut [f32]; 4]; 1] = grid(qbuf, n);
    let zero = &mut rest[..w];
    zero.fill(0.0);
    let zero = &*zero;
    for (lr, b, ty) in chunk.rows() {
        let p = plane(b);
        let row = |a: usize| {
            let oy = TILE * ty + a;
            if oy < h {
                &p[oy * w..][..w]
            } else {
                zero
            }
        };
        let [r0, r1, r2, r3, r4, r5] = &mut r;
        let at = lr * wp;
        map4x6(
            [row(0), row(1), row(2), row(3)],
            &mut r0[at..at + w],
            &mut r1[at..at + w],
            &mut r2[at..at + w],
            &mut r3[at..at + w],
            &mut r4[at..at + w],
            &mut r5[at..at + w],
        );
        for ri in r.iter_mut() {
            ri[at + w..at + wp].fill(0.0);
        }
    }
    for (i, ri) in r.iter().enumerate() {
        deinterleave4(ri, q0, q1, q2, q3);
        let [o0, o1, o2, o3, o4, o5] =
            six_mut(d, ALPHA * i * at_d.stride + at_d.off, at_d.stride, n);
        map4x6([&*q0, &*q1, &*q2, &*q3], o0, o1, o2, o3, o4, o5);
    }
}

/// The output rows of every tile of `chunk` in one channel: (A^T M A) + bias(b), M = the 36
/// points of `m` at `at_m`; `rows(b, first, count)` is image b's output rows first..first +
/// count of that channel, which this call fills.
#[inline(always)]
pub fn output<'a>(
    chunk: &Chunk,
    m: &[f32],
    at_m: Points,
    bias: impl Fn(usize) -> f32,
    mut rows: impl FnMut(usize, usize, usize) -> &'a mut [f32],
    buf: &mut [f32],
) {
    let (h, w, tw, n) = (chunk.h, chunk.w, chunk.tw(), chunk.len());
    let (sbuf, ybuf) = buf.split_at_mut(24 * n);
    // s[r][k] = (A^T over the point rows i of column k)[r]; then y[r][c] = (A^T over k)[c].
    let mut s: [[&mut [f32]; ALPHA]; 4] = grid(sbuf, n);
    let mut y: [[&mut [f32]; 4]; 4] = grid(ybuf, n);
    let pt = |xi: usize| &m[xi * at_m.stride + at_m.off..][..n];
    for k in 0..ALPHA {
        let col = [
            pt(k),
            pt(6 + k),
            pt(12 + k),
            pt(18 + k),
            pt(24 + k),
            pt(30 + k),
        ];
        let [s0, s1, s2, s3] = &mut s;
        map6x4(col, s0[k], s1[k], s2[k], s3[k]);
    }
    for (sr, yr) in s.iter().zip(y.iter_mut()) {
        let [y0, y1, y2, y3] = yr;
        map6x4(
            [&*sr[0], &*sr[1], &*sr[2], &*sr[3], &*sr[4], &*sr[5]],
            y0,
            y1,
            y2,
            y3,
        );
    }
    for (lr, b, ty) in chunk.rows() {
        let (first, count) = (TILE * ty, (TILE * ty + TILE).min(h) - TILE * ty);
        let dst = rows(b, first, count);
        let bias = bias(b);
        let j0 = lr * tw;
        for (yr, out) in y.iter().zip(dst.chunks_exact_mut(w)) {
            let c = [
                &yr[0][j0..j0 + tw],
                &yr[1][j0..j0 + tw],
                &yr[2][j0..j0 + tw],
                &yr[3][j0..j0 + tw],
            ];
            for (tx, quad) in out.chunks_mut(TILE).enumerate() {
                for (cc, o) in quad.iter_mut().enumerate() {
                    *o = c[cc][tx] + bias;
                }
            }
        }
    }
}
