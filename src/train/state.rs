//! Everything a training run must carry across a restart — weights, EMA, optimizer moments and
//! the step — and its conversion to and from one checkpoint file. Random streams need no state:
//! they are recreated from (seed, step).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;

use crate::checkpoint::{self, Checkpoint, META_CONFIG, META_SEED, MODEL_PREFIX};
use crate::config::Config;
use crate::ema::Ema;
use crate::error::{Error, Result};
use crate::model;
use crate::model::Network;
use crate::named::named_vars;
use crate::optim::AdamW;

/// Named tensors and metadata strings, as a checkpoint file holds them.
pub type CheckpointContents = (Vec<(String, Tensor)>, BTreeMap<String, String>);

/// The mutable state of a run.
pub struct TrainState {
    pub device: Device,
    pub varmap: VarMap,
    /// The trainable variables, sorted by name (f32 master weights).
    pub vars: Vec<(String, Var)>,
    /// The network over `varmap`, computing in f32.
    pub net: Network,
    pub optimizer: AdamW,
    pub ema: Ema,
    /// Optimizer steps completed.
    pub step: u64,
}

impl TrainState {
    /// A fresh run: weights initialised from the seed, zero moments, EMA = weights.
    pub fn fresh(cfg: &Config, device: &Device) -> Result<Self> {
        let (varmap, net) = model::fresh(cfg, device)?;
        let vars = named_vars(&varmap)?;
        let optimizer = AdamW::new(&vars, cfg.optim.clone())?;
        let ema = Ema::new(&vars, cfg.ema.clone())?;
        Ok(TrainState {
            device: device.clone(),
            varmap,
            vars,
            net,
            optimizer,
            ema,
            step: 0,
        })
    }

    /// The state stored in `ckpt` (its config must be `cfg`'s architecture).
    pub fn restore(cfg: &Config, device: &Device, ckpt: &Checkpoint, path: &Path) -> Result<Self> {
        let mut state = Self::fresh(cfg, device)?;
        checkpoint::load_into(&state.varmap, &ckpt.tensors, MODEL_PREFIX)
            .map_err(|e| Error::checkpoint(path, e.to_string()))?;
        state
            .optimizer
            .load_state(&ckpt.tensors)
            .map_err(|e| Error::checkpoint(path, e.to_string()))?;
        state
            .ema
            .load_state(&ckpt.tensors)
            .map_err(|e| Error::checkpoint(path, e.to_string()))?;
        state.step = ckpt.step()?;
        Ok(state)
    }

    /// The network for one training step, computing in `dtype`. In f32 it is the network over
    /// the variables; in bf16 the variables are cast on the way in, so gradients flow back to
    /// the f32 master weights.
    pub fn compute_net(&self, cfg: &Config, dtype: DType) -> Result<Network> {
        if dtype == DType::F32 {
            return Ok(self.net.clone());
        }
        let weights: HashMap<String, Tensor> = self
            .vars
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect();
        model::from_tensors(cfg, weights, dtype, &self.device)
    }

    /// The EMA weights as a map for building a sampling network.
    pub fn ema_weights(&self) -> HashMap<String, Tensor> {
        self.ema.weights().iter().cloned().collect()
    }

    /// The checkpoint contents of the state: tensors (`model.*`, `ema.*`, `optim.*`) and
    /// metadata (seed, parameter count and the full config; the step is added on saving).
    pub fn checkpoint_contents(&self, cfg: &Config) -> Result<CheckpointContents> {
        let mut tensors: Vec<(String, Tensor)> = self
            .vars
            .iter()
            .map(|(name, var)| (format!("{MODEL_PREFIX}{name}"), var.as_tensor().clone()))
            .collect();
        tensors.extend(self.ema.state());
        tensors.extend(self.optimizer.state()?);
        let parameters: usize = self.vars.iter().map(|(_, v)| v.elem_count()).sum();
        let metadata = BTreeMap::from([
            (META_SEED.to_string(), cfg.train.seed.to_string()),
            (META_CONFIG.to_string(), cfg.to_toml()?),
            ("parameters".to_string(), parameters.to_string()),
        ]);
        Ok((tensors, metadata))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{max_abs, max_abs_diff};

    /// The mixed-precision path (bf16 on CUDA) on the CPU with f16, which candle's CPU kernels
    /// support: the forward runs in the low precision, and the gradients reach the f32 master
    /// weights, close to the f32 gradients.
    #[test]
    fn low_precision_forward_sends_f32_gradients_to_the_master_weights() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/configs/tiny.toml"))
                .unwrap();
        let cfg = Config::from_toml(&text, "tiny.toml").unwrap();
        let dev = Device::Cpu;
        let state = TrainState::fresh(&cfg, &dev).unwrap();
        // A fresh UNet outputs exactly 0 (zero-initialised output conv): perturb every weight so
        // gradients flow everywhere.
        for (_, v) in &state.vars {
            let noise =
                crate::rng::Stream::new(1, crate::rng::Purpose::Eval, v.elem_count() as u64)
                    .randn(v.shape(), &dev)
                    .unwrap();
            v.set(&(v.as_tensor() + (noise * 0.05).unwrap()).unwrap())
                .unwrap();
        }
        let x = crate::rng::Stream::new(2, crate::rng::Purpose::Eval, 0)
            .randn((2, 1, 8, 8), &dev)
            .unwrap();
        let t = [3usize, 60];
        let grads_in = |dtype: DType| {
            let net = state.compute_net(&cfg, dtype).unwrap();
            let out = net
                .forward(&x.to_dtype(dtype).unwrap(), &t, None, None)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap();
            assert_eq!(out.dtype(), DType::F32);
            out.sqr().unwrap().mean_all().unwrap().backward().unwrap()
        };
        let g16 = grads_in(DType::F16);
        let g32 = grads_in(DType::F32);
        for (name, var) in &state.vars {
            let a = g16
                .get(var)
                .unwrap_or_else(|| panic!("no f16-path gradient for {name}"));
            let b = g32.get(var).unwrap();
            assert_eq!(a.dtype(), DType::F32, "{name}");
            let (diff, scale) = (max_abs_diff(a, b), max_abs(b));
            // f16 keeps ~3 decimal digits; allow 5% of the gradient's scale.
            assert!(
                diff <= 0.05 * scale + 1e-6,
                "{name}: diff {diff} vs scale {scale}"
            );
        }
    }
}
