//! `ddpm completions SHELL` and `ddpm man [COMMAND]`: shell completion scripts and roff man
//! pages generated from the clap definitions, so they always match the binary.

use clap::{Args, CommandFactory};
use clap_complete::Shell;

use super::output::stdout_bytes;
use super::Cli;

pub const COMPLETIONS_EXAMPLES: &str = "\
Examples:
  ddpm completions bash > ~/.local/share/bash-completion/completions/ddpm
  ddpm completions zsh > ~/.zfunc/_ddpm       # with fpath+=(~/.zfunc) before compinit
  ddpm completions fish > ~/.config/fish/completions/ddpm.fish";

pub const MAN_EXAMPLES: &str = "\
Examples:
  ddpm man > ddpm.1 && man ./ddpm.1
  ddpm man train | man -l -
  for c in train sample interpolate eval schedule info init; do ddpm man $c > ddpm-$c.1; done";

/// `ddpm completions`
#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// bash, zsh, fish, elvish or powershell.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// `ddpm man`
#[derive(Args, Debug)]
pub struct ManArgs {
    /// The subcommand whose page to print [default: the ddpm page, listing them all].
    pub command: Option<String>,
}

pub fn completions(args: CompletionsArgs) -> anyhow::Result<()> {
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), "ddpm", &mut out);
    stdout_bytes(&out)
}

pub fn man(args: ManArgs) -> anyhow::Result<()> {
    let mut root = Cli::command();
    // Building sets each subcommand's names as `ddpm train` (usage) and `ddpm-train` (page).
    root.build();
    let man = match &args.command {
        None => clap_mangen::Man::new(root),
        Some(name) => match root.find_subcommand(name) {
            Some(c) => clap_mangen::Man::new(c.clone())
                .source(format!("ddpm {}", env!("CARGO_PKG_VERSION"))),
            None => {
                let names: Vec<&str> = root.get_subcommands().map(|c| c.get_name()).collect();
                anyhow::bail!("no command `{name}`; the commands are {}", names.join(", "))
            }
        },
    };
    let mut out = Vec::new();
    man.render(&mut out)?;
    stdout_bytes(&out)
}
