//! Reading the docs: the command lines of README.md's shell code blocks and of the Examples in
//! `ddpm --help` and each subcommand's --help, comments dropped and `\` continuations joined.

use std::path::PathBuf;
use std::process::Command;

/// One command line of the docs: where it is shown, and its text.
#[derive(Clone, Debug)]
pub struct DocLine {
    pub source: String,
    pub text: String,
}

impl DocLine {
    /// The text as ELSEWHERE keys write it: whitespace runs collapsed.
    pub fn key(&self) -> String {
        self.text.split_whitespace().collect::<Vec<_>>().join(" ")
    }
}

/// The repository (README.md, configs/, .ci/).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `ddpm` binary under test.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ddpm"))
}

/// `line` without a trailing shell comment (an unquoted `#` at the start of a word).
pub fn strip_comment(line: &str) -> &str {
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
pub fn readme_commands() -> Vec<DocLine> {
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
pub fn help_commands() -> Vec<Vec<DocLine>> {
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
