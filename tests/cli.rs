//! The `sglc` binary, driven as a user would: exit codes, stdout, stderr and files.

mod support;

use support::{sglc, sglc_with_env, stderr, stdout};

#[test]
fn run_prints_the_transcript_and_return_value() {
    let out = sglc(&["run", "examples/hello.sgl", "--backend", "test"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"),
        "{text}"
    );
    assert!(text.contains("\n=> \""), "{text}");
}

#[test]
fn run_json_has_variables_text_and_messages() {
    let out = sglc(&[
        "run",
        "examples/summarize.sgl",
        "--backend",
        "test",
        "--arg",
        "text=hello world",
        "--json",
        "--max-new-tokens",
        "3",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["function"], "summarize");
    assert_eq!(json["messages"][1]["content"], "Summarize: hello world");
    assert!(
        json["text"]
            .as_str()
            .unwrap()
            .contains(json["variables"]["summary"].as_str().unwrap())
    );
}

#[test]
fn args_json_passes_typed_values() {
    let out = sglc(&[
        "run",
        "examples/judge.sgl",
        "--backend",
        "test",
        "--args",
        r#"{"essay": "Oceans shape weather.", "dimensions": ["a", "b"]}"#,
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["variables"]["related"], "yes");
}

#[cfg(feature = "local")]
#[test]
fn model_path_names_the_weights_that_are_loaded() {
    let home = std::env::temp_dir().join(format!("sglc-model-path-{}", std::process::id()));
    let home = home.to_str().unwrap();
    // The printed path for these arguments, with `SGLC_WEIGHTS` set to `weights_env` if given.
    let path = |args: &[&str], weights_env: Option<&str>| {
        let mut env = vec![("SGLC_HOME", home)];
        env.extend(weights_env.map(|w| ("SGLC_WEIGHTS", w)));
        let out = sglc_with_env(args, &env);
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out).trim().to_string()
    };
    let models = format!("{home}/models");
    let cases: [(&[&str], Option<&str>, &str); 3] = [
        (&["model", "path"], None, "SmolLM2-135M-Instruct.Q8_0.gguf"),
        (
            &["model", "path", "--weights", "shipped"],
            None,
            "SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
        (
            &["model", "path"],
            Some("shipped"),
            "SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
    ];
    for (args, weights_env, file) in cases {
        assert_eq!(
            path(args, weights_env),
            format!("{models}/{file}"),
            "{args:?} {weights_env:?}"
        );
    }
    let out = sglc(&["model", "path", "--weights", "q2_k"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("[possible values: batched, shipped]"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn unknown_backend_and_bad_arguments_are_clear_errors() {
    let out = sglc(&["run", "examples/hello.sgl", "--backend", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("unknown backend `nope`; available: local (the default), test"),
        "{}",
        stderr(&out)
    );
    let out = sglc(&["run", "examples/summarize.sgl", "--backend", "test"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("missing argument `text`"),
        "{}",
        stderr(&out)
    );
    let out = sglc(&[
        "run",
        "examples/summarize.sgl",
        "--backend",
        "test",
        "--args",
        "[1]",
    ]);
    assert!(
        stderr(&out).contains("--args must be a JSON object"),
        "{}",
        stderr(&out)
    );
    let out = sglc(&["run", "no/such/file.sgl", "--backend", "test"]);
    assert!(
        stderr(&out).contains("cannot read no/such/file.sgl"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn check_reports_diagnostics_and_exit_code() {
    let out = sglc(&["check", "examples/judge.sgl"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = sglc(&["check", "tests/syntax/err/names.sgl"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("[E0220] Error: undefined name `lenn`"),
        "{err}"
    );
    assert!(err.contains("Help: did you mean `len`?"), "{err}");
    // Piped output has no colour codes.
    assert!(!err.contains('\u{1b}'), "{err}");
}

#[test]
fn check_emits_tokens_ast_and_bytecode() {
    let out = sglc(&["check", "examples/hello.sgl", "--emit", "tokens"]);
    assert!(stdout(&out).contains("Ident(\"main\")"));
    let out = sglc(&["check", "examples/hello.sgl", "--emit", "ast"]);
    assert!(stdout(&out).contains("(fn main (s)"));
    let out = sglc(&["check", "examples/hello.sgl", "--emit", "bytecode"]);
    assert!(stdout(&out).contains("CallInto Gen(name, max_tokens, stop, temperature)"));
}

#[test]
fn disasm_shows_source_locations() {
    let out = sglc(&["disasm", "examples/hello.sgl", "main"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("fn main(s) #0 program"), "{text}");
    assert!(
        text.contains("   5:5  "),
        "line:col of the assistant line: {text}"
    );
    let out = sglc(&["disasm", "examples/hello.sgl", "nope"]);
    assert!(stderr(&out).contains("no function `nope`"));
}

#[test]
fn runtime_errors_render_with_source_and_trace() {
    let out = sglc(&[
        "run",
        "tests/programs/errors/index_out_of_range.sgl",
        "--backend",
        "test",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("list index 5 out of range for length 3"),
        "{err}"
    );
    assert!(err.contains("called from `main`"), "{err}");
}

/// Lines printed before a runtime error are shown, and kept in `--json`'s error.
#[test]
fn output_printed_before_a_runtime_error_is_kept() {
    let program = "tests/programs/jit/deopt_errors.sgl";
    let out = sglc(&["run", program, "--backend", "test"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out), "3000000000000000\n");
    assert!(
        stderr(&out).contains("integer overflow"),
        "{}",
        stderr(&out)
    );
    let out = sglc(&["run", program, "--backend", "test", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        json["error"]["output"],
        serde_json::json!(["3000000000000000"])
    );
}

#[test]
fn help_shows_examples() {
    let out = sglc(&["--help"]);
    assert!(stdout(&out).contains("Examples:"));
    assert!(stdout(&out).contains("sglc run examples/hello.sgl"));
}

#[test]
fn streamed_chunks_add_up_to_the_final_text() {
    let args = [
        "run",
        "examples/summarize.sgl",
        "--backend",
        "test",
        "--arg",
        "text=Rust",
    ];
    let whole = sglc(&[&args[..], &["--json"]].concat());
    assert!(whole.status.success(), "{}", stderr(&whole));
    let state: serde_json::Value = serde_json::from_str(&stdout(&whole)).unwrap();
    let text = state["text"].as_str().unwrap();

    // Piped, --stream prints exactly the transcript (then a newline and the return value).
    let plain = sglc(&[&args[..], &["--stream"]].concat());
    assert!(plain.status.success(), "{}", stderr(&plain));
    assert!(stdout(&plain).starts_with(text), "{}", stdout(&plain));
    assert!(!stdout(&plain).contains("\x1b["), "no colour into a pipe");

    // --stream --json: typed events, one per line.
    let events = sglc(&[&args[..], &["--stream", "--json"]].concat());
    assert!(events.status.success(), "{}", stderr(&events));
    let events: Vec<serde_json::Value> = stdout(&events)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let streamed: String = events
        .iter()
        .filter(|e| e["event"] == "text")
        .map(|e| e["text"].as_str().unwrap())
        .collect();
    assert_eq!(streamed, text);
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"role_begin") && kinds.contains(&"role_end"));
    let finished = events
        .iter()
        .find(|e| e["event"] == "var_finished")
        .expect("a variable finished");
    assert_eq!(finished["name"], "summary");
    assert_eq!(finished["value"], state["variables"]["summary"]);
    assert_eq!(kinds.last(), Some(&"done"));
}

#[test]
fn completions_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let out = sglc(&["completions", shell]);
        assert!(out.status.success());
        let script = stdout(&out);
        assert!(
            script.contains("sglc") && script.contains("--batch"),
            "{shell}"
        );
    }
}

#[test]
fn verbosity_flags_control_logs() {
    let args = ["run", "examples/hello.sgl", "--backend", "test"];
    let quiet_by_default = sglc(&args);
    assert!(!stderr(&quiet_by_default).contains("backend: test"));
    let verbose = sglc(&[&args[..], &["-v"]].concat());
    assert!(
        stderr(&verbose).contains("backend: test"),
        "{}",
        stderr(&verbose)
    );
    let rust_log = support::sglc_with_env(&args, &[("RUST_LOG", "sglc=info")]);
    assert!(
        stderr(&rust_log).contains("backend: test"),
        "{}",
        stderr(&rust_log)
    );
}

#[test]
fn bare_sglc_off_a_terminal_prints_help() {
    let out = sglc(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stdout(&out).contains("Usage:"));
}

#[test]
fn check_json_lists_diagnostics_with_positions() {
    let out = sglc(&["check", "tests/syntax/err/lexical.sgl", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(report["ok"], false);
    let first = &report["diagnostics"][0];
    assert_eq!(first["code"], "E0002");
    assert_eq!(
        (first["line"].as_u64(), first["column"].as_u64()),
        (Some(2), Some(13))
    );
    let clean = sglc(&["check", "examples/hello.sgl", "--json"]);
    assert!(clean.status.success());
    let report: serde_json::Value = serde_json::from_str(&stdout(&clean)).unwrap();
    assert_eq!(report["ok"], true);
}

#[test]
fn bench_vm_smoke_run_prints_every_row() {
    let out = sglc(&["bench", "vm", "--quick"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    for row in [
        "single_gen",
        "chat3",
        "select4",
        "fork4",
        "loop20",
        "in flight:",
        "batches:",
        "start-up:",
    ] {
        assert!(table.contains(row), "no `{row}` row:\n{table}");
    }
    // The batch row is checked even in a smoke run: 500 ready programs, batches of 256.
    assert!(table.contains("2 backend calls"), "{table}");
}

#[test]
fn bench_jit_smoke_run_agrees_with_the_interpreter() {
    let out = sglc(&["bench", "jit", "--quick", "--no-python"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    for row in [
        "fib(30)",
        "nested int loop",
        "float integration",
        "prime sieve",
        "string building",
        "scoring strings",
        "compile latency",
        "fib::fib",
        "median over 12 functions: baseline",
        "to native code (baseline tier, best compiles)",
    ] {
        assert!(table.contains(row), "no `{row}`:\n{table}");
    }
    // `--only` keeps the programs whose names match, in the table and the latency report.
    let out = sglc(&["bench", "jit", "--quick", "--no-python", "--only", "fib"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    assert!(
        table.contains("fib(30)") && table.contains("fib::main"),
        "{table}"
    );
    for other in ["nested int loop", "scoring", "sieve::sieve"] {
        assert!(
            !table.contains(other),
            "`{other}` with --only fib:\n{table}"
        );
    }
    // `--jit-mode auto` compiles as a run does; `--jit-tiers` picks the latency's tiers too.
    let out = sglc(&[
        "bench",
        "jit",
        "--quick",
        "--no-python",
        "--only",
        "fib",
        "--jit-mode",
        "auto",
        "--jit-tiers",
        "optimized",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    assert!(table.contains("JIT (--jit auto)"), "{table}");
    assert!(
        table.contains("optimized median/best") && !table.contains("baseline median/best"),
        "{table}"
    );
    assert!(
        table.contains("to native code (optimized tier, best compiles)"),
        "{table}"
    );
    let out = sglc(&["bench", "jit", "--quick", "--jit-mode", "off"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--jit-mode is auto or eager"),
        "{}",
        stderr(&out)
    );
}

/// Each of `--jit-tiers` runs a program to the same result; another value is a clear error.
#[test]
fn jit_tiers_run_the_same_program_alike() {
    for tiers in ["tiered", "baseline", "optimized"] {
        let out = sglc(&[
            "run",
            "benches/programs/jit/fib.sgl",
            "--backend",
            "test",
            "--jit",
            "eager",
            "--jit-tiers",
            tiers,
            "--args",
            r#"{"n": 20}"#,
        ]);
        assert!(out.status.success(), "{tiers}: {}", stderr(&out));
        assert!(stdout(&out).contains("6765"), "{tiers}: {}", stdout(&out));
    }
    let out = sglc(&["run", "examples/hello.sgl", "--jit-tiers", "fast"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--jit-tiers is tiered, baseline or optimized, not `fast`"),
        "{}",
        stderr(&out)
    );
}

/// `sglc disasm f.sgl | head` closes the pipe early: the command ends quietly, not with a
/// panic about printing.
#[test]
fn a_closed_stdout_pipe_ends_the_command_quietly() {
    for args in [
        &["disasm", "examples/hello.sgl"][..],
        &["check", "examples/hello.sgl", "--emit", "tokens"][..],
        &["completions", "bash"][..],
    ] {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sglc"))
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The reader goes away before the command has written anything.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = stderr(&out);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
    }
}
