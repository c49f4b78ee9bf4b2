//! Our own CPU kernels for the UNet's hot operations, as candle custom ops with backward:
//! convolution (`conv`, and `conv_add` with a residual added in the same op; Winograd
//! F(4x4, 3x3) in `winograd` and `transforms` for the 3x3 stride-1 layers, im2col + GEMM in
//! `im2col` for the rest, both on the `gemm` crate), GroupNorm fused with SiLU (`norm`), both
//! fused with the convolution after them (`norm_conv`), and nearest 2x upsampling (`resample`);
//! `par` holds the shared plumbing, including the thread pool that `crate::nn::shard` runs the
//! shards of a batch on. candle's CPU
//! convolution and its backward run at a fraction of the machine's GEMM speed (candle issue
//! #3119), and its GroupNorm is a chain of full-tensor ops. Each public function takes the f32
//! CPU path when `enabled` and falls back to candle's own ops on other devices and dtypes, so
//! CUDA keeps working unchanged. A CPU process should also call `configure_cpu` once at startup
//! (see `process`). On CUDA the same functions run the ops of `cuda` (cuDNN and our own kernels)
//! where they apply.

pub mod conv;
mod conv_add;
pub mod cuda;
mod geom;
mod im2col;
pub mod norm;
mod norm_conv;
mod par;
mod process;
pub mod resample;
mod transforms;
mod winograd;

#[cfg(test)]
mod tests;

use std::cell::Cell;

use candle_core::{DType, Tensor};

pub use conv::conv2d;
pub use conv_add::conv2d_add;
pub use norm::group_norm;
pub use norm_conv::{norm_silu_conv2d, GroupNormParams};
pub use par::{is_serial, on_pool, shards, threads};
pub use process::configure_cpu;
pub use resample::upsample_nearest2x;

thread_local! {
    static CANDLE_ONLY: Cell<bool> = const { Cell::new(false) };
}

/// Whether `x` takes our kernels: an f32 tensor on the CPU, outside `with_candle_ops`.
pub fn enabled(x: &Tensor) -> bool {
    !CANDLE_ONLY.get() && x.device().is_cpu() && x.dtype() == DType::F32
}

/// Whether this thread runs candle's own ops (`with_candle_ops`), on every device.
pub(crate) fn candle_only() -> bool {
    CANDLE_ONLY.get()
}

/// Run `f` with every layer on this thread using candle's own ops instead of our kernels, as
/// on other devices: the reference the kernels are compared with, in tests and benches.
/// (Backward passes follow whatever ops the forward recorded.)
pub fn with_candle_ops<R>(f: impl FnOnce() -> R) -> R {
    par::with_flag(&CANDLE_ONLY, f)
}
