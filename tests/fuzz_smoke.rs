//! The fuzz targets' invariants, run on stable in the test suite: over every seed and every
//! input a fuzzer once failed on (fuzz/regressions), and over random mutations of the seeds.
//! The real fuzzing is `cargo +nightly fuzz run compile|run` (docs/reliability.md).

use proptest::prelude::*;
use std::path::{Path, PathBuf};

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

fn fuzz_dir(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join(sub)
}

fn seeds() -> Vec<Vec<u8>> {
    let seeds: Vec<Vec<u8>> = files_in(&fuzz_dir("seeds"))
        .iter()
        .map(|path| std::fs::read(path).unwrap())
        .collect();
    assert!(seeds.len() >= 20, "the seed corpus is missing");
    seeds
}

#[test]
fn every_seed_holds_the_invariants() {
    for seed in seeds() {
        sglc_invariants::check_compile(&seed);
        sglc_invariants::check_run(&seed);
    }
}

#[test]
fn every_input_a_fuzzer_failed_on_holds_the_invariants_now() {
    let mut count = 0;
    for target in ["compile", "run"] {
        for path in files_in(&fuzz_dir("regressions").join(target)) {
            let data = std::fs::read(&path).unwrap();
            let check = if target == "compile" {
                sglc_invariants::check_compile
            } else {
                sglc_invariants::check_run
            };
            if let Err(panic) = std::panic::catch_unwind(|| check(&data)) {
                panic!("{} fails again: {panic:?}", path.display());
            }
            count += 1;
        }
    }
    assert!(count > 0, "fuzz/regressions is empty");
}

/// Pieces of the language to splice into a seed, as a fuzzer's dictionary would.
const TOKENS: &[&str] = &[
    "fn ",
    "let ",
    "if ",
    "else ",
    "while ",
    "for ",
    " in ",
    "return ",
    "break",
    "not ",
    " and ",
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    "\"",
    "f\"",
    "\"\"\"",
    "/*",
    "*/",
    "\n",
    ",",
    ":",
    ".",
    "+",
    "-",
    "*",
    "/",
    "%",
    "==",
    "=",
    "+=",
    "gen(\"x\")",
    "select(\"y\", choices=[\"a\", \"b\"])",
    "s.fork(2)",
    "range(9)",
    "0",
    "1.5",
    "9223372036854775807",
    "\u{e9}",
    "\u{1f600}",
    "\0",
];

#[derive(Debug, Clone)]
enum Edit {
    Insert(usize, usize),
    Delete(usize, usize),
    Byte(usize, u8),
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn mutated_seeds_hold_the_invariants(
        seed in any::<prop::sample::Index>(),
        edits in prop::collection::vec(
            prop_oneof![
                (any::<usize>(), 0..TOKENS.len()).prop_map(|(at, t)| Edit::Insert(at, t)),
                (any::<usize>(), 1usize..40).prop_map(|(at, n)| Edit::Delete(at, n)),
                (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Edit::Byte(at, b)),
            ],
            1..6,
        ),
    ) {
        let seeds = seeds();
        let mut data = seeds[seed.index(seeds.len())].clone();
        for edit in edits {
            let len = data.len().max(1);
            match edit {
                Edit::Insert(at, token) => {
                    let at = at % len;
                    data.splice(at..at, TOKENS[token].bytes());
                }
                Edit::Delete(at, n) => {
                    let at = at % len;
                    let end = (at + n).min(data.len());
                    data.drain(at.min(end)..end);
                }
                Edit::Byte(at, byte) => {
                    if !data.is_empty() {
                        let at = at % data.len();
                        data[at] = byte;
                    }
                }
            }
        }
        sglc_invariants::check_compile(&data);
        sglc_invariants::check_run(&data);
    }
}
