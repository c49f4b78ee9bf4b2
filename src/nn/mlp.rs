//! The denoiser for vector data (B, D): a residual MLP with a sinusoidal timestep embedding, the
//! usual network of 2-D diffusion tutorials. Its `[model.mlp]` config, construction over a
//! `VarBuilder` (initialised by `init_weights` like the UNet) and forward pass; schedules and
//! losses see it only as a `Denoiser`.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Linear, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::denoiser::Denoiser;
use crate::error::{Error, Result};
use crate::nn::embedding::{frequencies, sinusoidal};
use crate::nn::layers::detached_linear;

/// `[model.mlp]`: the MLP's sizes (used when model.arch = "mlp").
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MlpConfig {
    /// Hidden width of every layer.
    pub width: usize,
    /// Residual blocks.
    pub blocks: usize,
    /// Width of the sinusoidal timestep embedding (even, >= 4).
    pub time_dim: usize,
}

impl Default for MlpConfig {
    fn default() -> Self {
        MlpConfig {
            width: 128,
            blocks: 3,
            time_dim: 32,
        }
    }
}

/// The widest hidden layer and timestep embedding of the MLP.
const MAX_WIDTH: usize = 1 << 16;
/// The most residual blocks of the MLP.
const MAX_BLOCKS: usize = 1000;

impl MlpConfig {
    /// Check the sizes; errors name the key.
    pub fn validate(&self) -> Result<()> {
        if self.width == 0 || self.blocks == 0 {
            return Err(Error::Config(
                "model.mlp.width and model.mlp.blocks must be at least 1".into(),
            ));
        }
        for (key, v, max) in [
            ("width", self.width, MAX_WIDTH),
            ("blocks", self.blocks, MAX_BLOCKS),
            ("time_dim", self.time_dim, MAX_WIDTH),
        ] {
            if v > max {
                return Err(Error::Config(format!(
                    "model.mlp.{key} = {v} is more than {max}"
                )));
            }
        }
        if self.time_dim < 4 || self.time_dim % 2 != 0 {
            return Err(Error::Config(format!(
                "model.mlp.time_dim = {} must be even and at least 4",
                self.time_dim
            )));
        }
        Ok(())
    }
}

/// h <- h + fc2(SiLU(fc1(SiLU(h)) + temb_proj(temb))); keys `blocks.{i}.fc1|temb_proj|fc2`.
#[derive(Clone, Debug)]
struct Block {
    fc1: Linear,
    temb_proj: Linear,
    fc2: Linear,
}

impl Block {
    fn forward(&self, h: &Tensor, temb: &Tensor) -> Result<Tensor> {
        let a = (self.fc1.forward(&h.silu()?)? + self.temb_proj.forward(temb)?)?;
        Ok((h + self.fc2.forward(&a.silu()?)?)?)
    }

    fn detached(&self) -> Self {
        Block {
            fc1: detached_linear(&self.fc1),
            temb_proj: detached_linear(&self.temb_proj),
            fc2: detached_linear(&self.fc2),
        }
    }
}

/// eps_theta(x, t) for x: (B, D):
/// temb = time_embed.2(SiLU(time_embed.0(sinusoidal(t)))), h = input(x), the residual blocks,
/// then out(SiLU(h)) -> (B, out_dim).
#[derive(Clone, Debug)]
pub struct Mlp {
    freqs: Tensor,
    time1: Linear,
    time2: Linear,
    input: Linear,
    blocks: Vec<Block>,
    out: Linear,
    in_dim: usize,
}

impl Mlp {
    /// An MLP from `dim` inputs to `out_dim` outputs (D, or 2D with a learned variance).
    pub fn new(vb: VarBuilder, cfg: &MlpConfig, dim: usize, out_dim: usize) -> Result<Self> {
        cfg.validate()?;
        let w = cfg.width;
        let freqs = Tensor::from_vec(
            frequencies(cfg.time_dim, 1),
            (1, cfg.time_dim / 2),
            vb.device(),
        )?;
        let tvb = vb.pp("time_embed");
        let blocks = (0..cfg.blocks)
            .map(|i| {
                let b = vb.pp("blocks").pp(i);
                Ok(Block {
                    fc1: candle_nn::linear(w, w, b.pp("fc1"))?,
                    temb_proj: candle_nn::linear(w, w, b.pp("temb_proj"))?,
                    fc2: candle_nn::linear(w, w, b.pp("fc2"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Mlp {
            freqs,
            time1: candle_nn::linear(cfg.time_dim, w, tvb.pp(0))?,
            time2: candle_nn::linear(w, w, tvb.pp(2))?,
            input: candle_nn::linear(dim, w, vb.pp("input"))?,
            blocks,
            out: candle_nn::linear(w, out_dim, vb.pp("out"))?,
            in_dim: dim,
        })
    }

    /// The model output for x (B, D) at timesteps `t` (one per example).
    pub fn forward(&self, x: &Tensor, t: &[usize]) -> Result<Tensor> {
        let (b, d) = x.dims2().map_err(|_| self.shape_error(x, t))?;
        if d != self.in_dim || t.len() != b {
            return Err(self.shape_error(x, t));
        }
        let (dev, dtype): (&Device, DType) = (x.device(), x.dtype());
        let tt: Vec<f32> = t.iter().map(|&v| v as f32).collect();
        let emb = sinusoidal(
            &Tensor::from_vec(tt, b, dev)?,
            &self.freqs.to_device(dev)?,
            false,
        )?;
        let temb = self
            .time2
            .forward(&self.time1.forward(&emb.to_dtype(dtype)?)?.silu()?)?;
        let mut h = self.input.forward(x)?;
        for block in &self.blocks {
            h = block.forward(&h, &temb)?;
        }
        Ok(self.out.forward(&h.silu()?)?)
    }

    fn shape_error(&self, x: &Tensor, t: &[usize]) -> Error {
        Error::Invalid(format!(
            "MLP input {:?} with {} timesteps: expected (B, {}) and one timestep per example",
            x.dims(),
            t.len(),
            self.in_dim
        ))
    }

    /// The same model over the same weights, recording no autograd graph through them.
    pub fn detached(&self) -> Mlp {
        Mlp {
            freqs: self.freqs.clone(),
            time1: detached_linear(&self.time1),
            time2: detached_linear(&self.time2),
            input: detached_linear(&self.input),
            blocks: self.blocks.iter().map(Block::detached).collect(),
            out: detached_linear(&self.out),
            in_dim: self.in_dim,
        }
    }
}

impl Denoiser for Mlp {
    /// No autograd graph through the weights; x_t is not detached (see the UNet's).
    fn forward(&self, x_t: &Tensor, t: &[usize]) -> Result<Tensor> {
        Mlp::forward(&self.detached(), x_t, t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::init_weights;
    use candle_nn::VarMap;

    fn build(seed: u64) -> (VarMap, Mlp) {
        let vm = VarMap::new();
        let cfg = MlpConfig {
            width: 16,
            blocks: 2,
            time_dim: 8,
        };
        let net = Mlp::new(
            VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu),
            &cfg,
            2,
            4,
        )
        .unwrap();
        init_weights(&vm, seed).unwrap();
        (vm, net)
    }

    #[test]
    fn maps_b_by_d_to_b_by_out_and_depends_on_t() {
        let (vm, net) = build(3);
        // 2*16 + 16 (input) + 8*16 + 16 + 16*16 + 16 (time) + 2 * 3 * (16*16 + 16) + 16*4 + 4.
        let expected = 48 + 144 + 272 + 6 * 272 + 68;
        assert_eq!(crate::nn::num_parameters(&vm), expected);
        let x = Tensor::new(&[[0.5f32, -1.0], [0.5, -1.0]], &Device::Cpu).unwrap();
        let y = net.forward(&x, &[0, 500]).unwrap();
        assert_eq!(y.dims(), &[2, 4]);
        let v: Vec<Vec<f32>> = y.to_vec2().unwrap();
        assert_ne!(v[0], v[1], "the same x at different t gave the same output");
        assert!(net.forward(&x, &[0]).is_err());
        assert!(net.forward(&x.unsqueeze(2).unwrap(), &[0, 1]).is_err());
    }

    #[test]
    fn seeded_init_is_reproducible() {
        let x = Tensor::new(&[[0.1f32, 0.2]], &Device::Cpu).unwrap();
        let a: Vec<Vec<f32>> = build(5).1.forward(&x, &[7]).unwrap().to_vec2().unwrap();
        let b: Vec<Vec<f32>> = build(5).1.forward(&x, &[7]).unwrap().to_vec2().unwrap();
        let c: Vec<Vec<f32>> = build(6).1.forward(&x, &[7]).unwrap().to_vec2().unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
