//! The plumbing every kernel shares: parallel loops over our CPU thread pool, per-thread
//! scratch buffers reused across calls, a pointer for work items that write disjoint parts of
//! one output, and `multiversion!`, which compiles a loop twice (baseline x86-64 and
//! AVX2+FMA) and picks at run time, since the crate itself is built for baseline x86-64.
//!
//! Two pools: candle's own barrier pool, which the kernels' loops use while it is on (the
//! library's default), and ours (rayon, candle's thread count), on which whole shards of a
//! batch (`crate::nn::shard`) run side by side, each with its kernels on one thread (`serial`).
//! `configure_cpu` switches candle's pool off; the kernels' loops then use ours.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::thread::LocalKey;

use candle_core::utils::barrier_pool;

use rayon::prelude::*;

static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();

thread_local! {
    static SERIAL: Cell<bool> = const { Cell::new(false) };
}

/// The worker threads: candle's thread count (RAYON_NUM_THREADS, else the physical cores),
/// started on first use. None when the threads cannot be started: everything then runs on
/// the calling thread.
pub fn pool() -> Option<&'static rayon::ThreadPool> {
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(candle_core::utils::get_num_threads())
            .thread_name(|i| format!("ddpm-cpu-{i}"))
            // The main thread's size: whole commands run here (`on_pool`), including candle's
            // recursive walk of the autograd graph.
            .stack_size(8 << 20)
            .build()
            .ok()
    })
    .as_ref()
}

/// Run `f` on one of the pool's threads (on this thread if there is no pool). A command run
/// this way reaches the pool's other threads without handing work across to them and waiting
/// to be woken: a loop's items go to the worker's own queue and it runs the ones nobody took
/// (from outside, every parallel loop is a round trip to sleeping workers: one DDIM-20 image
/// on W1's model took 0.96-1.07 s, against 0.75-0.87 s from inside and 0.69-0.86 s on one
/// thread).
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    match pool() {
        Some(pool) => pool.install(f),
        None => f(),
    }
}

/// Run `f` with every kernel loop it reaches on this thread staying on this thread: for work
/// that is already split across the threads one level up (a shard of a batch).
pub fn serial<R>(f: impl FnOnce() -> R) -> R {
    with_flag(&SERIAL, f)
}

/// Run `f` with the thread-local `flag` set, restoring its value afterwards (also on a panic).
pub fn with_flag<R>(flag: &'static LocalKey<Cell<bool>>, f: impl FnOnce() -> R) -> R {
    struct Restore(&'static LocalKey<Cell<bool>>, bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            self.0.set(self.1);
        }
    }
    let _restore = Restore(flag, flag.replace(true));
    f()
}

/// Whether this thread is inside `serial`.
pub fn is_serial() -> bool {
    SERIAL.get()
}

/// Threads a parallel loop runs on: candle's pool workers plus the calling thread while
/// candle's pool is on (the library's default), else our pool's; 1 inside `serial`.
pub fn threads() -> usize {
    if is_serial() {
        return 1;
    }
    match barrier_pool().n_workers() {
        0 => pool().map_or(1, |p| p.current_num_threads()),
        workers => workers + 1,
    }
}

/// Run `f(item, thread)` for every item in 0..n, items handed out one at a time to whichever
/// thread is free; `thread` is in 0..threads(), so it can index per-thread accumulators.
/// The threads are candle's barrier pool while it is on (it spins between the many short
/// loops of a step, cheaper than waking rayon workers), else our pool.
pub fn for_each(n: usize, f: impl Fn(usize, usize) + Sync) {
    if n <= 1 || threads() == 1 {
        (0..n).for_each(|i| f(i, 0));
        return;
    }
    let candle = barrier_pool();
    if candle.n_workers() > 0 {
        let next = AtomicUsize::new(0);
        candle.execute(|thread| loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= n {
                break;
            }
            f(i, thread);
        });
    } else if let Some(pool) = pool() {
        pool.install(|| {
            (0..n)
                .into_par_iter()
                .with_max_len(1)
                .for_each(|i| f(i, rayon::current_thread_index().unwrap_or(0)))
        });
    }
}

/// Run shard 0 (`first`) on the calling thread and shards 1..n (`rest(k)`) on the pool, each
/// on one thread with its kernels serial (`serial`); results in order of k. Shard 0 stays on
/// the caller so it can report progress through whatever the caller holds. n = 1 runs `first`
/// with parallel kernels.
pub fn shards<R: Send>(
    n: usize,
    first: impl FnOnce() -> R,
    rest: impl Fn(usize) -> R + Sync,
) -> Vec<R> {
    match pool() {
        Some(pool) if n > 1 && !is_serial() => {
            let mut out: Vec<Option<R>> = (0..n).map(|_| None).collect();
            let (head, tail) = out.split_at_mut(1);
            let rest = &rest;
            pool.in_place_scope(|scope| {
                for (i, slot) in tail.iter_mut().enumerate() {
                    scope.spawn(move |_| *slot = Some(serial(|| rest(i + 1))));
                }
                head[0] = Some(serial(first));
            });
            // The scope returns once every spawned shard has filled its slot.
            out.into_iter().flatten().collect()
        }
        _ => {
            let mut out = vec![first()];
            out.extend((1..n).map(rest));
            out
        }
    }
}

/// Partial sums a reduction keeps, at most: items are split into this many fixed runs.
const REDUCE_SLOTS: usize = 16;

/// The number of partial sums (`Partials`) a reduction over `n` items uses: slot s covers the
/// fixed run of items s n / S .. (s + 1) n / S, in order, on one thread.
pub fn slots(n: usize) -> usize {
    n.clamp(1, REDUCE_SLOTS)
}

/// A vector of `n` values for a kernel to fill, skipping the zeroing pass (a full extra pass
/// over large outputs), as candle's own CPU kernels do.
///
/// # Safety
/// The caller must write every value before anything reads it.
#[allow(clippy::uninit_vec)]
pub unsafe fn output(n: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(n);
    // SAFETY: capacity n; the caller's contract covers initialisation.
    unsafe { v.set_len(n) };
    v
}

/// Per-slot accumulators of `len` values each for a reduction over `n` work items
/// (`for_each_in_slots`): a slot's part is zeroed by the thread that runs the slot (in
/// parallel, instead of all at once up front), and `sum_into` adds the parts in slot order.
/// Which items feed which part, and the order of every sum, depend only on `n`, so the result
/// is the same bits whatever the thread count or scheduling.
pub struct Partials {
    buf: Vec<f32>,
    len: usize,
    n: usize,
}

impl Partials {
    pub fn new(n: usize, len: usize) -> Self {
        Partials {
            // SAFETY: `for_each` zeroes every slot's part before its first item (every slot
            // has at least one item), and `sum_into` reads only after `for_each`.
            buf: unsafe { output(slots(n) * len) },
            len,
            n,
        }
    }

    /// Run `f(item, part)` for every item in 0..n, `part` pointing at the `len` accumulators of
    /// the item's slot, which only the thread running that slot touches.
    pub fn for_each(&mut self, f: impl Fn(usize, *mut f32) + Sync) {
        let (len, n, s) = (self.len, self.n, slots(self.n));
        let buf = Shared::new(&mut self.buf);
        for_each(s, |slot, _| {
            // SAFETY: slot `slot` alone uses buf[slot len..(slot + 1) len].
            unsafe { buf.slice(slot * len, len) }.fill(0.0);
            for item in slot * n / s..(slot + 1) * n / s {
                f(item, buf.ptr(slot * len));
            }
        });
    }

    /// dst = the sum of the parts in slot order, in parallel over blocks of dst.
    pub fn sum_into(&self, dst: &mut [f32]) {
        const BLOCK: usize = 4096;
        let len = dst.len().min(self.len);
        let out = Shared::new(dst);
        for_each(len.div_ceil(BLOCK), |block, _| {
            let start = block * BLOCK;
            let n = BLOCK.min(len - start);
            // SAFETY: block `block` alone writes dst[start..start + n].
            let d = unsafe { out.slice(start, n) };
            d.fill(0.0);
            for part in self.buf.chunks_exact(self.len) {
                d.iter_mut()
                    .zip(&part[start..start + n])
                    .for_each(|(d, v)| *d += v);
            }
        });
    }
}

thread_local! {
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Call `f` with this thread's scratch buffer of `len` values, kept between calls so work
/// items do not allocate. Its contents are whatever the last user left: write before reading.
pub fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            f(&mut buf[..len])
        }
        // Only reachable if a kernel nests scratch use; stay correct and allocate.
        Err(_) => f(&mut vec![0.0; len]),
    })
}

/// An output buffer shared by parallel work items that each write their own disjoint part.
#[derive(Clone, Copy)]
pub struct Shared {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: `Shared` is only a pointer; the callers of `slice` guarantee that concurrent users
// touch disjoint ranges, and the buffer outlives the parallel loop that uses it.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    pub fn new(buf: &mut [f32]) -> Self {
        Shared {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
        }
    }

    /// A raw pointer to value `start`, for GEMM destinations with strides.
    pub fn ptr(&self, start: usize) -> *mut f32 {
        assert!(start <= self.len, "Shared::ptr out of bounds");
        self.ptr.wrapping_add(start)
    }

    /// The values start..start + len.
    ///
    /// # Safety
    /// No other live slice obtained from this `Shared` may overlap the range, and the buffer
    /// must still be alive.
    // Handing out disjoint mutable views from a shared handle is this type's purpose.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice(&self, start: usize, len: usize) -> &mut [f32] {
        assert!(start + len <= self.len, "Shared::slice out of bounds");
        // SAFETY: in bounds (checked above); exclusivity is the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), len) }
    }
}

/// Define a function whose body is compiled twice, for baseline x86-64 and for AVX2+FMA, and
/// run the fast copy when the CPU has those features. Everything the body calls must be
/// `#[inline(always)]` to benefit.
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn inner($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn fast($($arg: $ty),*) $(-> $ret)? {
                    inner($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU has the features `fast` was compiled for.
                    return unsafe { fast($($arg),*) };
                }
            }
            inner($($arg),*)
        }
    };
}

pub(crate) use multiversion;

/// One row-major f32 GEMM on the calling thread: dst (m, n) = [dst +] lhs (m, k) @ rhs (k, n),
/// each operand given by (pointer, row stride, column stride), so transposed views cost
/// nothing. `accumulate` adds to dst instead of overwriting it.
///
/// # Safety
/// Every pointer must address a buffer holding all the elements its strides reach, and dst
/// must not overlap lhs or rhs.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm(
    (m, n, k): (usize, usize, usize),
    dst: (*mut f32, usize, usize),
    lhs: (*const f32, usize, usize),
    rhs: (*const f32, usize, usize),
    accumulate: bool,
) {
    // SAFETY: forwarded from the caller; gemm computes dst = alpha dst + beta lhs rhs.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.0,
            dst.2 as isize,
            dst.1 as isize,
            accumulate,
            lhs.0,
            lhs.2 as isize,
            lhs.1 as isize,
            rhs.0,
            rhs.2 as isize,
            rhs.1 as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}
