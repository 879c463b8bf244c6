//! Batch progress on stderr: an indicatif bar on a terminal, a plain line every few seconds
//! otherwise (logs, CI), or nothing with `--quiet`.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// How progress is shown, from `--progress` and `--quiet`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressMode {
    /// A bar on a terminal, plain lines otherwise.
    Auto,
    /// A bar even when stderr is not a terminal.
    Bar,
    Off,
}

/// How often a plain progress line is printed when stderr is not a terminal.
const LINE_INTERVAL: Duration = Duration::from_secs(5);

enum Display {
    Bar(ProgressBar),
    Lines { last: Instant },
    Off,
}

pub struct Progress {
    display: Display,
    start: Instant,
    total: Option<u64>,
    tokens: u64,
}

impl Progress {
    /// `total` is the number of programs to run, when known.
    pub fn new(mode: ProgressMode, total: Option<u64>) -> Progress {
        let terminal = std::io::stderr().is_terminal();
        let display = match mode {
            ProgressMode::Off => Display::Off,
            ProgressMode::Auto if !terminal => Display::Lines {
                last: Instant::now(),
            },
            ProgressMode::Auto | ProgressMode::Bar => {
                let target = if terminal {
                    ProgressDrawTarget::stderr()
                } else {
                    ProgressDrawTarget::term_like(Box::new(console::Term::stderr()))
                };
                let template = match total {
                    Some(_) => "{bar:30.cyan/blue} {pos}/{len} {msg}  eta {eta}",
                    None => "{spinner} {pos} programs {msg}",
                };
                let bar = ProgressBar::with_draw_target(total, target).with_style(
                    ProgressStyle::with_template(template)
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                bar.enable_steady_tick(Duration::from_millis(200));
                Display::Bar(bar)
            }
        };
        Progress {
            display,
            start: Instant::now(),
            total,
            tokens: 0,
        }
    }

    /// One more program finished, having generated `tokens`; `ok` and `failed` are the totals.
    pub fn record(&mut self, tokens: u64, ok: usize, failed: usize) {
        self.tokens += tokens;
        let done = (ok + failed) as u64;
        let (start, tokens) = (self.start, self.tokens);
        match &mut self.display {
            Display::Bar(bar) => {
                bar.set_position(done);
                bar.set_message(rates(start, tokens, ok, failed));
            }
            Display::Lines { last } => {
                if last.elapsed() >= LINE_INTERVAL {
                    *last = Instant::now();
                    let of = self.total.map(|t| format!("/{t}")).unwrap_or_default();
                    eprintln!(
                        "progress: {done}{of} programs  {}",
                        rates(start, tokens, ok, failed)
                    );
                }
            }
            Display::Off => {}
        }
    }

    /// Removes the bar; returns the summary line for the end of the job.
    pub fn finish(&mut self, ok: usize, failed: usize) -> String {
        if let Display::Bar(bar) = &self.display {
            bar.finish_and_clear();
        }
        format!(
            "{} programs in {:.1} s: {}",
            ok + failed,
            self.start.elapsed().as_secs_f64(),
            rates(self.start, self.tokens, ok, failed)
        )
    }

    pub fn enabled(&self) -> bool {
        !matches!(self.display, Display::Off)
    }
}

fn rates(start: Instant, tokens: u64, ok: usize, failed: usize) -> String {
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    format!(
        "{ok} ok, {failed} failed, {:.1} programs/s, {:.0} tokens/s",
        (ok + failed) as f64 / secs,
        tokens as f64 / secs
    )
}
