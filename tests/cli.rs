//! The `sglc` binary, driven as a user would: exit codes, stdout, stderr and files.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn sglc(args: &[&str]) -> Output {
    sglc_with_stdin(args, "")
}

fn sglc_with_stdin(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sglc"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("SGLC_BACKEND")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sglc starts");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sglc-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

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

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn batch_writes_one_line_per_input_in_order() {
    let dir = temp_dir("batch");
    let program = write(
        &dir,
        "p.sgl",
        "fn main(s, n) {\n    if n == 2 { return [][0] }\n    s += f\"{n}:\" + gen(\"g\", max_tokens=1)\n    return n\n}\n",
    );
    let input = write(
        &dir,
        "in.jsonl",
        "{\"n\": 0}\n{\"n\": 1}\n\nnot json\n{\"n\": 2}\n[1]\n{\"n\": 3}\n{}\n",
    );
    let out_path = dir.join("out.jsonl");
    let out = sglc(&[
        "run",
        program.to_str().unwrap(),
        "main",
        "--backend",
        "test",
        "--batch",
        input.to_str().unwrap(),
        "--out",
        out_path.to_str().unwrap(),
        "--concurrency",
        "2",
    ]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "partial failure: {}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("7 programs: 3 ok, 4 failed"),
        "{}",
        stderr(&out)
    );
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&out_path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let line_numbers: Vec<u64> = lines.iter().map(|l| l["line"].as_u64().unwrap()).collect();
    assert_eq!(line_numbers, vec![1, 2, 4, 5, 6, 7, 8]);
    let ok: Vec<bool> = lines.iter().map(|l| l["ok"].as_bool().unwrap()).collect();
    assert_eq!(ok, vec![true, true, false, false, false, true, false]);
    assert_eq!(lines[0]["return_value"], 0);
    assert!(
        lines[2]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not valid JSON")
    );
    assert!(
        lines[3]["error"]["location"]
            .as_str()
            .unwrap()
            .ends_with("p.sgl:2:24"),
        "{}",
        lines[3]
    );
    assert!(
        lines[4]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not a JSON object")
    );
    assert!(
        lines[6]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("missing argument `n`")
    );
}

#[test]
fn batch_reads_stdin_and_writes_stdout() {
    let out = sglc_with_stdin(
        &[
            "run",
            "examples/summarize.sgl",
            "--backend",
            "test",
            "--batch",
            "-",
        ],
        "{\"text\": \"a\"}\n{\"text\": \"b\"}\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2);
    assert!(lines[1].contains("Summarize: b"));
}

#[test]
fn help_shows_examples() {
    let out = sglc(&["--help"]);
    assert!(stdout(&out).contains("Examples:"));
    assert!(stdout(&out).contains("sglc run examples/hello.sgl"));
}
