//! Where this process stands in a data-parallel job: its rank, the number of ranks, its rank
//! among those on its machine, and how the ranks find each other. Read from the environment
//! the launcher sets (Open MPI's mpirun, MPICH / Intel MPI's Hydra, Slurm's srun, PyTorch's
//! torchrun) or from explicit flags. The environment is passed in as a function, so every
//! launcher's variables are unit-tested here without setting any.

use std::str::FromStr;

use crate::error::{Error, Result};

/// How ranks meet: through MPI (launched by an MPI launcher), or at a TCP address (torchrun or
/// explicit flags; only the NCCL engine uses it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Launcher {
    /// One process, started by hand.
    None,
    /// An MPI launcher; the name of the environment it was recognised by.
    Mpi(&'static str),
    /// torchrun or explicit flags; the name of what gave the ranks.
    Tcp(&'static str),
}

/// Which environment to trust (`--launcher`): `auto` looks for each launcher's variables in
/// turn; `none` ignores them all (one process).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Detect {
    #[default]
    Auto,
    None,
    Mpi,
    Torchrun,
}

impl FromStr for Detect {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Detect::Auto),
            "none" => Ok(Detect::None),
            "mpi" => Ok(Detect::Mpi),
            "torchrun" => Ok(Detect::Torchrun),
            _ => Err(Error::Invalid(format!(
                "unknown launcher `{s}`; expected auto, none, mpi or torchrun"
            ))),
        }
    }
}

/// Placement given on the command line, for launchers whose variables are not recognised.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Explicit {
    pub rank: Option<usize>,
    pub world_size: Option<usize>,
    /// Defaults to the rank (all ranks on one machine).
    pub local_rank: Option<usize>,
    /// HOST:PORT where rank 0 listens (NCCL engine).
    pub master: Option<String>,
}

/// This process's place in the job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    pub launcher: Launcher,
    pub rank: usize,
    pub size: usize,
    /// Rank among the ranks on this machine: the GPU it takes (`cuda:local_rank`).
    pub local_rank: usize,
    /// Ranks on this machine, when the launcher says (for the CPU thread budget).
    pub local_size: Option<usize>,
    /// Where rank 0 listens for the others' connections, for TCP launches.
    pub master: Option<(String, u16)>,
}

/// Variables of the MPI launchers, most specific first: Open MPI's mpirun; Hydra (MPICH, Intel
/// MPI); Slurm's srun (its SLURM_STEP_* variables exist only inside a job step, not in the batch
/// script that runs srun, which also carries SLURM_PROCID).
const MPI_ENVS: [(&str, [&str; 4]); 3] = [
    (
        "Open MPI",
        [
            "OMPI_COMM_WORLD_RANK",
            "OMPI_COMM_WORLD_SIZE",
            "OMPI_COMM_WORLD_LOCAL_RANK",
            "OMPI_COMM_WORLD_LOCAL_SIZE",
        ],
    ),
    (
        "Hydra",
        ["PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS"],
    ),
    (
        "Slurm",
        [
            "SLURM_PROCID",
            "SLURM_STEP_NUM_TASKS",
            "SLURM_LOCALID",
            "SLURM_STEP_TASKS_PER_NODE",
        ],
    ),
];

impl Launch {
    /// One process, no launcher.
    pub fn single() -> Self {
        Launch {
            launcher: Launcher::None,
            rank: 0,
            size: 1,
            local_rank: 0,
            local_size: None,
            master: None,
        }
    }

    /// This process's place, from the process environment and `explicit`.
    pub fn from_env(detect: Detect, explicit: &Explicit) -> Result<Self> {
        Self::resolve(detect, explicit, &|k| std::env::var(k).ok())
    }

    /// This process's place: explicit --rank/--world-size first, then (with `Detect::Auto`)
    /// an MPI launcher's variables, then torchrun's (RANK, WORLD_SIZE, LOCAL_RANK,
    /// LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT); none of them is one process.
    pub fn resolve(
        detect: Detect,
        explicit: &Explicit,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self> {
        if detect == Detect::None {
            return Ok(Self::single());
        }
        let launch = match (explicit.rank, explicit.world_size) {
            (Some(rank), Some(size)) => Some(Launch {
                launcher: Launcher::Tcp("--rank/--world-size"),
                rank,
                size,
                local_rank: explicit.local_rank.unwrap_or(rank),
                local_size: None,
                master: None,
            }),
            (None, None) => {
                let mpi = || Self::mpi_env(env);
                let torchrun = || Self::torchrun_env(env);
                match detect {
                    Detect::Mpi => mpi()?,
                    Detect::Torchrun => torchrun()?,
                    _ => match mpi()? {
                        Some(l) => Some(l),
                        None => torchrun()?,
                    },
                }
            }
            _ => {
                return Err(Error::Invalid(
                    "--rank and --world-size go together; give both or neither".into(),
                ))
            }
        };
        let mut launch = match launch {
            Some(l) => l,
            None if detect == Detect::Auto => return Ok(Self::single()),
            None => {
                return Err(Error::Invalid(format!(
                    "--launcher {}: none of its environment variables is set ({})",
                    if detect == Detect::Mpi {
                        "mpi"
                    } else {
                        "torchrun"
                    },
                    if detect == Detect::Mpi {
                        "OMPI_COMM_WORLD_RANK, PMI_RANK, SLURM_PROCID with SLURM_STEP_NUM_TASKS"
                    } else {
                        "RANK and WORLD_SIZE"
                    }
                )))
            }
        };
        if let Some(m) = &explicit.master {
            launch.master = Some(parse_master(m, "--master")?);
        }
        launch.check()?;
        Ok(launch)
    }

    /// Whether a launcher (or flags) placed this process, even in a world of one.
    pub fn is_launched(&self) -> bool {
        self.launcher != Launcher::None
    }

    /// "rank 1 of 4", for messages.
    pub fn describe(&self) -> String {
        format!("rank {} of {}", self.rank, self.size)
    }

    fn check(&self) -> Result<()> {
        if self.size == 0 || self.rank >= self.size {
            return Err(Error::Invalid(format!(
                "rank {} of a world of {} ranks is not a valid place (from {})",
                self.rank,
                self.size,
                self.source()
            )));
        }
        if let Some(n) = self
            .local_size
            .filter(|&n| self.local_rank >= n || n > self.size)
        {
            return Err(Error::Invalid(format!(
                "local rank {} of {n} ranks on this machine is not a valid place (from {})",
                self.local_rank,
                self.source()
            )));
        }
        Ok(())
    }

    fn source(&self) -> &'static str {
        match self.launcher {
            Launcher::None => "no launcher",
            Launcher::Mpi(s) | Launcher::Tcp(s) => s,
        }
    }

    fn mpi_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Option<Self>> {
        for (name, [rank, size, local_rank, local_size]) in MPI_ENVS {
            let (Some(r), Some(s)) = (env(rank), env(size)) else {
                continue;
            };
            let rank = number(rank, &r)?;
            let local_size = match env(local_size) {
                Some(v) if name == "Slurm" => slurm_tasks_here(&v, env("SLURM_NODEID").as_deref()),
                Some(v) => Some(number(local_size, &v)?),
                None => None,
            };
            return Ok(Some(Launch {
                launcher: Launcher::Mpi(name),
                rank,
                size: number(size, &s)?,
                local_rank: match env(local_rank) {
                    Some(v) => number(local_rank, &v)?,
                    None => 0,
                },
                local_size,
                master: None,
            }));
        }
        Ok(None)
    }

    fn torchrun_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Option<Self>> {
        let (Some(r), Some(s)) = (env("RANK"), env("WORLD_SIZE")) else {
            return Ok(None);
        };
        let local = |k: &str| env(k).map(|v| number(k, &v)).transpose();
        let master = match (env("MASTER_ADDR"), env("MASTER_PORT")) {
            (Some(addr), Some(port)) => {
                let port = u16::from_str(&port).map_err(|_| {
                    Error::Invalid(format!("MASTER_PORT={port} is not a port number"))
                })?;
                // torchrun's agent holds its own store on MASTER_PORT (and says so in
                // TORCHELASTIC_USE_AGENT_STORE); rank 0 then listens on the port after it.
                let taken = env("TORCHELASTIC_USE_AGENT_STORE").is_some_and(|v| v == "True");
                Some((addr, if taken { port.wrapping_add(1) } else { port }))
            }
            _ => None,
        };
        Ok(Some(Launch {
            launcher: Launcher::Tcp("torchrun"),
            rank: number("RANK", &r)?,
            size: number("WORLD_SIZE", &s)?,
            local_rank: local("LOCAL_RANK")?.unwrap_or(0),
            local_size: local("LOCAL_WORLD_SIZE")?,
            master,
        }))
    }
}

/// A launcher variable's value as a number; the error names the variable.
fn number(key: &str, value: &str) -> Result<usize> {
    value.trim().parse().map_err(|_| {
        Error::Invalid(format!(
            "{key}={value:?} is not a number (set by the launcher, or unset it)"
        ))
    })
}

/// HOST:PORT.
fn parse_master(s: &str, what: &str) -> Result<(String, u16)> {
    let bad = || {
        Error::Invalid(format!(
            "{what} {s}: expected HOST:PORT, e.g. 10.0.0.1:29500"
        ))
    };
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let port = port.parse().map_err(|_| bad())?;
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host.trim_matches(['[', ']']).to_string(), port))
}

/// The tasks of this node in Slurm's SLURM_STEP_TASKS_PER_NODE, a list like `4(x2),3`
/// (4 tasks on each of the first two nodes, then 3), at the step-relative node `node`.
fn slurm_tasks_here(per_node: &str, node: Option<&str>) -> Option<usize> {
    let node: usize = node.unwrap_or("0").parse().ok()?;
    let mut seen = 0;
    for item in per_node.split(',') {
        let (tasks, repeat) = match item.split_once("(x") {
            Some((t, r)) => (t.parse().ok()?, r.strip_suffix(')')?.parse().ok()?),
            None => (item.parse().ok()?, 1usize),
        };
        seen += repeat;
        if node < seen {
            return Some(tasks);
        }
    }
    None
}

/// Worker threads for this rank's CPU work when the launcher starts several ranks on one
/// machine: Slurm's SLURM_CPUS_PER_TASK when set, else the cores this process may run on
/// (`available`, which respects a launcher's core binding) shared among the machine's ranks,
/// at least one. None when nothing is known (a single process keeps the library's default).
pub fn cpu_threads(env: &dyn Fn(&str) -> Option<String>, available: usize) -> Option<usize> {
    let launch = Launch::resolve(Detect::Auto, &Explicit::default(), env).ok()?;
    if !launch.is_launched() {
        return None;
    }
    if matches!(launch.launcher, Launcher::Mpi("Slurm")) {
        if let Some(n) = env("SLURM_CPUS_PER_TASK").and_then(|v| v.parse().ok()) {
            return Some(n);
        }
    }
    let here = launch.local_size?.max(1);
    Some((available / here).max(1))
}

/// Set RAYON_NUM_THREADS (the thread count of the CPU pool and of every shard split) to
/// `cpu_threads` when a launcher placed this process and the variable is unset, so ranks on
/// one machine do not each start a thread per core. Process-wide: call at startup, before any
/// other thread exists (as `nn::kernels::configure_cpu`).
pub fn budget_cpu_threads() {
    if std::env::var_os("RAYON_NUM_THREADS").is_some() {
        return;
    }
    let available = std::thread::available_parallelism().map_or(1, |n| n.get());
    if let Some(n) = cpu_threads(&|k| std::env::var(k).ok(), available) {
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
}

#[cfg(test)]
#[path = "launch_tests.rs"]
mod tests;
