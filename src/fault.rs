//! Crash points for the fault-injection tests. Each step of a write that matters for recovery
//! (temp file created, half written, written, synced, renamed; `latest` linked; old checkpoints
//! pruned) calls `point()`. In debug builds (what `cargo test` runs), `DDPM_TEST_CRASH_AT=k`
//! makes the process kill itself with SIGKILL at the k-th point it passes, as `kill -9` would,
//! so a test can stop a run at every step of the save sequence in turn and check that
//! `--resume` recovers. Release builds compile `point()` to nothing and never read the variable.

/// The environment variable naming the crash point (1-based count of points passed).
pub const CRASH_AT_ENV: &str = "DDPM_TEST_CRASH_AT";

/// A point where a crash must leave a recoverable state; see the module doc.
#[cfg(all(debug_assertions, unix))]
pub fn point() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    static CRASH_AT: OnceLock<Option<u64>> = OnceLock::new();
    static PASSED: AtomicU64 = AtomicU64::new(0);
    let crash_at = CRASH_AT.get_or_init(|| {
        std::env::var(CRASH_AT_ENV)
            .ok()
            .and_then(|v| v.parse().ok())
    });
    if let Some(k) = *crash_at {
        if PASSED.fetch_add(1, Ordering::SeqCst) + 1 == k {
            use rustix::process::{getpid, kill_process, Signal};
            // SIGKILL cannot be caught; nothing after this line runs.
            let _ = kill_process(getpid(), Signal::KILL);
        }
    }
}

/// A point where a crash must leave a recoverable state; see the module doc.
#[cfg(not(all(debug_assertions, unix)))]
#[inline(always)]
pub fn point() {}
