//! SIGINT/SIGTERM as a flag that long commands poll, so they stop at a point where their
//! finished work is on disk (train: a checkpoint; sample: the images of finished batches; eval
//! and interpolate, whose output is written at the end: nothing, and they say so).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context;
use signal_hook::consts::{SIGINT, SIGTERM};

/// A flag set by the first SIGINT or SIGTERM; a second one while it is set exits at once
/// with 130.
pub fn interrupt_flag() -> anyhow::Result<Arc<AtomicBool>> {
    let interrupt = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 130, Arc::clone(&interrupt))
            .context("installing the signal handler")?;
        signal_hook::flag::register(sig, Arc::clone(&interrupt))
            .context("installing the signal handler")?;
    }
    Ok(interrupt)
}
