//! Runtime errors: a message, the source span where it happened and the call trace.

use serde::{Deserialize, Serialize};
use sglc_compiler::{Diagnostic, Span};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceFrame {
    pub function: String,
    pub span: Span,
}

/// An error that ended one program instance. Plain data: it crosses threads and serialises.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct RuntimeError {
    pub message: String,
    /// The innermost location first.
    pub trace: Vec<TraceFrame>,
    /// A short hint on how to fix it, when there is one.
    pub help: Option<String>,
}

impl RuntimeError {
    pub fn without_location(message: impl Into<String>) -> RuntimeError {
        RuntimeError {
            message: message.into(),
            trace: Vec::new(),
            help: None,
        }
    }

    pub fn span(&self) -> Option<Span> {
        self.trace.first().map(|f| f.span)
    }

    /// As a diagnostic: the error at its span, each caller as a secondary label.
    pub fn to_diagnostic(&self) -> Diagnostic {
        let span = self.span().unwrap_or_default();
        let mut d = Diagnostic::error("R0001", self.message.clone(), span).with_label(
            match self.trace.first() {
                Some(frame) => format!("in `{}`", frame.function),
                None => String::new(),
            },
        );
        // Deep recursion repeats one frame many times: show each run of equal frames once.
        let mut callers = self.trace.iter().skip(1).peekable();
        while let Some(frame) = callers.next() {
            let mut repeats = 1;
            while callers.peek() == Some(&frame) {
                callers.next();
                repeats += 1;
            }
            let times = if repeats > 1 {
                format!(" ({repeats} times)")
            } else {
                String::new()
            };
            d = d.with_secondary(
                frame.span,
                format!("called from `{}`{times}", frame.function),
            );
        }
        if let Some(help) = &self.help {
            d = d.with_help(help.clone());
        }
        d
    }
}
