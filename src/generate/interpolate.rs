//! Paths between two noise latents x_T for interpolation videos and strips: the latent a seed
//! gives `ddpm sample`, and N frames along the great circle between two latents (`slerp`), which
//! a deterministic sampler then maps to images (the endpoints are exactly the two seeds' or the
//! two inverted images' samples). The latents of images come from `Generator::invert`, here:
//! deterministic DDIM inversion under the same classes and guidance as the way back, up to the
//! highest step below sigma = 80 (`sampler::latent` says why), where their way back starts.

use candle_core::{Device, Tensor};

use super::{Generator, Progress};
use crate::error::{Error, Result};
use crate::guidance::{self, Conditional, Guided};
use crate::rng::{BatchNoise, Purpose};
use crate::sampler::{self, slerp, InvertOptions, Latent};

/// The x_T (1, C, H, W) that `ddpm sample --seed seed --first-index index` draws for its first
/// image: the first C*H*W normals of stream (seed, SampleNoise, index).
pub fn seed_latent(seed: u64, index: u64, shape: [usize; 3], device: &Device) -> Result<Tensor> {
    BatchNoise::new(seed, Purpose::SampleNoise, index, 1).randn(&shape, device)
}

/// The frame weights w_k = k / (N - 1), k = 0..N: both endpoints included.
pub fn weights(frames: usize) -> Result<Vec<f64>> {
    if frames < 2 {
        return Err(Error::Invalid(format!(
            "{frames} frames: an interpolation needs at least 2 (its two endpoints)"
        )));
    }
    let last = (frames - 1) as f64;
    Ok((0..frames).map(|k| k as f64 / last).collect())
}

/// N = `frames` latents (N, ...) from a to b (each (1, ...)): row k = slerp(a, b, w_k), so
/// row 0 is a and row N - 1 is b exactly.
pub fn path(a: &Tensor, b: &Tensor, frames: usize) -> Result<Tensor> {
    if a.dims() != b.dims() || a.rank() < 2 || a.dim(0)? != 1 {
        return Err(Error::Invalid(format!(
            "interpolation endpoints must both be (1, ...) of one shape, got {:?} and {:?}",
            a.dims(),
            b.dims()
        )));
    }
    let rows = weights(frames)?
        .into_iter()
        .map(|w| slerp(a, b, w))
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::cat(&rows, 0)?)
}

impl Generator {
    /// The steps `invert` takes with `inv`, and that its latents take back to the images.
    pub fn inversion_steps(&self, inv: &InvertOptions) -> Result<usize> {
        sampler::inversion_steps(&self.schedule.for_sampling(inv.steps, inv.spacing)?)
    }

    /// Deterministic DDIM inversion of images x0 (N, C, H, W) to their latents (on the CPU),
    /// under the classes cycled over the images and guidance w, as `generate` would denoise
    /// them from `Start::Latent` with the latent's `from`.
    pub fn invert(
        &self,
        x0: &Tensor,
        classes: &[u32],
        guidance: f64,
        inv: &InvertOptions,
        progress: Progress,
    ) -> Result<Latent> {
        self.check_classes(classes)?;
        let n = x0.dim(0)?;
        let x0 = self.rows(x0, "image", 0, n, n)?;
        let net = self.network();
        let labels = guidance::cycle(classes, 0, n, net.num_classes() as u32);
        let model = Guided::new(&net, labels, guidance)?;
        let latent = sampler::ddim_invert(
            &model,
            &self.schedule,
            self.config.diffusion.parameterization(),
            inv,
            &x0,
            &mut |info| progress(0, n, info.index + 1, info.total),
        )?;
        Ok(Latent {
            x: latent.x.to_device(&Device::Cpu)?,
            from: latent.from,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(x: &Tensor) -> Vec<f32> {
        x.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn endpoints_are_the_latents_and_the_middle_keeps_their_norm() {
        let dev = Device::Cpu;
        let a = seed_latent(1, 0, [1, 8, 8], &dev).unwrap();
        let b = seed_latent(2, 0, [1, 8, 8], &dev).unwrap();
        let p = path(&a, &b, 5).unwrap();
        assert_eq!(p.dims(), [5, 1, 8, 8]);
        assert_eq!(values(&p.get(0).unwrap()), values(&a));
        assert_eq!(values(&p.get(4).unwrap()), values(&b));
        // Two 64-dim normal draws have norms near 8; along the circle the norm moves between
        // them (for equal norms it would be constant), where the chord's midpoint has ~0.71 of it.
        let norm = |v: Vec<f32>| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        let (na, nb) = (norm(values(&a)), norm(values(&b)));
        let mid = norm(values(&p.get(2).unwrap()));
        let (lo, hi) = (na.min(nb), na.max(nb));
        assert!(mid > 0.97 * lo && mid < 1.03 * hi, "{na} {nb} {mid}");
    }

    #[test]
    fn a_seed_latent_is_what_the_sampler_draws_for_image_index() {
        let dev = Device::Cpu;
        let batch = BatchNoise::new(7, Purpose::SampleNoise, 0, 3)
            .randn(&[1, 4, 4], &dev)
            .unwrap();
        let third = seed_latent(7, 2, [1, 4, 4], &dev).unwrap();
        assert_eq!(values(&batch.get(2).unwrap()), values(&third));
    }

    #[test]
    fn weights_include_both_ends_and_need_two_frames() {
        assert_eq!(weights(5).unwrap(), [0.0, 0.25, 0.5, 0.75, 1.0]);
        assert_eq!(weights(2).unwrap(), [0.0, 1.0]);
        assert!(weights(1).is_err());
        let a = Tensor::zeros((1, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        let b = Tensor::zeros((2, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(path(&a, &b, 3).is_err());
    }
}
