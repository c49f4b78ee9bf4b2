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
mod tests {
    use super::super::tests::{cpu, meta, names_in};
    use super::*;

    #[test]
    fn names_round_trip_and_only_canonical_names_parse() {
        assert_eq!(ckpt_name(1234), "ckpt-00001234.safetensors");
        assert_eq!(ckpt_name(123_456_789), "ckpt-123456789.safetensors");
        for s in [0, 7, 99_999_999, 100_000_000, u64::MAX] {
            assert_eq!(parse_ckpt_name(&ckpt_name(s)), Some(s));
        }
        for bad in [
            "ckpt-1.safetensors",
            "ckpt-0000000a.safetensors",
            "ckpt-+0000001.safetensors",
            "ckpt-00000001.safetensors.tmp",
            ".ckpt-00000001.safetensors.42.tmp",
            "ckpt-00000001.pt",
            LATEST,
        ] {
            assert_eq!(parse_ckpt_name(bad), None, "{bad}");
        }
        assert!(is_temp_name(".ckpt-00000001.safetensors.42.tmp"));
        assert!(is_temp_name(".latest.safetensors.7.tmp"));
        assert!(!is_temp_name(".notes.txt.7.tmp"));
        assert!(!is_temp_name(".ckpt-00000001.safetensors.tmp"));
    }

    #[test]
    fn to_delete_keeps_the_last_k_and_never_the_newest() {
        assert_eq!(to_delete(&[], 3), Vec::<u64>::new());
        assert_eq!(
            to_delete(&[500, 100, 300, 200, 400], 2),
            vec![100, 200, 300]
        );
        assert_eq!(to_delete(&[100, 200], 5), Vec::<u64>::new());
        assert_eq!(to_delete(&[100, 200, 300], 0), vec![100, 200]);
        assert_eq!(to_delete(&[300], 0), Vec::<u64>::new());
        assert_eq!(to_delete(&[200, 100, 200, 300], 1), vec![100, 200]);
    }

    #[test]
    fn run_dir_keeps_the_last_k_and_latest_is_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        for step in [100u64, 200, 300, 400, 500] {
            let t = vec![(
                "model.w".to_string(),
                Tensor::new(&[step as f32], &cpu()).unwrap(),
            )];
            save_step(dir.path(), step, &t, &meta("c"), 2).unwrap();
        }
        assert_eq!(list_checkpoints(dir.path()).unwrap(), vec![400, 500]);
        assert_eq!(
            names_in(dir.path()),
            vec![
                "ckpt-00000400.safetensors",
                "ckpt-00000500.safetensors",
                LATEST
            ]
        );
        let latest = load(&dir.path().join(LATEST)).unwrap();
        assert_eq!(latest.step().unwrap(), 500);
        assert_eq!(
            latest.tensors["model.w"].to_vec1::<f32>().unwrap(),
            vec![500.]
        );
        assert_eq!(
            newest_path(dir.path()),
            dir.path().join("ckpt-00000500.safetensors")
        );

        // `latest` survives the deletion of the file it was linked from.
        let t = vec![(
            "model.w".to_string(),
            Tensor::new(&[600f32], &cpu()).unwrap(),
        )];
        save_step(dir.path(), 600, &t, &meta("c"), 0).unwrap();
        assert_eq!(list_checkpoints(dir.path()).unwrap(), vec![600]);
        assert_eq!(load(&dir.path().join(LATEST)).unwrap().step().unwrap(), 600);
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            let ino = |name: &str| fs::metadata(dir.path().join(name)).unwrap().ino();
            assert_eq!(
                ino(LATEST),
                ino("ckpt-00000600.safetensors"),
                "latest is a hard link"
            );
        }
        fs::remove_file(dir.path().join("ckpt-00000600.safetensors")).unwrap();
        assert_eq!(load(&dir.path().join(LATEST)).unwrap().step().unwrap(), 600);
        assert_eq!(newest_path(dir.path()), dir.path().join(LATEST));

        let mut wrong = meta("c");
        wrong.insert(META_STEP.into(), "7".into());
        let e = save_step(dir.path(), 700, &t, &wrong, 2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("step 7") && e.contains("700"), "{e}");
    }

    /// The path of `load_newest`'s checkpoint, when it passed over nothing.
    fn newest_path(dir: &Path) -> PathBuf {
        let (ckpt, passed_over) = load_newest(dir).unwrap().unwrap();
        assert!(passed_over.is_empty(), "{passed_over:?}");
        ckpt.path
    }

    fn weights(step: u64) -> Vec<(String, Tensor)> {
        vec![(
            "model.w".to_string(),
            Tensor::new(&[step as f32], &cpu()).unwrap(),
        )]
    }

    /// The file of a save that crashed after writing `ckpt-N` but before linking `latest`: the
    /// first save leaves no `latest` at all, a later one a `latest` one save behind.
    fn write_unlinked(dir: &Path, step: u64) -> PathBuf {
        let path = dir.join(ckpt_name(step));
        let mut m = meta("c");
        m.insert(META_STEP.into(), step.to_string());
        super::super::save(&path, &weights(step), &m).unwrap();
        path
    }

    #[test]
    fn resume_takes_the_newest_checkpoint_that_loads() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let first = write_unlinked(d, 1);
        assert!(!d.join(LATEST).exists());
        assert_eq!(newest_path(d), first);

        save_step(d, 1, &weights(1), &meta("c"), 5).unwrap();
        save_step(d, 2, &weights(2), &meta("c"), 5).unwrap();
        let third = write_unlinked(d, 3);
        assert_eq!(load(&d.join(LATEST)).unwrap().step().unwrap(), 2);
        assert_eq!(newest_path(d), third);

        // A damaged newest file (cut short) is passed over, and said so.
        let bytes = fs::read(&third).unwrap();
        fs::write(&third, &bytes[..bytes.len() / 2]).unwrap();
        let (ckpt, passed_over) = load_newest(d).unwrap().unwrap();
        assert_eq!(ckpt.step().unwrap(), 2);
        assert_eq!(ckpt.path, d.join(ckpt_name(2)));
        assert_eq!(passed_over.len(), 1);
        assert!(
            passed_over[0].to_string().contains("ckpt-00000003"),
            "{passed_over:?}"
        );

        // Resuming from it points `latest` at it (here it already was), and at a newer
        // complete file that a crash left unlinked.
        link_latest(d, &ckpt.path).unwrap();
        assert_eq!(load(&d.join(LATEST)).unwrap().step().unwrap(), 2);
        let fourth = write_unlinked(d, 4);
        link_latest(d, &fourth).unwrap();
        assert_eq!(load(&d.join(LATEST)).unwrap().step().unwrap(), 4);
        assert!(same_file(&fourth, &d.join(LATEST)));
        fs::remove_file(&fourth).unwrap();

        // Nothing loads: one error naming the folder and the newest file's fault.
        for s in [1, 2] {
            fs::write(d.join(ckpt_name(s)), b"").unwrap();
        }
        fs::write(d.join(LATEST), b"").unwrap();
        let e = load_newest(d).unwrap_err().to_string();
        assert!(
            e.contains("none of the 4 checkpoints") && e.contains("ckpt-00000003"),
            "{e}"
        );
    }

    #[test]
    fn lister_ignores_temp_and_unrelated_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert!(load_newest(d).unwrap().is_none());
        for name in [
            "ckpt-00000100.safetensors",
            "ckpt-00000300.safetensors",
            ".ckpt-00000400.safetensors.12345.tmp",
            ".latest.safetensors.12345.tmp",
            "ckpt-5.safetensors",
            "ckpt-00000500.safetensors.bak",
            "notes.txt",
            LATEST,
        ] {
            fs::write(d.join(name), b"x").unwrap();
        }
        fs::create_dir(d.join("ckpt-00000900.safetensors")).unwrap();
        assert_eq!(list_checkpoints(d).unwrap(), vec![100, 300]);

        let removed = remove_stale_temps(d).unwrap();
        assert_eq!(
            removed,
            vec![
                d.join(".ckpt-00000400.safetensors.12345.tmp"),
                d.join(".latest.safetensors.12345.tmp")
            ]
        );
        assert!(d.join("notes.txt").exists() && d.join("ckpt-5.safetensors").exists());
        assert!(list_checkpoints(&d.join("missing")).is_err());
    }
}
