//! Predictor-corrector sampling (Song et al. 2021, section 4.2 and Algorithm 5): each predictor
//! step (any `Stepper`; `SamplerKind::Pc` uses the ancestral one) is followed by a few steps of
//! Langevin dynamics with the model's score at the new noise level, which pull x back towards
//! that level's marginal q_t and so correct the predictor's discretisation error.
//!
//! Two choices differ from Song et al.'s code, both on purpose. Their VP corrector multiplies
//! the step by alpha_t = 1 - beta_t of the 1000-step discretisation (0.98..0.9999 for the linear
//! schedule); over a respaced schedule the matching quantity is ill-defined, so we use alpha = 1
//! (their VE choice, and within 2% of theirs at T = 1000). Their norms ||z|| and ||s|| are batch
//! means; we use each example's own, as Algorithm 5 is written, so a sample does not depend on
//! its batch.

use candle_core::{DType, Tensor};

use super::{Context, Step, Stepper};
use crate::error::Result;
use crate::rng::BatchNoise;

/// Langevin corrector: `steps` updates at target signal-to-noise ratio `snr`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Langevin {
    pub steps: usize,
    pub snr: f64,
}

/// The Euclidean norm of each example of a (B, ...) tensor, on the host.
fn norms(x: &Tensor) -> Result<Vec<f64>> {
    let sq = x.to_dtype(DType::F64)?.flatten_from(1)?.sqr()?.sum(1)?;
    Ok(sq.to_vec1::<f64>()?.into_iter().map(f64::sqrt).collect())
}

impl Langevin {
    /// `steps` Langevin updates of x at respaced index i, per example:
    /// e = 2 alpha (r ||z|| / ||s||)^2 with alpha = 1, then x <- x + e s + sqrt(2 e) z,
    /// s = score(x, i), z ~ N(0, I) from each sample's stream (Song et al. 2021, Algorithm 5).
    /// An example whose score is exactly 0 (or not finite) is left where it is for that update.
    pub fn correct(
        &self,
        ctx: &Context,
        i: usize,
        x: Tensor,
        noise: &mut BatchNoise,
    ) -> Result<Tensor> {
        let mut x = x;
        let mut dims = vec![1usize; x.rank()];
        dims[0] = x.dim(0)?;
        for _ in 0..self.steps {
            let z = noise.randn(&x.dims()[1..], x.device())?;
            let score = ctx.score(&x, i)?;
            let (z_norm, s_norm) = (norms(&z)?, norms(&score)?);
            let e: Vec<f64> = z_norm
                .iter()
                .zip(&s_norm)
                .map(|(zn, sn)| {
                    let e = 2.0 * (self.snr * zn / sn).powi(2);
                    if e.is_finite() {
                        e
                    } else {
                        0.0
                    }
                })
                .collect();
            let to_tensor = |v: Vec<f64>| -> Result<Tensor> {
                let v: Vec<f32> = v.into_iter().map(|e| e as f32).collect();
                Ok(Tensor::from_vec(v, dims.as_slice(), x.device())?)
            };
            let noise_scale = to_tensor(e.iter().map(|e| (2.0 * e).sqrt()).collect())?;
            let e = to_tensor(e)?;
            x = (x + score.broadcast_mul(&e)? + z.broadcast_mul(&noise_scale)?)?;
        }
        Ok(x)
    }
}

/// A predictor step, then the corrector at the level it lands on. After the last predictor step
/// (i = 0) x is the sample, at no noise level of the schedule, and is left as it is.
pub struct PredictorCorrector {
    pub predictor: Box<dyn Stepper>,
    pub corrector: Langevin,
}

impl Stepper for PredictorCorrector {
    fn step(
        &mut self,
        ctx: &Context,
        i: usize,
        x_t: &Tensor,
        noise: &mut BatchNoise,
    ) -> Result<Step> {
        let step = self.predictor.step(ctx, i, x_t, noise)?;
        if i == 0 {
            return Ok(step);
        }
        let x = self.corrector.correct(ctx, i - 1, step.x, noise)?;
        Ok(Step { x, x0: step.x0 })
    }
}
