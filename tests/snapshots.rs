//! Snapshot tests over source files: programs run under the test backend, syntax (AST dumps
//! and rendered diagnostics) and bytecode listings. Record new snapshots with
//! `INSTA_UPDATE=always cargo test` and review them with `cargo insta review`.

use sglc::{Engine, Error, JitMode, JitTiers, RunConfig, TestBackend};
use std::path::Path;
use std::time::Duration;

/// A `// key: value` line in the file's leading comment block.
fn header<'a>(source: &'a str, key: &str) -> Option<&'a str> {
    source
        .lines()
        .take_while(|l| l.starts_with("//"))
        .find_map(|l| {
            l.strip_prefix("//")?
                .trim()
                .strip_prefix(key)?
                .strip_prefix(':')
        })
        .map(str::trim)
}

fn file_name(path: &Path) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    path.strip_prefix(&root)
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Runs a program and renders what a user would look at: printed lines, the transcript, the
/// variables and the return value, or the error.
fn run_program(path: &Path) -> String {
    run_program_with(path, &RunConfig::default())
}

fn run_program_with(path: &Path, config: &RunConfig) -> String {
    let source = std::fs::read_to_string(path).unwrap();
    let mut backend = TestBackend::new();
    if let Some(ms) = header(&source, "latency_ms") {
        backend = backend.with_latency(Duration::from_millis(ms.parse().unwrap()));
    }
    let engine = Engine::new(backend);
    let name = file_name(path);
    let script = match engine.compile(&name, &source) {
        Ok(script) => script,
        Err(error) => return format!("== compile error ==\n{}", error.render(false)),
    };
    let function = header(&source, "function")
        .map(str::to_string)
        .or_else(|| script.default_function().map(str::to_string))
        .expect("the program names its function");
    let args: serde_json::Value =
        serde_json::from_str(header(&source, "args").unwrap_or("{}")).unwrap();
    let mut out = String::new();
    if !script.warnings.is_empty() {
        out.push_str(&format!(
            "== warnings ==\n{}",
            script.render(&script.warnings, false)
        ));
    }
    match engine.run(&script, &function, args, config) {
        Ok(state) => {
            if !state.output.is_empty() {
                out.push_str(&format!("== output ==\n{}\n", state.output.join("\n")));
            }
            if !state.text.is_empty() {
                out.push_str(&format!("== text ==\n{}\n", state.text));
            }
            if !state.variables.is_empty() {
                out.push_str(&format!(
                    "== variables ==\n{}\n",
                    serde_json::to_string_pretty(&state.variables).unwrap()
                ));
            }
            out.push_str(&format!("== return ==\n{}\n", state.return_value));
        }
        Err(Error::Runtime(error)) => {
            if !error.output.is_empty() {
                out.push_str(&format!("== output ==\n{}\n", error.output.join("\n")));
            }
            out.push_str(&format!(
                "== runtime error ==\n{}",
                script.render(&[error.to_diagnostic()], false)
            ));
        }
        Err(other) => out.push_str(&format!("== error ==\n{other}\n")),
    }
    out
}

#[test]
fn programs() {
    insta::glob!("programs/**/*.sgl", |path| {
        insta::assert_snapshot!(run_program(path));
    });
}

/// Every program gives the same output, variables, return value and errors (spans and traces
/// included) interpreted and with every function compiled at its first call, by either tier
/// of the JIT or both (a tier-up midway).
#[test]
fn the_jit_changes_nothing() {
    let with = |mode, tiers| {
        let mut config = RunConfig::default();
        config.jit.mode = mode;
        config.jit.tiers = tiers;
        config
    };
    let off = with(JitMode::Off, JitTiers::Tiered);
    let compiled = [JitTiers::Baseline, JitTiers::Optimized, JitTiers::Tiered]
        .map(|tiers| (tiers, with(JitMode::Eager, tiers)));
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs");
    let mut paths = vec![root];
    let mut checked = 0;
    while let Some(path) = paths.pop() {
        if path.is_dir() {
            paths.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if path.extension().is_some_and(|e| e == "sgl") {
            let interpreted = run_program_with(&path, &off);
            for (tiers, config) in &compiled {
                assert_eq!(
                    interpreted,
                    run_program_with(&path, config),
                    "{} ({tiers:?})",
                    path.display()
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 20, "only {checked} programs");
}

/// The JIT programs really are compiled (else the comparison above proves nothing).
#[test]
fn numeric_functions_are_compiled() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs/jit/numeric.sgl");
    let engine = Engine::new(TestBackend::new());
    let script = engine
        .compile("numeric.sgl", &std::fs::read_to_string(path).unwrap())
        .unwrap();
    let listing = engine.jit_listing(&script, None, &[]).unwrap();
    for function in [
        "fib",
        "collatz_steps",
        "sum_range",
        "integrate",
        "mods",
        "logic",
        "floors",
    ] {
        let header = format!("; fn {function}(");
        let line = listing
            .lines()
            .find(|l| l.starts_with(&header))
            .unwrap_or_else(|| panic!("{function} missing:\n{listing}"));
        assert!(!line.contains("not compiled"), "{line}");
    }
    assert!(listing.contains("; fn main() is not compiled: it calls `print`"));
    assert!(
        listing.contains("ssub_overflow"),
        "overflow checks are in the code"
    );
}

#[test]
fn syntax_ok() {
    insta::glob!("syntax/ok/*.sgl", |path| {
        let source = std::fs::read_to_string(path).unwrap();
        let (module, diagnostics) = sglc_compiler::parse(&source);
        assert!(
            diagnostics.is_empty(),
            "{}: {diagnostics:#?}",
            path.display()
        );
        let engine = Engine::new(TestBackend::new());
        let script = engine.compile(&file_name(path), &source);
        assert!(script.is_ok(), "{}", script.unwrap_err().render(false));
        insta::assert_snapshot!(sglc_compiler::ast::dump(&module));
    });
}

#[test]
fn syntax_err() {
    insta::glob!("syntax/err/*.sgl", |path| {
        let source = std::fs::read_to_string(path).unwrap();
        let engine = Engine::new(TestBackend::new());
        let error = engine
            .compile(&file_name(path), &source)
            .expect_err("files under syntax/err must not compile");
        insta::assert_snapshot!(error.render(false));
    });
}

#[test]
fn bytecode() {
    insta::glob!("bytecode/*.sgl", |path| {
        let source = std::fs::read_to_string(path).unwrap();
        let engine = Engine::new(TestBackend::new());
        let script = engine.compile(&file_name(path), &source).unwrap();
        insta::assert_snapshot!(script.disassemble());
    });
}
