//! Starting a run from another's state: `--resume` continues a run directory from its latest
//! checkpoint, `--init-from` starts a new run from a checkpoint's weights. A resumed run may
//! change how it is optimised, how long it runs and what it logs (each change reported); what
//! it learns from — the model, the data, the diffusion and the random streams — stays as it
//! was. A new run from a checkpoint needs the same network (`[model]`, channels, outputs), and
//! takes its weights and EMA with a fresh optimizer at step 0.

use std::fmt;
use std::path::Path;

use candle_core::Device;

use super::state::TrainState;
use crate::checkpoint::{self, Checkpoint, EMA_PREFIX, MODEL_PREFIX};
use crate::config::Config;
use crate::error::{Error, Result};

/// A config key whose value differs from the one a run was started with.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    /// `section.key`.
    pub key: String,
    /// The value before, as TOML; None when the key was unset.
    pub old: Option<String>,
    /// The value now.
    pub new: Option<String>,
}

impl Change {
    /// The value before, or `(unset)`.
    pub fn shown_old(&self) -> &str {
        self.old.as_deref().unwrap_or("(unset)")
    }

    /// The value now, or `(unset)`.
    pub fn shown_new(&self) -> &str {
        self.new.as_deref().unwrap_or("(unset)")
    }
}

/// `key: old -> new`.
impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} -> {}",
            self.key,
            self.shown_old(),
            self.shown_new()
        )
    }
}

/// Keys a resumed run cannot change: what the network is and what it learns from (the data,
/// the diffusion), and what fixes the random draws and the data order of each step.
fn locked(key: &str) -> bool {
    ["model.", "diffusion.", "data."]
        .iter()
        .any(|p| key.starts_with(p))
        || [
            "train.seed",
            "train.batch_size",
            "train.grad_accum",
            "train.label_dropout",
        ]
        .contains(&key)
}

/// The keys whose values differ between `before` and `after`: `before`'s in the config's
/// order, then those only `after` sets.
pub fn changes(before: &Config, after: &Config) -> Result<Vec<Change>> {
    Ok(changes_in(
        &resolved(before).flat()?,
        &resolved(after).flat()?,
    ))
}

/// `cfg` with its derived defaults filled in, so an absent value and its default compare equal.
fn resolved(cfg: &Config) -> Config {
    let mut cfg = cfg.clone();
    cfg.resolve();
    cfg
}

/// The config to resume `dir` with when none is given: its config.toml (which the user may have
/// edited), else the config of its newest checkpoint that loads, with `overrides` applied.
pub fn resume_config(dir: &Path, overrides: &[String]) -> Result<Config> {
    let file = dir.join(super::run_dir::CONFIG);
    if file.exists() {
        return Config::load(&file, overrides);
    }
    let none = || {
        Error::Invalid(format!(
            "--resume: {} holds no run (no {} and no checkpoint); pass --config to start one",
            dir.display(),
            super::run_dir::CONFIG
        ))
    };
    if !dir.is_dir() {
        return Err(none());
    }
    let (ckpt, _) = checkpoint::run_dir::load_newest(dir)?.ok_or_else(none)?;
    Config::parse(
        ckpt.config()?,
        &format!("{} (stored config)", ckpt.path.display()),
        overrides,
    )
}

/// The state saved in `ckpt`, a run's checkpoint to resume, and the config changes since; a
/// change to a locked key is an error naming it.
pub(super) fn resume_state(
    cfg: &Config,
    device: &Device,
    ckpt: &Checkpoint,
) -> Result<(TrainState, Vec<Change>)> {
    let path = &ckpt.path;
    let stored = ckpt.stored_config()?;
    let changed = changes(&stored, cfg)?;
    if let Some(c) = changed.iter().find(|c| locked(&c.key)) {
        return Err(Error::Config(format!(
            "--resume: {} = {}, but {} was trained with {}; a resumed run keeps its model, data, \
             diffusion, seed and batch (start a new --out, or fine-tune from it with --init-from)",
            c.key,
            c.shown_new(),
            path.display(),
            c.shown_old()
        )));
    }
    let state = TrainState::restore(cfg, device, ckpt, path)?;
    Ok((state, changed))
}

/// A new run's state from the weights (and EMA, when stored) of the checkpoint `path`: the
/// optimizer fresh, the step 0. `cfg` must describe the checkpoint's network.
pub(super) fn init_state(cfg: &Config, device: &Device, path: &Path) -> Result<TrainState> {
    let ckpt = checkpoint::load(path)?;
    let stored = ckpt.stored_config()?;
    // The keys that shape the weights (dropout has none).
    let arch = |c: &Config| -> Result<Vec<(String, toml::Value)>> {
        Ok(c.flat()?
            .into_iter()
            .filter(|(k, _)| {
                (k.starts_with("model.") && k != "model.dropout")
                    || ["data.channels", "data.dim", "diffusion.variance"].contains(&k.as_str())
            })
            .collect())
    };
    let mut changed = changes_in(&arch(&resolved(&stored))?, &arch(&resolved(cfg))?);
    // The variance type matters only where it changes the output channels (learned or not).
    if stored.out_channels() == cfg.out_channels() {
        changed.retain(|c| c.key != "diffusion.variance");
    }
    if let Some(c) = changed.first() {
        return Err(Error::Config(format!(
            "--init-from {}: {} = {}, but the checkpoint's network has {}; its weights fit only \
             that network",
            path.display(),
            c.key,
            c.shown_new(),
            c.shown_old()
        )));
    }
    let mut state = TrainState::fresh(cfg, device)?;
    let fail = |e: Error| Error::checkpoint(path, e.to_string());
    checkpoint::load_into(&state.varmap, &ckpt.tensors, MODEL_PREFIX).map_err(fail)?;
    let has_ema = ckpt.tensors.keys().any(|k| k.starts_with(EMA_PREFIX));
    if has_ema {
        state.ema.load_state(&ckpt.tensors).map_err(fail)?;
    } else {
        state.ema = crate::ema::Ema::new(&state.vars, cfg.ema.clone())?;
    }
    Ok(state)
}

/// `changes` over two flattened key lists.
fn changes_in(a: &[(String, toml::Value)], b: &[(String, toml::Value)]) -> Vec<Change> {
    let find = |list: &[(String, toml::Value)], key: &str| {
        list.iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.to_string())
    };
    let mut keys: Vec<&String> = a.iter().map(|(k, _)| k).collect();
    keys.extend(b.iter().map(|(k, _)| k).filter(|k| find(a, k).is_none()));
    keys.into_iter()
        .filter_map(|key| {
            let (old, new) = (find(a, key), find(b, key));
            (old != new).then(|| Change {
                key: key.clone(),
                old,
                new,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_list_the_differing_keys_in_order_with_unset_values() {
        let before = Config::default();
        let mut after = before.clone();
        after.optim.lr = 1e-4;
        after.diffusion.min_snr_gamma = Some(5.0);
        after.train.steps = 10;
        let shown: Vec<String> = changes(&before, &after)
            .unwrap()
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(
            shown,
            [
                "optim.lr: 0.0002 -> 0.0001",
                "train.steps: 800000 -> 10",
                "diffusion.min_snr_gamma: (unset) -> 5.0",
            ]
        );
        assert!(changes(&after, &after).unwrap().is_empty());
        let back = changes(&after, &before).unwrap();
        assert_eq!(
            back[0].to_string(),
            "diffusion.min_snr_gamma: 5.0 -> (unset)"
        );
        let locked_keys: Vec<&str> = back
            .iter()
            .map(|c| c.key.as_str())
            .filter(|k| locked(k))
            .collect();
        assert_eq!(locked_keys, ["diffusion.min_snr_gamma"]);
        // A derived default and its value written out are the same config.
        let mut explicit = Config::default();
        explicit.resolve();
        assert_eq!(explicit.model.attention_resolutions, Some(vec![4]));
        assert!(changes(&Config::default(), &explicit).unwrap().is_empty());
    }
}
