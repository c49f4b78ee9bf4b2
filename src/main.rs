//! The `ddpm` binary: parse the command line, run the command, map errors to exit codes
//! (0 ok, 1 error, 2 usage, 130 interrupted), each error on one line. stdout carries data only;
//! everything else goes to stderr. All the work is in the library; `cli` only turns arguments into library calls.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Process-wide CPU settings (allocator, candle's pool off so batches run in shards; a
    // launcher's ranks on one machine share its cores), before any tensor work or other thread.
    ddpm::dist::budget_cpu_threads();
    ddpm::nn::kernels::configure_cpu();
    let args = match cli::Cli::try_parse() {
        Ok(args) => args,
        Err(e) => return cli::usage_error(e),
    };
    // The command runs on the CPU pool's first thread, so its parallel loops and shards start
    // without waking anyone first.
    match ddpm::nn::kernels::on_pool(|| cli::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => cli::report(&err),
    }
}
