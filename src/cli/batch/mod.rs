//! `sglc run --batch`: one program per input line (JSONL or CSV), each result line written and
//! flushed as soon as it may be, resumable after a crash, stoppable with Ctrl-C.

mod input;
mod output;
mod progress;
mod resume;

pub use input::InputFormat;
pub use progress::ProgressMode;

use super::{EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_PARTIAL};
use anyhow::{Context, Result, bail};
use input::BatchInputs;
use output::{Results, Sink};
use progress::Progress;
use sglc::{Engine, ProgramState, RunConfig, RuntimeError, Script};
use sglc_compiler::span::LineIndex;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// One output line: the input's line number and either the program's state or its error.
#[derive(serde::Serialize)]
struct ResultLine<'a> {
    line: usize,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none", flatten)]
    state: Option<&'a ProgramState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorJson>,
}

#[derive(serde::Serialize)]
struct ErrorJson {
    message: String,
    /// `file:line:col` of the failing instruction, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    location: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    help: Option<String>,
}

fn error_json(script: &Script, error: &RuntimeError) -> ErrorJson {
    let location = error.span().map(|span| {
        let (line, col) = LineIndex::new(&script.source).line_col(&script.source, span.start);
        format!("{}:{line}:{col}", script.name)
    });
    ErrorJson {
        message: error.message.clone(),
        location,
        help: error.help.clone(),
    }
}

/// Everything `--batch` needs to know besides the program.
pub struct BatchOptions {
    pub input: PathBuf,
    pub format: InputFormat,
    pub out: Option<PathBuf>,
    pub ordered: bool,
    pub resume: bool,
    pub progress: ProgressMode,
}

/// Finished results that may wait for an earlier, slower input before they are written, per
/// program in flight; beyond it no new input starts until the slow one finishes.
const REORDER_WINDOW_PER_PROGRAM: usize = 4;

/// The total tokens a program generated (the `completion_tokens` of its variables).
fn generated_tokens(state: &ProgramState) -> u64 {
    state
        .meta
        .values()
        .filter_map(|m| m.get("completion_tokens").and_then(|t| t.as_u64()))
        .sum()
}

/// Renders one result line (without its newline).
fn result_line(
    script: &Script,
    line: usize,
    result: &Result<ProgramState, RuntimeError>,
) -> String {
    let entry = match result {
        Ok(state) => ResultLine {
            line,
            ok: true,
            state: Some(state),
            error: None,
        },
        Err(error) => ResultLine {
            line,
            ok: false,
            state: None,
            error: Some(error_json(script, error)),
        },
    };
    serde_json::to_string(&entry).unwrap_or_else(|e| {
        serde_json::json!({
            "line": line,
            "ok": false,
            "error": { "message": format!("cannot serialise the result: {e}") },
        })
        .to_string()
    })
}

fn open_sink(options: &BatchOptions) -> Result<Sink> {
    let Some(path) = &options.out else {
        return Ok(Sink::Stdout);
    };
    let mut open = std::fs::OpenOptions::new();
    if options.resume {
        open.create(true).append(true);
    } else {
        open.create(true).write(true).truncate(true);
    }
    let file = open
        .open(path)
        .with_context(|| format!("cannot open {} for writing", path.display()))?;
    Ok(Sink::File(file))
}

/// Installs the Ctrl-C handler: the first press stops new inputs, the second writes what has
/// finished and exits.
fn handle_interrupts(results: Arc<Mutex<Results>>) -> Arc<AtomicUsize> {
    let interrupts = Arc::new(AtomicUsize::new(0));
    let seen = interrupts.clone();
    let installed = ctrlc::set_handler(move || {
        if seen.fetch_add(1, Ordering::SeqCst) == 0 {
            eprintln!(
                "\ninterrupted: no new programs start; waiting for those in flight (Ctrl-C again to abandon them)"
            );
            return;
        }
        let mut results = results.lock().unwrap_or_else(|e| e.into_inner());
        results.flush_pending();
        let (ok, failed) = (results.ok, results.failed);
        let summary = results.progress.finish(ok, failed);
        eprintln!("abandoned the programs in flight; {summary}");
        eprintln!("rerun with --resume to finish the rest");
        std::process::exit(i32::from(EXIT_INTERRUPTED));
    });
    if let Err(e) = installed {
        tracing::warn!("cannot handle Ctrl-C: {e}");
    }
    interrupts
}

pub fn run_batch(
    engine: &Engine,
    script: &Script,
    function: &str,
    config: &RunConfig,
    options: &BatchOptions,
) -> Result<ExitCode> {
    if options.resume && options.out.is_none() {
        bail!("--resume needs --out: it reads the results already written there");
    }
    let done_before = match (&options.out, options.resume) {
        (Some(out), true) => resume::completed_lines(out)?,
        _ => HashSet::new(),
    };
    let total = input::count_inputs(&options.input, options.format)
        .map(|n| n.saturating_sub(done_before.len()) as u64);
    let inputs = input::spawn_reader(&options.input, options.format, done_before.clone())?;
    let sink = open_sink(options)?;
    let progress = Progress::new(options.progress, total);
    let show_summary = progress.enabled();
    if !done_before.is_empty() && show_summary {
        eprintln!(
            "resuming: {} input(s) already have results in {}",
            done_before.len(),
            options.out.as_deref().unwrap_or(Path::new("-")).display()
        );
    }
    let results = Arc::new(Mutex::new(Results::new(sink, options.ordered, progress)));
    let interrupts = handle_interrupts(results.clone());
    let concurrency = config
        .concurrency
        .unwrap_or_else(|| engine.backend().info().default_concurrency)
        .max(1);
    let window = if options.ordered {
        (concurrency * REORDER_WINDOW_PER_PROGRAM).max(64)
    } else {
        usize::MAX
    };
    let line_numbers = Arc::new(Mutex::new(Vec::new()));
    let source = BatchInputs {
        inputs,
        line_numbers: line_numbers.clone(),
        interrupts: interrupts.clone(),
        written_through: lock(&results).written_through(),
        window,
        handed_out: 0,
    };

    let outcome = engine.run_batch_from(script, function, source, config, |index, result| {
        let line = lock(&line_numbers).get(index).copied().unwrap_or(0);
        let text = result_line(script, line, &result);
        let tokens = result.as_ref().map_or(0, generated_tokens);
        lock(&results).finish(index, text, result.is_ok(), tokens);
    });

    let mut results = lock(&results);
    let (ok, failed) = (results.ok, results.failed);
    let summary = results.progress.finish(ok, failed);
    match outcome {
        Err(sglc::Error::Unsupported { diagnostics, .. }) => {
            eprint!("{}", script.render(&diagnostics, super::color_stderr()));
            return Ok(ExitCode::from(EXIT_FAILURE));
        }
        other => other?,
    }
    if let Some(e) = results.write_error.take() {
        return Err(e).context("cannot write results");
    }
    if show_summary {
        eprintln!("{summary}");
        if let Some(report) = engine.backend().report() {
            eprintln!("{report}");
        }
    }
    if interrupts.load(Ordering::SeqCst) > 0 {
        eprintln!("interrupted: rerun with --resume to run the inputs that did not start");
        return Ok(ExitCode::from(EXIT_INTERRUPTED));
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else if ok == 0 {
        ExitCode::from(EXIT_FAILURE)
    } else {
        ExitCode::from(EXIT_PARTIAL)
    })
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
