//! A small UNet for tests that compare two ways of computing the same thing (our kernels vs
//! candle's ops, shards vs one batch): ch 16, [1, 2], 1 block, attention at 4, 2 heads, 8
//! groups, on 1x8x8 images, with every variable seeded and then moved by N(0, 0.1^2) noise
//! (the zero-initialised output layers included), so every output and gradient is live.

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};

use crate::nn::{init_weights, UNet, UNetConfig};
use crate::rng::{Purpose, Stream};

/// The config: ch 16, [1, 2], 1 block, attention at 4, 2 heads, 8 groups, no dropout.
pub fn tiny_config(num_classes: Option<usize>) -> UNetConfig {
    UNetConfig {
        base_channels: 16,
        channel_mult: vec![1, 2],
        num_res_blocks: 1,
        attention_resolutions: Some(vec![4]),
        num_heads: 2,
        dropout: 0.0,
        norm_groups: 8,
        num_classes,
        ..UNetConfig::default()
    }
}

/// The model, with `num_classes` label embeddings (None: unconditional).
pub fn seeded_tiny_unet(num_classes: Option<usize>) -> (VarMap, UNet) {
    seeded_unet(&tiny_config(num_classes))
}

/// The model of `cfg` on 1x8x8 images, seeded and moved as above.
pub fn seeded_unet(cfg: &UNetConfig) -> (VarMap, UNet) {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let unet = UNet::new(vb, cfg, 1, 1, (8, 8)).unwrap();
    init_weights(&varmap, 4).unwrap();
    for (i, var) in varmap.all_vars().iter().enumerate() {
        let noise = Stream::new(7, Purpose::Eval, 1000 + i as u64)
            .randn(var.dims(), &Device::Cpu)
            .unwrap();
        var.set(&(var.as_tensor() + (noise * 0.1).unwrap()).unwrap())
            .unwrap();
    }
    (varmap, unet)
}
