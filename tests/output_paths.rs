//! Nothing overwritten: output paths that are links, FIFOs, devices or folders are written
//! through or refused with one line, never replaced by a rename.

mod common;

use std::fs;

use common::{config, run, train_tiny};
use ddpm::checkpoint::run_dir::LATEST;

/// `--out` that is a folder, a dangling link, a link to a file, a FIFO or our own stdout, and
/// `--out-dir` / train `--out` that are dangling links: one clear line, or written through;
/// never "Device or resource busy", never "File exists", never a link replaced by a file.
#[test]
fn output_paths_are_written_through_or_refused_by_name() {
    use std::io::Read;
    use std::os::unix::fs::{symlink, FileTypeExt, OpenOptionsExt};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ckpt = train_tiny(dir, "run", 1, &[]).join(LATEST);
    let ckpt = ckpt.to_str().unwrap();
    let sample = |out_flag: &str, out: &str, code: i32| -> (Vec<u8>, String) {
        run(
            dir,
            &[
                "sample",
                "--checkpoint",
                ckpt,
                "-n",
                "1",
                "--device",
                "cpu",
                "--quiet",
                out_flag,
                out,
            ],
            code,
        )
    };
    symlink("nowhere/x.png", dir.join("dangling.png")).unwrap();
    symlink("nowhere", dir.join("dangling-dir")).unwrap();
    for (flag, out, says) in [
        ("--out", ".", "--out .: is a folder"),
        ("--out", "run", "--out run: is a folder"),
        (
            "--out",
            "dangling.png",
            "--out dangling.png: a symbolic link to nowhere/x.png, which does not exist",
        ),
        (
            "--out-dir",
            "dangling-dir",
            "dangling-dir: a symbolic link to nowhere, which does not exist",
        ),
    ] {
        let (_, e) = sample(flag, out, 1);
        assert!(
            e.starts_with("ddpm: ") && e.contains(says),
            "{flag} {out}: {e}"
        );
        assert_eq!(e.trim_end().lines().count(), 1, "{e}");
    }
    let tiny = config("tiny.toml");
    let (_, e) = run(
        dir,
        &[
            "train",
            "--config",
            tiny.to_str().unwrap(),
            "--out",
            "dangling-dir",
            "--device",
            "cpu",
            "--quiet",
        ],
        1,
    );
    assert!(
        e.contains("dangling-dir: a symbolic link to nowhere"),
        "{e}"
    );
    assert!(!dir.join("nowhere").exists());
    assert!(fs::symlink_metadata(dir.join("dangling.png"))
        .unwrap()
        .file_type()
        .is_symlink());

    // A link to a file: the file gets the PNG, the link stays.
    fs::write(dir.join("real.png"), b"old").unwrap();
    symlink("real.png", dir.join("link.png")).unwrap();
    let (stdout, _) = sample("--out", "link.png", 0);
    assert_eq!(String::from_utf8(stdout).unwrap(), "link.png\n");
    assert!(fs::symlink_metadata(dir.join("link.png"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(fs::read(dir.join("real.png"))
        .unwrap()
        .starts_with(b"\x89PNG"));

    // A FIFO: the reader gets the PNG, and the FIFO stays one. The reader opens it first
    // (non-blocking, so that a FIFO replaced by a file fails the test instead of hanging it).
    let fifo = dir.join("pipe");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
        0,
    )
    .unwrap();
    let mut reader = fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(&fifo)
        .unwrap();
    sample("--out", "pipe", 0);
    let mut png = Vec::new();
    reader.read_to_end(&mut png).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "{png:?}");
    assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());

    // A link to our own stdout (as /dev/stdout is; this one lives in the temp folder so that a
    // broken build cannot replace the system's): the PNG goes down the pipe, and no path
    // follows it there.
    symlink("/proc/self/fd/1", dir.join("stdout")).unwrap();
    let (stdout, _) = sample("--out", "stdout", 0);
    assert!(stdout.starts_with(b"\x89PNG") && stdout.ends_with(b"IEND\xae\x42\x60\x82"));
    assert!(fs::symlink_metadata(dir.join("stdout"))
        .unwrap()
        .file_type()
        .is_symlink());
}
