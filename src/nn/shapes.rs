//! The parameters a `UNetConfig` builds — names and shapes — without allocating them: the UNet
//! is constructed over a backend that hands out broadcast zeros and records what was asked for.
//! For checking foreign weights against a config (`interop`) and counting the parameters of
//! models too large to build in a test.

use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};

use crate::error::{Error, Result};
use crate::nn::{UNet, UNetConfig};

/// Parameter names and shapes.
type Shapes = Vec<(String, Vec<usize>)>;

/// Records every variable the model asks for; each is a zero-strided view of one zero. The
/// list is shared, so the caller keeps a handle after the builder takes the backend.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Shapes>>);

impl SimpleBackend for Recorder {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        if let Ok(mut seen) = self.0.lock() {
            seen.push((name.to_string(), s.dims().to_vec()));
        }
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("the shape recorder has no tensor `{name}` without a shape")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

/// The (name, shape) of every parameter of the UNet `UNet::new(cfg, in, out, size)` builds,
/// sorted by name.
pub fn unet_parameters(
    cfg: &UNetConfig,
    in_channels: usize,
    out_channels: usize,
    image_size: (usize, usize),
) -> Result<Shapes> {
    let recorder = Recorder::default();
    let vb = VarBuilder::from_backend(Box::new(recorder.clone()), DType::F32, Device::Cpu);
    UNet::new(vb, cfg, in_channels, out_channels, image_size)?;
    let mut seen = recorder
        .0
        .lock()
        .map_err(|_| Error::Invalid("the shape recorder's lock is poisoned".into()))?
        .clone();
    seen.sort();
    seen.dedup();
    Ok(seen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{init_weights, num_parameters};
    use candle_nn::VarMap;

    #[test]
    fn recorded_shapes_are_those_a_varmap_gets() {
        let cfg = UNetConfig {
            base_channels: 16,
            channel_mult: vec![1, 2],
            num_res_blocks: 1,
            attention_resolutions: Some(vec![4]),
            norm_groups: 8,
            num_classes: Some(3),
            scale_shift: true,
            ..UNetConfig::default()
        };
        let recorded = unet_parameters(&cfg, 1, 2, (8, 8)).unwrap();
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        UNet::new(vb, &cfg, 1, 2, (8, 8)).unwrap();
        init_weights(&varmap, 0).unwrap();
        let data = varmap.data().lock().unwrap();
        let mut built: Vec<(String, Vec<usize>)> = data
            .iter()
            .map(|(k, v)| (k.clone(), v.dims().to_vec()))
            .collect();
        built.sort();
        assert_eq!(recorded, built);
        let total: usize = recorded
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        drop(data);
        assert_eq!(total, num_parameters(&varmap));
    }
}
