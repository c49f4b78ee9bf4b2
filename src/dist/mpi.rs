//! The MPI engine (`mpi` feature): the collectives of whatever MPI library the binary was
//! built against (Open MPI, MPICH), through rsmpi. Buffers pass through host memory, so it
//! serves CPU ranks (and GPU ranks without NCCL, slowly). MPI is initialised with
//! MPI_THREAD_FUNNELED: only the thread that started it calls MPI, while the CPU kernels run on
//! other threads. A failure inside MPI aborts the job (MPI_ERRORS_ARE_FATAL); `abort` is
//! MPI_Abort, after which the launcher ends every rank and names the one that aborted.

use candle_core::Tensor;
use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use mpi::Threading;

use super::{Comm, Launch};
use crate::error::{Error, Result};

/// MPI counts are C ints: the most values one call may move.
const MAX_COUNT: usize = i32::MAX as usize;

/// MPI_COMM_WORLD of an initialised MPI; finalised when dropped.
pub struct Mpi {
    world: SimpleCommunicator,
    rank: usize,
    size: usize,
    // Dropped last: MPI_Finalize.
    _universe: Universe,
}

impl Mpi {
    /// Initialise MPI and check that it sees the ranks `launch` read from the environment.
    pub fn init(launch: &Launch) -> Result<Self> {
        let (universe, _threading) = mpi::initialize_with_threading(Threading::Funneled)
            .ok_or_else(|| Error::Invalid("MPI was already initialised in this process".into()))?;
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        if (rank, size) != (launch.rank, launch.size) {
            return Err(Error::Invalid(format!(
                "MPI says rank {rank} of {size}, but the launcher's environment said {}; \
                 was ddpm started by a different MPI than it was built with?",
                launch.describe()
            )));
        }
        Ok(Mpi {
            world,
            rank,
            size,
            _universe: universe,
        })
    }

    fn host(x: &Tensor, what: &str) -> Result<Vec<f32>> {
        let v = x.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
        if v.len() > MAX_COUNT {
            return Err(Error::Invalid(format!(
                "MPI {what} of {} values: more than one MPI call can move ({MAX_COUNT})",
                v.len()
            )));
        }
        Ok(v)
    }
}

impl Comm for Mpi {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn engine(&self) -> &'static str {
        "MPI"
    }
    fn all_to_all(&self, x: &Tensor) -> Result<Tensor> {
        let send = Self::host(x, "all-to-all")?;
        if send.len() % self.size != 0 {
            return Err(Error::Invalid(format!(
                "all-to-all of {} values does not split into {} ranks",
                send.len(),
                self.size
            )));
        }
        let mut recv = vec![0f32; send.len()];
        self.world.all_to_all_into(&send[..], &mut recv[..]);
        let n = recv.len();
        Ok(Tensor::from_vec(recv, n, x.device())?)
    }
    fn all_gather(&self, x: &Tensor) -> Result<Tensor> {
        let send = Self::host(x, "all-gather")?;
        let n = send.len() * self.size;
        if n > MAX_COUNT {
            return Err(Error::Invalid(format!(
                "MPI all-gather of {n} values: more than one MPI call can move ({MAX_COUNT})"
            )));
        }
        let mut recv = vec![0f32; n];
        self.world.all_gather_into(&send[..], &mut recv[..]);
        Ok(Tensor::from_vec(recv, n, x.device())?)
    }
    fn all_reduce_sum(&self, x: &Tensor) -> Result<Tensor> {
        let send = Self::host(x, "all-reduce")?;
        let mut recv = vec![0f32; send.len()];
        self.world
            .all_reduce_into(&send[..], &mut recv[..], SystemOperation::sum());
        let n = recv.len();
        Ok(Tensor::from_vec(recv, n, x.device())?)
    }
    fn broadcast_bytes(&self, mut bytes: Vec<u8>, root: usize) -> Result<Vec<u8>> {
        let root = self.world.process_at_rank(root as i32);
        let mut len = bytes.len() as u64;
        root.broadcast_into(&mut len);
        let len = usize::try_from(len)
            .map_err(|_| Error::Invalid(format!("a broadcast of {len} bytes")))?;
        bytes.resize(len, 0);
        // In pieces: one MPI call moves at most i32::MAX values.
        for piece in bytes.chunks_mut(1 << 30) {
            root.broadcast_into(piece);
        }
        Ok(bytes)
    }
    fn barrier(&self) -> Result<()> {
        self.world.barrier();
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}
