//! Process settings for running the UNet on the CPU, which the library never applies on its
//! own because they are process-wide: the binary (or a bench) calls `configure_cpu` once at
//! startup, before any tensor work.
//!
//! - Allocator: every candle op allocates its output, and glibc's defaults hand large blocks
//!   back to the kernel as soon as they are freed (mmap above 128 KB, heap trimming), so each
//!   training step faults in, zeroes and unmaps hundreds of megabytes again: a fifth of a W3
//!   step in the profile. Keeping blocks up to 32 MB in the heap and never trimming it turns
//!   that into plain reuse. Peak memory is unchanged; memory is just not given back.
//! - Thread pool: candle's pool workers park after a short spin (25,000 iterations). Between
//!   the many short parallel regions of a step that is often exceeded, and when another process
//!   keeps the other core busy a parked worker wakes late: W3 then ran at ~190 ms per step
//!   instead of ~130. Spinning for ~2 million iterations (tens of milliseconds, like the 200 ms
//!   block time of the OpenMP runtime PyTorch uses) keeps workers on their cores through a
//!   step, at the cost of some idle spinning after it.

/// Worker spin iterations before parking (candle's default is 25,000).
const SPIN_LIMIT: &str = "2000000";

/// Apply both settings. The spin limit is read when candle's pool starts, so this must run
/// before the first tensor op; an explicit CANDLE_BARRIER_POOL_SPIN_LIMIT is left alone.
/// Returns whether the allocator settings applied (glibc on Linux).
pub fn configure_cpu() -> bool {
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", SPIN_LIMIT);
    }
    tune_allocator()
}

/// Keep blocks up to 32 MB in malloc's heap and stop returning freed heap to the kernel.
/// Returns whether the settings were applied (glibc on Linux); elsewhere it does nothing.
fn tune_allocator() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        // <malloc.h>: M_TRIM_THRESHOLD = -1, M_MMAP_THRESHOLD = -3 (32 MB is glibc's maximum).
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_THRESHOLD: i32 = -3;
        // SAFETY: mallopt only changes malloc's tunables; both values are in range.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1 && mallopt(M_TRIM_THRESHOLD, i32::MAX) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
