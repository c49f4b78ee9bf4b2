//! The one thing samplers, losses and the likelihood see of a model: a map from (x_t, t) to the
//! model output. A UNet implements it; so do exact formulas in tests, which is how the samplers
//! are proven correct independently of any network.

use candle_core::Tensor;

use crate::error::Result;

/// A noise-prediction (or x0- / v-prediction) model.
pub trait Denoiser {
    /// The raw model output for x_t: (B, C, ...) at model timesteps `t` (one per example, in the
    /// original 0..T numbering, even when sampling over a respaced schedule). Its channels are
    /// read through a `diffusion::Parameterization` (C, or 2C with a learned variance).
    fn forward(&self, x_t: &Tensor, t: &[usize]) -> Result<Tensor>;
}

impl<D: Denoiser + ?Sized> Denoiser for &D {
    fn forward(&self, x_t: &Tensor, t: &[usize]) -> Result<Tensor> {
        (**self).forward(x_t, t)
    }
}
