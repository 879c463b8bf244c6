//! The limits a host puts on each program: every one ends only the program that crosses it,
//! with an error that names the limit and points at the code that crossed it.

use serde_json::json;
use sglc::{Engine, Error, JitTiers, Limits, RunConfig, RuntimeError, TestBackend};
use std::time::{Duration, Instant};

/// Runs `main` of `source` under `limits` and returns the error it must end with.
/// The error `source` stops with under `limits`, run with the JIT in `jit` mode.
fn run_to_error(source: &str, limits: Limits, jit: sglc::JitMode) -> RuntimeError {
    let engine = Engine::new(TestBackend::new());
    let script = engine
        .compile("limits.sgl", source)
        .unwrap_or_else(|e| panic!("{}", e.render(false)));
    let mut config = RunConfig {
        limits,
        ..RunConfig::default()
    };
    config.jit.mode = jit;
    match engine.run(&script, "main", json!({}), &config) {
        Ok(state) => panic!("expected a limit error, got {:?}", state.return_value),
        Err(Error::Runtime(error)) => error,
        Err(other) => panic!("expected a runtime error, got {other}"),
    }
}

/// The error `source` stops with under `limits`, with the default JIT settings.
fn limit_error(source: &str, limits: Limits) -> RuntimeError {
    run_to_error(source, limits, RunConfig::default().jit.mode)
}

/// The error a limit that does not depend on time stops `source` with, interpreted;
/// compiled from the start (`--jit eager`) it must stop with the same message at the same
/// place. (A deadline falls wherever the program happens to be.)
fn same_limit_error(source: &str, limits: Limits) -> RuntimeError {
    let interpreted = run_to_error(source, limits.clone(), sglc::JitMode::Off);
    let compiled = run_to_error(source, limits, sglc::JitMode::Eager);
    assert_eq!(
        (&compiled.message, compiled.span()),
        (&interpreted.message, interpreted.span()),
        "compiled code stops as the interpreter does"
    );
    interpreted
}

/// The source text the error's innermost span covers.
fn blamed<'s>(source: &'s str, error: &RuntimeError) -> &'s str {
    let span = error
        .span()
        .unwrap_or_else(|| panic!("no span on `{}`", error.message));
    &source[span.start as usize..span.end as usize]
}

fn assert_limit(source: &str, limits: Limits, name: &str, code: &str) {
    let error = same_limit_error(source, limits);
    assert!(
        error.message.contains(&format!("({name})")),
        "`{}` does not name {name}",
        error.message
    );
    assert_eq!(blamed(source, &error), code, "span of `{}`", error.message);
}

#[test]
fn an_endless_loop_ends_at_the_instruction_budget() {
    let source = "fn main() {\n    let n = 0\n    while true {\n        n += 1\n    }\n}\n";
    for jit in [sglc::JitMode::Off, sglc::JitMode::Eager] {
        let engine = Engine::new(TestBackend::new());
        let script = engine.compile("loop.sgl", source).unwrap();
        let mut config = RunConfig::default();
        config.limits.max_instructions = Some(2_000_000);
        config.limits.deadline = None;
        config.jit.mode = jit;
        let error = match engine.run(&script, "main", json!({}), &config) {
            Err(Error::Runtime(error)) => error,
            other => panic!("expected the budget to end the loop, got {other:?}"),
        };
        assert!(
            error
                .message
                .contains("2000000 instructions (max_instructions)")
        );
        assert!(
            ["n += 1", "n", "true", "while true {\n        n += 1\n    }"]
                .contains(&blamed(source, &error)),
            "{jit:?}: blamed `{}`",
            blamed(source, &error)
        );
    }
}

#[test]
fn an_endless_loop_ends_at_its_deadline() {
    let source = "fn main() {\n    let n = 0\n    while true {\n        n += 1\n    }\n}\n";
    let limits = Limits {
        deadline: Some(Duration::from_millis(200)),
        max_instructions: None,
        ..Limits::default()
    };
    let started = Instant::now();
    let error = limit_error(source, limits);
    assert!(
        error.message.contains("deadline of 200ms (deadline)"),
        "{}",
        error.message
    );
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert!(!blamed(source, &error).is_empty());
}

#[test]
fn compiled_recursion_without_loops_ends_at_its_deadline() {
    // fib(60) compiled to machine code: no loop, ~10^12 calls; only the deadline ends it.
    let source = "fn fib(n) {\n    if n < 2 {\n        return n\n    }\n    return fib(n - 1) + fib(n - 2)\n}\n\nfn main() {\n    return fib(60)\n}\n";
    let engine = Engine::new(TestBackend::new());
    let script = engine.compile("fib.sgl", source).unwrap();
    let mut config = RunConfig::default();
    config.limits.deadline = Some(Duration::from_millis(300));
    config.limits.max_instructions = None;
    config.jit.mode = sglc::JitMode::Eager;
    let started = Instant::now();
    let error = match engine.run(&script, "main", json!({}), &config) {
        Err(Error::Runtime(error)) => error,
        other => panic!("expected the deadline, got {other:?}"),
    };
    assert!(error.message.contains("(deadline)"), "{}", error.message);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(error.trace.len() > 2, "the trace shows the recursion");
}

#[test]
fn a_program_waiting_for_the_model_ends_at_its_deadline() {
    // The backend answers after 2 s; the program may take 150 ms.
    let engine = Engine::new(TestBackend::new().with_latency(Duration::from_secs(2)));
    let source = "fn main(s) {\n    s += \"Q: \" + gen(\"a\")\n    return s[\"a\"]\n}\n";
    let script = engine.compile("wait.sgl", source).unwrap();
    let mut config = RunConfig::default();
    config.limits.deadline = Some(Duration::from_millis(150));
    let started = Instant::now();
    let error = match engine.run(&script, "main", json!({}), &config) {
        Err(Error::Runtime(error)) => error,
        other => panic!("expected the deadline, got {other:?}"),
    };
    assert!(error.message.contains("(deadline)"), "{}", error.message);
    assert_eq!(blamed(source, &error), "s[\"a\"]");
    // Ended at the deadline, not when the answer came.
    assert!(started.elapsed() < Duration::from_millis(1500));
}

#[test]
fn one_endless_program_does_not_hold_up_a_batch() {
    let source = r#"
fn main(s, n) {
    if n == 500 {
        while true {}
    }
    s += "item " + str(n) + ": " + gen("x", max_tokens=4)
    return n
}
"#;
    let engine = Engine::new(TestBackend::new());
    let script = engine.compile("batch.sgl", source).unwrap();
    let mut config = RunConfig::default();
    config.limits.deadline = Some(Duration::from_secs(2));
    config.limits.max_instructions = None;
    let inputs: Vec<_> = (0..1000).map(|n| json!({ "n": n })).collect();
    let mut order = Vec::new();
    engine
        .run_batch_with(&script, "main", inputs, &config, |index, result| {
            order.push((index, result.map(|state| state.return_value)));
        })
        .unwrap();
    assert_eq!(order.len(), 1000);
    // Every other program finished, and before the endless one was stopped.
    let (last_index, last) = order.last().unwrap();
    assert_eq!(*last_index, 500);
    let error = last.as_ref().unwrap_err();
    assert!(error.message.contains("(deadline)"), "{}", error.message);
    for (index, result) in &order[..999] {
        assert_eq!(result.as_ref().unwrap(), &json!(*index));
    }
}

#[test]
fn strings_lists_and_maps_stop_at_their_size_limits() {
    let small = Limits {
        max_string_bytes: 1000,
        max_collection_len: 100,
        ..Limits::default()
    };
    // Repetition is refused before it allocates.
    assert_limit(
        "fn main() {\n    return \"ab\" * 1000000000000\n}\n",
        small.clone(),
        "max_string_bytes",
        "\"ab\" * 1000000000000",
    );
    assert_limit(
        "fn main() {\n    let t = \"\"\n    while true {\n        t = t + \"xy\"\n    }\n}\n",
        small.clone(),
        "max_string_bytes",
        "t + \"xy\"",
    );
    assert_limit(
        "fn main() {\n    let t = \"\"\n    while true {\n        t += \"xy\"\n    }\n}\n",
        small.clone(),
        "max_string_bytes",
        "t += \"xy\"",
    );
    assert_limit(
        "fn main() {\n    return \",\".join([\"abcdefghij\"] * 99)\n}\n",
        small.clone(),
        "max_string_bytes",
        "\",\".join([\"abcdefghij\"] * 99)",
    );
    assert_limit(
        "fn main() {\n    let xs = []\n    while true {\n        xs.append(1)\n    }\n}\n",
        small.clone(),
        "max_collection_len",
        "xs.append(1)",
    );
    assert_limit(
        "fn main() {\n    return [i for i in range(50)] * 3\n}\n",
        small.clone(),
        "max_collection_len",
        "[i for i in range(50)] * 3",
    );
    assert_limit(
        "fn main() {\n    return range(1000000000000)\n}\n",
        small.clone(),
        "max_collection_len",
        "range(1000000000000)",
    );
    assert_limit(
        "fn main() {\n    let m = {}\n    let i = 0\n    while true {\n        m[str(i)] = i\n        i += 1\n    }\n}\n",
        small.clone(),
        "max_collection_len",
        "m[str(i)] = i",
    );
    // The prompt text is a string too.
    assert_limit(
        "fn main(s) {\n    while true {\n        s += \"0123456789abcdef\"\n    }\n}\n",
        small,
        "max_string_bytes",
        "s += \"0123456789abcdef\"",
    );
}

#[test]
fn generated_tokens_stop_at_the_program_limit() {
    // The test backend generates 8 words per gen; the limit allows 20 in all.
    let source =
        "fn main(s) {\n    for i in range(10) {\n        s += gen(\"x\" + str(i))\n    }\n}\n";
    let limits = Limits {
        max_generated_tokens: Some(20),
        ..Limits::default()
    };
    let error = limit_error(source, limits);
    assert!(
        error
            .message
            .contains("limit of 20 tokens (max_generated_tokens)"),
        "{}",
        error.message
    );
    assert_eq!(blamed(source, &error), "gen(\"x\" + str(i))");
}

#[test]
fn the_last_gen_under_the_token_limit_gets_what_is_left() {
    let engine = Engine::new(TestBackend::new());
    let source = "fn main(s) {\n    s += gen(\"a\") + \" \" + gen(\"b\")\n}\n";
    let script = engine.compile("left.sgl", source).unwrap();
    let mut config = RunConfig::default();
    config.limits.max_generated_tokens = Some(11);
    let state = engine.run(&script, "main", json!({}), &config).unwrap();
    let words = |name: &str| {
        state.variables[name]
            .as_str()
            .unwrap()
            .split_whitespace()
            .count()
    };
    assert_eq!((words("a"), words("b")), (8, 3));
}

#[test]
fn forks_stop_at_the_program_limit() {
    let limits = Limits {
        max_forks: 10,
        ..Limits::default()
    };
    assert_limit(
        "fn main(s) {\n    let a = s.fork(6)\n    let b = s.fork(6)\n}\n",
        limits,
        "max_forks",
        "s.fork(6)",
    );
}

#[test]
fn call_depth_is_limited() {
    let source = "fn down(n) {\n    return down(n + 1)\n}\n\nfn main() {\n    return down(0)\n}\n";
    let error = same_limit_error(
        source,
        Limits {
            max_call_depth: 50,
            ..Limits::default()
        },
    );
    assert!(
        error.message.contains("call depth limit of 50"),
        "{}",
        error.message
    );
    assert_eq!(blamed(source, &error), "down(n + 1)");
}

/// Compiled code tests the depth limit off its hot path when the limit is a multiple of 4
/// (where its fuel check stops) and on it otherwise: at every limit, a recursion just short of
/// it returns and one that reaches it fails, with the same error and span, as interpreted.
/// Optimized code, where `down` has its calls inlined two levels deep and one check for the
/// three bodies (`inline::hoist_entry_checks`), too.
#[test]
fn compiled_recursion_stops_at_every_call_depth_limit_as_interpreted() {
    let source = "fn down(n) {\n    if n == 0 { return 0 }\n    return down(n - 1) + 1\n}\n\nfn main(n) {\n    return down(n)\n}\n";
    let engine = Engine::new(TestBackend::new());
    let script = engine.compile("depth.sgl", source).unwrap();
    let modes = [
        (sglc::JitMode::Off, JitTiers::Tiered),
        (sglc::JitMode::Eager, JitTiers::Tiered),
        (sglc::JitMode::Eager, JitTiers::Optimized),
    ];
    for max_call_depth in [2, 3, 4, 5, 6, 7, 47, 48, 49, 50, 51, 512] {
        // `main` is frame 1 and `down(n)` frame 2, so `down(0)` runs in frame n + 2.
        for n in max_call_depth - 2..=max_call_depth + 1 {
            let outcomes: Vec<Result<serde_json::Value, (String, Option<_>)>> = modes
                .into_iter()
                .map(|(jit, tiers)| {
                    let mut config = RunConfig::default();
                    config.limits.max_call_depth = max_call_depth;
                    config.jit.mode = jit;
                    config.jit.tiers = tiers;
                    match engine.run(&script, "main", json!({ "n": n }), &config) {
                        Ok(state) => Ok(state.return_value),
                        Err(Error::Runtime(error)) => Err((error.message.clone(), error.span())),
                        Err(other) => panic!("limit {max_call_depth}, {jit:?}: {other}"),
                    }
                })
                .collect();
            let case = format!("limit {max_call_depth}, n = {n}");
            assert_eq!(outcomes[0], outcomes[1], "{case}");
            assert_eq!(outcomes[0], outcomes[2], "{case}, optimized");
            match &outcomes[0] {
                Ok(value) => {
                    assert!(n + 2 <= max_call_depth, "{case}");
                    assert_eq!(value, &json!(n), "{case}");
                }
                Err((message, _)) => {
                    assert!(n + 2 > max_call_depth, "{case}");
                    assert!(
                        message.contains(&format!("call depth limit of {max_call_depth}")),
                        "{case}: {message}"
                    );
                }
            }
        }
    }
}

#[test]
fn limits_come_from_the_command_line() {
    let dir = std::env::temp_dir().join(format!("sglc-limits-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("spin.sgl");
    std::fs::write(&file, "fn main() {\n    while true {}\n}\n").unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sglc"))
        .args([
            "run",
            "--backend",
            "test",
            "--deadline",
            "100ms",
            "--max-instructions",
            "none",
        ])
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("deadline of 100ms (deadline)"), "{stderr}");
    assert!(stderr.contains("spin.sgl:2:"), "{stderr}");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sglc"))
        .args(["run", "--backend", "test", "--deadline", "soon"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--deadline"));
    std::fs::remove_dir_all(&dir).ok();
}
