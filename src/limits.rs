//! Bounds on what the tool reads and how much memory it may take. Files are read through
//! `read`, which never blocks on a named pipe without a writer, refuses devices and folders, and
//! stops at a size cap (so `/dev/zero` or an endless pipe cannot fill the memory). `available`
//! says how much memory this process can still take: the least of the kernel's MemAvailable,
//! the cgroup's limit and RLIMIT_AS, or what `--max-memory` set. What a run *needs* is
//! estimated from its config by `budget`; this module knows nothing about configs.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::sync::OnceLock;

/// The most bytes a config file may have (they are a few kB).
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Read the file at `path`, at most `cap` bytes. A named pipe is opened without waiting for a
/// writer (with none it is refused as empty), a pipe or FIFO is read up to `cap`, and a regular file
/// larger than `cap` is refused before any of it is read. Folders, devices and sockets are
/// refused: none of them is ever a config, checkpoint or data file. Errors are `io::Error`s
/// whose message says what is wrong; the caller adds the path.
pub fn read(path: &Path, cap: u64) -> io::Result<Vec<u8>> {
    read_capped(path, cap, |len| {
        format!(
            "is {}, more than the {} this file may have",
            Bytes(len),
            Bytes(cap)
        )
    })
}

/// `read` for a file that is held in memory `factor` times over once read and converted (a
/// checkpoint: its bytes and its tensors): refused when that exceeds the `available` memory.
pub fn read_within_memory(path: &Path, factor: u64) -> io::Result<Vec<u8>> {
    let Some(memory) = available() else {
        return read(path, u64::MAX);
    };
    read_capped(path, memory.bytes / factor.max(1), |len| {
        format!(
            "is {}; reading it takes about {} of memory, and {memory} is available",
            Bytes(len),
            Bytes(len.saturating_mul(factor))
        )
    })
}

/// `read`, with the message for a regular file over `cap` bytes.
fn read_capped(path: &Path, cap: u64, too_big: impl Fn(u64) -> String) -> io::Result<Vec<u8>> {
    let file = open_nonblocking(path)?;
    let meta = file.metadata()?;
    let kind = meta.file_type();
    if kind.is_dir() {
        return Err(io::Error::other("is a folder, not a file"));
    }
    if kind.is_file() {
        if meta.len() > cap {
            return Err(io::Error::other(too_big(meta.len())));
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        file.take(cap).read_to_end(&mut bytes)?;
        return Ok(bytes);
    }
    if !is_pipe(&kind) {
        return Err(io::Error::other(format!(
            "is {}, not a file",
            describe_special(&kind)
        )));
    }
    set_blocking(&file)?;
    let mut bytes = Vec::new();
    file.take(cap.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.is_empty() {
        return Err(io::Error::other(
            "is a pipe that gave no data (nothing writes to it)",
        ));
    }
    if bytes.len() as u64 > cap {
        return Err(io::Error::other(format!(
            "is a pipe that gave more than the {} this file may have",
            Bytes(cap)
        )));
    }
    Ok(bytes)
}

/// Open `path` for reading when it is a regular file, which formats read by seeking (images)
/// need; a folder, pipe or device is refused, and a named pipe never blocks the open.
pub fn open_file(path: &Path) -> io::Result<File> {
    let file = open_nonblocking(path)?;
    let kind = file.metadata()?.file_type();
    if kind.is_file() {
        return Ok(file);
    }
    let what = if kind.is_dir() {
        "a folder"
    } else if is_pipe(&kind) {
        "a pipe"
    } else {
        describe_special(&kind)
    };
    Err(io::Error::other(format!("is {what}, not a file")))
}

#[cfg(unix)]
fn open_nonblocking(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
}

#[cfg(not(unix))]
fn open_nonblocking(path: &Path) -> io::Result<File> {
    File::open(path)
}

/// Back to blocking reads once the open is done: a pipe with a writer then reads to its end,
/// one without reads nothing at once.
#[cfg(unix)]
fn set_blocking(file: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor this function's caller owns; F_GETFL/F_SETFL only read and
    // change its status flags.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn set_blocking(_: &File) -> io::Result<()> {
    Ok(())
}

#[cfg(unix)]
fn is_pipe(kind: &std::fs::FileType) -> bool {
    use std::os::unix::fs::FileTypeExt;
    kind.is_fifo()
}

#[cfg(not(unix))]
fn is_pipe(_: &std::fs::FileType) -> bool {
    false
}

#[cfg(unix)]
fn describe_special(kind: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

#[cfg(not(unix))]
fn describe_special(_: &std::fs::FileType) -> &'static str {
    "not a regular file"
}

/// A byte count for messages: `812 B`, `1.5 MiB`, `146.2 GiB`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
        if self.0 < 1024 {
            return write!(f, "{} B", self.0);
        }
        let mut v = self.0 as f64 / 1024.0;
        let mut unit = 0;
        while v >= 1024.0 && unit + 1 < UNITS.len() {
            v /= 1024.0;
            unit += 1;
        }
        write!(f, "{v:.1} {}", UNITS[unit])
    }
}

/// Parse a size as given on the command line: a number of bytes with an optional binary
/// suffix K, M, G or T (`512M`, `8G`, `1.5G`; `B`/`iB` may follow).
pub fn parse_size(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let lower = t.to_ascii_lowercase();
    let body = lower
        .strip_suffix("ib")
        .or_else(|| lower.strip_suffix('b'))
        .unwrap_or(&lower);
    let (number, shift) = match body.char_indices().last() {
        Some((i, 'k')) => (&body[..i], 10),
        Some((i, 'm')) => (&body[..i], 20),
        Some((i, 'g')) => (&body[..i], 30),
        Some((i, 't')) => (&body[..i], 40),
        _ => (body, 0),
    };
    let bad = || format!("`{text}` is not a size; use e.g. 512M, 8G or 1.5G");
    let v: f64 = number.trim().parse().map_err(|_| bad())?;
    let bytes = v * (1u64 << shift) as f64;
    if !(bytes.is_finite() && bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(bad());
    }
    Ok(bytes as u64)
}

/// How much memory this process may still take, and what said so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Memory {
    pub bytes: u64,
    /// `MemAvailable`, `the cgroup's memory.max`, `RLIMIT_AS` or `--max-memory`.
    pub source: String,
}

impl fmt::Display for Memory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", Bytes(self.bytes), self.source)
    }
}

static MAX_MEMORY: OnceLock<u64> = OnceLock::new();

/// Set the memory this process may use (the binary's `--max-memory`), in place of what
/// `available` would detect. Only the first call counts; later ones return false.
pub fn set_max_memory(bytes: u64) -> bool {
    MAX_MEMORY.set(bytes).is_ok()
}

/// The memory this process can still take: `--max-memory` when set, else the least of the
/// kernel's MemAvailable, the cgroup's limit less its usage, and RLIMIT_AS less the address
/// space in use. None when nothing can be read (not Linux): then nothing is refused.
pub fn available() -> Option<Memory> {
    if let Some(&bytes) = MAX_MEMORY.get() {
        return Some(Memory {
            bytes,
            source: "--max-memory".into(),
        });
    }
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let candidates = [
        read("/proc/meminfo")
            .and_then(|t| meminfo_available(&t))
            .map(|b| (b, "MemAvailable")),
        cgroup_headroom().map(|b| (b, "the cgroup's memory limit")),
        read("/proc/self/limits")
            .and_then(|t| address_space_limit(&t))
            .map(|limit| {
                let used = read("/proc/self/status")
                    .and_then(|t| status_vm_size(&t))
                    .unwrap_or(0);
                (limit.saturating_sub(used), "RLIMIT_AS")
            }),
    ];
    candidates
        .into_iter()
        .flatten()
        .min_by_key(|(b, _)| *b)
        .map(|(bytes, source)| Memory {
            bytes,
            source: source.into(),
        })
}

/// `MemAvailable:  123456 kB` of /proc/meminfo, in bytes.
fn meminfo_available(text: &str) -> Option<u64> {
    kib_field(text, "MemAvailable:")
}

/// `VmSize:  123456 kB` of /proc/self/status, in bytes.
fn status_vm_size(text: &str) -> Option<u64> {
    kib_field(text, "VmSize:")
}

fn kib_field(text: &str, key: &str) -> Option<u64> {
    let rest = text.lines().find_map(|l| l.strip_prefix(key))?;
    let kib: u64 = rest.split_whitespace().next()?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The soft limit of `Max address space` in /proc/self/limits; None when unlimited.
fn address_space_limit(text: &str) -> Option<u64> {
    let rest = text
        .lines()
        .find_map(|l| l.strip_prefix("Max address space"))?;
    rest.split_whitespace().next()?.parse().ok()
}

/// The smallest headroom (limit - usage) of this process's cgroup and its ancestors (v2), or
/// of its v1 memory cgroup; None when no limit is set.
fn cgroup_headroom() -> Option<u64> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let read = |p: &Path| {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
    };
    if let Some(rel) = own.lines().find_map(|l| l.strip_prefix("0::")) {
        let mut dir = Path::new("/sys/fs/cgroup").join(rel.trim_start_matches('/'));
        let mut best: Option<u64> = None;
        loop {
            if let (Some(max), Some(cur)) = (
                read(&dir.join("memory.max")),
                read(&dir.join("memory.current")),
            ) {
                let room = max.saturating_sub(cur);
                best = Some(best.map_or(room, |b| b.min(room)));
            }
            if !dir.pop() || !dir.starts_with("/sys/fs/cgroup") {
                break;
            }
        }
        return best;
    }
    let v1 = Path::new("/sys/fs/cgroup/memory");
    let max = read(&v1.join("memory.limit_in_bytes"))?;
    let cur = read(&v1.join("memory.usage_in_bytes")).unwrap_or(0);
    // v1 reports "no limit" as a huge page-aligned number.
    (max < 1 << 60).then(|| max.saturating_sub(cur))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_files_read_up_to_the_cap_and_larger_ones_are_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, b"[train]\n").unwrap();
        assert_eq!(read(&p, 8).unwrap(), b"[train]\n");
        let e = read(&p, 7).unwrap_err().to_string();
        assert_eq!(e, "is 8 B, more than the 7 B this file may have");
        let e = read(dir.path(), 100).unwrap_err().to_string();
        assert_eq!(e, "is a folder, not a file");
        assert_eq!(
            read(&dir.path().join("missing"), 100).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }

    #[cfg(unix)]
    #[test]
    fn devices_are_refused_and_a_fifo_without_a_writer_does_not_block() {
        let e = read(Path::new("/dev/zero"), 1 << 20)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "is a character device, not a file");
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        let e = read(&fifo, 100).unwrap_err().to_string();
        assert_eq!(e, "is a pipe that gave no data (nothing writes to it)");
        assert_eq!(
            open_file(&fifo).unwrap_err().to_string(),
            "is a pipe, not a file"
        );
        assert!(open_file(Path::new("/dev/zero")).is_err());
        assert!(open_file(dir.path()).is_err());
        // A pipe with a writer (as `--config <(...)` gives) is read to its end, and past the
        // cap it is refused.
        for (cap, want) in [(1 << 20, Ok(5000)), (100, Err(()))] {
            use std::os::fd::AsRawFd;
            let mut child = std::process::Command::new("head")
                .args(["-c", "5000", "/dev/zero"])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let out = child.stdout.take().unwrap();
            let path = format!("/proc/self/fd/{}", out.as_raw_fd());
            let got = read(Path::new(&path), cap);
            assert_eq!(got.as_ref().map(Vec::len).map_err(|_| ()), want, "{got:?}");
            drop(out);
            child.wait().unwrap();
        }
    }

    #[test]
    fn bytes_print_in_binary_units() {
        assert_eq!(Bytes(812).to_string(), "812 B");
        assert_eq!(Bytes(1536).to_string(), "1.5 KiB");
        assert_eq!(Bytes(3 << 30).to_string(), "3.0 GiB");
        assert_eq!(Bytes(u64::MAX).to_string(), "16.0 EiB");
    }

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("4K").unwrap(), 4096);
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("8G").unwrap(), 8 << 30);
        assert_eq!(parse_size("8GiB").unwrap(), 8 << 30);
        assert_eq!(parse_size("1.5g").unwrap(), 3 << 29);
        assert_eq!(parse_size("2TB").unwrap(), 2 << 40);
        for bad in ["", "G", "-1G", "0", "1e30T", "nan", "eight"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn proc_files_parse() {
        let meminfo =
            "MemTotal:       24576000 kB\nMemFree:  100 kB\nMemAvailable:   20000000 kB\n";
        assert_eq!(meminfo_available(meminfo), Some(20_000_000 * 1024));
        assert_eq!(meminfo_available("MemTotal: 5 kB\n"), None);
        let status = "Name:\tddpm\nVmPeak:\t  300 kB\nVmSize:\t  200 kB\n";
        assert_eq!(status_vm_size(status), Some(200 * 1024));
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max stack size            8388608              unlimited            bytes     \n\
                      Max address space         4294967296           unlimited            bytes     \n";
        assert_eq!(address_space_limit(limits), Some(4 << 30));
        let unlimited = limits.replace("4294967296", "unlimited");
        assert_eq!(address_space_limit(&unlimited), None);
    }

    #[test]
    fn available_memory_is_detected_on_linux() {
        if cfg!(target_os = "linux") {
            let m = available().unwrap();
            assert!(m.bytes > 0, "{m}");
        }
    }
}
