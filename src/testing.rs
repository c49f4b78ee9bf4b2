//! Tensor comparisons the unit tests share.

use candle_core::Tensor;

/// max |t| over all values.
pub fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .and_then(|a| a.max_all())
        .and_then(|m| m.to_dtype(candle_core::DType::F32))
        .and_then(|m| m.to_scalar::<f32>())
        .expect("a finite tensor of floats")
}

/// max |a - b| over all values (same shape).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    max_abs(&(a - b).expect("tensors of the same shape"))
}
