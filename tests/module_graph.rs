//! The layering rule, checked on the source: no two modules import each other, directly or
//! around a longer circle. Each file of src/ is a module (`nn/kernels/conv.rs` is
//! `nn::kernels::conv`; the binary's `cli/*` are `<bin>::cli::*`); a path it names
//! (`crate::a::b`, `super::x`, `ddpm::a` from the binary, and each item of a `{...}` group) is an
//! edge to the deepest module that path reaches. Edges count between siblings — the children of
//! the two modules' common ancestor — so `train::state -> checkpoint` is `train -> checkpoint`,
//! while a module and its own submodules may name each other. Test code (`tests.rs`,
//! `*_tests.rs`, `testing.rs`, and a trailing `#[cfg(test)] mod tests { .. }`) and comments
//! are left out: tests may reach anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Module = Vec<String>;

/// The module a file under src/ defines.
fn module_of(rel: &Path) -> Module {
    let mut parts: Vec<String> = rel
        .with_extension("")
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    match parts.first().map(String::as_str) {
        Some("lib") if parts.len() == 1 => Vec::new(),
        Some("main") if parts.len() == 1 => vec!["<bin>".into()],
        Some("cli") => std::iter::once("<bin>".to_string()).chain(parts).collect(),
        _ => parts,
    }
}

fn is_test(m: &Module) -> bool {
    m.iter()
        .any(|p| p == "tests" || p == "testing" || p.ends_with("_tests"))
}

/// The source without comments and without a trailing inline test module.
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests {") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|l| l.find("//").map_or(l, |i| &l[..i]))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path starting at `crate`, `super`, `self` or `ddpm` in `code`, `{a, b::c}` groups
/// expanded, as segment lists.
fn paths_in(code: &str) -> Vec<Vec<String>> {
    let bytes = code.as_bytes();
    let mut out = Vec::new();
    for root in ["crate", "super", "self", "ddpm"] {
        let mut from = 0;
        while let Some(i) = code[from..].find(root).map(|i| i + from) {
            from = i + root.len();
            let before = i.checked_sub(1).map(|j| bytes[j]);
            let word_start = !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_');
            if word_start && code[from..].starts_with("::") {
                expand(&code[i..], &mut Vec::new(), &mut out);
            }
        }
    }
    out
}

/// Read one path (with groups) at the start of `s`, appending each full path to `out`; returns
/// the bytes consumed.
fn expand(s: &str, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
    let mut pos = 0;
    let depth = prefix.len();
    loop {
        let rest = &s[pos..];
        let trimmed = rest.trim_start();
        pos += rest.len() - trimmed.len();
        if let Some(group) = trimmed.strip_prefix('{') {
            pos += 1;
            let mut inner = group;
            loop {
                let used = expand(inner, prefix, out);
                pos += used;
                inner = &inner[used..];
                let t = inner.trim_start();
                pos += inner.len() - t.len();
                inner = t;
                match inner.chars().next() {
                    Some(',') => {
                        pos += 1;
                        inner = &inner[1..];
                        if inner.trim_start().starts_with('}') {
                            let t = inner.trim_start();
                            pos += inner.len() - t.len() + 1;
                            break;
                        }
                    }
                    Some('}') => {
                        pos += 1;
                        break;
                    }
                    _ => break,
                }
            }
            prefix.truncate(depth);
            return pos;
        }
        let ident_len = trimmed
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(trimmed.len());
        if ident_len == 0 {
            break;
        }
        prefix.push(trimmed[..ident_len].to_string());
        pos += ident_len;
        if s[pos..].starts_with("::") {
            pos += 2;
        } else {
            break;
        }
    }
    if prefix.len() > depth {
        out.push(prefix.clone());
    }
    prefix.truncate(depth);
    pos
}

/// The module a path written in module `from` refers to: the deepest known module it reaches.
fn target(from: &Module, path: &[String], known: &BTreeSet<Module>) -> Option<Module> {
    let mut full: Module = match path.first().map(String::as_str) {
        Some("crate") if from.first().is_some_and(|p| p == "<bin>") => vec!["<bin>".into()],
        Some("crate") | Some("ddpm") => Vec::new(),
        Some("self") => from.clone(),
        Some("super") => from.clone(),
        _ => return None,
    };
    let mut rest = &path[1..];
    if path[0] == "super" {
        full.pop();
        while rest.first().is_some_and(|p| p == "super") {
            full.pop();
            rest = &rest[1..];
        }
    }
    full.extend(rest.iter().cloned());
    (1..=full.len())
        .rev()
        .map(|k| full[..k].to_vec())
        .find(|m| known.contains(m))
}

/// The sibling edges of a source tree given as (path under src/, text).
fn sibling_edges(files: &[(String, String)]) -> BTreeMap<Module, BTreeSet<Module>> {
    let modules: BTreeMap<Module, &str> = files
        .iter()
        .map(|(p, t)| (module_of(Path::new(p)), t.as_str()))
        .collect();
    let known: BTreeSet<Module> = modules.keys().cloned().collect();
    let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (from, text) in &modules {
        if is_test(from) {
            continue;
        }
        for path in paths_in(&code_of(text)) {
            let Some(to) = target(from, &path, &known) else {
                continue;
            };
            if is_test(&to) {
                continue;
            }
            let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
            if common == from.len() || common == to.len() {
                continue;
            }
            edges
                .entry(from[..=common].to_vec())
                .or_default()
                .insert(to[..=common].to_vec());
        }
    }
    edges
}

/// A circle of modules, if the edges hold one (depth-first search for a back edge).
fn find_cycle(edges: &BTreeMap<Module, BTreeSet<Module>>) -> Option<Vec<Module>> {
    fn visit(
        m: &Module,
        edges: &BTreeMap<Module, BTreeSet<Module>>,
        done: &mut BTreeSet<Module>,
        stack: &mut Vec<Module>,
    ) -> Option<Vec<Module>> {
        if let Some(i) = stack.iter().position(|s| s == m) {
            let mut cycle = stack[i..].to_vec();
            cycle.push(m.clone());
            return Some(cycle);
        }
        if done.contains(m) {
            return None;
        }
        stack.push(m.clone());
        for next in edges.get(m).into_iter().flatten() {
            if let Some(c) = visit(next, edges, done, stack) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(m.clone());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|m| visit(m, edges, &mut done, &mut Vec::new()))
}

fn show(cycle: &[Module]) -> String {
    cycle
        .iter()
        .map(|m| m.join("::"))
        .collect::<Vec<_>>()
        .join(" -> ")
}

fn read_tree(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            read_tree(&path, root, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            out.push((rel, std::fs::read_to_string(&path).unwrap()));
        }
    }
}

#[test]
fn no_two_modules_import_each_other() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    read_tree(&src, &src, &mut files);
    let edges = sibling_edges(&files);
    // The check sees the crate: the training loop reaches the checkpoint format.
    assert!(
        edges[&vec!["train".to_string()]].contains(&vec!["checkpoint".to_string()]),
        "{edges:?}"
    );
    if let Some(cycle) = find_cycle(&edges) {
        panic!("modules import each other: {}", show(&cycle));
    }
}

#[test]
fn the_check_finds_circles_through_groups_super_and_the_binary() {
    let file = |p: &str, t: &str| (p.to_string(), t.to_string());
    let circle = |files: &[(String, String)]| find_cycle(&sibling_edges(files)).map(|c| show(&c));
    // Through a `{..}` group and a nested path: a -> b -> c -> a.
    let files = [
        file("lib.rs", "pub mod a; pub mod b; pub mod c;"),
        file("a.rs", "use crate::{error::E, b::{x, y::z}};"),
        file("b.rs", "fn f() { crate::c::g() }"),
        file("c/mod.rs", "mod inner;"),
        file("c/inner.rs", "use crate::a::Thing;"),
        file("error.rs", ""),
    ];
    assert_eq!(circle(&files).as_deref(), Some("a -> b -> c -> a"));
    // Siblings through `super::`, in the binary.
    let files = [
        file("main.rs", "mod cli;"),
        file("cli/mod.rs", "mod p; mod q; use p::run;"),
        file("cli/p.rs", "use super::q::Format;"),
        file("cli/q.rs", "use super::p; // super::nothing"),
    ];
    assert_eq!(
        circle(&files).as_deref(),
        Some("<bin>::cli::p -> <bin>::cli::q -> <bin>::cli::p")
    );
    // A module and its children, tests and comments do not count.
    let files = [
        file("lib.rs", "pub mod a; pub mod b;"),
        file("a/mod.rs", "mod kid; pub use kid::K; // crate::b::x"),
        file("a/kid.rs", "use super::Parent;"),
        file("a/tests.rs", "use crate::b::x;"),
        file(
            "b.rs",
            "use crate::a::K;\n#[cfg(test)]\nmod tests {\n use crate::a::kid;\n}\n",
        ),
    ];
    assert_eq!(circle(&files), None);
}
