//! Seeded random streams. candle's CPU generator cannot be seeded, so every random number in
//! `ddpm` comes from here: one user seed, split into independent streams by purpose and index,
//! so adding a draw in one place never shifts another, and a stream can be recreated from
//! (seed, purpose, index) alone: resuming at step s needs no saved generator state.

use candle_core::{Device, Shape, Tensor};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha12Rng;
use rand_distr::StandardNormal;

use crate::error::{Error, Result};

/// What a stream is for; each purpose gets its own key, so streams never overlap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum Purpose {
    /// Network weight initialisation.
    Init = 1,
    /// Dataset order, one stream per epoch.
    Shuffle = 2,
    /// Training timesteps, one stream per step.
    Timesteps = 3,
    /// Training noise eps, one stream per step.
    TrainNoise = 4,
    /// Sampling noise, one stream per sample index.
    SampleNoise = 5,
    /// Dropout masks, one stream per step.
    Dropout = 6,
    /// Data augmentation (flips), one stream per epoch.
    Augment = 7,
    /// Label dropout for classifier-free guidance, one stream per step.
    Labels = 8,
    /// Anything evaluation-only (likelihood estimates, Hutchinson probes).
    Eval = 9,
    /// Generated training data (the 2-D point generators), one stream per set.
    Data = 10,
}

/// SplitMix64 finaliser: a bijective mix, so distinct inputs give distinct, well-spread keys.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One independent random stream (ChaCha12, stable across platforms and rand versions).
#[derive(Clone, Debug)]
pub struct Stream(ChaCha12Rng);

impl Stream {
    /// The stream for (seed, purpose, index): key from (seed, purpose), ChaCha stream id = index.
    pub fn new(seed: u64, purpose: Purpose, index: u64) -> Self {
        let mut key = [0u8; 32];
        let a = mix(seed ^ mix(purpose as u64));
        let b = mix(a ^ 0x5851_F42D_4C95_7F2D);
        let c = mix(b ^ purpose as u64);
        let d = mix(c ^ seed);
        for (chunk, v) in key.chunks_exact_mut(8).zip([a, b, c, d]) {
            chunk.copy_from_slice(&v.to_le_bytes());
        }
        let mut rng = ChaCha12Rng::from_seed(key);
        rng.set_stream(index);
        Stream(rng)
    }

    /// One standard normal draw.
    pub fn normal(&mut self) -> f64 {
        self.0.sample(StandardNormal)
    }

    /// `n` standard normal draws as f32.
    pub fn normal_vec(&mut self, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| self.0.sample::<f64, _>(StandardNormal) as f32)
            .collect()
    }

    /// A uniform draw in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        self.0.random::<f64>()
    }

    /// A uniform integer in [0, n); n must be positive.
    pub fn below(&mut self, n: usize) -> usize {
        self.0.random_range(0..n)
    }

    /// A raw 64-bit draw.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// A new stream keyed by the next 256 bits of this one: independent streams for work that
    /// runs side by side (the shards of a batch), handed out in a fixed order.
    pub fn fork(&mut self) -> Stream {
        let mut key = [0u8; 32];
        self.0.fill_bytes(&mut key);
        Stream(ChaCha12Rng::from_seed(key))
    }

    /// A Fisher-Yates shuffle of `items`.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }

    /// A standard normal f32 tensor of `shape` on `device`.
    pub fn randn(&mut self, shape: impl Into<Shape>, device: &Device) -> Result<Tensor> {
        let shape = shape.into();
        let data = self.normal_vec(shape.elem_count());
        Ok(Tensor::from_vec(data, shape, device)?)
    }
}

/// Per-sample noise for a batch: sample `first + i` always draws from its own stream, so sample
/// k is bit-identical whatever batch it is drawn in. Tensor draws can instead replay given
/// noise (`with_given`), to reproduce another program's sampler draw for draw.
#[derive(Clone, Debug)]
pub struct BatchNoise {
    streams: Vec<Stream>,
    given: Option<Given>,
}

/// Noise handed out in order instead of drawn: (S, B, ...) draws, the next one `next`.
#[derive(Clone, Debug)]
struct Given {
    draws: Tensor,
    next: usize,
}

impl BatchNoise {
    /// Streams for samples `first .. first + batch` under `seed` and `purpose`.
    pub fn new(seed: u64, purpose: Purpose, first: u64, batch: usize) -> Self {
        let streams = (0..batch as u64)
            .map(|i| Stream::new(seed, purpose, first + i))
            .collect();
        BatchNoise {
            streams,
            given: None,
        }
    }

    /// The same batch whose tensor draws (`randn`) are the rows of `draws` (S, B, ...), in
    /// order; asking for more than S is an error. Draws that are not tensors still come from
    /// the streams.
    pub fn with_given(self, draws: Tensor) -> Self {
        BatchNoise {
            given: Some(Given { draws, next: 0 }),
            ..self
        }
    }

    /// Number of samples in the batch.
    pub fn len(&self) -> usize {
        self.streams.len()
    }

    /// True when the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// A (B, ...) standard normal tensor: row i is the next `per_sample` draws of stream i
    /// (or the next given draw).
    pub fn randn(&mut self, per_sample: &[usize], device: &Device) -> Result<Tensor> {
        if let Some(g) = &mut self.given {
            let total = g.draws.dim(0)?;
            if g.next >= total {
                return Err(Error::Invalid(format!(
                    "the given noise holds {total} draws per image and the sampler asks for more"
                )));
            }
            let draw = g.draws.get(g.next)?;
            let mut want = vec![self.streams.len()];
            want.extend_from_slice(per_sample);
            if draw.dims() != want.as_slice() {
                return Err(Error::Invalid(format!(
                    "given noise draw {} has shape {:?}; the sampler draws {want:?}",
                    g.next,
                    draw.dims()
                )));
            }
            g.next += 1;
            return Ok(draw.to_device(device)?);
        }
        let n: usize = per_sample.iter().product();
        let mut data = Vec::with_capacity(n * self.streams.len());
        for s in &mut self.streams {
            data.extend(s.normal_vec(n));
        }
        let mut dims = vec![self.streams.len()];
        dims.extend_from_slice(per_sample);
        Ok(Tensor::from_vec(data, dims, device)?)
    }

    /// The stream of sample i, for draws that are not a tensor.
    pub fn stream(&mut self, i: usize) -> &mut Stream {
        &mut self.streams[i]
    }

    /// Given draws not handed out yet (0 without given noise).
    pub fn given_left(&self) -> Result<usize> {
        Ok(match &self.given {
            Some(g) => g.draws.dim(0)? - g.next,
            None => 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_key_same_numbers_and_purposes_differ() {
        let a = Stream::new(7, Purpose::TrainNoise, 3).normal_vec(16);
        let b = Stream::new(7, Purpose::TrainNoise, 3).normal_vec(16);
        let c = Stream::new(7, Purpose::Timesteps, 3).normal_vec(16);
        let d = Stream::new(7, Purpose::TrainNoise, 4).normal_vec(16);
        let e = Stream::new(8, Purpose::TrainNoise, 3).normal_vec(16);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
        assert_ne!(a, e);
    }

    #[test]
    fn normal_draws_have_unit_moments() {
        let n = 200_000;
        let x = Stream::new(1, Purpose::Eval, 0).normal_vec(n);
        let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
        let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n as f64;
        // Standard errors: 1/sqrt(n) = 0.0022 for the mean, sqrt(2/n) = 0.0032 for the variance.
        assert!(mean.abs() < 0.011, "mean {mean}");
        assert!((var - 1.0).abs() < 0.016, "var {var}");
    }

    #[test]
    fn batch_noise_rows_do_not_depend_on_batch_size() {
        let dev = Device::Cpu;
        let big = BatchNoise::new(5, Purpose::SampleNoise, 0, 7)
            .randn(&[2, 3], &dev)
            .unwrap();
        let one = BatchNoise::new(5, Purpose::SampleNoise, 4, 1)
            .randn(&[2, 3], &dev)
            .unwrap();
        let row: Vec<f32> = big
            .get(4)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let single: Vec<f32> = one.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(row, single);
    }
}
