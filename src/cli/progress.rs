//! Progress on stderr: an indicatif bar when stderr is a terminal, plain periodic lines when it
//! is not (logs, CI), nothing with --quiet.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::output::printable;

/// Where progress goes.
pub struct Progress {
    bar: Option<ProgressBar>,
    plain: bool,
    last_line: Instant,
    every: Duration,
}

impl Progress {
    /// A progress display for `total` units named `unit` (`quiet` hides everything).
    pub fn new(total: u64, unit: &str, quiet: bool) -> Self {
        let terminal = std::io::stderr().is_terminal();
        let bar = (!quiet && terminal).then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            let template = format!(
                "{{spinner}} [{{elapsed_precise}}] {{wide_bar}} {{pos}}/{{len}} {unit} {{per_sec}} ETA {{eta}} {{msg}}"
            );
            if let Ok(style) = ProgressStyle::with_template(&template) {
                bar.set_style(style);
            }
            bar
        });
        Progress {
            bar,
            plain: !quiet && !terminal,
            last_line: Instant::now(),
            every: Duration::from_secs(10),
        }
    }

    /// Move to `pos` with a status message.
    pub fn update(&mut self, pos: u64, msg: impl FnOnce() -> String) {
        if let Some(bar) = &self.bar {
            bar.set_position(pos);
            bar.set_message(msg());
        }
    }

    /// Set the position without a message.
    pub fn set_position(&mut self, pos: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(pos);
        }
    }

    /// A plain log line, printed when stderr is not a terminal, at most every 10 s unless
    /// `force` (e.g. train.log_every rows are always printed).
    pub fn line(&mut self, force: bool, text: impl FnOnce() -> String) {
        if self.plain && (force || self.last_line.elapsed() >= self.every) {
            let _ = writeln!(std::io::stderr(), "{}", printable(&text()));
            self.last_line = Instant::now();
        }
    }

    /// A message that always shows (unless quiet), above the bar if there is one.
    pub fn note(&self, quiet: bool, text: &str) {
        if quiet {
            return;
        }
        let text = printable(text);
        match &self.bar {
            Some(bar) => bar.println(text),
            None => {
                let _ = writeln!(std::io::stderr(), "{text}");
            }
        }
    }

    /// Run `f` (which writes to the terminal) with the bar hidden, so the two do not mix.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.bar {
            Some(bar) => bar.suspend(f),
            None => f(),
        }
    }

    /// Remove the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
