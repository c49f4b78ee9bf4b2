//! Building the network a config describes — the UNet for images or the MLP for vectors
//! (`[model] arch`) — fresh and seeded for training, or from the weights stored in a checkpoint
//! (raw or EMA) for sampling, in f32 or a lower compute precision. `Network` is the one type the
//! training loop, the generator and the samplers hold, whichever the architecture.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};

use crate::config::Config;
use crate::denoiser::Denoiser;
use crate::error::{Error, Result};
use crate::nn::{init_weights, Arch, Mlp, UNet};
use crate::rng::Stream;

/// (height, width) of the images a config describes.
pub fn image_hw(cfg: &Config) -> (usize, usize) {
    (cfg.data.image_size.height, cfg.data.image_size.width)
}

/// A denoising network of either architecture.
// One per run or generator, never stored in bulk: boxing the UNet would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Network {
    UNet(UNet),
    Mlp(Mlp),
}

impl Network {
    /// The model output for x_t ((B, C, H, W) for the UNet, (B, D) for the MLP); `labels` and
    /// `dropout` as for `UNet::forward` (the MLP takes neither: the config refuses them).
    pub fn forward(
        &self,
        x_t: &Tensor,
        t: &[usize],
        labels: Option<&[u32]>,
        dropout: Option<&mut [Stream]>,
    ) -> Result<Tensor> {
        match self {
            Network::UNet(u) => u.forward(x_t, t, labels, dropout),
            Network::Mlp(m) => m.forward(x_t, t),
        }
    }

    /// The same network over the same weights, recording no autograd graph through them.
    pub fn detached(&self) -> Network {
        match self {
            Network::UNet(u) => Network::UNet(u.detached()),
            Network::Mlp(m) => Network::Mlp(m.detached()),
        }
    }
}

impl Denoiser for Network {
    fn forward(&self, x_t: &Tensor, t: &[usize]) -> Result<Tensor> {
        match self {
            Network::UNet(u) => Denoiser::forward(u, x_t, t),
            Network::Mlp(m) => Denoiser::forward(m, x_t, t),
        }
    }
}

/// Build the network of `cfg` over `vb` (whatever holds the weights).
pub fn network(cfg: &Config, vb: VarBuilder) -> Result<Network> {
    Ok(match cfg.model.arch {
        Arch::Unet => Network::UNet(UNet::new(
            vb,
            &cfg.model,
            cfg.data.channels,
            cfg.out_channels(),
            image_hw(cfg),
        )?),
        Arch::Mlp => {
            let dim = cfg.data.example_shape()[0];
            Network::Mlp(Mlp::new(vb, &cfg.model.mlp, dim, cfg.out_channels())?)
        }
    })
}

/// A freshly initialised, trainable network (f32 weights on `device`): the same seed gives
/// bit-identical weights.
pub fn fresh(cfg: &Config, device: &Device) -> Result<(VarMap, Network)> {
    let varmap = VarMap::new();
    let net = network(cfg, VarBuilder::from_varmap(&varmap, DType::F32, device))?;
    init_weights(&varmap, cfg.train.seed)?;
    Ok((varmap, net))
}

/// The network over fixed weights (e.g. from a checkpoint, without their `model.`/`ema.`
/// prefix), computing in `dtype`.
pub fn from_tensors(
    cfg: &Config,
    weights: HashMap<String, Tensor>,
    dtype: DType,
    device: &Device,
) -> Result<Network> {
    network(cfg, VarBuilder::from_tensors(weights, dtype, device)).map_err(|e| {
        Error::Invalid(format!(
            "the stored weights do not fit the model config: {e}"
        ))
    })
}
