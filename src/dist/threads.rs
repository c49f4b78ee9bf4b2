//! Ranks as threads of one process, for unit tests of what runs on top of `Comm`: every
//! collective goes through a shared table of buffers between two barriers.

use std::sync::{Arc, Barrier, Mutex};

use candle_core::Tensor;

use super::Comm;
use crate::error::{Error, Result};

struct Shared {
    barrier: Barrier,
    slots: Mutex<Vec<Vec<u8>>>,
}

/// One thread's rank.
pub struct ThreadComm {
    rank: usize,
    size: usize,
    shared: Arc<Shared>,
}

/// Run `f` on `size` ranks, one thread each; the results in rank order.
pub fn run_ranks<R: Send>(size: usize, f: impl Fn(&dyn Comm) -> R + Sync) -> Vec<R> {
    let shared = Arc::new(Shared {
        barrier: Barrier::new(size),
        slots: Mutex::new(vec![Vec::new(); size]),
    });
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..size)
            .map(|rank| {
                let comm = ThreadComm {
                    rank,
                    size,
                    shared: shared.clone(),
                };
                let f = &f;
                s.spawn(move || f(&comm))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a rank thread panicked"))
            .collect()
    })
}

impl ThreadComm {
    /// Put `mine` in this rank's slot, and return what `read` takes from all slots once every
    /// rank has put its own.
    fn exchange<T>(&self, mine: Vec<u8>, read: impl FnOnce(&[Vec<u8>]) -> T) -> Result<T> {
        let lock = || {
            self.shared
                .slots
                .lock()
                .map_err(|_| Error::Invalid("a rank thread panicked".into()))
        };
        lock()?[self.rank] = mine;
        self.shared.barrier.wait();
        let out = read(&lock()?);
        self.shared.barrier.wait();
        Ok(out)
    }

    fn floats(x: &Tensor) -> Result<Vec<u8>> {
        Ok(x.to_vec1::<f32>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect())
    }

    fn tensor(bytes: &[u8], like: &Tensor) -> Result<Tensor> {
        let v: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let n = v.len();
        Ok(Tensor::from_vec(v, n, like.device())?)
    }
}

impl Comm for ThreadComm {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn engine(&self) -> &'static str {
        "threads"
    }
    fn all_to_all(&self, x: &Tensor) -> Result<Tensor> {
        let bytes = Self::floats(x)?;
        let chunk = bytes.len() / self.size;
        let got = self.exchange(bytes, |slots| {
            slots
                .iter()
                .flat_map(|s| s[self.rank * chunk..(self.rank + 1) * chunk].to_vec())
                .collect::<Vec<u8>>()
        })?;
        Self::tensor(&got, x)
    }
    fn all_gather(&self, x: &Tensor) -> Result<Tensor> {
        let got = self.exchange(Self::floats(x)?, |slots| slots.concat())?;
        Self::tensor(&got, x)
    }
    fn all_reduce_sum(&self, x: &Tensor) -> Result<Tensor> {
        let n = x.dim(0)?;
        let all = self.all_gather(x)?.reshape((self.size, n))?;
        Ok(all.sum(0)?)
    }
    fn broadcast_bytes(&self, bytes: Vec<u8>, root: usize) -> Result<Vec<u8>> {
        self.exchange(bytes, |slots| slots[root].clone())
    }
    fn barrier(&self) -> Result<()> {
        self.exchange(Vec::new(), |_| ())
    }
    fn abort(&self, code: i32) -> ! {
        panic!("rank {} aborted with {code}", self.rank)
    }
}
