//! `--stream` printers: the transcript as it grows (decorated on a terminal, plain when piped),
//! or one JSON event per line for tools.

use sglc::{EventSink, StreamEvent};
use std::io::{IsTerminal, Write};

const ROLE: &str = "\x1b[1;36m";
const GENERATED: &str = "\x1b[32m";
const RESET: &str = "\x1b[0m";

/// Prints the transcript to stdout as it is generated. On a terminal (and without `NO_COLOR`)
/// each chat message starts with a `[role]` header and generated text is green; piped, the
/// output is exactly the final transcript.
pub fn transcript() -> EventSink {
    let decorate = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    EventSink::new(move |_, event| {
        let mut out = std::io::stdout().lock();
        let _ = match event {
            StreamEvent::Text { text } => write!(out, "{text}"),
            StreamEvent::RoleBegin { role } if decorate => writeln!(out, "{ROLE}[{role}]{RESET}"),
            StreamEvent::VarStarted { .. } if decorate => write!(out, "{GENERATED}"),
            StreamEvent::VarFinished { .. } if decorate => write!(out, "{RESET}"),
            _ => Ok(()),
        };
        let _ = out.flush();
    })
}

/// Prints every event as one JSON object per line (`{"event":"text","text":"..."}`).
pub fn json_lines() -> EventSink {
    EventSink::new(|_, event| {
        let mut out = std::io::stdout().lock();
        if let Ok(line) = serde_json::to_string(&event) {
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    })
}
