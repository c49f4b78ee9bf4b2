//! Data parallelism across processes: one process (a rank) per device, started by a launcher
//! (mpirun, srun, torchrun) or by hand. This module owns how a process learns its place
//! (`launch`), the one interface every communication engine offers (`Comm`: rank, size,
//! all-to-all, all-gather, all-reduce, broadcast, barrier, abort), the engines behind it (one
//! process; MPI behind the `mpi` feature; NCCL behind `nccl`), and the rank-ordered sum that
//! makes a run's gradients independent of how a library schedules its reductions (`ordered`).
//! It knows nothing of models or batches: the training loop decides what to send.
//!
//! Buffers are 1-D f32 tensors on the rank's device (NCCL reads GPU memory; MPI copies through
//! the host). Every rank must make the same calls in the same order, as with any collective
//! library; a rank that fails calls `abort`, which ends every rank (MPI_Abort), or exits and
//! leaves the launcher (or the NCCL watchdog) to stop the others.

mod launch;
#[cfg(feature = "mpi")]
mod mpi;
#[cfg(feature = "nccl")]
mod nccl;
mod ordered;
#[cfg(any(feature = "nccl", test))]
mod rendezvous;
#[cfg(test)]
pub(crate) mod threads;

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};

pub use launch::{budget_cpu_threads, cpu_threads, Detect, Explicit, Launch, Launcher};
pub use ordered::OrderedSum;

/// The collectives a data-parallel run needs, on 1-D f32 tensors of the rank's device. Every
/// rank calls the same methods in the same order with buffers of the same length.
pub trait Comm {
    /// This process's rank, 0..size.
    fn rank(&self) -> usize;
    /// The number of ranks.
    fn size(&self) -> usize;
    /// The library doing the work, for messages: "one process", "MPI", "NCCL".
    fn engine(&self) -> &'static str;
    /// `x` (size * c) cut into `size` chunks of c: chunk j goes to rank j, and the result's
    /// chunk j is what rank j sent to this rank.
    fn all_to_all(&self, x: &Tensor) -> Result<Tensor>;
    /// Every rank's `x` (c), concatenated in rank order (size * c).
    fn all_gather(&self, x: &Tensor) -> Result<Tensor>;
    /// The element-wise sum of every rank's `x`, in the library's own order (use it for values
    /// whose sum is exact, such as counts and flags; gradients go through `OrderedSum`).
    fn all_reduce_sum(&self, x: &Tensor) -> Result<Tensor>;
    /// `root`'s `bytes` on every rank (the others' `bytes` are ignored).
    fn broadcast_bytes(&self, bytes: Vec<u8>, root: usize) -> Result<Vec<u8>>;
    /// Returns once every rank has called it.
    fn barrier(&self) -> Result<()>;
    /// Whether collectives go through an engine: every launched process, even a world of one
    /// (so that path runs as it would at scale); not `Single`.
    fn exchanges(&self) -> bool {
        true
    }
    /// End this process with `code` and make every other rank end too (after the caller has
    /// said why on stderr).
    fn abort(&self, code: i32) -> !;
}

/// One process: every collective is the identity.
#[derive(Clone, Copy, Debug, Default)]
pub struct Single;

impl Comm for Single {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn engine(&self) -> &'static str {
        "one process"
    }
    fn all_to_all(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.clone())
    }
    fn all_gather(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.clone())
    }
    fn all_reduce_sum(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.clone())
    }
    fn broadcast_bytes(&self, bytes: Vec<u8>, _root: usize) -> Result<Vec<u8>> {
        Ok(bytes)
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
    fn exchanges(&self) -> bool {
        false
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// The engine for a process placed by `launch`, computing on `device`. No launcher: `Single`.
/// Under an MPI launcher: NCCL on CUDA when built with `nccl` (its id sent through MPI), else
/// MPI (`mpi` feature). Under torchrun or --rank flags: NCCL, meeting at MASTER_ADDR:MASTER_PORT.
/// The engine is started even for a world of one, so that path runs as it would at scale; a
/// world of one without the engine compiled in is simply `Single`.
pub fn connect(launch: &Launch, device: &Device) -> Result<Box<dyn Comm>> {
    if !launch.is_launched() {
        return Ok(Box::new(Single));
    }
    #[cfg(feature = "nccl")]
    if device.is_cuda() {
        return nccl::Nccl::connect(launch, device).map(|c| Box::new(c) as Box<dyn Comm>);
    }
    match launch.launcher {
        Launcher::Mpi(_) => connect_mpi(launch),
        _ if launch.size == 1 => Ok(Box::new(Single)),
        _ => Err(Error::Invalid(format!(
            "{}: started by {} on {}; ranks that meet over TCP (torchrun, --rank) train on \
             GPUs through NCCL (build with --features nccl and use --device cuda); for CPU \
             ranks launch with mpirun or srun (MPI)",
            launch.describe(),
            source_name(launch),
            device_name(device)
        ))),
    }
}

#[cfg(feature = "mpi")]
fn connect_mpi(launch: &Launch) -> Result<Box<dyn Comm>> {
    Ok(Box::new(mpi::Mpi::init(launch)?))
}

#[cfg(not(feature = "mpi"))]
fn connect_mpi(launch: &Launch) -> Result<Box<dyn Comm>> {
    if launch.size == 1 {
        return Ok(Box::new(Single));
    }
    Err(Error::Invalid(format!(
        "{} under {}, but this ddpm was built without MPI support; rebuild with \
         `cargo build --release --features mpi` (needs an MPI library, e.g. libopenmpi-dev)",
        launch.describe(),
        source_name(launch)
    )))
}

fn source_name(launch: &Launch) -> &'static str {
    match launch.launcher {
        Launcher::None => "no launcher",
        Launcher::Mpi(s) | Launcher::Tcp(s) => s,
    }
}

fn device_name(device: &Device) -> &'static str {
    if device.is_cuda() {
        "CUDA"
    } else {
        "the CPU"
    }
}

/// Whether `flag` is set on any rank (a sum of 0s and 1s, exact in any order).
pub fn any(comm: &dyn Comm, flag: bool, device: &Device) -> Result<bool> {
    if !comm.exchanges() {
        return Ok(flag);
    }
    let x = Tensor::new(&[flag as u8 as f32], device)?;
    let sum = comm
        .all_reduce_sum(&x)?
        .to_dtype(DType::F32)?
        .to_vec1::<f32>()?;
    Ok(sum.first().is_some_and(|&s| s > 0.0))
}
