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
