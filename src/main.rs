//! The `sglc` command line: run, batch, check and disassemble `.sgl` programs.

mod cli;

use clap::Parser;

/// mimalloc (see `sglc::allocator`).
#[global_allocator]
static ALLOCATOR: sglc::allocator::Allocator = sglc::allocator::Allocator;
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
