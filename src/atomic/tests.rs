use super::*;

#[cfg(unix)]
use std::os::unix::fs::{symlink, FileTypeExt};

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_regular_file_is_replaced_and_no_temp_file_stays() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.csv");
    write(&p, b"one").unwrap();
    write(&p, b"two").unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"two");
    assert_eq!(names_in(dir.path()), ["x.csv"]);
}

#[test]
fn temp_names_parse_back_to_their_target() {
    let p = Path::new("/r/config.toml");
    let tmp = temp_path(p);
    let name = tmp.file_name().unwrap().to_str().unwrap();
    assert_eq!(temp_target(name), Some("config.toml"));
    assert_eq!(
        temp_target(".ckpt-00000001.safetensors.42.tmp"),
        Some("ckpt-00000001.safetensors")
    );
    for other in [
        "config.toml",
        ".config.toml.tmp",
        ".config.toml.4x2.tmp",
        "..7.tmp",
        "x.1.tmp",
    ] {
        assert_eq!(temp_target(other), None, "{other}");
    }
}

/// A link planted under the temp name (`.x.png.PID.tmp` -> a file of the victim's) must not
/// redirect the write: the temp file is created exclusively, never through a link.
#[cfg(unix)]
#[test]
fn a_link_planted_at_the_temp_name_does_not_redirect_the_write() {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim.txt");
    fs::write(&victim, b"keep me").unwrap();
    let out = dir.path().join("x.png");
    symlink(&victim, temp_path(&out)).unwrap();
    write(&out, b"image").unwrap();
    assert_eq!(fs::read(&victim).unwrap(), b"keep me");
    assert_eq!(fs::read(&out).unwrap(), b"image");
    assert_eq!(names_in(dir.path()), ["victim.txt", "x.png"]);
}

/// A link to a file is written through: the file it names gets the bytes (atomically, by
/// rename next to it) and the link stays a link.
#[cfg(unix)]
#[test]
fn a_link_to_a_file_is_written_through_and_stays_a_link() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("real")).unwrap();
    let file = dir.path().join("real/out.png");
    fs::write(&file, b"old").unwrap();
    let link = dir.path().join("link.png");
    symlink("real/out.png", &link).unwrap();
    write(&link, b"new").unwrap();
    assert!(fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(fs::read(&file).unwrap(), b"new");
    assert_eq!(names_in(&dir.path().join("real")), ["out.png"]);
}

#[cfg(unix)]
#[test]
fn a_dangling_link_and_a_folder_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("link.png");
    symlink("missing/out.png", &link).unwrap();
    let e = write(&link, b"x").unwrap_err().to_string();
    assert!(
        e.contains("link.png") && e.contains("missing/out.png") && e.contains("does not exist"),
        "{e}"
    );
    assert!(fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(!dir.path().join("missing").exists());

    for folder in [dir.path().to_path_buf(), dir.path().join(".")] {
        let e = write(&folder, b"x").unwrap_err().to_string();
        assert!(e.contains("is a folder"), "{e}");
    }
    assert_eq!(names_in(dir.path()), ["link.png"]);
}

/// A FIFO is written into (a reader gets the bytes), not replaced by a plain file.
#[cfg(unix)]
#[test]
fn a_fifo_is_written_into_not_replaced() {
    use rustix::fs::{mknodat, FileType, Mode, CWD};
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe");
    mknodat(CWD, &fifo, FileType::Fifo, Mode::RUSR | Mode::WUSR, 0).unwrap();
    // Opened before the write so the writer finds a reader; non-blocking, so that a write that
    // replaced the FIFO instead fails this test rather than hanging it.
    let mut reader = OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(&fifo)
        .unwrap();
    write(&fifo, b"through the pipe").unwrap();
    let mut got = Vec::new();
    reader.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"through the pipe");
    assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
    assert_eq!(names_in(dir.path()), ["pipe"]);
}

/// A link to a device (as `/dev/stdout` is to the process's output) is written into. The link
/// lives in a temp folder: a write that renames over it must not clobber the real /dev entry.
#[cfg(unix)]
#[test]
fn a_link_to_a_device_is_written_into() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("null");
    symlink("/dev/null", &link).unwrap();
    assert_eq!(target(&link).unwrap(), Target::Stream);
    write(&link, b"discarded").unwrap();
    assert!(fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(fs::metadata("/dev/null")
        .unwrap()
        .file_type()
        .is_char_device());
    assert_eq!(names_in(dir.path()), ["null"]);
}

#[cfg(unix)]
#[test]
fn create_dir_names_what_is_in_the_way() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("out");
    symlink("elsewhere", &link).unwrap();
    for d in [link.clone(), link.join("sub")] {
        let e = create_dir(&d).unwrap_err().to_string();
        assert!(
            e.contains("out: a symbolic link to elsewhere, which does not exist"),
            "{e}"
        );
    }
    let file = dir.path().join("f");
    fs::write(&file, b"").unwrap();
    let e = create_dir(&file).unwrap_err().to_string();
    assert!(e.contains("f: a file, not a folder"), "{e}");

    fs::create_dir(dir.path().join("elsewhere")).unwrap();
    create_dir(&link.join("sub")).unwrap();
    assert!(dir.path().join("elsewhere/sub").is_dir());
}
