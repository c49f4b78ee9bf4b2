//! The checkpoints of a run directory: `ckpt-{step:08}.safetensors` per saved step, and
//! `latest.safetensors`, the newest of them under a fixed name (for `sample` and for humans).
//! Which steps to keep is pure logic (`to_delete`), apart from the file system calls.
//!
//! `latest` is a hard link to the newest `ckpt-*` file, made under a temp name and renamed over
//! the old `latest`: the rename is atomic, the link costs neither disk space nor a second write
//! of a file that may be gigabytes, and pruning `ckpt-N` later leaves `latest` intact (the data
//! lives as long as one name does). Files here are never modified in place, only replaced by
//! rename, so the two names can never disagree. Where hard links are unsupported (some network
//! or FAT file systems), `latest` is written as a second atomic copy instead.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use candle_core::Tensor;

use super::{encode, load, write_atomic, Checkpoint, META_STEP};
use crate::atomic::{sync_dir, temp_path, temp_target};
use crate::error::{Error, Result};
use crate::fault;

/// The fixed name of the newest checkpoint.
pub const LATEST: &str = "latest.safetensors";

/// The file name of the checkpoint at `step`: `ckpt-00012345.safetensors`.
pub fn ckpt_name(step: u64) -> String {
    format!("ckpt-{step:08}.safetensors")
}

/// The step of a checkpoint file name, or None for any other name (temp files included).
/// Only the canonical spelling counts, so `ckpt-1.safetensors` is not ours.
pub fn parse_ckpt_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("ckpt-")?.strip_suffix(".safetensors")?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let step: u64 = digits.parse().ok()?;
    (ckpt_name(step) == name).then_some(step)
}

/// The steps of the checkpoints in `dir`, ascending; other files and directories are ignored.
pub fn list_checkpoints(dir: &Path) -> Result<Vec<u64>> {
    let entries = fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut steps = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let is_file = entry
            .file_type()
            .map_err(|e| Error::io(entry.path(), e))?
            .is_file();
        if let Some(step) = entry.file_name().to_str().and_then(parse_ckpt_name) {
            if is_file {
                steps.push(step);
            }
        }
    }
    steps.sort_unstable();
    Ok(steps)
}

/// Which of `existing_steps` to delete so that the `keep_last` newest remain; the newest is
/// always kept, even with `keep_last` = 0. Ascending, without duplicates.
pub fn to_delete(existing_steps: &[u64], keep_last: usize) -> Vec<u64> {
    let mut steps = existing_steps.to_vec();
    steps.sort_unstable();
    steps.dedup();
    let keep = keep_last.max(1).min(steps.len());
    steps.truncate(steps.len() - keep);
    steps
}

/// The newest checkpoint in `dir` that loads (through `checkpoint::load`, so with every check it
/// makes), trying the `ckpt-*` files newest first and `latest` last: a crash between writing
/// `ckpt-N` and linking `latest` leaves `latest` one save behind (or missing, at the first
/// save), and a damaged file is passed over. Returns it with the errors of the newer files
/// passed over; None when `dir` holds no checkpoint at all; an error when none of them loads.
pub fn load_newest(dir: &Path) -> Result<Option<(Checkpoint, Vec<Error>)>> {
    let mut candidates: Vec<PathBuf> = list_checkpoints(dir)?
        .iter()
        .rev()
        .map(|s| dir.join(ckpt_name(*s)))
        .collect();
    let latest = dir.join(LATEST);
    if latest.is_file() {
        candidates.push(latest);
    }
    let mut passed_over = Vec::new();
    for path in &candidates {
        match load(path) {
            Ok(ckpt) => return Ok(Some((ckpt, passed_over))),
            Err(e) => passed_over.push(e),
        }
    }
    match passed_over.len() {
        0 => Ok(None),
        1 => Err(passed_over.remove(0)),
        n => Err(Error::Invalid(format!(
            "none of the {n} checkpoints in {} loads; the newest: {}",
            dir.display(),
            passed_over[0]
        ))),
    }
}

/// Save the checkpoint of `step` into `dir`: write `ckpt-{step}` atomically, point `latest` at
/// it, then delete all but the `keep_last` newest checkpoints. `metadata` gets `step` (a
/// different `step` there is an error) and must hold `config`. Returns the new file's path.
pub fn save_step(
    dir: &Path,
    step: u64,
    tensors: &[(String, Tensor)],
    metadata: &BTreeMap<String, String>,
    keep_last: usize,
) -> Result<PathBuf> {
    let path = dir.join(ckpt_name(step));
    let mut metadata = metadata.clone();
    let recorded = metadata
        .entry(META_STEP.into())
        .or_insert_with(|| step.to_string());
    if *recorded != step.to_string() {
        return Err(Error::checkpoint(
            &path,
            format!("metadata says step {recorded} but it is saved as step {step}"),
        ));
    }
    let bytes = encode(&path, tensors, &metadata)?;
    write_atomic(&path, &bytes)?;
    publish_latest(dir, &path)?;
    for old in to_delete(&list_checkpoints(dir)?, keep_last) {
        let p = dir.join(ckpt_name(old));
        fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
        fault::point();
    }
    Ok(path)
}

/// Make `latest` name `ckpt` (a checkpoint in `dir`) unless it already does. A resume calls
/// it for the checkpoint it continues from, finishing a save that a crash cut short before it
/// linked `latest`, or moving `latest` off a damaged file.
pub fn link_latest(dir: &Path, ckpt: &Path) -> Result<()> {
    let latest = dir.join(LATEST);
    if ckpt == latest || same_file(ckpt, &latest) {
        return Ok(());
    }
    publish_latest(dir, ckpt)
}

#[cfg(unix)]
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_: &Path, _: &Path) -> bool {
    false
}

/// Make `latest` name the same file as `ckpt`, atomically.
fn publish_latest(dir: &Path, ckpt: &Path) -> Result<()> {
    let latest = dir.join(LATEST);
    let tmp = temp_path(&latest);
    // A temp name left by a crashed save would make the link fail; it holds nothing of value.
    let _ = fs::remove_file(&tmp);
    if fs::hard_link(ckpt, &tmp).is_err() {
        let bytes = fs::read(ckpt).map_err(|e| Error::io(ckpt, e))?;
        return write_atomic(&latest, &bytes);
    }
    fault::point();
    if let Err(e) = fs::rename(&tmp, &latest) {
        let _ = fs::remove_file(&tmp);
        return Err(Error::checkpoint(&latest, format!("cannot update: {e}")));
    }
    fault::point();
    // POSIX rename is a successful no-op when both names already link to one file; the temp
    // name must not outlive it.
    let _ = fs::remove_file(&tmp);
    sync_dir(&latest)
}

/// Delete temp files that crashed saves left in `dir` (only names our writes use); returns them.
/// Only for a caller that owns `dir` (a training holds its run directory's lock): the temp
/// file of a save in progress looks just the same.
pub fn remove_stale_temps(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if is_temp_name(name) {
            let p = entry.path();
            fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
            removed.push(p);
        }
    }
    removed.sort();
    Ok(removed)
}

/// True for `.ckpt-NNNNNNNN.safetensors.<pid>.tmp` and `.latest.safetensors.<pid>.tmp`.
fn is_temp_name(name: &str) -> bool {
    temp_target(name).is_some_and(|t| t == LATEST || parse_ckpt_name(t).is_some())
}

#[cfg(test)]
mod tests;
