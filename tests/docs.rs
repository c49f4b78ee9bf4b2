//! The docs run: every command line in README.md's code blocks and in the examples of each
//! `--help` is run here as a user would run it (bash, in a scratch folder, in the order shown),
//! shrunk by one rule so the suite stays fast, unless ELSEWHERE lists it with where it runs
//! instead or why it cannot run here. A `ddpm` command added to the docs is run with no change
//! to this file; any other line (cargo, scripts) fails `every_doc_command_is_run_or_listed`
//! until it gets an ELSEWHERE row, and so does a `ddpm` line that cannot run under the rule.
//!
//! The rule (`shrink`), for each `ddpm` invocation in a line:
//! - `./target/release/ddpm ARGS`, `cargo run --release -- ARGS` and `ddpm ARGS` all run the
//!   binary under test (the same code; CI does not build the release profile);
//! - `train`: `--max-steps 1` (2 with `--resume`: one more step), whatever was written, and
//!   `--set train.batch_size=2` appended (it wins over any earlier --set of that key);
//! - `sample`, `interpolate`: `-n`, `--frames` and `--steps` at most 3, `--steps 3` added
//!   where absent (the ancestral sampler would otherwise take T steps);
//! - `eval`: `-n` at most 2 and `--ode-steps` at most 3, both added where absent;
//! - every other subcommand runs as written.
//!
//! What a line reads but the docs never made is made on first use (`provide`): a missing
//! checkpoint (`--checkpoint P`, `info P`) is a model trained two steps (configs/tiny.toml,
//! class-conditional with 10 classes; configs/moons.toml when the path names 8g, moons,
//! swiss_roll or gaussians), an input image (`--init`, `--mask`, `--from`, `--to`) an 8x8 PNG,
//! `--data DIR` a folder of ten class subfolders with one PNG each; configs/ is copied in. Lines that pipe into python3 need numpy:
//! without it they are skipped with a note, unless DDPM_DOCS_NUMPY=1 (set by .ci/run, which
//! installs numpy) makes that a failure.
//!
//! To add a command to the docs: write it; if it is a `ddpm` line it runs here as is. A line
//! that cannot run here (a build, a benchmark, a GPU or MPI launcher) gets one ELSEWHERE row:
//! `Ci(needles)` if .ci/run runs it (each needle must appear there), `Not(why)` otherwise.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where a doc line that this test does not run is run instead, or why it is not.
#[derive(Clone, Copy, Debug)]
enum Elsewhere {
    /// .ci/run runs it: each string appears in .ci/run.
    Ci(&'static [&'static str]),
    /// Not run by any test or CI script; the reason.
    Not(&'static str),
}

use Elsewhere::{Ci, Not};

/// The doc lines this test does not run, exactly as the docs write them (whitespace runs
/// collapsed, trailing `# comment` dropped).
const ELSEWHERE: &[(&str, Elsewhere)] = &[
    (
        "cargo build --release",
        Not("a release build (thin LTO, ~10 CPU-minutes); CI builds and tests the same code in the test profile"),
    ),
    (
        "cargo fmt --check && cargo clippy --all-targets -- -D warnings && cargo test",
        Ci(&[
            "cargo fmt --check",
            "cargo clippy --locked --all-targets -- -D warnings",
            "cargo test --locked",
        ]),
    ),
    (
        "export REF_PY=/path/to/venv/bin/python",
        Not("the PyTorch reference's interpreter, for the benchmark below"),
    ),
    (
        "BENCH_DIR=../shared/bench REPS=5 benches/compare.sh",
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

/// One command line of the docs: where it is shown, and its text.
#[derive(Clone, Debug)]
struct DocLine {
    source: String,
    text: String,
}

impl DocLine {
    /// The text as ELSEWHERE keys write it: whitespace runs collapsed.
    fn key(&self) -> String {
        self.text.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    fn elsewhere(&self) -> Option<Elsewhere> {
        let key = self.key();
        ELSEWHERE.iter().find(|(k, _)| *k == key).map(|(_, e)| *e)
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ddpm"))
}

/// `line` without a trailing shell comment (an unquoted `#` at the start of a word).
fn strip_comment(line: &str) -> &str {
    let (mut quote, mut prev_space) = (None, true);
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), _) if c == q => quote = None,
            (None, '#') if prev_space => return line[..i].trim_end(),
            _ => {}
        }
        prev_space = c.is_whitespace();
    }
    line.trim_end()
}

/// Code lines (comments and blank lines dropped, `\` continuations joined) of `lines`.
fn commands(source: &str, lines: &[String]) -> Vec<DocLine> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for raw in lines {
        let line = strip_comment(raw.trim());
        if line.is_empty() && pending.is_empty() {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => pending.push_str(head.trim_end()),
            None => {
                pending.push_str(line);
                out.push(DocLine {
                    source: source.to_string(),
                    text: std::mem::take(&mut pending),
                });
                continue;
            }
        }
        pending.push(' ');
    }
    out
}

/// The command lines of README.md: fenced blocks that are shell (no language, sh, bash,
/// console, shell) and indented code blocks.
fn readme_commands() -> Vec<DocLine> {
    let text = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let mut code = Vec::new();
    let (mut fence, mut shell, mut indented, mut prev_blank) = (false, false, false, true);
    for line in text.lines() {
        if let Some(info) = line.trim_start().strip_prefix("```") {
            if fence {
                fence = false;
            } else {
                fence = true;
                shell = matches!(info.trim(), "" | "sh" | "bash" | "console" | "shell");
            }
            prev_blank = false;
            continue;
        }
        if fence {
            if shell {
                code.push(line.to_string());
            }
            continue;
        }
        let blank = line.trim().is_empty();
        if line.starts_with("    ") && (prev_blank || indented) && !blank {
            indented = true;
            code.push(line[4..].to_string());
        } else if !blank {
            indented = false;
            if !code.last().is_some_and(|l| l.is_empty()) {
                code.push(String::new());
            }
        }
        prev_blank = blank;
    }
    commands("README.md", &code)
}

/// The binary's output for `args`, as text.
fn help(args: &[&str]) -> String {
    let out = Command::new(binary()).args(args).output().unwrap();
    assert!(out.status.success(), "ddpm {args:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// The lines under "Examples:" in a help text, up to the first blank line.
fn examples(text: &str) -> Vec<String> {
    text.lines()
        .skip_while(|l| l.trim() != "Examples:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .map(String::from)
        .collect()
}

/// The examples of `ddpm --help` and of every subcommand's --help, one list per help text.
fn help_commands() -> Vec<Vec<DocLine>> {
    let top = help(&["--help"]);
    let subcommands: Vec<String> = top
        .lines()
        .skip_while(|l| l.trim() != "Commands:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .filter(|name| name != "help")
        .collect();
    assert!(subcommands.len() >= 5, "subcommands in {top}");
    let mut all = vec![commands("ddpm --help", &examples(&top))];
    for name in subcommands {
        let text = help(&[&name, "--help"]);
        all.push(commands(&format!("ddpm {name} --help"), &examples(&text)));
    }
    all
}

/// Split a shell line into words, quotes kept in them (`'a b'` is one word).
fn words(line: &str) -> Vec<String> {
    let (mut out, mut word, mut quote) = (Vec::new(), String::new(), None);
    for c in line.chars() {
        match (quote, c) {
            (None, '\'' | '"') => {
                quote = Some(c);
                word.push(c);
            }
            (Some(q), _) if c == q => {
                quote = None;
                word.push(c);
            }
            (None, c) if c.is_whitespace() => {
                if !word.is_empty() {
                    out.push(std::mem::take(&mut word));
                }
            }
            _ => word.push(c),
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

/// Words that end a command inside a line (pipes, lists, redirections, loop keywords).
fn ends_command(word: &str) -> bool {
    matches!(
        word,
        "|" | "||" | "&&" | ";" | ">" | ">>" | "2>" | "<" | "do" | "done" | "then" | "fi"
    )
}

/// The words of a line with every way of calling the binary made `ddpm`.
fn with_ddpm(line: &str) -> Vec<String> {
    let w = words(line);
    let mut out = Vec::new();
    let mut i = 0;
    while i < w.len() {
        if w[i..].starts_with(&["cargo", "run", "--release", "--"].map(String::from)) {
            out.push("ddpm".to_string());
            i += 4;
            continue;
        }
        out.push(match w[i].as_str() {
            "./target/release/ddpm" | "target/release/ddpm" => "ddpm".to_string(),
            _ => w[i].clone(),
        });
        i += 1;
    }
    out
}

/// The `ddpm` invocations of a line: (start, end) word ranges of `words`, from `ddpm` to the
/// word before the command ends.
fn invocations(words: &[String]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < words.len() {
        if words[i] == "ddpm" {
            let end = (i + 1..words.len())
                .find(|&j| ends_command(&words[j]))
                .unwrap_or(words.len());
            out.push((i, end));
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

/// The value after `flag` (or in `flag=value`) in `args`.
fn value_of<'a>(args: &'a [String], flags: &[&str]) -> Option<&'a str> {
    args.iter().enumerate().find_map(|(k, a)| {
        if flags.contains(&a.as_str()) {
            return args.get(k + 1).map(String::as_str);
        }
        flags.iter().find_map(|f| a.strip_prefix(&format!("{f}=")))
    })
}

/// Cap the numeric value of `flags` at `cap` in `args`, or add `flags[0] cap` when absent and
/// `add`.
fn cap(args: &mut Vec<String>, flags: &[&str], cap: u64, add: bool) {
    for k in 0..args.len() {
        if flags.contains(&args[k].as_str()) && k + 1 < args.len() {
            if let Ok(v) = args[k + 1].parse::<u64>() {
                args[k + 1] = v.min(cap).to_string();
            }
            return;
        }
        if let Some((f, v)) = args[k].split_once('=') {
            if flags.contains(&f) {
                if let Ok(v) = v.parse::<u64>() {
                    args[k] = format!("{f}={}", v.min(cap));
                }
                return;
            }
        }
    }
    if add {
        args.push(flags[0].to_string());
        args.push(cap.to_string());
    }
}

/// The shrinking rule of the module comment, applied to one invocation's words (`ddpm` first).
fn shrink(invocation: &[String]) -> Vec<String> {
    let mut args = invocation.to_vec();
    match args.get(1).map(String::as_str) {
        Some("train") => {
            let steps = if args.iter().any(|a| a == "--resume") {
                2
            } else {
                1
            };
            if let Some(k) = args.iter().position(|a| a == "--max-steps") {
                args.drain(k..(k + 2).min(args.len()));
            }
            args.retain(|a| !a.starts_with("--max-steps="));
            args.extend(["--max-steps".to_string(), steps.to_string()]);
            args.extend(["--set".to_string(), "train.batch_size=2".to_string()]);
        }
        Some("sample" | "interpolate") => {
            cap(&mut args, &["-n", "--num"], 3, false);
            cap(&mut args, &["--frames"], 3, false);
            cap(&mut args, &["--steps"], 3, true);
        }
        Some("eval") => {
            cap(&mut args, &["-n", "--num"], 2, true);
            cap(&mut args, &["--ode-steps"], 3, true);
        }
        _ => {}
    }
    args
}

/// A scratch folder that runs doc lines in order, with `ddpm` on PATH and configs/ copied in.
struct Sandbox {
    tmp: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let bin = tmp.path().join(".bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::os::unix::fs::symlink(binary(), bin.join("ddpm")).unwrap();
        copy_dir(&repo().join("configs"), &tmp.path().join("configs"));
        Sandbox { tmp }
    }

    fn dir(&self) -> &Path {
        self.tmp.path()
    }

    /// Make what the invocation `args` reads and the docs did not make (module comment).
    fn provide(&self, args: &[String]) {
        let at = |p: &str| self.dir().join(p);
        let subcommand = args.get(1).map(String::as_str);
        let mut checkpoints: Vec<&str> = value_of(args, &["--checkpoint", "-c"])
            .into_iter()
            .collect();
        if subcommand == Some("info") {
            checkpoints.extend(
                args.get(2)
                    .map(String::as_str)
                    .filter(|a| !a.starts_with('-')),
            );
        }
        for ckpt in checkpoints {
            if !at(ckpt).exists() {
                let points = ["8g", "moons", "swiss", "gaussians"]
                    .iter()
                    .any(|p| ckpt.contains(p));
                let fixture = self.fixture(points);
                std::fs::create_dir_all(at(ckpt).parent().unwrap()).unwrap();
                std::fs::copy(fixture, at(ckpt)).unwrap();
            }
        }
        for flag in ["--init", "--from", "--to", "--mask"] {
            if let Some(p) = value_of(args, &[flag]).filter(|p| !at(p).exists()) {
                write_png(&at(p), flag == "--mask");
            }
        }
        if subcommand == Some("eval") {
            if let Some(d) = value_of(args, &["--data"]).filter(|d| *d != "digits") {
                // One image in each of ten class folders: a class-conditional checkpoint
                // reads labels from first-level subfolders.
                if !at(d).exists() {
                    for class in 0..10 {
                        write_png(&at(d).join(class.to_string()).join("a.png"), class % 2 == 1);
                    }
                }
            }
        }
    }

    /// A checkpoint trained two steps in this sandbox's .fixtures: images (tiny.toml,
    /// class-conditional) or points (moons.toml).
    fn fixture(&self, points: bool) -> PathBuf {
        let (name, config, extra): (&str, &str, &[&str]) = match points {
            true => ("points", "moons.toml", &["--set", "train.batch_size=8"]),
            false => (
                "images",
                "tiny.toml",
                &[
                    "--set",
                    "data.class_labels=true",
                    "--set",
                    "model.num_classes=10",
                ],
            ),
        };
        let run = self.dir().join(".fixtures").join(name);
        let ckpt = run.join("latest.safetensors");
        if !ckpt.exists() {
            let config = repo().join("configs").join(config);
            let mut args = vec![
                "train",
                "--config",
                config.to_str().unwrap(),
                "--out",
                run.to_str().unwrap(),
                "--max-steps",
                "2",
                "--device",
                "cpu",
                "--quiet",
            ];
            args.extend_from_slice(extra);
            common::run(self.dir(), &args, 0);
        }
        ckpt
    }

    /// Run `line` (shrunk) with bash; panics, naming the line, unless it succeeds.
    fn run(&self, line: &DocLine) {
        let words = with_ddpm(&line.text);
        let mut shrunk = Vec::new();
        let mut last = 0;
        for (start, end) in invocations(&words) {
            shrunk.extend_from_slice(&words[last..start]);
            let args = shrink(&words[start..end]);
            self.provide(&args);
            shrunk.extend(args);
            last = end;
        }
        shrunk.extend_from_slice(&words[last..]);
        let script = shrunk.join(" ");
        if script.contains("python3") && script.contains("numpy") && !has_numpy() {
            let required = std::env::var("DDPM_DOCS_NUMPY").is_ok_and(|v| v == "1");
            assert!(
                !required,
                "{}: {}: python3 has no numpy (DDPM_DOCS_NUMPY=1)",
                line.source, line.text
            );
            eprintln!(
                "skipped (python3 has no numpy): {}: {}",
                line.source, line.text
            );
            return;
        }
        let path = format!(
            "{}:{}",
            self.dir().join(".bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let out = Command::new("bash")
            .args(["-o", "pipefail", "-c", &script])
            .current_dir(self.dir())
            .env("PATH", path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !stderr.contains("panicked"),
            "{}: `{}` failed ({:?}), run as `{script}`:\n{stderr}",
            line.source,
            line.text,
            out.status.code()
        );
    }

    /// Run every line of one doc source in order; ELSEWHERE lines are checked instead.
    fn run_all(&self, lines: &[DocLine]) {
        for line in lines {
            match line.elsewhere() {
                Some(Ci(needles)) => check_ci(line, needles),
                Some(Not(why)) => eprintln!("not run: {}: {} ({why})", line.source, line.text),
                None => self.run(line),
            }
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else if entry.path().extension().is_some_and(|e| e == "toml") {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// An 8x8 grey PNG at `path`: a ramp, or a mask white on its left half.
fn write_png(path: &Path, mask: bool) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::GrayImage::from_fn(8, 8, |x, y| match mask {
        true => image::Luma([if x < 4 { 255 } else { 0 }]),
        false => image::Luma([(x * 29 + y * 13) as u8]),
    })
    .save(path)
    .unwrap();
}

fn has_numpy() -> bool {
    Command::new("python3")
        .args(["-c", "import numpy"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// .ci/run holds every needle of a line CI runs.
fn check_ci(line: &DocLine, needles: &[&str]) {
    let ci = std::fs::read_to_string(repo().join(".ci/run")).unwrap();
    for needle in needles {
        assert!(
            ci.contains(needle),
            "{}: `{}` is listed as run by .ci/run, which has no `{needle}`",
            line.source,
            line.text
        );
    }
}

/// Every README command line runs, in order, in one scratch folder (the quick start trains
/// runs/digits, the lines after it sample from it).
#[test]
fn readme_commands_run() {
    let lines = readme_commands();
    assert!(lines.len() >= 20, "README commands: {lines:#?}");
    Sandbox::new().run_all(&lines);
}

/// Every --help example runs, each help text in its own scratch folder.
#[test]
fn help_examples_run() {
    for lines in help_commands() {
        Sandbox::new().run_all(&lines);
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
        if calls.is_empty() && line.elsewhere().is_none() {
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
