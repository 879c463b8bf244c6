//! A JIT gives its machine code back when its batch ends: a host that runs programs one
//! after another for days keeps no code pages from the runs that are over.
//!
//! One test in this binary on purpose: it reads the process's executable mappings, which any
//! other test compiling code at the same time would change.

#![cfg(all(target_os = "linux", feature = "jit"))]

use sglc::{Engine, JitMode, RunConfig, TestBackend};

/// Bytes of anonymous executable memory the process has mapped: where cranelift puts code.
fn jit_code_bytes() -> u64 {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("/proc/self/maps");
    maps.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // address perms offset dev inode [path]: anonymous mappings have no path.
            let anonymous_code = fields.len() == 5 && fields[1].starts_with("r-x");
            let (start, end) = fields[0].split_once('-')?;
            let size = u64::from_str_radix(end, 16).ok()? - u64::from_str_radix(start, 16).ok()?;
            anonymous_code.then_some(size)
        })
        .sum()
}

#[test]
fn runs_that_are_over_keep_no_machine_code() {
    let engine = Engine::new(TestBackend::new());
    let source = "fn fib(n) {\n    if n < 2 {\n        return n\n    }\n    return fib(n - 1) + fib(n - 2)\n}\n";
    let script = engine.compile("fib.sgl", source).expect("compiles");
    let mut config = RunConfig::default();
    config.jit.mode = JitMode::Eager;
    let run = |n: i64| {
        let state = engine
            .run(&script, "fib", serde_json::json!({ "n": n }), &config)
            .expect("runs");
        assert_eq!(
            state.return_value,
            serde_json::json!([0, 1, 1, 2, 3, 5, 8][n as usize])
        );
    };
    // The first runs start the tier-up thread and whatever the allocator keeps.
    for n in 0..5 {
        run(n);
    }
    let before = jit_code_bytes();
    const RUNS: usize = 300;
    for k in 0..RUNS {
        run((k % 7) as i64);
    }
    let grown = jit_code_bytes().saturating_sub(before);
    // Each run compiles at least a page of code: kept, they would be 300 pages (1.2 MB).
    assert!(
        grown < 16 * 4096,
        "{RUNS} runs left {grown} bytes of machine code mapped"
    );
}
