//! Writing batch results: one JSON line per input, each written and flushed as soon as it may be
//! (in input order through a bounded reorder buffer, or as programs finish), plus the progress
//! display and the final counts.

use super::progress::Progress;
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Where result lines go.
pub enum Sink {
    /// A file, written without a buffer: every line is one `write` and reaches the OS at once,
    /// so a killed job leaves at most one partial line (which `--resume` detects).
    File(std::fs::File),
    Stdout,
}

impl Sink {
    fn write_line(&mut self, line: &str) -> std::io::Result<()> {
        match self {
            Sink::File(file) => file.write_all(line.as_bytes()),
            Sink::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(line.as_bytes())?;
                out.flush()
            }
        }
    }
}

pub struct Results {
    sink: Sink,
    ordered: bool,
    /// Finished lines waiting for an earlier input (ordered mode), by input index.
    pending: BTreeMap<usize, String>,
    /// The next input index to write (ordered mode).
    next: usize,
    /// Published to the input source, which holds inputs back while the buffer is full.
    written_through: Arc<AtomicUsize>,
    pub write_error: Option<std::io::Error>,
    pub ok: usize,
    pub failed: usize,
    pub progress: Progress,
}

impl Results {
    pub fn new(sink: Sink, ordered: bool, progress: Progress) -> Results {
        Results {
            sink,
            ordered,
            pending: BTreeMap::new(),
            next: 0,
            written_through: Arc::new(AtomicUsize::new(0)),
            write_error: None,
            ok: 0,
            failed: 0,
            progress,
        }
    }

    pub fn written_through(&self) -> Arc<AtomicUsize> {
        self.written_through.clone()
    }

    /// Records input `index`'s result line (without newline) and writes what can be written.
    pub fn finish(&mut self, index: usize, mut line: String, ok: bool, tokens: u64) {
        line.push('\n');
        if ok {
            self.ok += 1;
        } else {
            self.failed += 1;
        }
        self.progress.record(tokens, self.ok, self.failed);
        if !self.ordered {
            self.write(&line);
            self.written_through.fetch_add(1, Ordering::SeqCst);
            return;
        }
        self.pending.insert(index, line);
        while let Some(line) = self.pending.remove(&self.next) {
            self.write(&line);
            self.next += 1;
        }
        self.written_through.store(self.next, Ordering::SeqCst);
    }

    /// Writes every finished line still waiting for an earlier one, out of order: the job is
    /// being abandoned and finished work must not be lost (`--resume` reads lines in any order).
    pub fn flush_pending(&mut self) {
        for line in std::mem::take(&mut self.pending).into_values() {
            self.write(&line);
        }
    }

    fn write(&mut self, line: &str) {
        if self.write_error.is_some() {
            return;
        }
        if let Err(e) = self.sink.write_line(line) {
            self.write_error = Some(e);
        }
    }
}
