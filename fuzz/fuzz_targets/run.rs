//! Any source that compiles, run under the test backend with tight limits, interpreted and
//! JIT-compiled: no panic, and the same outcome both ways.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sglc_invariants::check_run(data));
