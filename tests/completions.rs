//! Shell completions and man pages come from the clap definitions: each names every
//! subcommand that `ddpm --help` lists (read from it, so a new command is covered too).

mod common;

use common::run;

/// The subcommands `ddpm --help` lists, but `help`.
fn subcommands(dir: &std::path::Path) -> Vec<String> {
    let (out, _) = run(dir, &["--help"], 0);
    let help = String::from_utf8(out).unwrap();
    let list: Vec<String> = help
        .split("Commands:\n")
        .nth(1)
        .unwrap()
        .lines()
        .take_while(|l| l.starts_with("  "))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .filter(|c| c != "help")
        .collect();
    assert!(
        list.len() >= 9 && list.contains(&"completions".to_string()),
        "{list:?}"
    );
    list
}

#[test]
fn completion_scripts_name_every_subcommand() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let commands = subcommands(dir);
    for shell in ["bash", "zsh", "fish"] {
        let (out, _) = run(dir, &["completions", shell], 0);
        let script = String::from_utf8(out).unwrap();
        for c in &commands {
            assert!(script.contains(c.as_str()), "{shell}: no {c}");
        }
        // And the options of a subcommand, e.g. train's.
        assert!(script.contains("init-from"), "{shell}");
    }
    assert!(script_of(dir, "bash").contains("complete -F _ddpm"));
    assert!(script_of(dir, "fish").contains("complete -c ddpm"));
    run(dir, &["completions", "tcsh"], 2);
}

fn script_of(dir: &std::path::Path, shell: &str) -> String {
    String::from_utf8(run(dir, &["completions", shell], 0).0).unwrap()
}

#[test]
fn man_pages_list_and_describe_every_subcommand() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (out, _) = run(dir, &["man"], 0);
    let page = String::from_utf8(out).unwrap();
    assert!(
        page.starts_with(".ie") && page.contains(".TH ddpm 1"),
        "{page}"
    );
    for c in subcommands(dir) {
        assert!(
            page.contains(&format!("ddpm\\-{}(1)", c.replace('-', "\\-"))),
            "no {c}"
        );
        let (out, _) = run(dir, &["man", &c], 0);
        let sub = String::from_utf8(out).unwrap();
        assert!(sub.contains(&format!(".TH ddpm-{c} 1")), "{c}: {sub}");
        assert!(sub.contains(".SH SYNOPSIS"), "{c}");
    }
    let (_, err) = run(dir, &["man", "frobnicate"], 1);
    assert!(err.contains("the commands are train, sample"), "{err}");
}
