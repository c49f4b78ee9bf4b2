//! Atomic file replacement: write a hidden temp file in the same directory, fsync it, rename it
//! over the target, fsync the directory. A crash at any point leaves the old file or the new
//! one, never a torn one. Used for checkpoints, configs, metrics and images alike.
//!
//! The target decides how it is written (`Target`): a regular file or a new name is replaced by
//! rename; a symbolic link is written through (the file it names is replaced, the link stays);
//! a FIFO or a device (`/dev/stdout`, a terminal) is written into, since renaming over it would
//! replace it by a plain file; a folder or a dangling link is refused with a one-line error.
//! The temp file is created with O_CREAT|O_EXCL|O_NOFOLLOW, so a link planted under its name
//! cannot redirect the write.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::fault;

/// How a write to a path is carried out.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    /// Replace this regular file (or create it) by rename; the path a symbolic link resolves to.
    Replace(PathBuf),
    /// Write into the existing FIFO, device or socket in place.
    Stream,
}

/// How a write to `path` would be carried out, or why it cannot be: `path` is a folder, or a
/// symbolic link to nothing (written through, it would create a file somewhere the user did not
/// name; `cp` refuses it too).
pub fn target(path: &Path) -> Result<Target> {
    let meta = match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(Target::Replace(path.to_path_buf()))
        }
        Err(e) => return Err(Error::io(path, e)),
        Ok(m) => m,
    };
    let is_link = meta.file_type().is_symlink();
    let followed = if is_link {
        match fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let to = fs::read_link(path).map_err(|e| Error::io(path, e))?;
                return Err(Error::Invalid(format!(
                    "{}: a symbolic link to {}, which does not exist; not writing through a dangling link",
                    path.display(),
                    to.display()
                )));
            }
            Err(e) => return Err(Error::io(path, e)),
        }
    } else {
        meta
    };
    if followed.is_dir() {
        return Err(Error::Invalid(format!(
            "{}: is a folder; name a file to write",
            path.display()
        )));
    }
    match (followed.is_file(), is_link) {
        (false, _) => Ok(Target::Stream),
        (true, false) => Ok(Target::Replace(path.to_path_buf())),
        (true, true) => fs::canonicalize(path)
            .map(Target::Replace)
            .map_err(|e| Error::io(path, e)),
    }
}

/// Write `bytes` to `path` as its `target` says: replace a regular file atomically (temp file,
/// fsync, rename, fsync of the directory), or write into a FIFO or device.
pub fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    match target(path)? {
        Target::Replace(real) => replace(&real, bytes).map_err(|e| Error::io(path, e)),
        Target::Stream => OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|mut f| f.write_all(bytes))
            .map_err(|e| Error::io(path, e)),
    }
}

/// Replace the regular file `path` by `bytes` atomically.
fn replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = temp_path(path);
    let mut file = create_temp(&tmp)?;
    fault::point();
    let written = (|| {
        let (head, tail) = bytes.split_at(bytes.len() / 2);
        file.write_all(head)?;
        fault::point();
        file.write_all(tail)?;
        fault::point();
        file.sync_all()?;
        fault::point();
        fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        // Best effort: the error to report is the first one.
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fault::point();
    sync_parent(path)
}

/// Create the temp file `tmp` exclusively, never through a link. The name holds our process id,
/// so what is already there was left by a crashed process that had the same id, or planted:
/// unlinking it (a link is removed, not followed) and creating afresh is safe either way.
fn create_temp(tmp: &Path) -> io::Result<File> {
    let open = || {
        let mut o = OpenOptions::new();
        o.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            o.custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32);
        }
        o.open(tmp)
    };
    match open() {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            fs::remove_file(tmp)?;
            open()
        }
        other => other,
    }
}

/// The temp file a write to `path` goes through: hidden, in the same directory (so the rename
/// cannot cross filesystems), and unique per process: `.{name}.{pid}.tmp`.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// The name a temp file (`temp_path`'s spelling, any process id) was writing, or None for
/// any other name: `.config.toml.123.tmp` -> `config.toml`.
pub fn temp_target(name: &str) -> Option<&str> {
    let rest = name.strip_prefix('.')?.strip_suffix(".tmp")?;
    let (target, pid) = rest.rsplit_once('.')?;
    (!target.is_empty() && !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
        .then_some(target)
}

/// Create the folder `dir` and its parents for writes into it. A dangling symbolic link or a
/// file in the way is a one-line error saying so (the system's is "File exists").
pub fn create_dir(dir: &Path) -> Result<()> {
    match fs::create_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            // The component in the way: the deepest that exists but is not (or does not lead
            // to) a folder.
            let culprit = dir
                .ancestors()
                .find(|a| fs::symlink_metadata(a).is_ok() && !a.is_dir())
                .unwrap_or(dir);
            let what = match fs::read_link(culprit) {
                Ok(to) => format!("a symbolic link to {}, which does not exist", to.display()),
                Err(_) => "a file, not a folder".to_string(),
            };
            Err(Error::Invalid(format!(
                "{}: {what}; cannot write into it",
                culprit.display()
            )))
        }
        Err(e) => Err(Error::io(dir, e)),
    }
}

/// fsync the directory holding `path`, making a rename or link in it durable.
pub fn sync_dir(path: &Path) -> Result<()> {
    sync_parent(path).map_err(|e| Error::io(parent(path), e))
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

fn sync_parent(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    File::open(parent(path))?.sync_all()?;
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

#[cfg(test)]
mod tests;
