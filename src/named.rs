//! Named variables and tensors, the currency of checkpoints, the optimizer and the EMA: a
//! VarMap's variables in the one order they all use (sorted by name), and checked lookups in a
//! name -> tensor map read back from a file. What the names mean, and which file holds them, is
//! `checkpoint`'s business; this module only keeps the three of them agreeing.

use std::collections::BTreeMap;

use candle_core::{Tensor, Var};
use candle_nn::VarMap;

use crate::error::{Error, Result};

/// The variables of `varmap` sorted by name, the order every consumer here uses.
pub fn named_vars(varmap: &VarMap) -> Result<Vec<(String, Var)>> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| Error::Invalid("the model's VarMap lock is poisoned".into()))?;
    let mut vars: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(vars)
}

/// `vars` sorted by name, or an error naming a parameter listed twice: the optimizer and the
/// EMA both key their state by name, so a duplicate would silently share it.
pub(crate) fn sorted_unique(vars: &[(String, Var)]) -> Result<Vec<(String, Var)>> {
    let mut vars = vars.to_vec();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some(w) = vars.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(Error::Invalid(format!(
            "parameter `{}` is listed twice",
            w[0].0
        )));
    }
    Ok(vars)
}

/// The tensor `key` of `tensors`, checked to have shape `dims`; errors say where it was looked
/// up (`what`: "checkpoint", "optimizer state", ...).
pub(crate) fn expect_tensor<'a>(
    tensors: &'a BTreeMap<String, Tensor>,
    key: &str,
    dims: &[usize],
    what: &str,
) -> Result<&'a Tensor> {
    let t = tensors
        .get(key)
        .ok_or_else(|| Error::Invalid(format!("{what} has no tensor `{key}`")))?;
    if t.dims() != dims {
        return Err(Error::Invalid(format!(
            "`{key}` has shape {:?} in the {what} but the model expects {dims:?}",
            t.dims()
        )));
    }
    Ok(t)
}

/// Error on the first key under `prefix` whose remainder is not `known`: a tensor the model
/// has no place for means the file was written for another architecture.
pub(crate) fn reject_unknown(
    tensors: &BTreeMap<String, Tensor>,
    prefix: &str,
    known: impl Fn(&str) -> bool,
    what: &str,
) -> Result<()> {
    match tensors
        .keys()
        .find(|k| k.strip_prefix(prefix).is_some_and(|rest| !known(rest)))
    {
        Some(key) => Err(Error::Invalid(format!(
            "{what} has `{key}`, which matches no parameter of this model"
        ))),
        None => Ok(()),
    }
}
