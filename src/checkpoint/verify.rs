//! What makes a loaded checkpoint trustworthy: the checksum `save` writes into its metadata
//! (`digest`) and `load` checks, and the refusal of NaN or infinite values, which would turn
//! every sample into NaN and every resumed step into more of them.

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use super::META_CHECKSUM;
use crate::error::{Error, Result};

/// The checksum's algorithm, as its value starts.
const CHECKSUM_PREFIX: &str = "crc32:";

/// `crc32:` and the checksum as 8 lower-case hex digits.
pub(super) fn checksum_text(sum: u32) -> String {
    format!("{CHECKSUM_PREFIX}{sum:08x}")
}

/// The checksum of a checkpoint: CRC-32 over, for each tensor in name order, its name, dtype,
/// shape and bytes, then each metadata key and value in key order but the checksum's own, every
/// string and list preceded by its length (u64, little-endian) so that no two different files
/// feed it the same bytes. A flipped bit anywhere in the data, two tensors' offsets swapped, or
/// an edited config changes it. CRC-32 finds random corruption (all bursts up to 32 bits, other
/// damage but for one time in 2^32); it is not a signature against deliberate forgery.
pub(super) fn digest(st: &SafeTensors, metadata: &BTreeMap<String, String>) -> u32 {
    let mut h = crc32fast::Hasher::new();
    let mut put = |bytes: &[u8]| {
        h.update(&(bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    let mut tensors = st.tensors();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, view) in &tensors {
        put(name.as_bytes());
        // Its name in the file format (`F32`, `BF16`, ...).
        put(view.dtype().to_string().as_bytes());
        let shape: Vec<u8> = view
            .shape()
            .iter()
            .flat_map(|&d| (d as u64).to_le_bytes())
            .collect();
        put(&shape);
        put(view.data());
    }
    for (k, v) in metadata.iter().filter(|(k, _)| *k != META_CHECKSUM) {
        put(k.as_bytes());
        put(v.as_bytes());
    }
    h.finalize()
}

/// Check the checksum stored in `metadata` (and remove it from there) against the file's
/// contents: Ok(true) when it matches, Ok(false) when there is none (a file written before
/// checksums), an error naming `path` when it does not match.
pub(super) fn checksum(
    path: &Path,
    st: &SafeTensors,
    metadata: &mut BTreeMap<String, String>,
) -> Result<bool> {
    let Some(stored) = metadata.remove(META_CHECKSUM) else {
        return Ok(false);
    };
    if !stored.starts_with(CHECKSUM_PREFIX) {
        return Err(Error::checkpoint(
            path,
            format!("checksum `{stored}` is not of the form {CHECKSUM_PREFIX}XXXXXXXX"),
        ));
    }
    let sum = checksum_text(digest(st, metadata));
    if stored != sum {
        return Err(Error::checkpoint(
            path,
            format!(
                "checksum mismatch (stored {stored}, contents {sum}): the file was damaged or edited after it was written"
            ),
        ));
    }
    Ok(true)
}

/// An error naming `path` and the tensor `name` when it holds a NaN or an infinity.
pub(super) fn finite(path: &Path, name: &str, view: &TensorView) -> Result<()> {
    match first_non_finite(view) {
        None => Ok(()),
        Some(i) => Err(Error::checkpoint(
            path,
            format!(
                "tensor `{name}` holds a NaN or infinite value (element {i}); the run had diverged when this was saved"
            ),
        )),
    }
}

/// The index of the first NaN or infinity of a floating-point tensor (all exponent bits set),
/// read from its little-endian bytes.
fn first_non_finite(view: &TensorView) -> Option<usize> {
    let data = view.data();
    match view.dtype() {
        Dtype::F64 => data.chunks_exact(8).position(|b| {
            let v = u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
            v & 0x7ff0_0000_0000_0000 == 0x7ff0_0000_0000_0000
        }),
        Dtype::F32 => data.chunks_exact(4).position(|b| {
            u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & 0x7f80_0000 == 0x7f80_0000
        }),
        Dtype::F16 => data
            .chunks_exact(2)
            .position(|b| u16::from_le_bytes([b[0], b[1]]) & 0x7c00 == 0x7c00),
        Dtype::BF16 => data
            .chunks_exact(2)
            .position(|b| u16::from_le_bytes([b[0], b[1]]) & 0x7f80 == 0x7f80),
        _ => None,
    }
}
