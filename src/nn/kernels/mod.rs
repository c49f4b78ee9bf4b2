//! Our own CPU kernels for the UNet's hot operations, as candle custom ops with backward:
//! convolution (`conv`: Winograd F(2x2, 3x3) and im2col + GEMM on the `gemm` crate), GroupNorm
//! fused with SiLU (`norm`) and nearest 2x upsampling (`resample`). candle's
//! CPU convolution and its backward run at a fraction of the machine's GEMM speed (candle issue
//! #3119); these run near it. Each public function takes the f32 CPU path when `enabled` and
//! falls back to candle's own ops on other devices and dtypes, so CUDA keeps working unchanged.

pub mod conv;
mod im2col;
pub mod norm;
mod par;
pub mod resample;
mod winograd;

#[cfg(test)]
mod tests;

use candle_core::{DType, Tensor};

pub use conv::conv2d;
pub use norm::group_norm;
pub use resample::upsample_nearest2x;

/// Whether `x` takes our kernels: an f32 tensor on the CPU.
pub fn enabled(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}
