//! Checkpoint files: one safetensors file holds everything a run needs to resume bit-for-bit
//! (model weights `model.<name>`, EMA `ema.<name>`, optimizer moments `optim.*`) plus metadata
//! strings (`format`, `step`, `seed`, the resolved config as TOML under `config`, and a
//! `checksum` of all the rest that loading verifies). Loading also refuses NaN or infinite
//! values. Writes are atomic (temp file, fsync, rename, fsync of the directory), so a crash
//! leaves the old file or the new one, never a torn one. This module says what a checkpoint
//! holds (the tensor prefixes, the metadata keys, the stored config), below both the trainer
//! that writes one and the generator that reads one, and moves named tensors in and out of
//! files and VarMaps; which checkpoints a run directory keeps is `run_dir`'s.

pub mod run_dir;
mod verify;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::safetensors::Load;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use safetensors::{SafeTensorError, SafeTensors};

use crate::atomic;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::limits;
use crate::named::{expect_tensor, named_vars, reject_unknown};

/// The format this version writes and reads; bump it when the layout of keys changes.
pub const FORMAT: &str = "ddpm-1";
/// Metadata key of the format version.
pub const META_FORMAT: &str = "format";
/// Metadata key of the resolved config (TOML text); every checkpoint has one.
pub const META_CONFIG: &str = "config";
/// Metadata key of the number of optimizer steps taken.
pub const META_STEP: &str = "step";
/// Metadata key of the run's seed.
pub const META_SEED: &str = "seed";
/// Metadata key of vector data's standardisation (`points::Standardization`, JSON).
pub const META_STANDARDIZATION: &str = "standardization";
/// Metadata key of the class names in label order (a JSON list of strings), stored when the
/// training data had labels: an image folder's subfolder names, the digits' "0".."9".
pub const META_CLASS_NAMES: &str = "class_names";
/// Metadata key of the checksum of everything else in the file (`digest`), `crc32:` and 8 hex
/// digits. Files written before it existed load unverified.
pub const META_CHECKSUM: &str = "checksum";
/// Prefix of the raw weights in a checkpoint.
pub const MODEL_PREFIX: &str = "model.";
/// Prefix of the EMA weights in a checkpoint.
pub const EMA_PREFIX: &str = "ema.";

/// The metadata value of `names` for `META_CLASS_NAMES`.
pub fn class_names_meta(names: &[String]) -> Result<String> {
    serde_json::to_string(names)
        .map_err(|e| Error::Invalid(format!("cannot store the class names: {e}")))
}

/// A checkpoint read back from disk: tensors on the CPU in their stored dtype, and metadata.
#[derive(Debug)]
pub struct Checkpoint {
    /// Where it was read from (for error messages).
    pub path: PathBuf,
    pub tensors: BTreeMap<String, Tensor>,
    /// The metadata strings, less the checksum (which `load` has checked).
    pub metadata: BTreeMap<String, String>,
    /// False for a file written before checksums: it loaded, but nothing vouches for it.
    pub verified: bool,
}

impl Checkpoint {
    /// A metadata value; the error names the file and the key.
    pub fn meta(&self, key: &str) -> Result<&str> {
        self.metadata
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| Error::checkpoint(&self.path, format!("no `{key}` in its metadata")))
    }

    /// The resolved config (TOML text); `load` guarantees it is present.
    pub fn config(&self) -> Result<&str> {
        self.meta(META_CONFIG)
    }

    /// A one-line notice for the user when the file could not be verified (the library never
    /// prints; the binary shows it).
    pub fn notice(&self) -> Option<String> {
        (!self.verified).then(|| {
            format!(
                "checkpoint {} has no checksum (written by an older ddpm); its weights are used unverified",
                self.path.display()
            )
        })
    }

    /// The config the checkpoint was trained with, validated like a config file (so a forged
    /// or edited one cannot size anything past the limits) but for the data's path, which an
    /// imported model's config lacks (`Config::validate_stored`); errors name its file.
    pub fn stored_config(&self) -> Result<Config> {
        let cfg = Config::from_toml(self.config()?, "its stored config")
            .map_err(|e| Error::checkpoint(&self.path, e.to_string()))?;
        cfg.validate_stored()
            .map_err(|e| Error::checkpoint(&self.path, format!("its stored config: {e}")))?;
        Ok(cfg)
    }

    /// The class names in label order; None when the checkpoint stores none (an unconditional
    /// model, or one written before names were stored).
    pub fn class_names(&self) -> Result<Option<Vec<String>>> {
        self.metadata
            .get(META_CLASS_NAMES)
            .map(|text| {
                serde_json::from_str(text).map_err(|e| {
                    Error::checkpoint(
                        &self.path,
                        format!("metadata `{META_CLASS_NAMES}` is not a list of names: {e}"),
                    )
                })
            })
            .transpose()
    }

    /// The weights under `prefix` (`MODEL_PREFIX` or `EMA_PREFIX`) with the prefix removed.
    pub fn weights_with_prefix(&self, prefix: &str) -> HashMap<String, Tensor> {
        self.tensors
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(prefix).map(|n| (n.to_string(), v.clone())))
            .collect()
    }

    /// The step count recorded in the metadata.
    pub fn step(&self) -> Result<u64> {
        let s = self.meta(META_STEP)?;
        s.parse().map_err(|_| {
            Error::checkpoint(
                &self.path,
                format!("metadata `step` = {s:?} is not a step count"),
            )
        })
    }
}

/// Write `tensors` and `metadata` to `path` atomically, adding `format` = FORMAT. Tensors may
/// live on any device (they are copied to the CPU). `metadata` must hold `config`. The file is
/// assembled in memory first, so saving briefly needs about its size in RAM.
pub fn save(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let bytes = encode(path, tensors, metadata)?;
    write_atomic(path, &bytes)
}

/// The bytes of a checkpoint file (what `save` writes); errors name `path`.
fn encode(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>> {
    if !metadata.contains_key(META_CONFIG) {
        return Err(Error::checkpoint(
            path,
            "refusing to save without `config` metadata",
        ));
    }
    if let Some(f) = metadata.get(META_FORMAT).filter(|f| *f != FORMAT) {
        return Err(Error::checkpoint(
            path,
            format!("cannot save as format `{f}`; this version writes `{FORMAT}`"),
        ));
    }
    let mut meta: HashMap<String, String> = metadata.clone().into_iter().collect();
    meta.insert(META_FORMAT.into(), FORMAT.into());
    // A placeholder of the checksum's length, so that filling it in keeps every offset.
    meta.insert(META_CHECKSUM.into(), verify::checksum_text(0));
    let bytes = encode_raw(path, tensors, meta)?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::checkpoint(path, format!("cannot serialise: {e}")))?;
    let mut written = metadata.clone();
    written.insert(META_FORMAT.into(), FORMAT.into());
    let sum = verify::digest(&st, &written);
    sorted_header(bytes, Some(&verify::checksum_text(sum)))
        .map_err(|e| Error::checkpoint(path, format!("cannot serialise: {e}")))
}

/// Serialise without checking the metadata (tests use it to forge other formats).
fn encode_raw(
    path: &Path,
    tensors: &[(String, Tensor)],
    meta: HashMap<String, String>,
) -> Result<Vec<u8>> {
    let mut seen = BTreeSet::new();
    let mut cpu = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        if !seen.insert(name.as_str()) {
            return Err(Error::checkpoint(
                path,
                format!("tensor `{name}` is given twice"),
            ));
        }
        // candle's byte view unwraps internally; these dtypes have no bytes to give.
        if matches!(
            t.dtype(),
            DType::F6E2M3 | DType::F6E3M2 | DType::F4 | DType::F8E8M0
        ) {
            return Err(Error::checkpoint(
                path,
                format!("tensor `{name}` has unsupported dtype {:?}", t.dtype()),
            ));
        }
        cpu.push((name.clone(), t.to_device(&Device::Cpu)?.contiguous()?));
    }
    let bytes = safetensors::serialize(cpu, Some(meta))
        .map_err(|e| Error::checkpoint(path, format!("cannot serialise: {e}")))?;
    sorted_header(bytes, None)
        .map_err(|e| Error::checkpoint(path, format!("cannot serialise: {e}")))
}

/// The same file with its JSON header's keys in sorted order. safetensors writes
/// `__metadata__` in `HashMap` order, which changes from one process to the next, so two runs
/// with the same config and seed wrote the same tensors under headers that differed in their
/// bytes. Sorting keeps every entry and the compact JSON's length, so the header (8-byte
/// little-endian length n, then n bytes of JSON padded with spaces) keeps its length n and the
/// tensor data its offsets; readers do not care about key order. `checksum`, when given,
/// replaces the metadata's placeholder of the same length.
fn sorted_header(
    mut bytes: Vec<u8>,
    checksum: Option<&str>,
) -> std::result::Result<Vec<u8>, String> {
    use serde_json::Value;
    let n = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
        .filter(|&n| bytes.len() >= 8 + n)
        .ok_or("header length out of range")?;
    let header = &bytes[8..8 + n];
    let mut top: BTreeMap<String, Value> =
        serde_json::from_slice(header).map_err(|e| format!("header is not JSON: {e}"))?;
    if let Some(meta) = top.get_mut("__metadata__") {
        // Through a BTreeMap: `Value`'s own map keeps insertion order when serde_json's
        // `preserve_order` feature is on somewhere in the dependency tree.
        let mut sorted: BTreeMap<String, String> =
            serde_json::from_value(meta.take()).map_err(|e| format!("metadata: {e}"))?;
        if let Some(sum) = checksum {
            sorted.insert(META_CHECKSUM.into(), sum.into());
        }
        *meta = serde_json::to_value(sorted).map_err(|e| format!("metadata: {e}"))?;
    }
    let json = serde_json::to_vec(&top).map_err(|e| e.to_string())?;
    if json.len() > n {
        return Err(format!(
            "sorted header is {} bytes, longer than the {n} written",
            json.len()
        ));
    }
    bytes[8..8 + json.len()].copy_from_slice(&json);
    bytes[8 + json.len()..8 + n].fill(b' ');
    Ok(bytes)
}

/// Replace `path` by `bytes` atomically (see `atomic::write`), as a checkpoint error.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    atomic::write(path, bytes).map_err(|e| match e {
        Error::Io { source, .. } => Error::checkpoint(path, format!("cannot save: {source}")),
        other => other,
    })
}

/// Read a checkpoint. Each way a file can be unusable (missing, empty, truncated, not
/// safetensors, another format, no config) is a one-line error naming the path.
pub fn load(path: &Path) -> Result<Checkpoint> {
    // The file's bytes and the tensors copied out of them are both in memory for a moment.
    let bytes = limits::read_within_memory(path, 2).map_err(|e| {
        let msg = if e.kind() == std::io::ErrorKind::NotFound {
            "not found".to_string()
        } else {
            format!("cannot read: {e}")
        };
        Error::checkpoint(path, msg)
    })?;
    let unreadable = |e: SafeTensorError| Error::checkpoint(path, describe(&e, &bytes));
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(unreadable)?;
    let mut metadata: BTreeMap<String, String> = header
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    match metadata.get(META_FORMAT) {
        None => {
            return Err(Error::checkpoint(
                path,
                format!("no `format` in its metadata; not a ddpm checkpoint (expected `{FORMAT}`)"),
            ))
        }
        Some(f) if f != FORMAT => {
            return Err(Error::checkpoint(
                path,
                format!("format is `{f}`, but this version reads `{FORMAT}`"),
            ))
        }
        Some(_) => {}
    }
    if !metadata.contains_key(META_CONFIG) {
        return Err(Error::checkpoint(path, "no `config` in its metadata"));
    }
    let st = SafeTensors::deserialize(&bytes).map_err(unreadable)?;
    let verified = verify::checksum(path, &st, &mut metadata)?;
    let mut tensors = BTreeMap::new();
    for (name, view) in st.tensors() {
        verify::finite(path, &name, &view)?;
        let t = view
            .load(&Device::Cpu)
            .map_err(|e| Error::checkpoint(path, format!("tensor `{name}`: {e}")))?;
        tensors.insert(name, t);
    }
    Ok(Checkpoint {
        path: path.to_path_buf(),
        tensors,
        metadata,
        verified,
    })
}

/// Why safetensors rejected `bytes`, in words: a safetensors header is JSON starting at byte 8,
/// so a '{' there with too few bytes after it means a cut file rather than a foreign one.
fn describe(e: &SafeTensorError, bytes: &[u8]) -> String {
    let cut = bytes.get(8) == Some(&b'{');
    match e {
        _ if bytes.is_empty() => "empty file (0 bytes); not a checkpoint".into(),
        SafeTensorError::InvalidHeaderLength | SafeTensorError::MetadataIncompleteBuffer if cut => {
            format!("truncated ({} bytes, fewer than its header describes); the write or copy was cut short", bytes.len())
        }
        _ => format!("not a safetensors file ({e})"),
    }
}

/// Set every variable `name` of `varmap` to `tensors[prefix + name]` (converted to the
/// variable's dtype and device). All keys are checked before any variable changes: the error
/// names the first missing or mis-shaped key, or a key under `prefix` the model lacks.
pub fn load_into(varmap: &VarMap, tensors: &BTreeMap<String, Tensor>, prefix: &str) -> Result<()> {
    let vars = named_vars(varmap)?;
    let mut values = Vec::with_capacity(vars.len());
    for (name, var) in &vars {
        let t = expect_tensor(
            tensors,
            &format!("{prefix}{name}"),
            var.dims(),
            "checkpoint",
        )?;
        values.push(t.to_dtype(var.dtype())?.to_device(var.device())?);
    }
    reject_unknown(
        tensors,
        prefix,
        |n| vars.binary_search_by(|(v, _)| v.as_str().cmp(n)).is_ok(),
        "checkpoint",
    )?;
    for ((_, var), t) in vars.iter().zip(values) {
        var.set(&t)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod verify_tests;
