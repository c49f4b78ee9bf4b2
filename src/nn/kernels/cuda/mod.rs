//! Our CUDA ops, beside the CPU kernels and behind the same functions (`kernels::conv2d`,
//! `group_norm`, ...), so the layers above do not know which runs: convolutions through cuDNN
//! in all three passes (`conv`, `cudnn`), and kernels of our own (kernels.cu, compiled at run
//! time by NVRTC: `launch`) for GroupNorm + SiLU, the attention softmax and nearest
//! upsampling (`ops`) and for the optimizer and the EMA over all parameters at once (`multi`).
//! The decisions that need no GPU are in `plan`, tested everywhere.
//!
//! When a tensor takes them: f32 or bf16 on a CUDA device, outside `with_candle_ops`; the
//! convolutions also need cuDNN 9 (`crate::device::cudnn`). Otherwise every layer runs
//! candle's ops as before: that is the documented fallback when cuDNN is missing, and what
//! `DDPM_CUDNN=off` asks for. Without the `cuda` feature the predicates are false and the ops
//! are never reached.

pub mod plan;

#[cfg(feature = "cuda")]
mod conv;
#[cfg(feature = "cuda")]
mod cudnn;
#[cfg(feature = "cuda")]
mod launch;
#[cfg(feature = "cuda")]
pub mod multi;
#[cfg(feature = "cuda")]
mod ops;

use candle_core::Tensor;

use crate::error::Result;

/// Whether `x` takes our CUDA kernels: f32 or bf16 on a CUDA device, outside
/// `with_candle_ops`, in a CUDA build.
pub fn enabled(x: &Tensor) -> bool {
    cfg!(feature = "cuda")
        && !super::candle_only()
        && x.device().is_cuda()
        && matches!(
            x.dtype(),
            candle_core::DType::F32 | candle_core::DType::BF16
        )
}

/// Whether a convolution of `x` runs on cuDNN: `enabled(x)` and cuDNN 9 opened.
pub fn conv_enabled(x: &Tensor) -> bool {
    enabled(x) && crate::device::cudnn::get().is_ok()
}

/// y = conv(x, w) + bias: bias (Cout) or (B, Cout) (a per-example bias, broadcast without a
/// copy). All three of one dtype.
#[cfg(feature = "cuda")]
pub fn conv2d(x: &Tensor, w: &Tensor, bias: &Tensor, stride: usize, pad: usize) -> Result<Tensor> {
    let (b, cout) = (x.dim(0)?, w.dim(0)?);
    let bias = match bias.rank() {
        1 => bias.unsqueeze(0)?,
        _ => bias.clone(),
    }
    .broadcast_as((b, cout))?;
    let op = conv::Conv {
        stride,
        pad,
        packed: None,
    };
    Ok(x.contiguous()?.apply_op3(&w.contiguous()?, &bias, op)?)
}

/// y = conv(x, w) + bias + residual in one op: bias (Cout), residual (B, Cout, Ho, Wo) (the end
/// of a residual block; its gradient is dy, with no add pass of its own).
#[cfg(feature = "cuda")]
pub fn conv2d_add(
    x: &Tensor,
    w: &Tensor,
    bias: &Tensor,
    residual: &Tensor,
    stride: usize,
    pad: usize,
) -> Result<Tensor> {
    let w_dims: [usize; 4] = w.dims().try_into().map_err(|_| {
        crate::error::Error::Invalid(format!("conv2d_add: weight {:?} must be 4-d", w.dims()))
    })?;
    let packed = Tensor::cat(&[&w.flatten_all()?, bias], 0)?;
    let op = conv::Conv {
        stride,
        pad,
        packed: Some(w_dims),
    };
    Ok(x.contiguous()?
        .apply_op3(&packed, &residual.contiguous()?, op)?)
}

/// act(GN(x)) with f32 statistics; the affine parameters are used as f32 (autocast keeps them
/// so: `crate::precision`), the output has x's dtype.
#[cfg(feature = "cuda")]
pub fn group_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    groups: usize,
    eps: f64,
    silu: bool,
) -> Result<Tensor> {
    let f32 = candle_core::DType::F32;
    let op = ops::GroupNorm {
        norm: ops::Norm {
            groups,
            eps: eps as f32,
            silu,
        },
        stats: std::sync::Mutex::new(None),
    };
    Ok(x.contiguous()?.apply_op3(
        &weight.to_dtype(f32)?.contiguous()?,
        &bias.to_dtype(f32)?.contiguous()?,
        op,
    )?)
}

/// softmax(scale s) over the last dimension, in f32, output in s's dtype.
#[cfg(feature = "cuda")]
pub fn softmax_last(s: &Tensor, scale: f64) -> Result<Tensor> {
    let op = ops::Softmax {
        scale: scale as f32,
    };
    Ok(s.contiguous()?.apply_op1(op)?)
}

/// Nearest 2x upsampling of (B, C, H, W).
#[cfg(feature = "cuda")]
pub fn upsample_nearest2x(x: &Tensor) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(ops::Resample { down: false })?)
}

// Without the feature the predicates above are false, so these are never called; they keep the
// callers free of cfg attributes.
#[cfg(not(feature = "cuda"))]
pub fn conv2d(_: &Tensor, _: &Tensor, _: &Tensor, _: usize, _: usize) -> Result<Tensor> {
    Err(unavailable())
}

#[cfg(not(feature = "cuda"))]
pub fn conv2d_add(
    _: &Tensor,
    _: &Tensor,
    _: &Tensor,
    _: &Tensor,
    _: usize,
    _: usize,
) -> Result<Tensor> {
    Err(unavailable())
}

#[cfg(not(feature = "cuda"))]
pub fn group_norm(_: &Tensor, _: &Tensor, _: &Tensor, _: usize, _: f64, _: bool) -> Result<Tensor> {
    Err(unavailable())
}

#[cfg(not(feature = "cuda"))]
pub fn softmax_last(_: &Tensor, _: f64) -> Result<Tensor> {
    Err(unavailable())
}

#[cfg(not(feature = "cuda"))]
pub fn upsample_nearest2x(_: &Tensor) -> Result<Tensor> {
    Err(unavailable())
}

#[cfg(not(feature = "cuda"))]
fn unavailable() -> crate::error::Error {
    crate::error::Error::Invalid("this ddpm was built without CUDA support".into())
}
