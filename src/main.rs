//! The `sglc` command line: run, batch, check and disassemble `.sgl` programs.

mod cli;

use clap::Parser;

/// The VM allocates many small, short-lived objects (values, states, requests); mimalloc's
/// thread-local free lists serve them at a fraction of glibc malloc's cost (`sglc bench vm`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::dispatch(args) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(cli::EXIT_FAILURE)
        }
    }
}
