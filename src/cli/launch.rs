//! The flags that place a process in a data-parallel job (`train` and `sample`), and the device
//! each rank takes. Launchers ddpm recognises need none of them; `--launcher none` runs one
//! process whatever the environment says.

use clap::Args;

use candle_core::Device;
use ddpm::device::{self, DeviceSpec};
use ddpm::dist::{Detect, Explicit, Launch};

/// Where this process stands in a job of several (one process per device).
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Several processes (mpirun, srun, torchrun: one per device)")]
pub struct LaunchArgs {
    /// auto (mpirun, srun or torchrun, recognised by their environment), none (one process),
    /// mpi or torchrun (only that launcher's variables).
    #[arg(long, default_value = "auto", value_name = "LAUNCHER")]
    pub launcher: Detect,
    /// This process's rank, for a launcher ddpm does not recognise (with --world-size).
    #[arg(long, requires = "world_size")]
    pub rank: Option<usize>,
    /// The number of processes (with --rank).
    #[arg(long, requires = "rank")]
    pub world_size: Option<usize>,
    /// The rank among this machine's processes, which picks its GPU [default: --rank].
    #[arg(long, requires = "rank")]
    pub local_rank: Option<usize>,
    /// HOST:PORT where rank 0 meets the others on GPUs (NCCL)
    /// [default: MASTER_ADDR:MASTER_PORT].
    #[arg(long, value_name = "HOST:PORT")]
    pub master: Option<String>,
}

impl LaunchArgs {
    /// This process's place, from the flags and the launcher's environment.
    pub fn launch(&self) -> anyhow::Result<Launch> {
        let explicit = Explicit {
            rank: self.rank,
            world_size: self.world_size,
            local_rank: self.local_rank,
            master: self.master.clone(),
        };
        Ok(Launch::from_env(self.launcher, &explicit)?)
    }
}

/// The device rank `launch` computes on, and a notice when `auto` fell back to the CPU: `auto`
/// and `cuda` mean this machine's GPU number local_rank (restrict the GPUs a machine's ranks see
/// with CUDA_VISIBLE_DEVICES); another `cuda:N` would put several ranks on one GPU, so it is
/// refused. One process: `device::resolve`.
pub fn rank_device(launch: &Launch, spec: DeviceSpec) -> anyhow::Result<(Device, Option<String>)> {
    if !launch.is_launched() {
        return Ok(device::resolve(spec)?);
    }
    let mine = DeviceSpec::Cuda(launch.local_rank);
    Ok(match spec {
        DeviceSpec::Cpu => device::resolve(spec)?,
        DeviceSpec::Cuda(0) => device::resolve(mine)?,
        DeviceSpec::Auto if cfg!(feature = "cuda") => match device::resolve(mine) {
            Ok(found) => found,
            Err(e) => (Device::Cpu, Some(format!("{e}; using the CPU"))),
        },
        DeviceSpec::Auto => device::resolve(spec)?,
        DeviceSpec::Cuda(n) => anyhow::bail!(
            "--device cuda:{n}: with several processes each takes cuda:LOCAL_RANK (here \
             cuda:{}); pass --device cuda, and choose GPUs with CUDA_VISIBLE_DEVICES",
            launch.local_rank
        ),
    })
}
