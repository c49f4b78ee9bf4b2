//! The library's one error type. Every variant names what is wrong (a file, a key, a value) so the
//! binary can print it as a single line; the binary maps variants to exit codes.

use std::path::PathBuf;

/// Everything that can go wrong inside the library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed (shape mismatch, device error, ...).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A configuration value is missing, mistyped or out of range; the message names the key.
    #[error("{0}")]
    Config(String),

    /// The training data cannot be used (unreadable image, empty folder, image too small...).
    #[error("{0}")]
    Data(String),

    /// A checkpoint is missing, truncated, corrupt or of an unknown format.
    #[error("checkpoint {}: {msg}", path.display())]
    Checkpoint { path: PathBuf, msg: String },

    /// The loss or the gradient norm became NaN or infinite; `kept` is the last good
    /// checkpoint, None when there is none (the training sets it).
    #[error("{what} is {value} at step {step}; stopping; {}", kept_note(.kept.as_deref()))]
    NonFinite {
        what: &'static str,
        step: u64,
        value: f64,
        kept: Option<PathBuf>,
    },

    /// The run was interrupted (SIGINT/SIGTERM) after its state was saved.
    #[error("interrupted at step {step}; checkpoint saved")]
    Interrupted { step: u64 },

    /// Stopped on request (SIGINT/SIGTERM) before finishing; the caller says what it kept.
    #[error("stopped before finishing")]
    Stopped,

    /// Any other invalid argument; the message says which and why.
    #[error("{0}")]
    Invalid(String),
}

/// The library's result type.
pub type Result<T> = std::result::Result<T, Error>;

/// What a NaN stop leaves behind, in words.
fn kept_note(kept: Option<&std::path::Path>) -> String {
    match kept {
        Some(p) => format!("the last checkpoint before it, {}, is kept", p.display()),
        None => "no checkpoint was written before it".to_string(),
    }
}

impl Error {
    /// An I/O error tagged with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A checkpoint error tagged with the checkpoint's path.
    pub fn checkpoint(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Checkpoint {
            path: path.into(),
            msg: msg.into(),
        }
    }
}
