//! Inception weights drawn from a seed, for tests and for checking the network against
//! pytorch-fid's without the real weights (`benches/fid/`): He-normal convolutions
//! (std sqrt(2 / fan_in)) and BatchNorm statistics near identity (gamma, var ~ U(0.6, 1.4),
//! beta, mean ~ N(0, 0.2^2)), which keep activations of order one through the ~95 layers.
//! Each layer draws from its own stream (seed, Init, layer index).

use std::collections::HashMap;

use candle_core::{Device, Tensor};

use super::inception::{Inception, RawConv, Source};
use crate::error::Result;
use crate::rng::{Purpose, Stream};

/// The seed of the weights that `tests/fid_inception.rs` checks against pytorch-fid's network
/// (`benches/fid/reference.py` reads them through `benches/fid_seeded_weights.rs`).
pub const TEST_SEED: u64 = 20151205;

/// A `Source` that draws every layer and keeps what it drew under pytorch-fid's key names.
pub struct Seeded {
    seed: u64,
    layer: u64,
    drawn: HashMap<String, Tensor>,
}

impl Seeded {
    pub fn new(seed: u64) -> Self {
        Seeded {
            seed,
            layer: 0,
            drawn: HashMap::new(),
        }
    }
}

impl Source for Seeded {
    fn conv(&mut self, name: &str, shape: [usize; 4]) -> Result<RawConv> {
        let mut rng = Stream::new(self.seed, Purpose::Init, self.layer);
        self.layer += 1;
        let [cout, cin, kh, kw] = shape;
        let std = (2.0 / (cin * kh * kw) as f64).sqrt();
        let weight: Vec<f32> = (0..cout * cin * kh * kw)
            .map(|_| (rng.normal() * std) as f32)
            .collect();
        let mut vec = |f: &mut dyn FnMut(&mut Stream) -> f64| -> Vec<f32> {
            (0..cout).map(|_| f(&mut rng) as f32).collect()
        };
        let gamma = vec(&mut |r| 0.6 + 0.8 * r.uniform());
        let beta = vec(&mut |r| 0.2 * r.normal());
        let mean = vec(&mut |r| 0.2 * r.normal());
        let var = vec(&mut |r| 0.6 + 0.8 * r.uniform());
        let cpu = &Device::Cpu;
        let raw = RawConv {
            weight: Tensor::from_vec(weight, shape.to_vec(), cpu)?,
            gamma: Tensor::from_vec(gamma, cout, cpu)?,
            beta: Tensor::from_vec(beta, cout, cpu)?,
            mean: Tensor::from_vec(mean, cout, cpu)?,
            var: Tensor::from_vec(var, cout, cpu)?,
        };
        for (key, t) in [
            ("conv.weight", &raw.weight),
            ("bn.weight", &raw.gamma),
            ("bn.bias", &raw.beta),
            ("bn.running_mean", &raw.mean),
            ("bn.running_var", &raw.var),
        ] {
            self.drawn.insert(format!("{name}.{key}"), t.clone());
        }
        Ok(raw)
    }
}

/// The network with seeded weights, and those weights by pytorch-fid's key names (to save as
/// safetensors for the reference script).
pub fn network(seed: u64, device: &Device) -> Result<(Inception, HashMap<String, Tensor>)> {
    let mut src = Seeded::new(seed);
    let net = Inception::new(&mut src, device)?;
    Ok((net, src.drawn))
}
