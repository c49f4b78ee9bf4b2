//! What one rank of a data-parallel run (`crate::dist`) needs beyond the single-process loop:
//! every rank starts from rank 0's state, so a run resumed from rank 0's run directory (which
//! the other machines need not see) or started fresh is the same everywhere. The step's
//! exchange of gradients is in `step`; the loop's stop agreement is `dist::any`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};

use crate::checkpoint::{Checkpoint, META_STEP};
use crate::config::Config;
use crate::dist::Comm;
use crate::error::{Error, Result};

use super::state::TrainState;

/// `state` replaced by rank 0's: its weights, EMA, optimizer moments and step, broadcast as the
/// bytes of the checkpoint's tensors (the names, shapes and dtypes are the same on every rank,
/// since the config is). One process, or a world of one: `state` as it is.
pub fn sync_state(
    world: &dyn Comm,
    cfg: &Config,
    device: &Device,
    state: TrainState,
) -> Result<TrainState> {
    if world.size() == 1 {
        return Ok(state);
    }
    let (tensors, _) = state.checkpoint_contents(cfg)?;
    let mut bytes = Vec::new();
    if world.rank() == 0 {
        bytes.extend_from_slice(&state.step.to_le_bytes());
        for (_, t) in &tensors {
            bytes.extend(raw_bytes(t)?);
        }
    }
    let bytes = world.broadcast_bytes(bytes, 0)?;
    if world.rank() == 0 {
        return Ok(state);
    }
    let from = || {
        Error::Invalid(format!(
            "rank {}: rank 0 sent a state that does not fit this model",
            world.rank()
        ))
    };
    let step = u64::from_le_bytes(
        bytes
            .get(..8)
            .ok_or_else(from)?
            .try_into()
            .map_err(|_| from())?,
    );
    let mut at = 8;
    let mut received = BTreeMap::new();
    for (name, t) in tensors {
        let n = t.elem_count() * t.dtype().size_in_bytes();
        let raw = bytes.get(at..at + n).ok_or_else(from)?;
        received.insert(
            name,
            Tensor::from_raw_buffer(raw, t.dtype(), t.dims(), &Device::Cpu)?,
        );
        at += n;
    }
    if at != bytes.len() {
        return Err(from());
    }
    let ckpt = Checkpoint {
        path: PathBuf::from("rank 0's state"),
        tensors: received,
        metadata: BTreeMap::from([(META_STEP.to_string(), step.to_string())]),
        // Not a file: rank 0's state in memory, which rank 0 verified when it loaded it.
        verified: true,
    };
    TrainState::restore(cfg, device, &ckpt, &ckpt.path)
}

/// A tensor's values as little-endian bytes (f32 and i64, the dtypes of a training state).
fn raw_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let t = t.to_device(&Device::Cpu)?.flatten_all()?;
    Ok(match t.dtype() {
        DType::F32 => t
            .to_vec1::<f32>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::I64 => t
            .to_vec1::<i64>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        other => {
            return Err(Error::Invalid(format!(
                "a training state tensor of dtype {other:?} cannot be sent"
            )))
        }
    })
}
