//! 2-D convolution with a per-example bias as a candle custom op with backward: the forward
//! and all three gradients run on our kernels (Winograd for 3x3 stride-1 convolutions between
//! wide layers, im2col + GEMM otherwise). On other devices and dtypes `conv2d` is candle's own
//! op. The input gradient is skipped when the input needs none (the UNet's x_t).

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};

use super::geom::Geom;
use super::{im2col, par, winograd};
use crate::error::{Error, Result};

/// The contiguous f32 values of a CPU tensor argument.
pub(super) fn values<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("conv2d: {what} must be contiguous"),
    }
}

/// A (b, cout) bias in any layout (a broadcast (cout) bias has stride 0 over b), as a Vec.
fn bias_values(s: &CpuStorage, l: &Layout, g: &Geom) -> candle_core::Result<Vec<f32>> {
    let data = s.as_slice::<f32>()?;
    let (&[b, c], &[sb, sc]) = (l.dims(), l.stride()) else {
        candle_core::bail!("conv2d: bias {:?} must be (batch, cout)", l.dims());
    };
    if (b, c) != (g.b, g.cout) {
        candle_core::bail!(
            "conv2d: bias {:?} for {} x {} outputs",
            l.dims(),
            g.b,
            g.cout
        );
    }
    let o = l.start_offset();
    Ok((0..b * c)
        .map(|i| data[o + (i / c) * sb + (i % c) * sc])
        .collect())
}

/// y = conv(x, w) + bias[b, co]: x (B, Cin, H, W), w (Cout, Cin, k, k), bias (B, Cout).
struct Conv2d {
    stride: usize,
    pad: usize,
}

impl CustomOp3 for Conv2d {
    fn name(&self) -> &'static str {
        "ddpm-conv2d"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = Geom::new(xl.dims(), wl.dims(), self.stride, self.pad)?;
        let (x, w) = (values(xs, xl, "x")?, values(ws, wl, "w")?);
        let bias = bias_values(bs, bl, &g)?;
        let y = forward(&g, x, w, &bias);
        Ok((CpuStorage::F32(y), Shape::from((g.b, g.cout, g.ho, g.wo))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _bias: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, db) = backward(x, w, dy, self.stride, self.pad)?;
        Ok((dx, Some(dw), Some(db)))
    }
}

/// The gradients of y = conv(x, w) + bias[b, co] given dy: dx (None when x needs none),
/// dw, and the per-example db (b, cout).
pub(super) fn backward(
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    stride: usize,
    pad: usize,
) -> candle_core::Result<(Option<Tensor>, Tensor, Tensor)> {
    backward_with(x, w, dy, (stride, pad), x.track_op())
}

/// `backward`, with dx computed exactly when `need_dx`.
pub(super) fn backward_with(
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    (stride, pad): (usize, usize),
    need_dx: bool,
) -> candle_core::Result<(Option<Tensor>, Tensor, Tensor)> {
    let op = Conv2dBackward {
        stride,
        pad,
        need_dx,
    };
    let packed = dy.contiguous()?.apply_op3_no_bwd(x, w, &op)?;
    let (nx, nw) = (if need_dx { x.elem_count() } else { 0 }, w.elem_count());
    let (b, cout) = (x.dim(0)?, w.dim(0)?);
    let dx = match need_dx {
        true => Some(packed.narrow(0, 0, nx)?.reshape(x.shape())?),
        false => None,
    };
    let dw = packed.narrow(0, nx, nw)?.reshape(w.shape())?;
    let db = packed.narrow(0, nx + nw, b * cout)?.reshape((b, cout))?;
    Ok((dx, dw, db))
}

/// [dx (if asked), dw, db] packed into one vector, from (dy, x, w).
struct Conv2dBackward {
    stride: usize,
    pad: usize,
    need_dx: bool,
}

impl CustomOp3 for Conv2dBackward {
    fn name(&self) -> &'static str {
        "ddpm-conv2d-backward"
    }

    fn cpu_fwd(
        &self,
        dys: &CpuStorage,
        dyl: &Layout,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = Geom::new(xl.dims(), wl.dims(), self.stride, self.pad)?;
        if dyl.dims() != [g.b, g.cout, g.ho, g.wo] {
            candle_core::bail!("conv2d backward: dy {:?} for {g:?}", dyl.dims());
        }
        let (dy, x, w) = (
            values(dys, dyl, "dy")?,
            values(xs, xl, "x")?,
            values(ws, wl, "w")?,
        );
        let nx = if self.need_dx { x.len() } else { 0 };
        // SAFETY: every path below assigns all of dx (when asked), dw and db.
        let mut out = unsafe { par::output(nx + w.len() + g.b * g.cout) };
        let (dx, rest) = out.split_at_mut(nx);
        let (dw, db) = rest.split_at_mut(w.len());
        if g.winograd() {
            if self.need_dx {
                let u = winograd::transform_weights(w, g.cout, g.cin, true);
                winograd::convolve(&g, g.cout, g.cin, dy, &u, None, dx);
            }
            winograd::grad_weight(&g, x, dy, dw);
        } else {
            if self.need_dx {
                im2col::grad_input(&g, w, dy, dx);
            }
            im2col::grad_weight(&g, x, dy, dw);
        }
        grad_bias(&g, dy, db);
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}

/// y = conv(x, w) + bias[b, co] on our kernels; bias: (b, cout) values.
pub(super) fn forward(g: &Geom, x: &[f32], w: &[f32], bias: &[f32]) -> Vec<f32> {
    // SAFETY: both paths write every output value (all rows of every (b, co) plane).
    let mut y = unsafe { par::output(g.b * g.cout * g.ho * g.wo) };
    if g.winograd() {
        let u = winograd::transform_weights(w, g.cout, g.cin, false);
        winograd::convolve(g, g.cin, g.cout, x, &u, Some(bias), &mut y);
    } else {
        im2col::forward(g, x, w, bias, &mut y);
    }
    y
}

/// db[b, co] = sum over the output map of dy[b, co].
fn grad_bias(g: &Geom, dy: &[f32], db: &mut [f32]) {
    let p = g.ho * g.wo;
    let out = par::Shared::new(db);
    par::for_each(g.b, |b, _| {
        // SAFETY: item b alone writes db[b].
        let dst = unsafe { out.slice(b * g.cout, g.cout) };
        for (co, d) in dst.iter_mut().enumerate() {
            *d = sum(&dy[(b * g.cout + co) * p..][..p]);
        }
    });
}

/// A sum with eight running partial sums (vectorisable, and more accurate than one).
pub(crate) fn sum(v: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = v.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        acc.iter_mut().zip(c).for_each(|(a, x)| *a += x);
    }
    acc.iter().sum::<f32>() + tail
}

/// conv2d(x, w) + bias with `stride` and `padding`: x (B, Cin, H, W), w (Cout, Cin, k, k),
/// bias (Cout) or (B, Cout) (a per-example bias, e.g. with the time embedding folded in).
/// f32 CPU tensors run our kernels; anything else runs candle's conv2d.
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    bias: &Tensor,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let (b, cout) = (x.dim(0)?, w.dim(0)?);
    let bias = match bias.rank() {
        1 => bias.unsqueeze(0)?,
        2 => bias.clone(),
        _ => {
            return Err(Error::Invalid(format!(
                "conv2d: bias {:?} must be (cout) or (batch, cout)",
                bias.dims()
            )))
        }
    };
    if super::enabled(x) && w.dtype() == DType::F32 {
        let bias = bias.broadcast_as((b, cout))?;
        let op = Conv2d {
            stride,
            pad: padding,
        };
        Ok(x.contiguous()?.apply_op3(&w.contiguous()?, &bias, op)?)
    } else if super::cuda::conv_enabled(x) && w.dtype() == x.dtype() && bias.dtype() == x.dtype() {
        super::cuda::conv2d(x, w, &bias, stride, padding)
    } else {
        let y = x.conv2d(w, padding, stride, 1, 1)?;
        Ok(y.broadcast_add(&bias.unsqueeze(2)?.unsqueeze(3)?)?)
    }
}
