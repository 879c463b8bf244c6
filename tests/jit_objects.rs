//! Strings, lists and maps in compiled code: the functions of `tests/programs/jit/objects.sgl`
//! are compiled for object arguments, and compiled code frees every box it makes.
//!
//! One test in this binary on purpose: the box count is process-wide, so nothing else may run
//! compiled code while it is read.

use sglc::{Engine, JitMode, RunConfig, TestBackend};
use std::path::Path;

fn programs() -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "sgl") {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

#[test]
fn object_functions_are_compiled_and_free_what_they_make() {
    let engine = Engine::new(TestBackend::new());
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs/jit/objects.sgl");
    let script = engine
        .compile("objects.sgl", &std::fs::read_to_string(&path).unwrap())
        .unwrap();
    for (function, types) in [
        ("build", "int"),
        ("sieve", "int"),
        ("best", "obj,obj"),
        ("counts", "obj"),
        ("squares", "obj"),
        ("first_long", "obj,int"),
        ("shout", "obj"),
        ("keys_of", "obj"),
        ("compare", "obj,obj"),
        // Numbers taken from list items behind a guard keep the accumulator native.
        ("total", "obj"),
        ("sum_items", "obj"),
        ("mean", "obj"),
    ] {
        let types: Vec<String> = types.split(',').map(str::to_string).collect();
        let listing = engine.jit_listing(&script, Some(function), &types).unwrap();
        let header = format!("; fn {function}(");
        let line = listing
            .lines()
            .find(|l| l.starts_with(&header))
            .unwrap_or_else(|| panic!("{function} missing:\n{listing}"));
        assert!(!line.contains("not compiled"), "{line}");
        assert!(
            listing.contains("call_indirect"),
            "{function} calls no helper"
        );
    }

    let mut config = RunConfig::default();
    config.jit.mode = JitMode::Eager;
    let mut ran = 0;
    for path in programs() {
        let source = std::fs::read_to_string(&path).unwrap();
        let Ok(script) = engine.compile("program.sgl", &source) else {
            continue;
        };
        let Some(function) = source
            .lines()
            .find_map(|l| l.strip_prefix("// function:"))
            .map(|f| f.trim().to_string())
            .or_else(|| script.default_function().map(str::to_string))
        else {
            continue;
        };
        let args: serde_json::Value = source
            .lines()
            .find_map(|l| l.strip_prefix("// args:"))
            .map(|a| serde_json::from_str(a.trim()).unwrap())
            .unwrap_or_else(|| serde_json::json!({}));
        let before = sglc_vm::jit::runtime::live_boxes();
        // Errors are fine here (some programs test them); what matters is what is left over.
        let _ = engine.run(&script, &function, args, &config);
        assert_eq!(
            sglc_vm::jit::runtime::live_boxes(),
            before,
            "{}: compiled code leaked (or freed twice) {} boxes",
            path.display(),
            sglc_vm::jit::runtime::live_boxes() - before
        );
        ran += 1;
    }
    assert!(ran > 20, "only {ran} programs ran");
}
