//! Reading batch inputs: JSONL or CSV, from a file or stdin, lazily on a reader thread, handed to
//! the scheduler one program at a time with backpressure and an early stop on Ctrl-C.

use anyhow::{Context, Result};
use sglc::{InputArgs, InputSource, NextInput};
use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError, sync_channel};
use std::sync::{Arc, Mutex};

/// How input lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum InputFormat {
    /// One JSON object of arguments per line.
    Jsonl,
    /// A header row naming the arguments, then one row per program (values are strings).
    Csv,
}

impl InputFormat {
    /// The format a path's extension suggests: `.csv` is CSV, anything else JSONL.
    pub fn for_path(path: &Path) -> InputFormat {
        match path.extension().and_then(|e| e.to_str()) {
            Some(ext) if ext.eq_ignore_ascii_case("csv") => InputFormat::Csv,
            _ => InputFormat::Jsonl,
        }
    }
}

/// One input: its line number in the file (1-based) and its arguments or why they are unusable.
type Input = (usize, InputArgs);

/// Inputs read ahead of the scheduler; bounds memory on huge files.
const READ_AHEAD: usize = 4096;

fn open(path: &Path) -> Result<Box<dyn Read + Send>> {
    if path == Path::new("-") {
        Ok(Box::new(std::io::stdin()))
    } else {
        Ok(Box::new(std::fs::File::open(path).with_context(|| {
            format!("cannot open {}", path.display())
        })?))
    }
}

/// How many inputs a file holds (for the progress bar); `None` for stdin.
pub fn count_inputs(path: &Path, format: InputFormat) -> Option<usize> {
    if path == Path::new("-") {
        return None;
    }
    let reader = BufReader::new(std::fs::File::open(path).ok()?);
    let lines = reader
        .split(b'\n')
        .map_while(|line| line.ok())
        .filter(|line| !line.trim_ascii().is_empty())
        .count();
    Some(match format {
        InputFormat::Jsonl => lines,
        InputFormat::Csv => lines.saturating_sub(1),
    })
}

/// Starts a thread that reads `path` and sends each input not in `skip` (lines already done,
/// for `--resume`). The channel closes at the end of the input.
pub fn spawn_reader(
    path: &Path,
    format: InputFormat,
    skip: HashSet<usize>,
) -> Result<Receiver<Input>> {
    let reader = open(path)?;
    let name: PathBuf = path.to_path_buf();
    let (tx, rx) = sync_channel(READ_AHEAD);
    std::thread::Builder::new()
        .name("sglc-input".into())
        .spawn(move || {
            let send = |line: usize, args: InputArgs| {
                if skip.contains(&line) {
                    return true;
                }
                tx.send((line, args)).is_ok()
            };
            match format {
                InputFormat::Jsonl => read_jsonl(reader, &name, send),
                InputFormat::Csv => read_csv(reader, send),
            }
        })
        .context("cannot start the input reader")?;
    Ok(rx)
}

fn read_jsonl(
    reader: Box<dyn Read + Send>,
    name: &Path,
    mut send: impl FnMut(usize, InputArgs) -> bool,
) {
    for (i, line) in BufReader::new(reader).split(b'\n').enumerate() {
        let number = i + 1;
        let line = match line {
            Ok(line) => line,
            Err(e) => {
                send(
                    number,
                    Err(format!(
                        "cannot read line {number} of {}: {e}",
                        name.display()
                    )),
                );
                return;
            }
        };
        if line.trim_ascii().is_empty() {
            continue;
        }
        if !send(number, parse_json_line(number, &line)) {
            return;
        }
    }
}

/// One JSONL line as an argument object, or the reason it is not one.
pub fn parse_json_line(number: usize, line: &[u8]) -> InputArgs {
    let text = std::str::from_utf8(line).map_err(|e| {
        format!(
            "line {number} is not valid UTF-8 (at byte {})",
            e.valid_up_to()
        )
    })?;
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(other) => Err(format!(
            "line {number} is not a JSON object: {}",
            preview(&other.to_string())
        )),
        Err(e) => Err(format!("line {number} is not valid JSON: {e}")),
    }
}

fn preview(text: &str) -> String {
    const MAX: usize = 60;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_string(),
    }
}

fn read_csv(reader: Box<dyn Read + Send>, mut send: impl FnMut(usize, InputArgs) -> bool) {
    let mut csv = csv::ReaderBuilder::new()
        .flexible(false)
        .from_reader(reader);
    let headers = match csv.headers() {
        Ok(headers) => headers.clone(),
        Err(e) => {
            send(1, Err(format!("the CSV header row is unreadable: {e}")));
            return;
        }
    };
    for record in csv.records() {
        let (line, args) = match record {
            Ok(record) => {
                let line = record.position().map_or(0, |p| p.line() as usize);
                let map = headers
                    .iter()
                    .zip(record.iter())
                    .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
                    .collect();
                (line, Ok(map))
            }
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line() as usize);
                let recoverable = matches!(
                    e.kind(),
                    csv::ErrorKind::UnequalLengths { .. } | csv::ErrorKind::Utf8 { .. }
                );
                let sent = send(
                    line,
                    Err(format!("line {line} is not a valid CSV row: {e}")),
                );
                if !recoverable || !sent {
                    return;
                }
                continue;
            }
        };
        if !send(line, args) {
            return;
        }
    }
}

/// The scheduler's view of the inputs: the next one when it is read, unless Ctrl-C was pressed
/// or too many finished results wait for an earlier one (the reorder buffer is bounded).
pub struct BatchInputs {
    pub inputs: Receiver<Input>,
    /// Input index (the order handed out) to line number, for the result lines.
    pub line_numbers: Arc<Mutex<Vec<usize>>>,
    /// Ctrl-C presses so far; after the first no new input starts.
    pub interrupts: Arc<AtomicUsize>,
    /// Results written so far, in input order (see `Results::written_through`).
    pub written_through: Arc<AtomicUsize>,
    /// Most inputs started but not yet written; `usize::MAX` when results go out unordered.
    pub window: usize,
    pub handed_out: usize,
}

impl InputSource for BatchInputs {
    fn next_input(&mut self) -> NextInput {
        if self.interrupts.load(Ordering::SeqCst) > 0 {
            return NextInput::Exhausted;
        }
        if self.handed_out - self.written_through.load(Ordering::SeqCst) >= self.window {
            return NextInput::NotYet;
        }
        match self.inputs.try_recv() {
            Ok((line, args)) => {
                self.line_numbers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(line);
                self.handed_out += 1;
                NextInput::Ready(args)
            }
            Err(TryRecvError::Empty) => NextInput::NotYet,
            Err(TryRecvError::Disconnected) => NextInput::Exhausted,
        }
    }
}
