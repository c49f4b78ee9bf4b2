//! Allocator settings for a process that runs the UNet on the CPU. Every candle op allocates
//! its output, and glibc's defaults hand large blocks back to the kernel as soon as they are
//! freed (mmap for blocks over 128 KB, heap trimming), so each training step faults in, zeroes
//! and unmaps hundreds of megabytes again: a fifth of a W3 step in the profile. Keeping blocks
//! up to 32 MB in the heap and never trimming it turns those into plain reuse. This changes
//! process-wide state, so the library never does it on its own: the binary (or a bench) calls
//! `tune_allocator` once at startup. Peak memory is unchanged; memory is just not given back
//! between steps.

/// Keep blocks up to 32 MB in malloc's heap and stop returning freed heap to the kernel.
/// Returns whether the settings were applied (glibc on Linux); elsewhere it does nothing.
pub fn tune_allocator() -> bool {
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
