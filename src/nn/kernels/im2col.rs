//! Convolution as im2col + GEMM, for any square kernel, stride and padding: the path for the
//! strided downsampling convolutions, the 1x1 convolutions (a plain GEMM, no unfolding) and the
//! thin input/output convolutions. Work items are (image, band of output rows), so each
//! unfolded patch matrix stays small enough to live in cache, and every GEMM runs on one thread.

use super::geom::Geom;
use super::par::{self, gemm, Partials, Shared};

/// Output rows per work item, so the unfolded (cin k k, rows wo) patch matrix stays ~256 KB.
fn rows_per_item(g: &Geom) -> usize {
    (65_536 / (g.kk() * g.wo).max(1)).clamp(1, g.ho)
}

/// Whether the patch matrix of an output band is the input band itself (1x1, stride 1, pad 0).
fn is_pointwise(g: &Geom) -> bool {
    g.k == 1 && g.stride == 1 && g.pad == 0
}

/// col[(ci k + ky) k + kx][(oy - r0) wo + ox] = x[ci, oy s + ky - pad, ox s + kx - pad] (0
/// outside the image), for output rows r0..r1 of one image x: (cin, h, w).
fn im2col(g: &Geom, x: &[f32], (r0, r1): (usize, usize), col: &mut [f32]) {
    let pc = (r1 - r0) * g.wo;
    let mut rows = col.chunks_exact_mut(pc);
    for ci in 0..g.cin {
        let plane = &x[ci * g.h * g.w..][..g.h * g.w];
        for ky in 0..g.k {
            for kx in 0..g.k {
                let Some(row) = rows.next() else { return };
                for (oy, out) in (r0..r1).zip(row.chunks_exact_mut(g.wo)) {
                    let iy = (oy * g.stride + ky).wrapping_sub(g.pad);
                    if iy >= g.h {
                        out.fill(0.0);
                        continue;
                    }
                    let line = &plane[iy * g.w..][..g.w];
                    for (ox, v) in out.iter_mut().enumerate() {
                        let ix = (ox * g.stride + kx).wrapping_sub(g.pad);
                        *v = if ix < g.w { line[ix] } else { 0.0 };
                    }
                }
            }
        }
    }
}

/// The adjoint of `im2col` over all output rows: dx[ci, iy, ix] += dcol[...]; dx: (cin, h, w).
fn col2im(g: &Geom, dcol: &[f32], dx: &mut [f32]) {
    let p = g.ho * g.wo;
    let mut rows = dcol.chunks_exact(p);
    for ci in 0..g.cin {
        let plane = &mut dx[ci * g.h * g.w..][..g.h * g.w];
        for ky in 0..g.k {
            for kx in 0..g.k {
                let Some(row) = rows.next() else { return };
                for (oy, src) in row.chunks_exact(g.wo).enumerate() {
                    let iy = (oy * g.stride + ky).wrapping_sub(g.pad);
                    if iy >= g.h {
                        continue;
                    }
                    let line = &mut plane[iy * g.w..][..g.w];
                    for (ox, v) in src.iter().enumerate() {
                        let ix = (ox * g.stride + kx).wrapping_sub(g.pad);
                        if ix < g.w {
                            line[ix] += v;
                        }
                    }
                }
            }
        }
    }
}

/// y[b, co] = bias[b, co] + sum_{ci, ky, kx} w[co, ci, ky, kx] x[b, ci, oy s + ky - pad, ...];
/// x, w, y contiguous NCHW / OIHW; bias: (b, cout).
pub fn forward(g: &Geom, x: &[f32], w: &[f32], bias: &[f32], y: &mut [f32]) {
    let rows = rows_per_item(g);
    let bands = g.ho.div_ceil(rows);
    let (p, kk) = (g.ho * g.wo, g.kk());
    let out = Shared::new(y);
    par::for_each(g.b * bands, |item, _| {
        let (b, r0) = (item / bands, (item % bands) * rows);
        let r1 = (r0 + rows).min(g.ho);
        let (p0, pc) = (r0 * g.wo, (r1 - r0) * g.wo);
        let xb = &x[b * g.x_image()..][..g.x_image()];
        let y0 = b * g.cout * p + p0;
        for co in 0..g.cout {
            // SAFETY: this item alone owns y[b, co, rows r0..r1].
            unsafe { out.slice(y0 + co * p, pc) }.fill(bias[b * g.cout + co]);
        }
        let run = |rhs: (*const f32, usize, usize)| {
            // SAFETY: dst spans y[b, :, r0..r1] (row stride p), owned by this item; lhs is w
            // (cout, kk); rhs (kk, pc) is in bounds by construction.
            unsafe {
                gemm(
                    (g.cout, pc, kk),
                    (out.ptr(y0), p, 1),
                    (w.as_ptr(), kk, 1),
                    rhs,
                    true,
                )
            }
        };
        if is_pointwise(g) {
            run((xb[p0..].as_ptr(), p, 1));
        } else {
            par::with_scratch(kk * pc, |col| {
                im2col(g, xb, (r0, r1), col);
                run((col.as_ptr(), pc, 1));
            });
        }
    });
}

/// dW[co, (ci, ky, kx)] = sum_{b, p} dy[b, co, p] col_b[(ci, ky, kx), p], accumulated per
/// fixed run of (image, row band) items (`par::Partials`), then summed in order, so the result
/// does not depend on thread scheduling. dw: (cout, cin k k).
pub fn grad_weight(g: &Geom, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    let rows = rows_per_item(g);
    let bands = g.ho.div_ceil(rows);
    let (p, kk) = (g.ho * g.wo, g.kk());
    let mut partial = Partials::new(g.b * bands, g.cout * kk);
    partial.for_each(|item, dw_part| {
        let (b, r0) = (item / bands, (item % bands) * rows);
        let r1 = (r0 + rows).min(g.ho);
        let (p0, pc) = (r0 * g.wo, (r1 - r0) * g.wo);
        let xb = &x[b * g.x_image()..][..g.x_image()];
        let dyb = &dy[b * g.cout * p + p0..];
        let run = |rhs: (*const f32, usize, usize)| {
            // SAFETY: dw_part is this item's slot's own partial (cout, kk); lhs is dy[b, :, band]
            // (row stride p), rhs the band's patches transposed, (pc, kk).
            unsafe {
                gemm(
                    (g.cout, kk, pc),
                    (dw_part, kk, 1),
                    (dyb.as_ptr(), p, 1),
                    rhs,
                    true,
                )
            }
        };
        if is_pointwise(g) {
            run((xb[p0..].as_ptr(), 1, p));
        } else {
            par::with_scratch(kk * pc, |col| {
                im2col(g, xb, (r0, r1), col);
                run((col.as_ptr(), 1, pc));
            });
        }
    });
    partial.sum_into(dw);
}

/// dx[b] = col2im(W^T dy[b]), one image per work item. dx: (b, cin, h, w).
pub fn grad_input(g: &Geom, w: &[f32], dy: &[f32], dx: &mut [f32]) {
    let (p, kk) = (g.ho * g.wo, g.kk());
    let out = Shared::new(dx);
    par::for_each(g.b, |b, _| {
        // SAFETY: this item alone owns dx[b].
        let dxb = unsafe { out.slice(b * g.x_image(), g.x_image()) };
        let dyb = &dy[b * g.cout * p..][..g.cout * p];
        let run = |dst: *mut f32| {
            // SAFETY: dst holds (kk, p); lhs is w transposed, (kk, cout); rhs dy[b], (cout, p).
            unsafe {
                gemm(
                    (kk, p, g.cout),
                    (dst, p, 1),
                    (w.as_ptr(), 1, kk),
                    (dyb.as_ptr(), p, 1),
                    false,
                )
            }
        };
        if is_pointwise(g) {
            run(dxb.as_mut_ptr());
        } else {
            par::with_scratch(kk * p, |dcol| {
                run(dcol.as_mut_ptr());
                dxb.fill(0.0);
                col2im(g, dcol, dxb);
            });
        }
    });
}
