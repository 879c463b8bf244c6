//! Invariants that hold for every input, whatever it is: the fuzz targets under `fuzz/` call
//! these on generated input, and `tests/fuzz_smoke.rs` calls them on the committed corpus.
//! Each panics (which is how a fuzzer sees a failure) when an invariant is broken.

use serde_json::json;
use sglc::{Engine, Error, JitMode, Limits, RunConfig, TestBackend};
use sglc_compiler::{Diagnostic, Span};
use std::sync::LazyLock;
use std::time::Duration;

/// The names the standard library provides, computed once (fuzzers call in a loop).
static COMPILE_ENV: LazyLock<sglc_compiler::CompileEnv> =
    LazyLock::new(|| Engine::new(TestBackend::new()).natives().compile_env());

thread_local! {
    static ENGINE: Engine = Engine::new(TestBackend::new());
}

/// The compiler's invariants for any bytes: it never panics; every span of every token,
/// diagnostic label and instruction lies inside the source on char boundaries; diagnostics
/// render; a compiled program disassembles and its bytecode survives a JSON round trip.
pub fn check_compile(data: &[u8]) {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    let lexed = sglc_compiler::lexer::lex(source);
    for (token, span) in &lexed.tokens {
        assert_span(source, *span, &format!("token {token:?}"));
    }
    let compiled = sglc_compiler::compile(source, &COMPILE_ENV);
    for diagnostic in &compiled.diagnostics {
        assert_diagnostic(source, diagnostic);
    }
    let rendered =
        sglc_compiler::render::render_diagnostics("fuzz.sgl", source, &compiled.diagnostics, false);
    assert_eq!(compiled.diagnostics.is_empty(), rendered.is_empty());
    let Some(program) = compiled.program else {
        assert!(compiled.has_errors(), "no program and no error");
        return;
    };
    for function in &program.functions {
        assert_eq!(function.code.len(), function.spans.len(), "span side table");
        for span in &function.spans {
            assert_span(
                source,
                *span,
                &format!("instruction of `{}`", function.name),
            );
        }
    }
    let _ = program.disassemble(source);
    let json = serde_json::to_string(&program).expect("bytecode serialises");
    let back: sglc_compiler::Program = serde_json::from_str(&json).expect("bytecode deserialises");
    assert!(back == program, "bytecode changed in a JSON round trip");
}

/// Tight limits, so that a generated endless loop ends in milliseconds.
pub fn fuzz_limits() -> Limits {
    Limits {
        max_call_depth: 64,
        max_forks: 16,
        max_instructions: Some(200_000),
        max_string_bytes: 1 << 16,
        max_collection_len: 1 << 12,
        max_generated_tokens: Some(256),
        deadline: Some(Duration::from_secs(2)),
        ..Limits::default()
    }
}

/// The VM's invariants for any source that compiles: running its entry function under the
/// test backend with tight limits never panics, and compiling hot code to machine code never
/// changes the outcome (unless a limit that counts differently, instructions or time, ended
/// either run).
pub fn check_run(data: &[u8]) {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    ENGINE.with(|engine| run_both_ways(engine, source));
}

fn run_both_ways(engine: &Engine, source: &str) {
    let Ok(script) = engine.compile("fuzz.sgl", source) else {
        return;
    };
    let Some(function) = script.default_function().map(str::to_string) else {
        return;
    };
    let outcome = |jit: JitMode| {
        let mut config = RunConfig {
            limits: fuzz_limits(),
            ..RunConfig::default()
        };
        config.jit.mode = jit;
        match engine.run(&script, &function, json!({}), &config) {
            Ok(state) => Ok(serde_json::to_value(&state).expect("state serialises")),
            Err(Error::Runtime(error)) => {
                for frame in &error.trace {
                    assert_span(
                        source,
                        frame.span,
                        &format!("runtime error `{}`", error.message),
                    );
                }
                Err((error.message.clone(), error.span()))
            }
            // Missing arguments and the like: not a run.
            Err(other) => Err((other.to_string(), None)),
        }
    };
    let interpreted = outcome(JitMode::Off);
    let compiled = outcome(JitMode::Eager);
    let counts_differently = |o: &Result<serde_json::Value, (String, Option<Span>)>| matches!(o, Err((m, _)) if m.contains("(max_instructions)") || m.contains("(deadline)"));
    if !counts_differently(&interpreted) && !counts_differently(&compiled) {
        assert_eq!(interpreted, compiled, "the JIT changed the outcome");
    }
}

fn assert_diagnostic(source: &str, diagnostic: &Diagnostic) {
    let what = format!("diagnostic {} `{}`", diagnostic.code, diagnostic.message);
    assert_span(source, diagnostic.primary.span, &what);
    for label in &diagnostic.secondary {
        assert_span(source, label.span, &what);
    }
}

fn assert_span(source: &str, span: Span, what: &str) {
    let (start, end) = (span.start as usize, span.end as usize);
    assert!(
        start <= end && end <= source.len(),
        "{what}: span {start}..{end} outside a source of {} bytes",
        source.len()
    );
    assert!(
        source.is_char_boundary(start) && source.is_char_boundary(end),
        "{what}: span {start}..{end} splits a character"
    );
}
