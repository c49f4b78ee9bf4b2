//! Tests for `launch`: each launcher's variables, flags over them, and the messages for bad values.

use super::*;

fn env_of<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
    move |k| {
        vars.iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.to_string())
    }
}

fn resolve(vars: &[(&str, &str)]) -> Result<Launch> {
    Launch::resolve(Detect::Auto, &Explicit::default(), &env_of(vars))
}

#[test]
fn no_launcher_variables_is_one_process() {
    let l = resolve(&[
        ("HOME", "/root"),
        ("SLURM_PROCID", "0"),
        ("SLURM_NTASKS", "4"),
    ])
    .unwrap();
    // SLURM_PROCID without SLURM_STEP_NUM_TASKS is an sbatch script, not a task of srun.
    assert_eq!(l, Launch::single());
    assert!(!l.is_launched());
}

#[test]
fn open_mpi_hydra_and_slurm_are_recognised() {
    let ompi = resolve(&[
        ("OMPI_COMM_WORLD_RANK", "3"),
        ("OMPI_COMM_WORLD_SIZE", "8"),
        ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
        ("OMPI_COMM_WORLD_LOCAL_SIZE", "2"),
        // An allocation's Slurm variables under mpirun: Open MPI's win.
        ("SLURM_PROCID", "0"),
        ("SLURM_STEP_NUM_TASKS", "1"),
    ])
    .unwrap();
    assert_eq!(ompi.launcher, Launcher::Mpi("Open MPI"));
    assert_eq!(
        (ompi.rank, ompi.size, ompi.local_rank, ompi.local_size),
        (3, 8, 1, Some(2))
    );
    let hydra = resolve(&[("PMI_RANK", "1"), ("PMI_SIZE", "2")]).unwrap();
    assert_eq!(hydra.launcher, Launcher::Mpi("Hydra"));
    assert_eq!((hydra.rank, hydra.size, hydra.local_rank), (1, 2, 0));
    let slurm = resolve(&[
        ("SLURM_PROCID", "9"),
        ("SLURM_STEP_NUM_TASKS", "11"),
        ("SLURM_LOCALID", "1"),
        ("SLURM_STEP_TASKS_PER_NODE", "4(x2),3"),
        ("SLURM_NODEID", "2"),
    ])
    .unwrap();
    assert_eq!(slurm.launcher, Launcher::Mpi("Slurm"));
    assert_eq!(
        (slurm.rank, slurm.size, slurm.local_rank, slurm.local_size),
        (9, 11, 1, Some(3))
    );
}

#[test]
fn torchrun_gives_the_rendezvous_address() {
    let vars = [
        ("RANK", "5"),
        ("WORLD_SIZE", "16"),
        ("LOCAL_RANK", "5"),
        ("LOCAL_WORLD_SIZE", "8"),
        ("MASTER_ADDR", "10.0.0.1"),
        ("MASTER_PORT", "29500"),
    ];
    let l = resolve(&vars).unwrap();
    assert_eq!(l.launcher, Launcher::Tcp("torchrun"));
    assert_eq!(
        (l.rank, l.size, l.local_rank, l.local_size),
        (5, 16, 5, Some(8))
    );
    assert_eq!(l.master, Some(("10.0.0.1".to_string(), 29500)));
    // torchrun's agent keeps its own store on MASTER_PORT: rank 0 listens on the next port.
    let mut agent = vars.to_vec();
    agent.push(("TORCHELASTIC_USE_AGENT_STORE", "True"));
    assert_eq!(
        resolve(&agent).unwrap().master,
        Some(("10.0.0.1".into(), 29501))
    );
}

#[test]
fn flags_override_the_environment_and_none_ignores_it() {
    let vars = [("OMPI_COMM_WORLD_RANK", "1"), ("OMPI_COMM_WORLD_SIZE", "2")];
    let explicit = Explicit {
        rank: Some(2),
        world_size: Some(4),
        local_rank: None,
        master: Some("[::1]:1234".into()),
    };
    let l = Launch::resolve(Detect::Auto, &explicit, &env_of(&vars)).unwrap();
    assert_eq!(l.launcher, Launcher::Tcp("--rank/--world-size"));
    assert_eq!((l.rank, l.size, l.local_rank), (2, 4, 2));
    assert_eq!(l.master, Some(("::1".to_string(), 1234)));
    let none = Launch::resolve(Detect::None, &explicit, &env_of(&vars)).unwrap();
    assert_eq!(none, Launch::single());
    let torchrun = Launch::resolve(Detect::Torchrun, &Explicit::default(), &env_of(&vars));
    let msg = torchrun.unwrap_err().to_string();
    assert!(msg.contains("RANK and WORLD_SIZE"), "{msg}");
}

#[test]
fn bad_values_name_the_variable() {
    let msg = |vars: &[(&str, &str)]| resolve(vars).unwrap_err().to_string();
    let m = msg(&[("OMPI_COMM_WORLD_RANK", "x"), ("OMPI_COMM_WORLD_SIZE", "2")]);
    assert!(m.contains("OMPI_COMM_WORLD_RANK=\"x\""), "{m}");
    let m = msg(&[("RANK", "2"), ("WORLD_SIZE", "2")]);
    assert!(
        m.contains("rank 2 of a world of 2") && m.contains("torchrun"),
        "{m}"
    );
    let m = msg(&[
        ("RANK", "0"),
        ("WORLD_SIZE", "2"),
        ("MASTER_ADDR", "h"),
        ("MASTER_PORT", "http"),
    ]);
    assert!(m.contains("MASTER_PORT=http"), "{m}");
    let half = Explicit {
        rank: Some(0),
        ..Explicit::default()
    };
    let m = Launch::resolve(Detect::Auto, &half, &env_of(&[]))
        .unwrap_err()
        .to_string();
    assert!(m.contains("--rank and --world-size"), "{m}");
    for bad in ["host", "host:port", ":80"] {
        let e = Explicit {
            rank: Some(0),
            world_size: Some(1),
            master: Some(bad.into()),
            ..Explicit::default()
        };
        let m = Launch::resolve(Detect::Auto, &e, &env_of(&[]))
            .unwrap_err()
            .to_string();
        assert!(m.contains("expected HOST:PORT"), "{bad}: {m}");
    }
}

#[test]
fn ranks_on_one_machine_share_its_cores() {
    let ompi = |local: &'static str| {
        vec![
            ("OMPI_COMM_WORLD_RANK", "0"),
            ("OMPI_COMM_WORLD_SIZE", "4"),
            ("OMPI_COMM_WORLD_LOCAL_SIZE", local),
        ]
    };
    assert_eq!(cpu_threads(&env_of(&ompi("2")), 16), Some(8));
    assert_eq!(cpu_threads(&env_of(&ompi("4")), 2), Some(1));
    // Bound to one core by mpirun: that core.
    assert_eq!(cpu_threads(&env_of(&ompi("2")), 1), Some(1));
    let mut slurm = vec![
        ("SLURM_PROCID", "0"),
        ("SLURM_STEP_NUM_TASKS", "2"),
        ("SLURM_STEP_TASKS_PER_NODE", "2"),
    ];
    assert_eq!(cpu_threads(&env_of(&slurm), 16), Some(8));
    slurm.push(("SLURM_CPUS_PER_TASK", "6"));
    assert_eq!(cpu_threads(&env_of(&slurm), 16), Some(6));
    assert_eq!(cpu_threads(&env_of(&[]), 16), None);
}
