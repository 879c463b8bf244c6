//! The command's own output on stdout. `println!` panics when the reader has gone
//! (`sglc disasm f.sgl | head`); these end the command quietly with success instead, as Unix
//! filters do. Batch results have their own writer, which reports write errors and loses no
//! finished line (`batch::output`).

use std::fmt;
use std::io::Write;

/// Writes `args` to stdout; a closed pipe ends the process with success, any other write error
/// with a message and failure.
pub fn write(args: fmt::Arguments) {
    let mut out = std::io::stdout().lock();
    if let Err(error) = out.write_fmt(args).and_then(|()| out.flush()) {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to stdout: {error}");
        std::process::exit(i32::from(super::EXIT_FAILURE));
    }
}

/// `print!` that ends the command quietly when stdout is a closed pipe.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::output::write(format_args!($($arg)*))
    };
}

/// `println!` that ends the command quietly when stdout is a closed pipe.
macro_rules! outln {
    () => {
        $crate::cli::output::write(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::output::write(format_args!("{}\n", format_args!($($arg)*)))
    };
}

pub(crate) use {out, outln};
