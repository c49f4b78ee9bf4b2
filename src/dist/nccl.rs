//! The NCCL engine (`nccl` feature): collectives between GPUs over NVLink, PCIe or the network,
//! through cudarc's NCCL bindings (what candle's `nccl` feature enables), on the CUDA stream
//! candle computes on, so they are ordered with the kernels around them. The ranks first share
//! NCCL's unique id: through MPI when an MPI launcher started them (`mpi` feature), else over
//! TCP at the master address (`rendezvous`). Every collective is waited for with a deadline
//! (DDPM_NCCL_TIMEOUT seconds, default 600): NCCL itself waits forever for a rank that died,
//! so the deadline turns that into an error naming this rank and the collective.

use std::time::{Duration, Instant};

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DeviceRepr};
use candle_core::cuda_backend::cudarc::nccl::{self, Comm as NcclComm, Id, NcclType, ReduceOp};
use candle_core::cuda_backend::{CudaDevice, CudaStorage, CudaStorageSlice};
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};

use super::{rendezvous, Comm, Launch, Launcher};
use crate::error::{Error, Result};

/// Seconds a collective may take before the rank gives up on its peers.
const TIMEOUT_VAR: &str = "DDPM_NCCL_TIMEOUT";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// One rank's NCCL communicator on its GPU.
pub struct Nccl {
    comm: NcclComm,
    device: CudaDevice,
    rank: usize,
    size: usize,
    timeout: Duration,
    /// The MPI engine that carried the id, kept for `abort` (MPI_Abort) and finalised last.
    bootstrap: Option<Box<dyn Comm>>,
}

impl Nccl {
    /// Join the ranks of `launch` on `device` (a CUDA device).
    pub fn connect(launch: &Launch, device: &Device) -> Result<Self> {
        let cuda = device.as_cuda_device()?.clone();
        let timeout = timeout()?;
        let fresh = || -> Result<Vec<u8>> {
            let id = Id::new().map_err(|e| nccl_error("creating the NCCL id", e))?;
            Ok(id.internal().iter().map(|&c| c as u8).collect())
        };
        let (bytes, bootstrap) = match (&launch.launcher, &launch.master) {
            (Launcher::Mpi(_), _) if cfg!(feature = "mpi") => {
                let mpi = mpi_engine(launch)?;
                let mine = if launch.rank == 0 {
                    fresh()?
                } else {
                    Vec::new()
                };
                (mpi.broadcast_bytes(mine, 0)?, Some(mpi))
            }
            (_, Some(master)) => {
                let mine = if launch.rank == 0 {
                    fresh()?
                } else {
                    Vec::new()
                };
                let bytes = rendezvous::exchange(launch.rank, launch.size, master, mine, timeout)?;
                (bytes, None)
            }
            _ => {
                return Err(Error::Invalid(format!(
                    "{}: the NCCL ranks need a meeting point: MASTER_ADDR and MASTER_PORT \
                     (torchrun sets them), --master HOST:PORT, or an MPI launcher with a \
                     build that has --features mpi",
                    launch.describe()
                )))
            }
        };
        let internal: [std::ffi::c_char; 128] = bytes
            .iter()
            .map(|&b| b as std::ffi::c_char)
            .collect::<Vec<_>>()
            .try_into()
            .map_err(|_| Error::Invalid(format!("an NCCL id of {} bytes", bytes.len())))?;
        let comm = NcclComm::from_rank(
            cuda.cuda_stream(),
            launch.rank,
            launch.size,
            Id::uninit(internal),
        )
        .map_err(|e| nccl_error("joining the NCCL communicator", e))?;
        Ok(Nccl {
            comm,
            device: cuda,
            rank: launch.rank,
            size: launch.size,
            timeout,
            bootstrap,
        })
    }

    /// Run `kind` on `x` and wait for it, at most the timeout.
    fn run(&self, kind: Kind, x: &Tensor) -> Result<Tensor> {
        let op = Collective {
            comm: &self.comm,
            kind,
            size: self.size,
            rank: self.rank,
        };
        let out = x.contiguous()?.apply_op1_no_bwd(&op)?;
        self.wait(kind.name())?;
        Ok(out)
    }

    /// Poll the stream until the collective just queued is done, or give up at the deadline.
    fn wait(&self, what: &str) -> Result<()> {
        let event = self
            .device
            .cuda_stream()
            .record_event(None)
            .map_err(|e| Error::Invalid(format!("NCCL {what}: {e:?}")))?;
        let start = Instant::now();
        while !event.is_complete() {
            if start.elapsed() > self.timeout {
                return Err(Error::Invalid(format!(
                    "rank {} of {}: NCCL {what} did not finish within {} s; another rank has \
                     died or hangs (raise {TIMEOUT_VAR} if a rank is only slow, e.g. sampling a grid)",
                    self.rank,
                    self.size,
                    self.timeout.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        Ok(())
    }
}

fn timeout() -> Result<Duration> {
    match std::env::var(TIMEOUT_VAR) {
        Ok(v) => v
            .parse::<u64>()
            .ok()
            .filter(|&s| s > 0)
            .map(Duration::from_secs)
            .ok_or_else(|| {
                Error::Invalid(format!("{TIMEOUT_VAR}={v:?} is not a number of seconds"))
            }),
        Err(_) => Ok(DEFAULT_TIMEOUT),
    }
}

#[cfg(feature = "mpi")]
fn mpi_engine(launch: &Launch) -> Result<Box<dyn Comm>> {
    Ok(Box::new(super::mpi::Mpi::init(launch)?))
}

#[cfg(not(feature = "mpi"))]
fn mpi_engine(_: &Launch) -> Result<Box<dyn Comm>> {
    Err(Error::Invalid("built without MPI".into()))
}

fn nccl_error(what: &str, e: nccl::result::NcclError) -> Error {
    Error::Invalid(format!("{what}: NCCL error {:?}", e.0))
}

impl Comm for Nccl {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn engine(&self) -> &'static str {
        "NCCL"
    }
    fn all_to_all(&self, x: &Tensor) -> Result<Tensor> {
        self.run(Kind::AllToAll, x)
    }
    fn all_gather(&self, x: &Tensor) -> Result<Tensor> {
        self.run(Kind::AllGather, x)
    }
    fn all_reduce_sum(&self, x: &Tensor) -> Result<Tensor> {
        self.run(Kind::AllReduceSum, x)
    }
    fn broadcast_bytes(&self, bytes: Vec<u8>, root: usize) -> Result<Vec<u8>> {
        let dev = Device::Cuda(self.device.clone());
        let len = (bytes.len() as u64).to_le_bytes().to_vec();
        let len = self.run(Kind::Broadcast(root), &Tensor::from_vec(len, 8, &dev)?)?;
        let len: [u8; 8] = len.to_vec1::<u8>()?.try_into().map_err(|_| {
            Error::Invalid("NCCL broadcast of a length returned the wrong size".into())
        })?;
        let n = usize::try_from(u64::from_le_bytes(len))
            .map_err(|_| Error::Invalid("NCCL broadcast of an impossible length".into()))?;
        let mut buf = bytes;
        buf.resize(n, 0);
        let out = self.run(Kind::Broadcast(root), &Tensor::from_vec(buf, n, &dev)?)?;
        Ok(out.to_vec1::<u8>()?)
    }
    fn barrier(&self) -> Result<()> {
        let dev = Device::Cuda(self.device.clone());
        self.all_reduce_sum(&Tensor::zeros(1, DType::F32, &dev)?)
            .map(|_| ())
    }
    fn abort(&self, code: i32) -> ! {
        match &self.bootstrap {
            Some(mpi) => mpi.abort(code),
            None => std::process::exit(code),
        }
    }
}

#[derive(Clone, Copy)]
enum Kind {
    AllToAll,
    AllGather,
    AllReduceSum,
    Broadcast(usize),
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::AllToAll => "all-to-all",
            Kind::AllGather => "all-gather",
            Kind::AllReduceSum => "all-reduce",
            Kind::Broadcast(_) => "broadcast",
        }
    }
}

/// A collective as a candle op on the tensor's CUDA storage, queued on candle's stream.
struct Collective<'a> {
    comm: &'a NcclComm,
    kind: Kind,
    size: usize,
    rank: usize,
}

impl Collective<'_> {
    fn queue<T: NcclType + DeviceRepr>(
        &self,
        src: &CudaSlice<T>,
        (start, end): (usize, usize),
        dev: &CudaDevice,
    ) -> candle_core::Result<(CudaSlice<T>, usize)> {
        let fail = |e: nccl::result::NcclError| {
            candle_core::Error::Msg(format!("NCCL {}: error {:?}", self.kind.name(), e.0))
        };
        let src = src.slice(start..end);
        let n = end - start;
        let out_len = match self.kind {
            Kind::AllGather => n * self.size,
            _ => n,
        };
        // SAFETY: every element of `dst` is written by the collective before it is read.
        let mut dst = unsafe { dev.alloc::<T>(out_len) }?;
        match self.kind {
            Kind::AllGather => self.comm.all_gather(&src, &mut dst).map(drop),
            Kind::AllReduceSum => self
                .comm
                .all_reduce(&src, &mut dst, &ReduceOp::Sum)
                .map(drop),
            Kind::Broadcast(root) => {
                let send = (self.rank == root).then_some(&src);
                self.comm.broadcast(send, &mut dst, root as i32).map(drop)
            }
            Kind::AllToAll => {
                if n % self.size != 0 {
                    return Err(candle_core::Error::Msg(format!(
                        "all-to-all of {n} values does not split into {} ranks",
                        self.size
                    )));
                }
                let c = n / self.size;
                nccl::group_start().map_err(fail)?;
                let queued = (0..self.size).try_for_each(|j| {
                    self.comm.send(&src.slice(j * c..(j + 1) * c), j as i32)?;
                    self.comm
                        .recv(&mut dst.slice_mut(j * c..(j + 1) * c), j as i32)
                        .map(drop)
                });
                let ended = nccl::group_end();
                queued.and(ended.map(drop))
            }
        }
        .map_err(fail)?;
        Ok((dst, out_len))
    }
}

impl CustomOp1 for Collective<'_> {
    fn name(&self) -> &'static str {
        self.kind.name()
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        Err(candle_core::Error::Msg(
            "NCCL collectives take CUDA tensors".into(),
        ))
    }

    fn cuda_fwd(
        &self,
        storage: &CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let range = layout.contiguous_offsets().ok_or_else(|| {
            candle_core::Error::Msg("NCCL collectives take contiguous tensors".into())
        })?;
        let dev = &storage.device;
        let (slice, n) = match &storage.slice {
            CudaStorageSlice::F32(s) => {
                let (out, n) = self.queue(s, range, dev)?;
                (CudaStorageSlice::F32(out), n)
            }
            CudaStorageSlice::U8(s) => {
                let (out, n) = self.queue(s, range, dev)?;
                (CudaStorageSlice::U8(out), n)
            }
            _ => {
                return Err(candle_core::Error::Msg(
                    "NCCL collectives here move f32 or u8 tensors".into(),
                ))
            }
        };
        Ok((
            CudaStorage {
                slice,
                device: dev.clone(),
            },
            Shape::from(n),
        ))
    }
}
