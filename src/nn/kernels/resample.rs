//! Nearest-neighbour 2x upsampling as a candle custom op with backward. candle's own backward
//! for it is a grouped convolution, which its CPU backend runs as one convolution per channel.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

use super::par::{self, Shared};
use crate::error::Result;

/// y[b, c, 2i + di, 2j + dj] = x[b, c, i, j].
struct Upsample2x;

fn values<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<(&'a [f32], [usize; 4])> {
    let data = s.as_slice::<f32>()?;
    let (Some((a, b)), &[n, c, h, w]) = (l.contiguous_offsets(), l.dims()) else {
        candle_core::bail!("upsample: input {:?} must be contiguous and 4-d", l.dims());
    };
    Ok((&data[a..b], [n, c, h, w]))
}

impl CustomOp1 for Upsample2x {
    fn name(&self) -> &'static str {
        "ddpm-upsample2x"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, [n, c, h, w]) = values(s, l)?;
        // SAFETY: every output plane is written in full.
        let mut y = unsafe { par::output(4 * x.len()) };
        let out = Shared::new(&mut y);
        par::for_each(n * c, |plane, _| {
            // SAFETY: item `plane` alone writes its output plane.
            let ys = unsafe { out.slice(plane * 4 * h * w, 4 * h * w) };
            let xs = &x[plane * h * w..][..h * w];
            for (src, dst) in xs.chunks_exact(w).zip(ys.chunks_exact_mut(4 * w)) {
                let (top, bottom) = dst.split_at_mut(2 * w);
                for (pair, v) in top.chunks_exact_mut(2).zip(src) {
                    pair[0] = *v;
                    pair[1] = *v;
                }
                bottom.copy_from_slice(top);
            }
        });
        Ok((CpuStorage::F32(y), Shape::from((n, c, 2 * h, 2 * w))))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(dy.contiguous()?.apply_op1_no_bwd(&Downsum2x)?))
    }
}

/// dx[b, c, i, j] = sum of dy over the 2x2 block (2i.., 2j..): the adjoint of `Upsample2x`.
struct Downsum2x;

impl CustomOp1 for Downsum2x {
    fn name(&self) -> &'static str {
        "ddpm-downsum2x"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (dy, [n, c, h2, w2]) = values(s, l)?;
        let (h, w) = (h2 / 2, w2 / 2);
        if h2 % 2 != 0 || w2 % 2 != 0 {
            candle_core::bail!("upsample backward: odd gradient {:?}", l.dims());
        }
        // SAFETY: every output plane is written in full.
        let mut dx = unsafe { par::output(n * c * h * w) };
        let out = Shared::new(&mut dx);
        par::for_each(n * c, |plane, _| {
            // SAFETY: item `plane` alone writes its output plane.
            let dxs = unsafe { out.slice(plane * h * w, h * w) };
            let dys = &dy[plane * 4 * h * w..][..4 * h * w];
            for (dst, src) in dxs.chunks_exact_mut(w).zip(dys.chunks_exact(4 * w)) {
                let (top, bottom) = src.split_at(2 * w);
                for ((d, t), b) in dst
                    .iter_mut()
                    .zip(top.chunks_exact(2))
                    .zip(bottom.chunks_exact(2))
                {
                    *d = (t[0] + t[1]) + (b[0] + b[1]);
                }
            }
        });
        Ok((CpuStorage::F32(dx), Shape::from((n, c, h, w))))
    }
}

/// Nearest-neighbour upsampling by 2: x (B, C, H, W) -> (B, C, 2H, 2W). f32 CPU tensors run
/// our kernel; anything else candle's `upsample_nearest2d`.
pub fn upsample_nearest2x(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if super::enabled(x) {
        Ok(x.contiguous()?.apply_op1(Upsample2x)?)
    } else if super::cuda::enabled(x) {
        super::cuda::upsample_nearest2x(x)
    } else {
        Ok(x.upsample_nearest2d(2 * h, 2 * w)?)
    }
}
