//! The shell side: a line split into words (quotes kept), the `ddpm` invocations in it, and
//! the shrinking rule of tests/docs.rs applied to one invocation.

/// Split a shell line into words, quotes kept in them (`'a b'` is one word).
pub fn words(line: &str) -> Vec<String> {
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
pub fn with_ddpm(line: &str) -> Vec<String> {
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
pub fn invocations(words: &[String]) -> Vec<(usize, usize)> {
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
pub fn value_of<'a>(args: &'a [String], flags: &[&str]) -> Option<&'a str> {
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
pub fn shrink(invocation: &[String]) -> Vec<String> {
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
        Some("fid") => {
            cap(&mut args, &["-n", "--num"], 3, false);
            cap(&mut args, &["--steps"], 3, false);
        }
        Some("eval") => {
            cap(&mut args, &["-n", "--num"], 2, true);
            cap(&mut args, &["--ode-steps"], 3, true);
        }
        _ => {}
    }
    args
}
