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
    started: Instant,
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
            started: Instant::now(),
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

    /// "12s elapsed, ETA 1m40s" after `done` of `total` units, the rest assumed to go at the
    /// average pace so far (for plain lines; the bar shows its own).
    pub fn eta(&self, done: u64, total: u64) -> String {
        let elapsed = self.started.elapsed();
        let left = match done {
            0 => "?".to_string(),
            _ => clock(elapsed.mul_f64(total.saturating_sub(done) as f64 / done as f64)),
        };
        format!("{} elapsed, ETA {left}", clock(elapsed))
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

/// A duration as 1h02m03s, 2m03s or 3s.
fn clock(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, min, sec) => format!("{min}m{sec:02}s"),
        (h, min, sec) => format!("{h}h{min:02}m{sec:02}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_reads_like_a_clock() {
        assert_eq!(clock(Duration::from_secs(3)), "3s");
        assert_eq!(clock(Duration::from_secs(123)), "2m03s");
        assert_eq!(clock(Duration::from_secs(3723)), "1h02m03s");
    }

    #[test]
    fn eta_is_unknown_before_the_first_unit() {
        let p = Progress::new(10, "steps", true);
        assert!(p.eta(0, 10).ends_with("ETA ?"), "{}", p.eta(0, 10));
        assert!(p.eta(10, 10).ends_with("ETA 0s"), "{}", p.eta(10, 10));
    }
}
