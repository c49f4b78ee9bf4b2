//! The data transforms of Winograd F(4x4, 3x3) (`winograd`; Lavin & Gray 2016): 6x6 input
//! patches to B^T d B, 6x6 output points to A^T M A, 4x4 output-gradient tiles to A dy A^T.
//! Each works on one (image, channel) plane segment of whole tile rows and first splits the
//! image rows by their phase mod 4, so every loop runs over all tiles of the segment at once:
//! long, contiguous and vectorised even on 8x8 maps, where a tile row holds two tiles.
//!
//! Layouts: a tile-row segment [ty0, ty1) of an h x w plane has tw = ceil(w / 4) tiles per row;
//! tile j = (ty - ty0) tw + tx covers output rows 4ty.. and columns 4tx.. and reads the input
//! patch at (4ty - 1, 4tx - 1). Points xi = 6 i + k (i: row of the 6x6 transform, k: column).
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

/// Scratch values the transforms need for segments of up to `rows` tile rows.
pub fn scratch(rows: usize, tw: usize) -> usize {
    // input: 16 column-phase arrays (+ slack) and 24 column-transformed arrays;
    // grad_output: 4 phases and 24 arrays; output: 24 + 16 arrays.
    40 * (rows + 1) * tw + 16
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

// The loops below take their outputs as separate `&mut` parameters (or arrays of them built
// from disjoint slices), so the compiler vectorises them over the tiles.

/// B^T along the columns of flattened rows stored by column phase (c[f][J] = padded column
/// 4J + f of the row holding tile J): d = (c0[J], c1[J], c2[J], c3[J], c0[J + 1], c1[J + 1]).
#[inline(always)]
fn bt_columns(c: [&[f32]; 4], o: [&mut [f32]; ALPHA]) {
    let [o0, o1, o2, o3, o4, o5] = o;
    bt_columns_each(c, o0, o1, o2, o3, o4, o5)
}

// Separate `&mut` parameters: the compiler then knows the outputs overlap nothing.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn bt_columns_each(
    c: [&[f32]; 4],
    o0: &mut [f32],
    o1: &mut [f32],
    o2: &mut [f32],
    o3: &mut [f32],
    o4: &mut [f32],
    o5: &mut [f32],
) {
    let n = o0.len();
    let (c0, c1, c2, c3) = (&c[0][..n + 1], &c[1][..n + 1], &c[2][..n], &c[3][..n]);
    let (o1, o2, o3, o4, o5) = (
        &mut o1[..n],
        &mut o2[..n],
        &mut o3[..n],
        &mut o4[..n],
        &mut o5[..n],
    );
    for j in 0..n {
        let o = bt([c0[j], c1[j], c2[j], c3[j], c0[j + 1], c1[j + 1]]);
        o0[j] = o[0];
        o1[j] = o[1];
        o2[j] = o[2];
        o3[j] = o[3];
        o4[j] = o[4];
        o5[j] = o[5];
    }
}

/// B^T across six rows, elementwise: o = B^T (u0, ..., u5).
#[inline(always)]
fn bt_rows(u: [&[f32]; 6], [o0, o1, o2, o3, o4, o5]: [&mut [f32]; 6]) {
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
        let o = bt([u[0][j], u[1][j], u[2][j], u[3][j], u[4][j], u[5][j]]);
        o0[j] = o[0];
        o1[j] = o[1];
        o2[j] = o[2];
        o3[j] = o[3];
        o4[j] = o[4];
        o5[j] = o[5];
    }
}

/// A along the columns of flattened rows: for tile J, v = p[4J..4J + 4].
#[inline(always)]
fn a_columns(p: &[f32], [h0, h1, h2, h3, h4, h5]: [&mut [f32]; 6]) {
    let n = h0.len();
    let p = &p[..4 * n];
    let (h1, h2, h3, h4, h5) = (
        &mut h1[..n],
        &mut h2[..n],
        &mut h3[..n],
        &mut h4[..n],
        &mut h5[..n],
    );
    for j in 0..n {
        let o = a([p[4 * j], p[4 * j + 1], p[4 * j + 2], p[4 * j + 3]]);
        h0[j] = o[0];
        h1[j] = o[1];
        h2[j] = o[2];
        h3[j] = o[3];
        h4[j] = o[4];
        h5[j] = o[5];
    }
}

/// A across four rows, elementwise.
#[inline(always)]
fn a_rows(u: [&[f32]; 4], [o0, o1, o2, o3, o4, o5]: [&mut [f32]; 6]) {
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

/// A^T across six rows, elementwise, plus `bias`.
#[inline(always)]
fn at_rows(u: [&[f32]; 6], bias: f32, [o0, o1, o2, o3]: [&mut [f32]; 4]) {
    let n = o0.len();
    let u = u.map(|s| &s[..n]);
    let (o1, o2, o3) = (&mut o1[..n], &mut o2[..n], &mut o3[..n]);
    for j in 0..n {
        let o = at([u[0][j], u[1][j], u[2][j], u[3][j], u[4][j], u[5][j]]);
        o0[j] = o[0] + bias;
        o1[j] = o[1] + bias;
        o2[j] = o[2] + bias;
        o3[j] = o[3] + bias;
    }
}

/// One image row (None: a padding row) split by column phase for tiles 0..tw:
/// c0[tx] = x[4tx - 1], c1[tx] = x[4tx], c2[tx] = x[4tx + 1], c3[tx] = x[4tx + 2], zero outside
/// the row; c0 has tw + 1 values (c0[tw] = x[4tw - 1]).
#[inline(always)]
fn split_row(
    src: Option<&[f32]>,
    w: usize,
    c0: &mut [f32],
    c1: &mut [f32],
    c2: &mut [f32],
    c3: &mut [f32],
) {
    let tw = c1.len();
    let Some(x) = src else {
        for c in [c0, c1, c2, c3] {
            c.fill(0.0);
        }
        return;
    };
    let full = (w / 4).min(tw);
    deinterleave4(
        &x[..4 * full],
        &mut c1[..full],
        &mut c2[..full],
        &mut c3[..full],
        &mut c0[1..=full],
    );
    c0[0] = 0.0;
    let at = |i: usize| if i < w { x[i] } else { 0.0 };
    for tx in full..tw {
        c1[tx] = at(4 * tx);
        c2[tx] = at(4 * tx + 1);
        c3[tx] = at(4 * tx + 2);
        c0[tx + 1] = at(4 * tx + 3);
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

/// dst = src in blocks of 8 the compiler inlines: rows here are short, and a memcpy call per
/// row costs more than the copy.
#[inline(always)]
fn copy(dst: &mut [f32], src: &[f32]) {
    let mut d = dst.chunks_exact_mut(8);
    let mut s = src.chunks_exact(8);
    for (d, s) in (&mut d).zip(&mut s) {
        for (d, s) in d.iter_mut().zip(s) {
            *d = *s;
        }
    }
    for (d, s) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *d = *s;
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

/// Where a chunk's points live: point xi of the current plane segment is
/// buf[xi * stride + off..][..len].
#[derive(Clone, Copy)]
pub struct Points {
    pub stride: usize,
    pub off: usize,
}

/// V[xi] = (B^T d B)[xi] for the tiles of tile rows [ty0, ty1) of one h x w `plane`: tile
/// (ty, tx) reads the 6x6 patch at (4ty - 1, 4tx - 1), zero outside the plane.
// k indexes several parallel arrays of slices at once.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
pub fn input(
    plane: &[f32],
    (h, w): (usize, usize),
    (ty0, ty1): (usize, usize),
    v: &mut [f32],
    at_v: Points,
    buf: &mut [f32],
) {
    let (_, tw) = tiles(h, w);
    let rows = ty1 - ty0;
    // Segment row q = image row 4 ty0 - 1 + q, padded from image column -1, stored by row
    // phase q mod 4 (rows + 1 rows each) and column phase: cols[q mod 4][f][(q / 4) tw + tx] =
    // padded column 4tx + f = image column 4tx + f - 1 (one value of slack at the end).
    let clen = (rows + 1) * tw + 1;
    let (cbuf, hbuf) = buf.split_at_mut(16 * clen);
    let mut cols: [[&mut [f32]; 4]; 4] = grid(cbuf, clen);
    let mut hs: [[&mut [f32]; 6]; 4] = grid(hbuf, (rows + 1) * tw);
    let row = |q: usize| {
        let iy = (TILE * ty0 + q).wrapping_sub(1);
        (iy < h).then(|| &plane[iy * w..][..w])
    };
    for q in 0..TILE * (rows + 1) {
        let t0 = (q / 4) * tw;
        let [c0, c1, c2, c3] = &mut cols[q % 4];
        split_row(
            row(q),
            w,
            &mut c0[t0..=t0 + tw],
            &mut c1[t0..t0 + tw],
            &mut c2[t0..t0 + tw],
            &mut c3[t0..t0 + tw],
        );
    }
    // hs[phase][k]: B^T along the columns of that phase's rows.
    for (c, h6) in cols.iter().zip(hs.iter_mut()) {
        let [h0, h1, h2, h3, h4, h5] = h6;
        bt_columns(
            [&*c[0], &*c[1], &*c[2], &*c[3]],
            [
                &mut **h0, &mut **h1, &mut **h2, &mut **h3, &mut **h4, &mut **h5,
            ],
        );
    }
    // The last tile of each row reads past its padded row in the flat loop (and the row holds
    // one image column too few): redo it from the image row, zero outside.
    let last = tw - 1;
    for q in 0..TILE * (rows + 1) {
        let src = row(q);
        let at = |x: usize| match src {
            Some(src) if (1..=w).contains(&x) => src[x - 1],
            _ => 0.0,
        };
        let d: [f32; 6] = std::array::from_fn(|i| at(TILE * last + i));
        let t = (q / 4) * tw + last;
        for (hk, val) in hs[q % 4].iter_mut().zip(bt(d)) {
            hk[t] = val;
        }
    }
    // Tile row ty reads segment rows 4ty .. 4ty + 5: phases 0..3 of its own row, then phases
    // 0 and 1 of the next.
    let n = rows * tw;
    for k in 0..ALPHA {
        let u = [
            &hs[0][k][..n],
            &hs[1][k][..n],
            &hs[2][k][..n],
            &hs[3][k][..n],
            &hs[0][k][tw..tw + n],
            &hs[1][k][tw..tw + n],
        ];
        bt_rows(
            u,
            six_mut(v, k * at_v.stride + at_v.off, ALPHA * at_v.stride, n),
        );
    }
}

/// D[xi] = (A dy A^T)[xi] for the tiles of tile rows [ty0, ty1) of one h x w gradient
/// `plane` (tile (ty, tx) covers rows 4ty.. and columns 4tx.., zero outside).
// k indexes several parallel arrays of slices at once.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
pub fn grad_output(
    plane: &[f32],
    (h, w): (usize, usize),
    (ty0, ty1): (usize, usize),
    d: &mut [f32],
    at_d: Points,
    buf: &mut [f32],
) {
    let (_, tw) = tiles(h, w);
    let (rows, width) = (ty1 - ty0, TILE * tw);
    let (pbuf, hbuf) = buf.split_at_mut(4 * rows * width);
    let [phase]: [[&mut [f32]; 4]; 1] = grid(pbuf, rows * width);
    let mut hs: [[&mut [f32]; 6]; 4] = grid(hbuf, rows * tw);
    for q in 0..TILE * rows {
        let dst = &mut phase[q % 4][(q / 4) * width..][..width];
        let oy = TILE * ty0 + q;
        if oy < h {
            copy(&mut dst[..w], &plane[oy * w..][..w]);
            dst[w..].fill(0.0);
        } else {
            dst.fill(0.0);
        }
    }
    for (p, h6) in phase.iter().zip(hs.iter_mut()) {
        let [h0, h1, h2, h3, h4, h5] = h6;
        a_columns(
            p,
            [
                &mut **h0, &mut **h1, &mut **h2, &mut **h3, &mut **h4, &mut **h5,
            ],
        );
    }
    let n = rows * tw;
    for k in 0..ALPHA {
        let u = [&*hs[0][k], &*hs[1][k], &*hs[2][k], &*hs[3][k]];
        a_rows(
            u,
            six_mut(d, k * at_d.stride + at_d.off, ALPHA * at_d.stride, n),
        );
    }
}

/// Output rows 4ty .. 4ty + 3 (those inside the plane) for tile rows [ty0, ty1) of one h x w
/// plane: (A^T M A) + bias, M = the 36 points of `m` at `at_m`. `y` starts at row 4 ty0 and
/// holds the segment's rows.
#[inline(always)]
pub fn output(
    m: &[f32],
    at_m: Points,
    bias: f32,
    (h, w): (usize, usize),
    (ty0, ty1): (usize, usize),
    y: &mut [f32],
    buf: &mut [f32],
) {
    let (_, tw) = tiles(h, w);
    let n = (ty1 - ty0) * tw;
    let (sbuf, ybuf) = buf.split_at_mut(24 * n);
    // s[r][k] = (A^T over the point rows i of column k)[r]; then Y[r][c] = (A^T over k)[c].
    let mut s: [[&mut [f32]; 6]; 4] = grid(sbuf, n);
    let mut yy: [[&mut [f32]; 4]; 4] = grid(ybuf, n);
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
        at_rows(
            col,
            0.0,
            [&mut *s0[k], &mut *s1[k], &mut *s2[k], &mut *s3[k]],
        );
    }
    for (sr, yrow) in s.iter().zip(yy.iter_mut()) {
        let [y0, y1, y2, y3] = yrow;
        at_rows(
            [&*sr[0], &*sr[1], &*sr[2], &*sr[3], &*sr[4], &*sr[5]],
            bias,
            [&mut **y0, &mut **y1, &mut **y2, &mut **y3],
        );
    }
    for ty in ty0..ty1 {
        let j0 = (ty - ty0) * tw;
        for (r, yrow) in yy.iter().enumerate() {
            let oy = TILE * ty + r;
            if oy < h {
                let dst = &mut y[(oy - TILE * ty0) * w..][..w];
                interleave4(yrow, j0, tw, dst);
            }
        }
    }
}

/// dst[4 tx + c] = cols[c][j0 + tx], as far as dst reaches.
#[inline(always)]
fn interleave4(cols: &[&mut [f32]; 4], j0: usize, tw: usize, dst: &mut [f32]) {
    let c = [
        &cols[0][j0..j0 + tw],
        &cols[1][j0..j0 + tw],
        &cols[2][j0..j0 + tw],
        &cols[3][j0..j0 + tw],
    ];
    for (tx, quad) in dst.chunks_exact_mut(4).enumerate() {
        quad[0] = c[0][tx];
        quad[1] = c[1][tx];
        quad[2] = c[2][tx];
        quad[3] = c[3][tx];
    }
    let whole = dst.len() / 4 * 4;
    for (i, v) in dst[whole..].iter_mut().enumerate() {
        *v = c[i][whole / 4];
    }
}
