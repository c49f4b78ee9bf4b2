//! Process settings for running the UNet on the CPU, which the library never applies on its
//! own because they are process-wide: the binary (or a bench) calls `configure_cpu` once at
//! startup, before any tensor work.
//!
//! - Allocator: every candle op allocates its output, and glibc's defaults hand large blocks
//!   back to the kernel as soon as they are freed (mmap above 128 KB, heap trimming), so each
//!   training step faults in, zeroes and unmaps hundreds of megabytes again: a fifth of a W3
//!   step in the profile. Keeping blocks up to 32 MB in the heap and never trimming it turns
//!   that into plain reuse. Peak memory is unchanged; memory is just not given back. And one
//!   heap (arena) for all threads: with a heap per thread, blocks the shards free on one
//!   thread are not reused by the other, and W1's peak RSS rose from ~850 to ~960 MB
//!   (MALLOC_ARENA_MAX=1 vs the default, same speed: the allocations are few and large).
//! - Threads: the CPU work runs as shards of the batch, one per thread of our pool
//!   (`crate::nn::shard`), each shard's ops on its own thread. candle's own CPU pool would then be
//!   a second set of threads competing for the same cores (its elementwise ops over 64K
//!   values fan out to it from inside a shard: W3 training fell from ~420 to ~200 images/s),
//!   so it is switched off: CANDLE_NUM_THREADS=1 leaves it without workers. Our kernels run
//!   in parallel on our pool wherever a batch is not sharded.

/// Apply both settings. candle reads CANDLE_NUM_THREADS when its pool starts, so this must run
/// before the first tensor op; an explicit CANDLE_NUM_THREADS is left alone (above 1,
/// candle keeps its pool and batches are not sharded: `crate::nn::shard::count`). Returns whether the allocator settings
/// applied (glibc on Linux).
pub fn configure_cpu() -> bool {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // At startup, before any other thread exists that could read the environment.
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    tune_allocator()
}

/// Keep blocks up to 32 MB in malloc's heap, stop returning freed heap to the kernel, and
/// keep one heap for all threads. Returns whether the settings were applied (glibc on Linux);
/// elsewhere it does nothing.
fn tune_allocator() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        // <malloc.h>: M_TRIM_THRESHOLD = -1, M_MMAP_THRESHOLD = -3 (32 MB is glibc's maximum),
        // M_ARENA_MAX = -8.
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_THRESHOLD: i32 = -3;
        const M_ARENA_MAX: i32 = -8;
        // SAFETY: mallopt only changes malloc's tunables; all values are in range.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1
                && mallopt(M_TRIM_THRESHOLD, i32::MAX) == 1
                && mallopt(M_ARENA_MAX, 1) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
