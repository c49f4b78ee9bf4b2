//! A convolution with the residual added in the same op, y = conv(x, w) + bias + residual: the
//! end of every residual block. As two candle ops the sum is one more full-size tensor in the
//! graph, and candle's backward gives each such tensor a zero-filled gradient buffer plus an
//! add pass (`GradStore::or_insert`); fused, the residual's gradient is dy itself. candle's
//! custom ops take at most three tensors, so the weight and bias travel packed as one vector
//! (a copy of the layer's parameters, small next to its activations).

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};

use super::conv;
use super::geom::Geom;
use super::par;
use crate::error::{Error, Result};

/// y = conv(x, w) + bias[co] + residual: x (B, Cin, H, W), [w (Cout, Cin, k, k) flattened,
/// bias (Cout)] as one vector, residual (B, Cout, Ho, Wo).
struct Conv2dAdd {
    stride: usize,
    pad: usize,
    w_dims: [usize; 4],
}

impl Conv2dAdd {
    fn w_len(&self) -> usize {
        self.w_dims.iter().product()
    }
}

impl CustomOp3 for Conv2dAdd {
    fn name(&self) -> &'static str {
        "ddpm-conv2d-add"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ps: &CpuStorage,
        pl: &Layout,
        rs: &CpuStorage,
        rl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = Geom::new(xl.dims(), &self.w_dims, self.stride, self.pad)?;
        let (x, p) = (
            conv::values(xs, xl, "x")?,
            conv::values(ps, pl, "weight and bias")?,
        );
        let r = conv::values(rs, rl, "residual")?;
        if p.len() != self.w_len() + g.cout || rl.dims() != [g.b, g.cout, g.ho, g.wo] {
            candle_core::bail!(
                "conv2d_add: {} parameters and residual {:?} for {g:?}",
                p.len(),
                rl.dims()
            );
        }
        let (w, bias) = p.split_at(self.w_len());
        let mut y = conv::forward(&g, x, w, &bias.repeat(g.b));
        add_in_place(&mut y, r);
        Ok((CpuStorage::F32(y), Shape::from((g.b, g.cout, g.ho, g.wo))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        p: &Tensor,
        residual: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let w = p.narrow(0, 0, self.w_len())?.reshape(&self.w_dims[..])?;
        let (dx, dw, db) = conv::backward(x, &w, dy, self.stride, self.pad)?;
        let dp = Tensor::cat(&[&dw.flatten_all()?, &db.sum(0)?], 0)?;
        let dr = residual.track_op().then(|| dy.clone());
        Ok((dx, Some(dp), dr))
    }
}

/// y += r, in parallel over blocks.
pub(super) fn add_in_place(y: &mut [f32], r: &[f32]) {
    const BLOCK: usize = 16_384;
    let n = y.len();
    let out = par::Shared::new(y);
    par::for_each(n.div_ceil(BLOCK), |i, _| {
        let start = i * BLOCK;
        let len = BLOCK.min(n - start);
        // SAFETY: block i alone writes y[start..start + len].
        let dst = unsafe { out.slice(start, len) };
        dst.iter_mut()
            .zip(&r[start..start + len])
            .for_each(|(a, b)| *a += b);
    });
}

/// conv2d(x, w) + bias + residual with `stride` and `padding`: x (B, Cin, H, W),
/// w (Cout, Cin, k, k), bias (Cout), residual (B, Cout, Ho, Wo). f32 CPU tensors run one fused
/// op on our kernels; anything else runs `conv::conv2d` and an add.
pub fn conv2d_add(
    x: &Tensor,
    w: &Tensor,
    bias: &Tensor,
    residual: &Tensor,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let fused = super::enabled(x)
        && w.dtype() == DType::F32
        && bias.dtype() == DType::F32
        && residual.dtype() == DType::F32
        && residual.device().is_cpu();
    if !fused {
        let same = |t: &Tensor| t.dtype() == x.dtype();
        let cuda = super::cuda::conv_enabled(x) && [w, bias, residual].into_iter().all(same);
        if cuda && bias.rank() == 1 {
            return super::cuda::conv2d_add(x, w, bias, residual, stride, padding);
        }
        return Ok((conv::conv2d(x, w, bias, stride, padding)? + residual)?);
    }
    let w_dims: [usize; 4] = w
        .dims()
        .try_into()
        .map_err(|_| Error::Invalid(format!("conv2d_add: weight {:?} must be 4-d", w.dims())))?;
    if bias.dims() != [w_dims[0]] {
        return Err(Error::Invalid(format!(
            "conv2d_add: bias {:?} for {} output channels",
            bias.dims(),
            w_dims[0]
        )));
    }
    let p = Tensor::cat(&[&w.flatten_all()?, bias], 0)?;
    let op = Conv2dAdd {
        stride,
        pad: padding,
        w_dims,
    };
    Ok(x.contiguous()?.apply_op3(&p, &residual.contiguous()?, op)?)
}
