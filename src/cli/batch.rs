//! `sglc run --batch`: one program per JSONL input line, results written in input order and
//! flushed as they become writable.

use super::{EXIT_FAILURE, EXIT_PARTIAL};
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use sglc::{Engine, ProgramState, RunConfig, RuntimeError, Script};
use sglc_compiler::span::LineIndex;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;

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

/// Reads the input lines: each non-blank line is an argument object, or an error for that line.
fn read_inputs(path: &Path) -> Result<Vec<(usize, Result<serde_json::Value, String>)>> {
    let reader: Box<dyn BufRead> = if path == Path::new("-") {
        Box::new(BufReader::new(std::io::stdin()))
    } else {
        Box::new(BufReader::new(
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?,
        ))
    };
    let mut inputs = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line =
            line.with_context(|| format!("cannot read line {} of {}", i + 1, path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed = match serde_json::from_str::<serde_json::Value>(&line) {
            Ok(v @ serde_json::Value::Object(_)) => Ok(v),
            Ok(other) => Err(format!("line {} is not a JSON object: {other}", i + 1)),
            Err(e) => Err(format!("line {} is not valid JSON: {e}", i + 1)),
        };
        inputs.push((i + 1, parsed));
    }
    Ok(inputs)
}

pub fn run_batch(
    engine: &Engine,
    script: &Script,
    function: &str,
    input_path: &Path,
    out_path: Option<&Path>,
    config: &RunConfig,
    progress: bool,
) -> Result<ExitCode> {
    let inputs = read_inputs(input_path)?;
    let mut out: Box<dyn Write + Send> = match out_path {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout())),
    };
    let bar = if progress {
        let bar = ProgressBar::new(inputs.len() as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:40} {pos}/{len} programs  {per_sec}  eta {eta}  {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    } else {
        ProgressBar::hidden()
    };

    // Inputs that are not even JSON objects never reach the VM: they get their error line here.
    let line_numbers: Vec<usize> = inputs.iter().map(|(line, _)| *line).collect();
    let mut early: BTreeMap<usize, String> = BTreeMap::new();
    let mut runnable = Vec::new();
    let mut runnable_index = Vec::new();
    for (i, (_, input)) in inputs.into_iter().enumerate() {
        match input {
            Ok(v) => {
                runnable.push(v);
                runnable_index.push(i);
            }
            Err(message) => {
                early.insert(i, message);
            }
        }
    }

    let mut failed = early.len();
    let mut pending: BTreeMap<usize, String> = BTreeMap::new();
    for (i, message) in &early {
        let line = ResultLine {
            line: line_numbers[*i],
            ok: false,
            state: None,
            error: Some(ErrorJson {
                message: message.clone(),
                location: None,
                help: None,
            }),
        };
        pending.insert(*i, serde_json::to_string(&line)?);
    }
    let mut next_to_write = 0usize;
    let mut write_error: Option<std::io::Error> = None;
    let mut flush_ready = |pending: &mut BTreeMap<usize, String>,
                           out: &mut Box<dyn Write + Send>,
                           next: &mut usize| {
        while let Some(text) = pending.remove(next) {
            if let Err(e) = writeln!(out, "{text}").and_then(|_| out.flush()) {
                write_error.get_or_insert(e);
            }
            *next += 1;
        }
    };
    flush_ready(&mut pending, &mut out, &mut next_to_write);

    let result = engine.run_batch_with(script, function, runnable, config, |k, result| {
        let i = runnable_index[k];
        let line = match &result {
            Ok(state) => ResultLine {
                line: line_numbers[i],
                ok: true,
                state: Some(state),
                error: None,
            },
            Err(error) => {
                failed += 1;
                ResultLine {
                    line: line_numbers[i],
                    ok: false,
                    state: None,
                    error: Some(error_json(script, error)),
                }
            }
        };
        let text = serde_json::to_string(&line).unwrap_or_else(|e| {
            format!(
                r#"{{"line":{},"ok":false,"error":{{"message":"cannot serialise result: {e}"}}}}"#,
                line_numbers[i]
            )
        });
        pending.insert(i, text);
        flush_ready(&mut pending, &mut out, &mut next_to_write);
        bar.inc(1);
        bar.set_message(format!("{failed} failed"));
    });
    bar.finish_and_clear();
    if let Err(sglc::Error::Unsupported { diagnostics, .. }) = &result {
        eprint!(
            "{}",
            script.render(diagnostics, std::io::stderr().is_terminal())
        );
        return Ok(ExitCode::from(EXIT_FAILURE));
    }
    result?;
    if let Some(e) = write_error {
        return Err(e).context("cannot write results");
    }
    let total = line_numbers.len();
    eprintln!("{} programs: {} ok, {failed} failed", total, total - failed);
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else if failed == total {
        ExitCode::from(EXIT_FAILURE)
    } else {
        ExitCode::from(EXIT_PARTIAL)
    })
}
