//! Any bytes through the lexer, parser, checker and lowering: no panic, every span in range
//! and on a char boundary, diagnostics render, bytecode round-trips.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sglc_invariants::check_compile(data));
