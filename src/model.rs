//! Building the network a config describes: fresh and seeded for training, or from the weights
//! stored in a checkpoint (raw or EMA) for sampling, in f32 or a lower compute precision.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::nn::{init_weights, UNet};

/// (height, width) of the images a config describes.
pub fn image_hw(cfg: &Config) -> (usize, usize) {
    (cfg.data.image_size.height, cfg.data.image_size.width)
}

/// Build the UNet of `cfg` over `vb` (whatever holds the weights).
pub fn unet(cfg: &Config, vb: VarBuilder) -> Result<UNet> {
    UNet::new(
        vb,
        &cfg.model,
        cfg.data.channels,
        cfg.out_channels(),
        image_hw(cfg),
    )
}

/// A freshly initialised, trainable network (f32 weights on `device`): the same seed gives
/// bit-identical weights.
pub fn fresh(cfg: &Config, device: &Device) -> Result<(VarMap, UNet)> {
    let varmap = VarMap::new();
    let net = unet(cfg, VarBuilder::from_varmap(&varmap, DType::F32, device))?;
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
) -> Result<UNet> {
    unet(cfg, VarBuilder::from_tensors(weights, dtype, device)).map_err(|e| {
        Error::Invalid(format!(
            "the stored weights do not fit the model config: {e}"
        ))
    })
}
