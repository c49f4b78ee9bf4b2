//! stdout for data, stderr for everything else, and the one error path: `ddpm: <message>` with
//! the context chain on one line, exit 130 for an interrupt, and a quiet exit when the reader of
//! stdout went away (a closed pipe is not an error for a command-line tool).

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Write data to stdout (no implicit panics on a closed pipe, unlike `println!`).
pub fn stdout_bytes(bytes: &[u8]) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(bytes)?;
    out.flush()?;
    Ok(())
}

/// Write one line of data to stdout.
pub fn stdout_line(line: &str) -> anyhow::Result<()> {
    stdout_bytes(format!("{line}\n").as_bytes())
}

/// `text` with its control characters escaped (`\n`, `\t`, `\r`, `\x1b`, `\u{9b}`): a file
/// name or key holding them would otherwise split a one-line message or drive the terminal.
/// For what goes to stderr; the paths on stdout are data and stay as they are.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x80 && c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Print `err` to stderr, its control characters escaped, and choose the exit code.
pub fn report(err: &anyhow::Error) -> ExitCode {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<io::Error>() {
            if e.kind() == io::ErrorKind::BrokenPipe {
                return ExitCode::SUCCESS;
            }
        }
        if let Some(ddpm::Error::Interrupted { .. } | ddpm::Error::Stopped) =
            cause.downcast_ref::<ddpm::Error>()
        {
            stderr_line(&format!("ddpm: {}", printable(&err.to_string())));
            return ExitCode::from(130);
        }
    }
    let chain: Vec<String> = err.chain().map(|c| c.to_string()).collect();
    let mut msg = String::new();
    for c in chain {
        if !msg.contains(&c) {
            if !msg.is_empty() {
                msg.push_str(": ");
            }
            msg.push_str(&c);
        }
    }
    stderr_line(&format!("ddpm: {}", printable(&msg)));
    ExitCode::from(1)
}

/// A usage error (exit code 2) as one line like every other error: clap's message, tips and
/// usage joined, its closing pointer to --help dropped (`ddpm: unexpected argument '--step'
/// found; tip: a similar argument exists: '--steps'; usage: ddpm sample ...`). Help and the
/// version are clap's to print.
pub fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    let text = e.render().to_string();
    let mut msg = String::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.starts_with("For more information") {
            continue;
        }
        let line = line.strip_prefix("error: ").unwrap_or(line);
        if msg.is_empty() {
            msg.push_str(line);
        } else if let Some(usage) = line.strip_prefix("Usage: ") {
            let _ = write!(msg, "; usage: {usage}");
        } else if line.starts_with("tip:") {
            let _ = write!(msg, "; {line}");
        } else {
            let _ = write!(msg, " {line}");
        }
    }
    stderr_line(&format!("ddpm: {}", printable(&msg)));
    ExitCode::from(2)
}

/// One line on stderr in one write: `writeln!` on unbuffered stderr writes each formatted
/// piece separately, and a launcher collecting several processes' stderr (mpirun) can then
/// put its own output in the middle of the line.
fn stderr_line(line: &str) {
    let _ = io::stderr().write_all(format!("{line}\n").as_bytes());
}

/// Fail early, before long work, when the file `path` (given as `flag`) could not be written
/// at the end: it is a folder or a dangling link (see `ddpm::atomic::target`), or its folder
/// does not exist. `-` (stdout) passes.
pub fn check_out_folder(flag: &str, path: &Path) -> anyhow::Result<()> {
    if path.as_os_str() == "-" {
        return Ok(());
    }
    ddpm::atomic::target(path).map_err(|e| anyhow::anyhow!("{flag} {e}"))?;
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !folder.is_dir() {
        anyhow::bail!(
            "{flag} {}: the folder {} does not exist",
            path.display(),
            folder.display()
        );
    }
    Ok(())
}

/// Refuse `--out-dir -`: a folder of files cannot go to stdout (it would make a folder named
/// `-`); one file can, with `--out -`.
pub fn check_out_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.as_os_str() == "-" {
        anyhow::bail!(
            "--out-dir -: a folder of files cannot go to stdout; use --out - for one file \
             (a grid, a strip or .npy)"
        );
    }
    Ok(())
}

/// Write `bytes` to `path` (see `ddpm::atomic::write`: atomically, through links, into FIFOs
/// and devices), or to stdout when `path` is `-` or names our own stdout (`/dev/stdout`);
/// returns the file written, if any (nothing for stdout, whose reader takes the bytes only).
pub fn write_out(path: &Path, bytes: &[u8]) -> anyhow::Result<Option<PathBuf>> {
    if path.as_os_str() == "-" || is_stdout(path) {
        stdout_bytes(bytes)?;
        return Ok(None);
    }
    ddpm::atomic::write(path, bytes)?;
    Ok(Some(path.to_path_buf()))
}

/// True when `path` is the file our stdout is open on: `/dev/stdout`, `/proc/self/fd/1`, or the
/// file stdout was redirected to. Writing it by name would replace a redirected file by rename
/// (an append with `>>` would lose the file's start) and print the path into the data.
#[cfg(unix)]
fn is_stdout(path: &Path) -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Ok(target) = std::fs::metadata(path) else {
        return false;
    };
    let Ok(fd) = io::stdout().as_fd().try_clone_to_owned() else {
        return false;
    };
    let Ok(out) = std::fs::File::from(fd).metadata() else {
        return false;
    };
    (target.dev(), target.ino()) == (out.dev(), out.ino())
}

#[cfg(not(unix))]
fn is_stdout(_: &Path) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert!(matches!(printable("plain ü €"), Cow::Borrowed("plain ü €")));
        assert_eq!(
            printable("a\nb\tc\rd\x1b[31me\x07f\u{7f}g\u{9b}h"),
            "a\\nb\\tc\\rd\\x1b[31me\\x07f\\x7fg\\u{9b}h"
        );
    }
}
