//! `sglc repl` driven as a person would, under a pseudo-terminal: definitions that persist,
//! multi-line input, errors that do not end the session, tab completion, `:run` streamed,
//! `:load`, `:disasm`, Ctrl-C, and history kept across sessions.

mod support;

use rexpect::session::{PtySession, spawn_command};
use std::path::Path;
use std::process::Command;
use support::{temp_dir, write};

const TIMEOUT_MS: u64 = 20_000;

fn start(args: &[&str], history: &Path) -> PtySession {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sglc"));
    command
        .args(args)
        .env("SGLC_HISTORY", history)
        .env("NO_COLOR", "1")
        .env("TERM", "xterm")
        .env_remove("SGLC_BACKEND");
    spawn_command(command, Some(TIMEOUT_MS)).expect("the REPL starts under a pty")
}

#[test]
fn a_scripted_session() {
    let dir = temp_dir("repl");
    let history = dir.join("history");
    let _ = std::fs::remove_file(&history);
    let library = write(&dir, "lib.sgl", "fn triple(x) {\n    return x * 3\n}\n");

    let mut p = start(&["repl", "--backend", "test"], &history);
    p.exp_string(":help for help").unwrap();

    // Definitions persist; expressions print their value.
    enter(&mut p, "let base = 40");
    p.exp_string("defined `base`").unwrap();
    enter(&mut p, "base + 2");
    p.exp_string("42").unwrap();

    // Input continues while a brace is open.
    enter(&mut p, "fn double(a) {");
    p.send_line("    return a * 2").unwrap();
    p.send_line("}").unwrap();
    p.exp_string("defined `double`").unwrap();
    enter(&mut p, "double(50)");
    p.exp_string("100").unwrap();

    // A syntax error and a runtime error are diagnostics; the session goes on.
    enter(&mut p, "1 +");
    p.exp_string("E0100").unwrap();
    p.exp_string("<input>:1:4").unwrap();
    enter(&mut p, "[7, 8][5]");
    p.exp_string("R0001").unwrap();
    enter(&mut p, "base - 1");
    p.exp_string("39").unwrap();

    // Tab completes a defined name.
    p.exp_string("sgl> ").unwrap();
    p.send("dou").unwrap();
    p.send("\t").unwrap();
    p.send_line("(333)").unwrap();
    p.exp_string("666").unwrap();

    // :run streams a program on the backend.
    enter(
        &mut p,
        r#"fn greet(s, name) { s += "Hello " + name + "! " + gen("reply", max_tokens=3) }"#,
    );
    p.exp_string("defined `greet`").unwrap();
    enter(&mut p, ":run greet name=Ada");
    p.exp_string("Hello Ada! ").unwrap();

    enter(&mut p, ":disasm double");
    p.exp_string("fn double(a)").unwrap();
    enter(&mut p, ":help");
    p.exp_string(":load FILE").unwrap();
    enter(&mut p, &format!(":load {}", library.display()));
    p.exp_string("1 definition(s)").unwrap();
    enter(&mut p, "triple(\"ab\")");
    p.exp_string("\"ababab\"").unwrap();

    // Ctrl-C drops the line being typed.
    p.exp_string("sgl> ").unwrap();
    p.send("this is not code").unwrap();
    p.flush().unwrap();
    p.exp_string("not code").unwrap();
    p.send_control('c').unwrap();
    enter(&mut p, "base * 10");
    p.exp_string("400").unwrap();

    p.exp_string("sgl> ").unwrap();
    p.send_control('d').unwrap();
    p.exp_eof().unwrap();

    // History survives the session: the up arrow brings back earlier input.
    let saved = std::fs::read_to_string(&history).unwrap();
    assert!(saved.contains("let base = 40"), "{saved}");
    let mut p = start(&["repl", "--backend", "test"], &history);
    p.exp_string(":help for help").unwrap();
    enter(&mut p, "let base = 5");
    p.exp_string("defined `base`").unwrap();
    p.exp_string("sgl> ").unwrap();
    // Up twice: past `let base = 5` to `base * 10` from the first session.
    p.send("\x1b[A").unwrap();
    p.send("\x1b[A").unwrap();
    p.flush().unwrap();
    p.exp_string("base * 10").unwrap();
    p.send_line("").unwrap();
    p.exp_string("50").unwrap();
    enter(&mut p, ":quit");
    p.exp_eof().unwrap();
}

/// Waits for the prompt, then types `line` and Enter (input typed before the prompt shows
/// may be read by the terminal setup rather than the editor).
fn enter(p: &mut PtySession, line: &str) {
    p.exp_string("sgl> ").unwrap();
    p.send_line(line).unwrap();
}

#[test]
fn sglc_alone_on_a_terminal_starts_the_repl() {
    let dir = temp_dir("repl-bare");
    let mut p = start(&[], &dir.join("history"));
    enter(&mut p, "len(\"four\") * 25");
    p.exp_string("100").unwrap();
    p.exp_string("sgl> ").unwrap();
    p.send_control('d').unwrap();
    p.exp_eof().unwrap();
}
