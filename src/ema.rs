//! An exponential moving average of the model weights, the weights DDPM samples with. Its decay
//! warms up as in diffusers' `EMAModel`, so the average is usable early instead of being
//! dominated by the random initialisation for the first 1/(1 - decay) steps. The EMA owns f32
//! copies of the weights and reads the live variables; it never writes them. Saving and loading
//! go through `state` / `load_state` and the `checkpoint` module.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor, Var};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::named::{expect_tensor, reject_unknown, sorted_unique};

/// EMA settings, the `[ema]` section.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EmaConfig {
    /// The largest decay, reached after warm-up (DDPM: 0.9999).
    pub decay: f64,
    /// Warm-up exponent: 2/3 suits long runs (0.999 after 31.6K steps), 3/4 short ones.
    pub warmup_power: f64,
    /// Average every this many optimizer steps.
    pub update_every: u64,
    /// Before this step the EMA simply copies the weights.
    pub start_step: u64,
}

impl Default for EmaConfig {
    fn default() -> Self {
        EmaConfig {
            decay: 0.9999,
            warmup_power: 2.0 / 3.0,
            update_every: 1,
            start_step: 0,
        }
    }
}

impl EmaConfig {
    /// Check every value; the error names the offending key.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..1.0).contains(&self.decay) {
            return Err(Error::Config(format!(
                "ema.decay = {}: must lie in [0, 1)",
                self.decay
            )));
        }
        if !(self.warmup_power.is_finite() && self.warmup_power > 0.0) {
            return Err(Error::Config(format!(
                "ema.warmup_power = {}: must be positive and finite",
                self.warmup_power
            )));
        }
        if self.update_every == 0 {
            return Err(Error::Config(
                "ema.update_every = 0: must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// The decay of the update made after optimizer step `step` (counted from 1), as in
    /// diffusers' `EMAModel.get_decay` with inv_gamma = 1 and min_decay = 0:
    ///   n = step - start_step - 1;  decay = 0 if n <= 0, else
    ///   decay = clamp(1 - (1 + n)^(-warmup_power), 0, decay_max).
    /// With power 2/3: n = 1 gives 0.370, n = 10 gives 0.798, n = 1000 gives 0.990.
    pub fn decay_at(&self, step: u64) -> f64 {
        let n = step.saturating_sub(self.start_step).saturating_sub(1);
        if n == 0 {
            return 0.0;
        }
        (1.0 - (1.0 + n as f64).powf(-self.warmup_power)).clamp(0.0, self.decay)
    }

    /// Whether the EMA is updated after optimizer step `step`: always up to `start_step` (it
    /// copies the weights then), afterwards every `update_every` steps.
    pub fn updates_at(&self, step: u64) -> bool {
        step <= self.start_step || (step - self.start_step) % self.update_every.max(1) == 0
    }
}

/// The moving average of a set of named variables.
pub struct Ema {
    cfg: EmaConfig,
    vars: Vec<(String, Var)>,
    weights: Vec<(String, Tensor)>,
}

impl Ema {
    /// An EMA of `vars` (sorted by name here) starting at their current values.
    pub fn new(vars: &[(String, Var)], cfg: EmaConfig) -> Result<Self> {
        cfg.validate()?;
        let vars = sorted_unique(vars)?;
        let weights = vars
            .iter()
            .map(|(n, v)| Ok((n.clone(), snapshot(v)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Ema { cfg, vars, weights })
    }

    /// The settings this EMA was built with.
    pub fn config(&self) -> &EmaConfig {
        &self.cfg
    }

    /// Fold in the current weights after optimizer step `step` (counted from 1):
    /// ema <- ema - (1 - decay) (ema - p), with decay = `EmaConfig::decay_at(step)`; this form
    /// (diffusers') keeps a constant weight exactly constant. Returns the decay used, or None
    /// when `update_every` skips this step.
    pub fn update(&mut self, step: u64) -> Result<Option<f64>> {
        if !self.cfg.updates_at(step) {
            return Ok(None);
        }
        let decay = self.cfg.decay_at(step);
        #[cfg(feature = "cuda")]
        if self.update_cuda(decay)? {
            return Ok(Some(decay));
        }
        for ((_, var), (_, ema)) in self.vars.iter().zip(&mut self.weights) {
            *ema = if decay == 0.0 {
                snapshot(var)?
            } else {
                let p = var.as_detached_tensor().to_dtype(DType::F32)?;
                (&*ema - ((&*ema - p)? * (1.0 - decay))?)?
            };
        }
        Ok(Some(decay))
    }

    /// `update`'s arithmetic over every weight in a few launches (`optim::multi`), when all are
    /// f32 on CUDA; false (nothing done) otherwise. The averages own their storage
    /// (`snapshot`, `load_state` copies), so they are updated in place.
    #[cfg(feature = "cuda")]
    fn update_cuda(&mut self, decay: f64) -> Result<bool> {
        let all_cuda = self
            .vars
            .iter()
            .all(|(_, v)| v.device().is_cuda() && v.dtype() == DType::F32)
            && self
                .weights
                .iter()
                .all(|(_, w)| w.device().is_cuda() && w.is_contiguous());
        if !all_cuda || self.vars.is_empty() {
            return Ok(false);
        }
        let e: Vec<&Tensor> = self.weights.iter().map(|(_, w)| w).collect();
        let p: Vec<&Tensor> = self.vars.iter().map(|(_, v)| v.as_tensor()).collect();
        crate::nn::kernels::cuda::multi::ema(e, p, (1.0 - decay) as f32, decay == 0.0)?;
        Ok(true)
    }

    /// The averaged weights (f32, on the variables' devices), sorted by name.
    pub fn weights(&self) -> &[(String, Tensor)] {
        &self.weights
    }

    /// A fresh VarMap holding copies of the averaged weights under the model's names: build the
    /// sampling model from it with `VarBuilder::from_varmap(&map, DType::F32, &device)`.
    pub fn to_varmap(&self) -> Result<VarMap> {
        let map = VarMap::new();
        {
            let mut data = map
                .data()
                .lock()
                .map_err(|_| Error::Invalid("a fresh VarMap lock is poisoned".into()))?;
            for (name, w) in &self.weights {
                data.insert(name.clone(), Var::from_tensor(&w.copy()?)?);
            }
        }
        Ok(map)
    }

    /// The averaged weights as `ema.<name>`.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.weights
            .iter()
            .map(|(n, w)| (format!("ema.{n}"), w.clone()))
            .collect()
    }

    /// Restore the averaged weights from `tensors[ema.<name>]` (other keys are ignored). The
    /// error names the first missing, mis-shaped or unknown `ema.` key; nothing changes then.
    pub fn load_state(&mut self, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
        let mut loaded = Vec::with_capacity(self.vars.len());
        for (name, var) in &self.vars {
            let t = expect_tensor(tensors, &format!("ema.{name}"), var.dims(), "EMA state")?;
            // A copy of its own: the CUDA path updates the averages in place.
            loaded.push(t.to_dtype(DType::F32)?.to_device(var.device())?.copy()?);
        }
        let known = |n: &str| {
            self.vars
                .binary_search_by(|(v, _)| v.as_str().cmp(n))
                .is_ok()
        };
        reject_unknown(tensors, "ema.", known, "EMA state")?;
        for ((_, w), t) in self.weights.iter_mut().zip(loaded) {
            *w = t;
        }
        Ok(())
    }
}

/// An f32 copy of a variable's value with storage of its own: the optimizer overwrites the
/// variable's storage in place, which must not move the average.
fn snapshot(var: &Var) -> Result<Tensor> {
    let t = var.as_detached_tensor();
    Ok(if t.dtype() == DType::F32 {
        t.copy()?
    } else {
        t.to_dtype(DType::F32)?
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn scalar_var(x: f32) -> Vec<(String, Var)> {
        vec![("w".into(), Var::new(&[x], &Device::Cpu).unwrap())]
    }

    fn value(ema: &Ema) -> f32 {
        ema.weights()[0].1.to_vec1::<f32>().unwrap()[0]
    }

    #[test]
    fn decay_follows_the_warmup_formula() {
        let c = EmaConfig::default();
        // python: [1 - (1 + n) ** (-2/3) for n in (1, 2, 10, 1000)]
        let want = [
            (2, 0.3700394750525634),
            (3, 0.5192501432308638),
            (11, 0.7978199917664258),
            (1001, 0.9900066611160449),
        ];
        assert_eq!(c.decay_at(0), 0.0);
        assert_eq!(c.decay_at(1), 0.0);
        for (step, d) in want {
            assert!(
                (c.decay_at(step) - d).abs() < 1e-15,
                "step {step}: {}",
                c.decay_at(step)
            );
        }
        // 1 - (1 + n)^(-2/3) passes 0.9999 only after n = 10^6 - 1 (step 10^6).
        assert!(c.decay_at(999_999) < 0.9999);
        assert_eq!(c.decay_at(1_000_001), 0.9999);
        assert_eq!(c.decay_at(u64::MAX), 0.9999);

        let late = EmaConfig {
            start_step: 100,
            decay: 0.5,
            ..c
        };
        assert_eq!(late.decay_at(50), 0.0);
        assert_eq!(late.decay_at(101), 0.0);
        assert!((late.decay_at(102) - 0.3700394750525634).abs() < 1e-15);
        assert_eq!(late.decay_at(103), 0.5);

        let sparse = EmaConfig {
            update_every: 10,
            start_step: 5,
            ..EmaConfig::default()
        };
        let updated: Vec<u64> = (1..=40).filter(|&s| sparse.updates_at(s)).collect();
        assert_eq!(updated, vec![1, 2, 3, 4, 5, 15, 25, 35]);
    }

    #[test]
    fn ema_of_a_constant_stays_exactly_constant() {
        let vars = scalar_var(0.3);
        let mut ema = Ema::new(&vars, EmaConfig::default()).unwrap();
        for step in 1..=50 {
            ema.update(step).unwrap();
            assert_eq!(value(&ema).to_bits(), 0.3f32.to_bits(), "step {step}");
        }
    }

    #[test]
    fn ema_tracks_a_moving_weight_as_the_formula_says() {
        // The weight is set to p_s = s before update(s).
        // python:
        //   e = 1.0
        //   for s in (2, 3, 4):
        //       d = 1 - (1 + (s - 1)) ** (-2/3); e = e - (1 - d) * (e - s)
        //       print(repr(e))
        //   -> 1.6299605249474367, 2.288606806347019, 2.9677736453310084
        let vars = scalar_var(0.0);
        let mut ema = Ema::new(&vars, EmaConfig::default()).unwrap();
        let want = [
            1.0,
            1.6299605249474367,
            2.288606806347019,
            2.9677736453310084,
        ];
        for (step, w) in (1u64..).zip(want) {
            vars[0]
                .1
                .set(&Tensor::new(&[step as f32], &Device::Cpu).unwrap())
                .unwrap();
            ema.update(step).unwrap();
            assert!(
                (value(&ema) as f64 - w).abs() < 1e-6,
                "step {step}: {}",
                value(&ema)
            );
        }
        // The optimizer writes variables in place; the average must not follow.
        vars[0]
            .1
            .set(&Tensor::new(&[100f32], &Device::Cpu).unwrap())
            .unwrap();
        assert!((value(&ema) as f64 - want[3]).abs() < 1e-6);
    }

    #[test]
    fn state_round_trips_and_bad_keys_are_named() {
        let vars = scalar_var(1.0);
        let mut ema = Ema::new(&vars, EmaConfig::default()).unwrap();
        vars[0]
            .1
            .set(&Tensor::new(&[5f32], &Device::Cpu).unwrap())
            .unwrap();
        ema.update(2).unwrap();
        let state: BTreeMap<String, Tensor> = ema.state().into_iter().collect();
        let mut other = Ema::new(&vars, EmaConfig::default()).unwrap();
        other.load_state(&state).unwrap();
        assert_eq!(value(&other).to_bits(), value(&ema).to_bits());
        let vm = other.to_varmap().unwrap();
        let w = vm.data().lock().unwrap()["w"]
            .as_tensor()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(w, vec![value(&ema)]);

        let mut bad = state.clone();
        bad.insert(
            "ema.w".into(),
            Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap(),
        );
        let e = other.load_state(&bad).unwrap_err().to_string();
        assert!(e.contains("`ema.w`") && e.contains("[2]"), "{e}");
        let e = other.load_state(&BTreeMap::new()).unwrap_err().to_string();
        assert!(e.contains("`ema.w`"), "{e}");
        let mut extra = state;
        extra.insert(
            "ema.v".into(),
            Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap(),
        );
        let e = other.load_state(&extra).unwrap_err().to_string();
        assert!(e.contains("`ema.v`"), "{e}");
    }

    #[test]
    fn config_validation_names_the_key() {
        let d = EmaConfig::default;
        for (c, key) in [
            (EmaConfig { decay: 1.0, ..d() }, "ema.decay"),
            (
                EmaConfig {
                    warmup_power: 0.0,
                    ..d()
                },
                "ema.warmup_power",
            ),
            (
                EmaConfig {
                    update_every: 0,
                    ..d()
                },
                "ema.update_every",
            ),
        ] {
            let e = c.validate().unwrap_err().to_string();
            assert!(e.starts_with(key), "{e}");
        }
        assert_eq!(toml::from_str::<EmaConfig>("").unwrap(), d());
        assert!(toml::from_str::<EmaConfig>("decay_max = 0.9").is_err());
    }
}
