//! Our own AdamW, its learning-rate schedule (`lr`) and the gradient helpers it is used with (clipping,
//! accumulation over micro-batches). candle_nn's AdamW keeps its moments private, so a resumed
//! run would silently restart them; here the moments and the step count are plain tensors that
//! `state` / `load_state` move in and out of a checkpoint. This module does not compute losses
//! or gradients (that is `loss.backward()`) and does not own the EMA (`ema`).

mod grad;
mod lr;
mod multi;

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::named::{expect_tensor, reject_unknown, sorted_unique};

pub use grad::{clip_grad_norm, GradAccumulator};
pub use lr::{lr_at, LrSchedule};

/// Key of the optimizer's step count (an i64 scalar tensor) in a checkpoint.
pub const STEP_KEY: &str = "optim.step";

/// The optimizer's settings: the `[optim]` section of the config.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct OptimConfig {
    /// Peak learning rate (DDPM: 2e-4 for CIFAR-10).
    pub lr: f64,
    /// Decay of the first moment.
    pub beta1: f64,
    /// Decay of the second moment.
    pub beta2: f64,
    /// Added to sqrt(v_hat) so the step stays bounded where gradients vanish.
    pub eps: f64,
    /// Decoupled weight decay (DDPM: none).
    pub weight_decay: f64,
    /// Linear warm-up length in optimizer steps (DDPM: 5000).
    pub warmup_steps: u64,
    /// The learning rate after warm-up (`lr::lr_at`): constant (DDPM), or a cosine or linear
    /// decay to `min_lr` at the last of train.steps.
    pub schedule: LrSchedule,
    /// Where a decaying schedule ends; unused by the constant one.
    pub min_lr: f64,
    /// Clip the global gradient norm to this value; `grad_clip = false` in TOML disables it.
    #[serde(with = "grad_clip_serde")]
    pub grad_clip: Option<f64>,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            lr: 2e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            warmup_steps: 5000,
            schedule: LrSchedule::Constant,
            min_lr: 0.0,
            grad_clip: Some(1.0),
        }
    }
}

impl OptimConfig {
    /// Check every value; the error names the offending key.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, value: f64, need: &str| {
            Err(Error::Config(format!("optim.{key} = {value}: {need}")))
        };
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("lr", self.lr, "must be positive and finite");
        }
        for (key, beta) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&beta) {
                return bad(key, beta, "must lie in [0, 1)");
            }
        }
        if !(self.min_lr.is_finite() && (0.0..=self.lr).contains(&self.min_lr)) {
            return bad("min_lr", self.min_lr, "must lie in [0, optim.lr]");
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return bad("eps", self.eps, "must be positive and finite");
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("weight_decay", self.weight_decay, "must be >= 0 and finite");
        }
        if let Some(c) = self.grad_clip {
            if !(c.is_finite() && c > 0.0) {
                return bad(
                    "grad_clip",
                    c,
                    "must be positive (or false to disable clipping)",
                );
            }
        }
        Ok(())
    }
}

/// `grad_clip` in TOML: a number, or `false` for no clipping (TOML has no null, and a missing key
/// means the default), so the resolved config written into a checkpoint reads back the same.
mod grad_clip_serde {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Clip {
        Off(bool),
        Max(f64),
    }

    pub fn serialize<S: Serializer>(value: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(c) => Clip::Max(*c),
            None => Clip::Off(false),
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        match Clip::deserialize(d) {
            Ok(Clip::Max(c)) => Ok(Some(c)),
            Ok(Clip::Off(false)) => Ok(None),
            _ => Err(serde::de::Error::custom(
                "optim.grad_clip must be a positive number or false",
            )),
        }
    }
}

/// One parameter with its moments (f32, on the parameter's device).
struct Slot {
    name: String,
    var: Var,
    m: Tensor,
    v: Tensor,
}

/// AdamW (Loshchilov & Hutter 2019) with PyTorch's semantics and state we can checkpoint.
pub struct AdamW {
    cfg: OptimConfig,
    slots: Vec<Slot>,
    step: u64,
}

impl AdamW {
    /// An optimizer over `vars` (sorted by name here) with zero moments. Every variable must be
    /// f32: these are the master weights, kept in full precision whatever the model computes in.
    pub fn new(vars: &[(String, Var)], cfg: OptimConfig) -> Result<Self> {
        cfg.validate()?;
        let vars = sorted_unique(vars)?;
        let slots = vars
            .into_iter()
            .map(|(name, var)| {
                if var.dtype() != DType::F32 {
                    return Err(Error::Invalid(format!(
                        "parameter `{name}` is {:?}; master weights must be f32",
                        var.dtype()
                    )));
                }
                let m = var.as_tensor().zeros_like()?;
                let v = m.zeros_like()?;
                Ok(Slot { name, var, m, v })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(AdamW {
            cfg,
            slots,
            step: 0,
        })
    }

    /// The settings this optimizer was built with.
    pub fn config(&self) -> &OptimConfig {
        &self.cfg
    }

    /// Optimizer steps taken so far (restored by `load_state`).
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// The parameters, sorted by name.
    pub fn vars(&self) -> impl Iterator<Item = (&str, &Var)> {
        self.slots.iter().map(|s| (s.name.as_str(), &s.var))
    }

    /// An accumulator that averages the gradients of these parameters over micro-batches.
    pub fn accumulator(&self) -> GradAccumulator {
        GradAccumulator::new(self.slots.iter().map(|s| s.var.as_tensor()))
    }

    /// Clip the global gradient norm of these parameters to `max_norm`; returns the norm before.
    pub fn clip_grad_norm(&self, grads: &mut GradStore, max_norm: f64) -> Result<f64> {
        #[cfg(feature = "cuda")]
        if let Some(norm) = multi::clip(&self.slots, grads, max_norm)? {
            return Ok(norm);
        }
        clip_grad_norm(
            self.slots.iter().map(|s| s.var.as_tensor()),
            grads,
            max_norm,
        )
    }

    /// One AdamW update at learning rate `lr` (PyTorch's `torch.optim.AdamW`), with k the step
    /// count after this update:
    ///   p <- p (1 - lr wd);  m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;
    ///   p <- p - (lr / (1 - b1^k)) m / (sqrt(v) / sqrt(1 - b2^k) + eps).
    /// A parameter without a gradient is left untouched, moments included, as PyTorch does; the
    /// bias correction uses the shared step count (PyTorch counts per parameter), which differs
    /// only for parameters that skipped steps.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        if !(lr.is_finite() && lr >= 0.0) {
            return Err(Error::Invalid(format!(
                "learning rate {lr} must be >= 0 and finite"
            )));
        }
        self.step += 1;
        let k = self.step as f64;
        let OptimConfig {
            beta1: b1,
            beta2: b2,
            eps,
            weight_decay: wd,
            ..
        } = self.cfg;
        #[cfg(feature = "cuda")]
        if multi::step(&self.slots, grads, &self.cfg, lr, self.step)? {
            return Ok(());
        }
        let step_size = lr / (1.0 - b1.powf(k));
        let inv_bc2_sqrt = 1.0 / (1.0 - b2.powf(k)).sqrt();
        for slot in &mut self.slots {
            let Some(g) = grads.get(slot.var.as_tensor()) else {
                continue;
            };
            let g = g.to_dtype(DType::F32)?.detach();
            let p = slot.var.as_detached_tensor();
            let p = if wd != 0.0 {
                p.affine(1.0 - lr * wd, 0.0)?
            } else {
                p
            };
            slot.m = ((&slot.m * b1)? + (&g * (1.0 - b1))?)?;
            slot.v = ((&slot.v * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let denom = slot.v.sqrt()?.affine(inv_bc2_sqrt, eps)?;
            let p = (p - (slot.m.div(&denom)? * step_size)?)?;
            slot.var.set(&p)?;
        }
        Ok(())
    }

    /// The moments as `optim.m.<name>` / `optim.v.<name>` (f32, on the parameters' device) and
    /// the step count as an i64 scalar under `optim.step`.
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let step = i64::try_from(self.step)
            .map_err(|_| Error::Invalid(format!("step count {} overflows i64", self.step)))?;
        let mut out = Vec::with_capacity(2 * self.slots.len() + 1);
        for s in &self.slots {
            out.push((format!("optim.m.{}", s.name), s.m.clone()));
            out.push((format!("optim.v.{}", s.name), s.v.clone()));
        }
        out.push((STEP_KEY.to_string(), Tensor::new(step, &Device::Cpu)?));
        Ok(out)
    }

    /// Restore moments and step count from `tensors` (other keys are ignored, so a whole
    /// checkpoint can be passed). Errors name the first missing, mis-shaped or unknown key;
    /// nothing is changed unless every key is valid.
    pub fn load_state(&mut self, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
        let step_t = tensors
            .get(STEP_KEY)
            .ok_or_else(|| Error::Invalid(format!("optimizer state has no `{STEP_KEY}`")))?;
        let step = step_t
            .to_dtype(DType::I64)
            .and_then(|t| t.to_scalar::<i64>())
            .ok()
            .and_then(|s| u64::try_from(s).ok())
            .ok_or_else(|| {
                Error::Invalid(format!("`{STEP_KEY}` is not a non-negative integer scalar"))
            })?;
        let mut moments = Vec::with_capacity(self.slots.len());
        for s in &self.slots {
            let fetch = |kind: &str| -> Result<Tensor> {
                let key = format!("optim.{kind}.{}", s.name);
                let t = expect_tensor(tensors, &key, s.var.dims(), "optimizer state")?;
                Ok(t.to_dtype(DType::F32)?.to_device(s.var.device())?)
            };
            moments.push((fetch("m")?, fetch("v")?));
        }
        let known = |rest: &str| {
            let name = rest.strip_prefix("m.").or_else(|| rest.strip_prefix("v."));
            rest == "step"
                || name.is_some_and(|n| {
                    self.slots
                        .binary_search_by(|s| s.name.as_str().cmp(n))
                        .is_ok()
                })
        };
        reject_unknown(tensors, "optim.", known, "optimizer state")?;
        for (s, (m, v)) in self.slots.iter_mut().zip(moments) {
            s.m = m;
            s.v = v;
        }
        self.step = step;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
