//! The docs run: every command line in README.md's code blocks and in the examples of each
//! `--help` is run here as a user would run it (bash, in a scratch folder, in the order shown),
//! shrunk by one rule so the suite stays fast, unless ELSEWHERE lists it with where it runs
//! instead or why it cannot run here. A `ddpm` command added to the docs is run with no change
//! to this file; any other line (cargo, scripts) fails `every_doc_command_is_run_or_listed`
//! until it gets an ELSEWHERE row, and so does a `ddpm` line that cannot run under the rule.
//!
//! The rule (`docs_run::shell::shrink`), for each `ddpm` invocation in a line:
//! - `./target/release/ddpm ARGS`, `cargo run --release -- ARGS` and `ddpm ARGS` all run the
//!   binary under test (the same code; CI does not build the release profile);
//! - `train`: `--max-steps 1` (2 with `--resume`: one more step), whatever was written, and
//!   `--set train.batch_size=2` appended (it wins over any earlier --set of that key);
//! - `sample`, `interpolate`: `-n`, `--frames` and `--steps` at most 3, `--steps 3` added
//!   where absent (the ancestral sampler would otherwise take T steps);
//! - `eval`: `-n` at most 2 and `--ode-steps` at most 3, both added where absent;
//! - `fid`: `-n` and `--steps` at most 3;
//! - every other subcommand runs as written.
//!
//! What a line reads but the docs never made is made on first use (`docs_run::sandbox`): a
//! missing checkpoint (`--checkpoint P`, `info P`, `export P`) is a model trained two steps
//! (configs/tiny.toml, class-conditional with 10 classes; configs/moons.toml when the path
//! names 8g, moons, swiss_roll or gaussians), an input image (`--init`, `--mask`, `--from`,
//! `--to`) an 8x8 PNG, `--data DIR` a folder of ten class subfolders with one PNG each; for
//! `fid`, Inception weights drawn from a seed (at `--inception P`, and `DDPM_INCEPTION` names
//! them for every line), a missing image folder three PNGs, a missing `.npy` three samples,
//! a missing `.npz` the statistics of three PNGs (`docs_run::fid`); `import DIR` a diffusers
//! folder exported from an unconditional tiny model (`--scheduler P`: its scheduler config);
//! configs/ is copied in.
//! HOME is the scratch folder, and a `> ~/path` redirection gets its folders made there.
//! Lines that pipe into python3 need numpy: without it they are skipped with a note, unless
//! DDPM_DOCS_NUMPY=1 (set by .ci/run, which installs numpy) makes that a failure.
//!
//! To add a command to the docs: write it; if it is a `ddpm` line it runs here as is. A line
//! that cannot run here (a build, a benchmark, a GPU or MPI launcher) gets one ELSEWHERE row:
//! `Ci(needles)` if .ci/run runs it (each needle must appear there), `Test(file, needles)` if a
//! test file runs the same command (each needle must appear in the file; that file must run in
//! CI), `Not(why)` otherwise. Keep the `Not` rows few and their reasons true.

mod common;
mod docs_run;

use docs_run::extract::{help_commands, readme_commands, repo, strip_comment, DocLine};
use docs_run::fid;
use docs_run::sandbox::Sandbox;
use docs_run::shell::{invocations, shrink, value_of, with_ddpm, words};

/// Where a doc line that this test does not run is run instead, or why it is not.
#[derive(Clone, Copy, Debug)]
enum Elsewhere {
    /// .ci/run runs it: each string appears in .ci/run.
    Ci(&'static [&'static str]),
    /// A test file runs the same command (shrunk, or under its own fixtures): each string
    /// appears in that file.
    Test(&'static str, &'static [&'static str]),
    /// Not run by any test or CI script; the reason.
    Not(&'static str),
}

use Elsewhere::{Ci, Not, Test};

/// The doc lines this test does not run, exactly as the docs write them (whitespace runs
/// collapsed, trailing `# comment` dropped).
const ELSEWHERE: &[(&str, Elsewhere)] = &[
    // Building and checking.
    (
        "cargo fmt --check && cargo clippy --all-targets -- -D warnings && cargo test",
        Ci(&[
            "cargo fmt --check",
            "cargo clippy --locked --all-targets -- -D warnings",
            "cargo test --locked",
        ]),
    ),
    (
        "cargo clippy --features mpi --all-targets -- -D warnings && cargo test --features mpi --test distributed",
        Ci(&[
            "cargo clippy --locked --features mpi --all-targets -- -D warnings",
            "cargo test --locked --features mpi --test distributed",
        ]),
    ),
    (
        "cargo build --release --features mpi",
        Not("a release build; .ci/run compiles the mpi feature (clippy) and runs tests/distributed.rs with it"),
    ),
    (
        "cargo build --release --features nccl,mpi",
        Not("needs the CUDA toolkit and NCCL; .ci/cuda-check lints the cuda, nccl and mpi features"),
    ),
    // Launchers: several GPUs or machines; the CPU ranks run in tests/distributed.rs.
    (
        "torchrun --standalone --nproc-per-node 8 --no-python ddpm train --config configs/cifar10.toml --device cuda --out runs/c10",
        Not("8 GPUs"),
    ),
    (
        "mpirun -np 8 ddpm train --config configs/cifar10.toml --device cuda --out runs/c10",
        Not("8 GPUs"),
    ),
    (
        "torchrun --nproc-per-node 8 --no-python ddpm train --config configs/cifar10.toml --device cuda",
        Not("8 GPUs"),
    ),
    (
        "torchrun --nnodes 2 --node-rank 0 --nproc-per-node 8 --master-addr node0 --master-port 29500 --no-python ddpm train --config configs/cifar10.toml --device cuda --out runs/c10",
        Not("two machines of 8 GPUs"),
    ),
    (
        "mpirun -np 16 -H node0:8,node1:8 ddpm train --config configs/cifar10.toml --device cuda --out runs/c10",
        Not("two machines of 8 GPUs"),
    ),
    (
        "srun --nodes 2 --ntasks-per-node 8 --gpus-per-node 8 ddpm train --config configs/cifar10.toml --device cuda",
        Not("a Slurm cluster of two machines of 8 GPUs"),
    ),
    (
        "mpirun -np 2 --bind-to none -x RAYON_NUM_THREADS=1 ddpm train --config configs/digits.toml",
        Test(
            "tests/distributed.rs",
            &[
                "\"--bind-to\"",
                "RAYON_NUM_THREADS={threads}",
                "fn two_ranks_train_what_one_process_of_two_threads_does_bit_for_bit",
            ],
        ),
    ),
    (
        "mpirun -np 2 -x RAYON_NUM_THREADS=1 ddpm train --config configs/digits.toml --out runs/d2",
        Test(
            "tests/distributed.rs",
            &[
                "RAYON_NUM_THREADS={threads}",
                "fn two_ranks_train_what_one_process_of_two_threads_does_bit_for_bit",
            ],
        ),
    ),
    (
        "mpirun -np 8 ddpm sample --checkpoint runs/c10/latest.safetensors -n 50000 --out-dir fid",
        Test(
            "tests/distributed.rs",
            &["fn two_ranks_sample_the_files_one_process_writes", "\"--out-dir\""],
        ),
    ),
    // Benchmarks: PyTorch, or minutes to hours of quiet machine.
    (
        "export REF_PY=/path/to/venv/bin/python",
        Not("the PyTorch reference's interpreter, for the benchmarks below"),
    ),
    (
        "$REF_PY benches/reference/parity.py",
        Not("needs PyTorch (CI has no Python ML packages)"),
    ),
    (
        "REPS=5 benches/compare.sh",
        Not("the side-by-side benchmark: PyTorch and about an hour of quiet machine"),
    ),
    (
        "python3 benches/compare.py summary target/compare.jsonl",
        Not("reads the results of benches/compare.sh"),
    ),
    (
        "cargo bench --bench workloads -- W3",
        Not("a criterion benchmark (minutes); CI compiles it (clippy --all-targets)"),
    ),
    (
        "cargo bench --bench conv",
        Not("a criterion benchmark (minutes); CI compiles it (clippy --all-targets)"),
    ),
];

/// `file` (relative to the repository) holds every needle of a line it is listed as running.
fn check_runs(line: &DocLine, file: &str, needles: &[&str]) {
    let text = std::fs::read_to_string(repo().join(file)).unwrap_or_else(|e| {
        panic!(
            "{}: `{}` is listed as run by {file}: {e}",
            line.source, line.text
        )
    });
    for needle in needles {
        assert!(
            text.contains(needle),
            "{}: `{}` is listed as run by {file}, which has no `{needle}`",
            line.source,
            line.text
        );
    }
}

/// Run every line of one doc source in order in `sandbox`; ELSEWHERE lines are checked instead.
fn run_all(sandbox: &Sandbox, lines: &[DocLine]) {
    for line in lines {
        match elsewhere(line) {
            Some(Ci(needles)) => check_runs(line, ".ci/run", needles),
            Some(Test(file, needles)) => check_runs(line, file, needles),
            Some(Not(why)) => eprintln!("not run: {}: {} ({why})", line.source, line.text),
            None => sandbox.run(line),
        }
    }
}

/// The ELSEWHERE row of `line`, if it has one.
fn elsewhere(line: &DocLine) -> Option<Elsewhere> {
    let key = line.key();
    ELSEWHERE.iter().find(|(k, _)| *k == key).map(|(_, e)| *e)
}

/// Every README command line runs, in order, in one scratch folder (the quick start trains
/// runs/digits, the lines after it sample from it).
#[test]
fn readme_commands_run() {
    let lines = readme_commands();
    assert!(lines.len() >= 20, "README commands: {lines:#?}");
    run_all(&Sandbox::new(), &lines);
}

/// Every --help example runs, each help text in its own scratch folder.
#[test]
fn help_examples_run() {
    for lines in help_commands() {
        run_all(&Sandbox::new(), &lines);
    }
}

/// Each doc line is a `ddpm` line (run by the tests above) or has an ELSEWHERE row, and every
/// row is still in the docs; `ddpm sample` and `ddpm eval` lines say how many images (-n), so
/// none runs the checkpoint's whole default for half an hour.
#[test]
fn every_doc_command_is_run_or_listed() {
    let mut all = readme_commands();
    all.extend(help_commands().into_iter().flatten());
    let mut unlisted = Vec::new();
    for line in &all {
        let words = with_ddpm(&line.text);
        let calls = invocations(&words);
        if calls.is_empty() && elsewhere(line).is_none() {
            unlisted.push(format!("{}: {}", line.source, line.text));
        }
        for (start, end) in calls {
            let args = &words[start..end];
            if matches!(args.get(1).map(String::as_str), Some("sample" | "eval")) {
                assert!(
                    value_of(args, &["-n", "--num"]).is_some(),
                    "{}: `{}` does not say -n",
                    line.source,
                    line.text
                );
            }
        }
    }
    assert!(
        unlisted.is_empty(),
        "doc lines that no test runs; add an ELSEWHERE row in tests/docs.rs:\n{}",
        unlisted.join("\n")
    );
    for (key, _) in ELSEWHERE {
        assert!(
            all.iter().any(|l| l.key() == *key),
            "ELSEWHERE row `{key}` is in no doc any more; remove it"
        );
    }
}

/// The rule, on words: caps, additions and the ways of calling the binary.
#[test]
fn the_shrinking_rule_does_what_the_module_comment_says() {
    let shrunk = |line: &str| {
        let w = with_ddpm(line);
        let (s, e) = invocations(&w)[0];
        shrink(&w[s..e]).join(" ")
    };
    assert_eq!(
        shrunk("./target/release/ddpm sample --checkpoint C -n 64 --steps 50"),
        "ddpm sample --checkpoint C -n 3 --steps 3"
    );
    assert_eq!(
        shrunk("cargo run --release -- sample --checkpoint C -n 2 --sampler ddpm"),
        "ddpm sample --checkpoint C -n 2 --sampler ddpm --steps 3"
    );
    assert_eq!(
        shrunk("ddpm train --config c.toml --max-steps 500 --resume"),
        "ddpm train --config c.toml --resume --max-steps 2 --set train.batch_size=2"
    );
    assert_eq!(
        shrunk("ddpm fid C s.npz -n 50000 --sampler ddim --steps 100"),
        "ddpm fid C s.npz -n 3 --sampler ddim --steps 3"
    );
    assert_eq!(
        fid::sets(&words(
            "ddpm fid a/ --inception w.pth b.npy --kid --json -n 2"
        )),
        ["a/", "b.npy"]
    );
    assert_eq!(
        shrunk("ddpm eval --checkpoint C --method both"),
        "ddpm eval --checkpoint C --method both -n 2 --ode-steps 3"
    );
    assert_eq!(
        shrunk("for s in 1 2; do ddpm sample -n 1 --seed $s --out - > s$s.png; done"),
        "ddpm sample -n 1 --seed $s --out - --steps 3"
    );
    assert_eq!(words("a 'b c'  \"d e\" f"), ["a", "'b c'", "\"d e\"", "f"]);
    assert_eq!(
        strip_comment("ddpm x --out a  # also 'moons'"),
        "ddpm x --out a"
    );
    assert_eq!(strip_comment("echo 'a # b'"), "echo 'a # b'");
}
