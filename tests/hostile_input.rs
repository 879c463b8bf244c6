//! Source text built to break a compiler: deep nesting, long operator chains, huge files,
//! invalid UTF-8, NUL bytes. Each gets a clear diagnostic; nothing overflows the stack or
//! takes unbounded memory.

use serde_json::json;
use sglc::{Engine, RunConfig, TestBackend};
use std::process::Command;

/// Compiles (and, when it compiles, runs) `source` on a thread with a 2 MiB stack, the
/// default for threads a host spawns, and returns the diagnostic codes.
fn compile_on_small_stack(source: String) -> Vec<&'static str> {
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || {
            let engine = Engine::new(TestBackend::new());
            match engine.compile("hostile.sgl", &source) {
                Ok(script) => {
                    let _ = engine.run(&script, "main", json!({}), &RunConfig::default());
                    Vec::new()
                }
                Err(error) => error.diagnostics.iter().map(|d| d.code).collect(),
            }
        })
        .unwrap()
        .join()
        .expect("the compiler thread survived")
}

fn program(body: &str) -> String {
    format!("fn main() {{\n    let x = 1\n    return {body}\n}}\n")
}

#[test]
fn the_deepest_accepted_expressions_compile_and_run_on_a_small_stack() {
    let deepest = sglc_compiler::lexer::MAX_EXPRESSION_DEPTH - 5;
    let cases = [
        vec!["x"; deepest].join(" + "),
        format!("{}x", "-".repeat(deepest)),
        format!("{}x", "not ".repeat(deepest)),
        format!("\"a\"{}", ".upper()".repeat(deepest / 4)),
        format!("[x]{}", "[0]".repeat(deepest / 2)),
        format!("{}x{}", "(".repeat(199), ")".repeat(199)),
        format!("{}x{}", "(x + ".repeat(150), ")".repeat(150)),
        format!("{}x{}", "[".repeat(199), "]".repeat(199)),
    ];
    for body in cases {
        let codes = compile_on_small_stack(program(&body));
        assert!(codes.is_empty(), "{codes:?} for {}...", &body[..40]);
    }
}

#[test]
fn deeper_expressions_get_a_diagnostic_not_a_stack_overflow() {
    let too_deep = sglc_compiler::lexer::MAX_EXPRESSION_DEPTH + 1;
    let cases = [
        vec!["x"; 200_000].join(" + "),
        format!("{}x", "-".repeat(100_000)),
        format!("{}x", "not ".repeat(too_deep)),
        format!("x{}", ".a".repeat(100_000)),
        format!("x{}", "[0]".repeat(100_000)),
        format!("{}x{}", "(".repeat(10_000), ")".repeat(10_000)),
        format!("{}x{}", "(x + ".repeat(600), ")".repeat(600)),
        format!("{}x{}", "{\"k\": ".repeat(300), "}".repeat(300)),
    ];
    for body in cases {
        let codes = compile_on_small_stack(program(&body));
        assert_eq!(codes, ["E0011"], "for {}...", &body[..40]);
    }
}

#[test]
fn ten_thousand_open_brackets_make_two_diagnostics() {
    let source = format!("fn main() {{ return {} }}\n", "[".repeat(10_000));
    let started = std::time::Instant::now();
    let codes = compile_on_small_stack(source);
    assert_eq!(codes, ["E0010", "E0011"]);
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn many_errors_are_capped() {
    let source = "fn main() {\n    let x = 1\n}\n".to_string() + &"$\n".repeat(5000);
    let codes = compile_on_small_stack(source);
    assert_eq!(codes.len(), sglc_compiler::MAX_DIAGNOSTICS + 1);
    assert_eq!(codes.last(), Some(&"E0012"));
}

#[test]
fn a_huge_source_is_refused_with_a_diagnostic() {
    let source = format!(
        "fn main() {{ return 1 }}\n{}",
        "// padding\n".repeat(sglc_compiler::MAX_SOURCE_BYTES / 11 + 1)
    );
    assert_eq!(compile_on_small_stack(source), ["E0013"]);
}

fn temp_file(name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sglc-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Runs `sglc check FILE` and returns (exit code, stderr, peak RSS of the child in KiB).
fn sglc_check(path: &std::path::Path) -> (Option<i32>, String, i64) {
    let output = Command::new(env!("CARGO_BIN_EXE_sglc"))
        .arg("check")
        .arg(path)
        .output()
        .unwrap();
    // SAFETY: getrusage writes into the struct it is given.
    let peak_kib = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        usage.ru_maxrss
    };
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
        peak_kib,
    )
}

#[test]
fn the_command_line_refuses_a_50_mb_file_in_bounded_memory() {
    let mut bytes = b"fn main() { return 1 }\n".to_vec();
    bytes.resize(50 << 20, b'\n');
    let path = temp_file("huge.sgl", &bytes);
    let (code, stderr, peak_kib) = sglc_check(&path);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("larger than the 8388608 bytes"), "{stderr}");
    // The file is not read past the limit (the peak covers every child of this test process).
    assert!(peak_kib < 200 * 1024, "peak RSS {peak_kib} KiB");
}

#[test]
fn invalid_utf8_and_nul_bytes_are_reported_where_they_are() {
    let path = temp_file("latin1.sgl", b"fn main() {\n    return \"caf\xe9\"\n}\n");
    let (code, stderr, _) = sglc_check(&path);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("latin1.sgl:2:16: the file is not valid UTF-8 (byte 0xe9"),
        "{stderr}"
    );
    let path = temp_file("nul.sgl", b"fn main() {\n    return 1\x00\n}\n");
    let (code, stderr, _) = sglc_check(&path);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("[E0001]"), "{stderr}");
    assert!(stderr.contains("unexpected character '\\0'"), "{stderr}");
    assert!(stderr.contains("nul.sgl:2:13"), "{stderr}");
}
