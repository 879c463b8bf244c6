//! `sglc run --batch`: result lines in input order, malformed inputs, stdin/stdout, CSV,
//! `--resume` after `kill -9`, Ctrl-C, and progress output. All under the deterministic backend.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::{sglc, sglc_with_stdin, stderr, stdout, temp_dir, write};

/// A program whose input `n` says how many gens it makes one after another: with a slow
/// backend, inputs with larger `n` finish later.
const STEPS: &str = "fn main(s, n) {\n    for i in range(n) {\n        s += gen(f\"g{i}\", max_tokens=2)\n    }\n    return n\n}\n";

fn lines_of(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn line_numbers(lines: &[serde_json::Value]) -> Vec<u64> {
    lines.iter().map(|l| l["line"].as_u64().unwrap()).collect()
}

/// Starts `sglc run` on a batch in the background.
fn spawn_batch(program: &Path, input: &Path, out: &Path, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_sglc"))
        .args([
            "run",
            program.to_str().unwrap(),
            "--batch",
            input.to_str().unwrap(),
        ])
        .args(["--out", out.to_str().unwrap(), "--concurrency", "4"])
        .args(extra)
        .env_remove("SGLC_BACKEND")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sglc starts")
}

/// A batch of `count` inputs with 1 to 3 gens each; returns the program and input paths.
fn steps_batch(dir: &Path, count: usize) -> (PathBuf, PathBuf) {
    let program = write(dir, "steps.sgl", STEPS);
    let inputs: String = (0..count)
        .map(|i| format!("{{\"n\": {}}}\n", 1 + (i * 7) % 3))
        .collect();
    (program, write(dir, "in.jsonl", &inputs))
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
        stderr(&out).contains("7 programs in") && stderr(&out).contains("3 ok, 4 failed"),
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
fn ordered_output_waits_for_slow_inputs_and_unordered_does_not() {
    let dir = temp_dir("order");
    let program = write(&dir, "steps.sgl", STEPS);
    // The first inputs are the slowest.
    let input = write(
        &dir,
        "in.jsonl",
        "{\"n\": 6}\n{\"n\": 4}\n{\"n\": 2}\n{\"n\": 0}\n",
    );
    let run = |extra: &[&str], out: &Path| {
        let mut args = vec![
            "run",
            program.to_str().unwrap(),
            "--backend",
            "test:latency=20",
            "--batch",
            input.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let result = sglc(&args);
        assert!(result.status.success(), "{}", stderr(&result));
    };
    let ordered = dir.join("ordered.jsonl");
    let unordered = dir.join("unordered.jsonl");
    run(&[], &ordered);
    run(&["--unordered"], &unordered);
    assert_eq!(line_numbers(&lines_of(&ordered)), vec![1, 2, 3, 4]);
    assert_eq!(line_numbers(&lines_of(&unordered)), vec![4, 3, 2, 1]);
    // The same results either way.
    let mut sorted = lines_of(&unordered);
    sorted.sort_by_key(|l| l["line"].as_u64());
    assert_eq!(sorted, lines_of(&ordered));
}

#[test]
fn malformed_lines_get_error_results_with_the_reason() {
    let dir = temp_dir("malformed");
    let program = write(&dir, "steps.sgl", STEPS);
    let mut input =
        b"{\"n\": 1}\n{\"n\": \n\"just a string\"\n{\"m\": 1}\n{\"n\": 1, \"extra\": 2}\n".to_vec();
    input.extend_from_slice(b"{\"n\": \"\xff\"}\n{\"n\": 2}\n");
    let input_path = dir.join("in.jsonl");
    std::fs::write(&input_path, input).unwrap();
    let out = sglc(&[
        "run",
        program.to_str().unwrap(),
        "--backend",
        "test",
        "--batch",
        input_path.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(line_numbers(&lines), vec![1, 2, 3, 4, 5, 6, 7]);
    let errors: Vec<&str> = lines
        .iter()
        .map(|l| l["error"]["message"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(errors[0], "");
    assert!(
        errors[1].contains("line 2 is not valid JSON"),
        "{}",
        errors[1]
    );
    assert!(
        errors[2].contains("line 3 is not a JSON object"),
        "{}",
        errors[2]
    );
    assert!(errors[3].contains("missing argument `n`"), "{}", errors[3]);
    assert!(errors[4].contains("no parameter `extra`"), "{}", errors[4]);
    assert!(
        errors[5].contains("line 6 is not valid UTF-8"),
        "{}",
        errors[5]
    );
    assert_eq!(lines[6]["return_value"], 2);
}

#[test]
fn csv_input_names_arguments_in_its_header() {
    let dir = temp_dir("csv");
    let input = write(&dir, "in.csv", "text\nfirst\n\"second, with a comma\"\n");
    let out = sglc(&[
        "run",
        "examples/summarize.sgl",
        "--backend",
        "test",
        "--batch",
        input.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(line_numbers(&lines), vec![2, 3]);
    assert!(
        lines[1]["text"]
            .as_str()
            .unwrap()
            .contains("second, with a comma")
    );
}

/// Runs the whole batch without interruption: the reference output.
fn uninterrupted(program: &Path, input: &Path, out: &Path) -> String {
    let status = spawn_batch(program, input, out, &["--backend", "test:latency=2", "-q"])
        .wait()
        .unwrap();
    assert!(status.success());
    std::fs::read_to_string(out).unwrap()
}

/// `kill -9` at 20 points drawn at random (from a fixed seed, so a failure reproduces), some
/// of them twice in a row (the resumed run killed too), then `--resume`: the output equals an
/// uninterrupted run byte for byte: every input exactly once, in order.
#[test]
fn resume_after_kill_9_finishes_without_redoing_work() {
    let dir = temp_dir("kill9");
    let (program, input) = steps_batch(&dir, 300);
    let reference = uninterrupted(&program, &input, &dir.join("reference.jsonl"));
    assert_eq!(reference.lines().count(), 300);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut random_ms = |low: u64, high: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        low + seed % (high - low)
    };
    let backend = ["--backend", "test:latency=2", "-q"];
    let resume = ["--backend", "test:latency=2", "-q", "--resume"];
    let mut interrupted_runs = 0;
    for attempt in 0..20u64 {
        let out = dir.join(format!("out{attempt}.jsonl"));
        let mut child = spawn_batch(&program, &input, &out, &backend);
        std::thread::sleep(Duration::from_millis(random_ms(30, 900)));
        child.kill().unwrap();
        if !child.wait().unwrap().success() {
            interrupted_runs += 1;
        }
        if attempt % 3 == 2 {
            // Kill the resumed run as well.
            let mut again = spawn_batch(&program, &input, &out, &resume);
            std::thread::sleep(Duration::from_millis(random_ms(30, 400)));
            again.kill().unwrap();
            again.wait().unwrap();
        }
        let before = std::fs::read_to_string(&out).unwrap_or_default();
        // Simulate the worst moment to die: in the middle of writing a line.
        if attempt % 2 == 1 {
            let mut file = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(&out)
                .unwrap();
            std::io::Write::write_all(&mut file, b"{\"line\": 99999, \"ok\": tr").unwrap();
        }
        let resumed = spawn_batch(&program, &input, &out, &resume)
            .wait_with_output()
            .unwrap();
        assert!(
            resumed.status.success(),
            "{}",
            String::from_utf8_lossy(&resumed.stderr)
        );
        let after = std::fs::read_to_string(&out).unwrap();
        assert!(after.starts_with(before.trim_end_matches(|c| c != '\n')));
        assert_eq!(
            after, reference,
            "attempt {attempt}: resumed output differs"
        );
    }
    assert!(
        interrupted_runs >= 10,
        "only {interrupted_runs} of 20 runs were killed mid-way"
    );
}

fn interrupt(child: &Child) {
    // SAFETY: sending a signal to a child process we own.
    let result = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    assert_eq!(result, 0);
}

#[test]
fn ctrl_c_finishes_what_is_in_flight_then_resume_completes() {
    let dir = temp_dir("ctrlc");
    let (program, input) = steps_batch(&dir, 200);
    let reference = uninterrupted(&program, &input, &dir.join("reference.jsonl"));
    let out = dir.join("out.jsonl");
    let child = spawn_batch(&program, &input, &out, &["--backend", "test:latency=10"]);
    std::thread::sleep(Duration::from_millis(400));
    interrupt(&child);
    let result = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    assert!(err.contains("--resume"), "{err}");
    // Every program that started finished: the output is a complete prefix of the reference.
    let partial = std::fs::read_to_string(&out).unwrap();
    let written = partial.lines().count();
    assert!(written > 0 && written < 200, "{written} lines");
    assert!(reference.starts_with(&partial));
    let resumed = spawn_batch(
        &program,
        &input,
        &out,
        &["--backend", "test:latency=2", "--resume"],
    )
    .wait_with_output()
    .unwrap();
    assert!(resumed.status.success());
    assert!(
        String::from_utf8_lossy(&resumed.stderr).contains(&format!("resuming: {written} input(s)"))
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap(), reference);
}

#[test]
fn a_second_ctrl_c_abandons_programs_in_flight() {
    let dir = temp_dir("ctrlc2");
    let (program, input) = steps_batch(&dir, 50);
    let out = dir.join("out.jsonl");
    // Each gen takes a second: the first Ctrl-C would wait for all four programs.
    let child = spawn_batch(&program, &input, &out, &["--backend", "test:latency=1000"]);
    std::thread::sleep(Duration::from_millis(300));
    let started = std::time::Instant::now();
    interrupt(&child);
    std::thread::sleep(Duration::from_millis(100));
    interrupt(&child);
    let result = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(130), "{err}");
    assert!(err.contains("abandoned"), "{err}");
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn progress_lines_when_not_a_terminal_and_quiet_silences_them() {
    let dir = temp_dir("progress");
    let (program, input) = steps_batch(&dir, 20);
    let out = dir.join("out.jsonl");
    let args = |extra: &'static str| {
        let mut a = vec![
            "run".to_string(),
            program.display().to_string(),
            "--backend".into(),
            "test".into(),
            "--batch".into(),
            input.display().to_string(),
            "--out".into(),
            out.display().to_string(),
        ];
        if !extra.is_empty() {
            a.push(extra.into());
        }
        a
    };
    let run = |extra| {
        let a = args(extra);
        sglc(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let plain = run("");
    assert!(plain.status.success());
    let summary = stderr(&plain);
    assert!(summary.contains("20 programs in"), "{summary}");
    assert!(summary.contains("20 ok, 0 failed"), "{summary}");
    assert!(summary.contains("tokens/s"), "{summary}");
    let quiet = run("-q");
    assert!(quiet.status.success());
    assert_eq!(stderr(&quiet), "");
    // --progress draws the bar even into a pipe: it ends cleared, with the summary.
    let bar = run("--progress");
    assert!(bar.status.success());
    assert!(stderr(&bar).contains("20 ok, 0 failed"));
}

#[test]
fn resume_refuses_an_output_that_is_not_results() {
    let dir = temp_dir("resume-bad");
    let (program, input) = steps_batch(&dir, 3);
    let out = write(&dir, "out.jsonl", "{\"line\": 1}\nhello\n");
    let result = sglc(&[
        "run",
        program.to_str().unwrap(),
        "--backend",
        "test",
        "--batch",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--resume",
    ]);
    assert_eq!(result.status.code(), Some(1));
    assert!(
        stderr(&result).contains("line 2 is not a result line"),
        "{}",
        stderr(&result)
    );
}
