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
    /// Lines the program printed before it failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output: Vec<String>,
}

impl RuntimeError {
    pub fn without_location(message: impl Into<String>) -> RuntimeError {
        RuntimeError {
            message: message.into(),
            trace: Vec::new(),
            help: None,
            output: Vec::new(),
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
        // Deep recursion repeats call sites many times (alternating, for `fib(n - 1) +
        // fib(n - 2)`): label each call site once, innermost first, with its frame count.
        let mut sites: Vec<(&TraceFrame, usize)> = Vec::new();
        for frame in self.trace.iter().skip(1) {
            match sites.iter_mut().find(|(seen, _)| *seen == frame) {
                Some((_, count)) => *count += 1,
                None => sites.push((frame, 1)),
            }
        }
        for (frame, count) in sites {
            let times = if count > 1 {
                format!(" ({count} times)")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recursion_labels_each_call_site_once_with_its_count() {
        let frame = |start: u32| TraceFrame {
            function: "fib".to_string(),
            span: Span {
                start,
                end: start + 3,
            },
        };
        // Innermost first: the error, then calls alternating between two sites, then main.
        let mut trace = vec![frame(0)];
        for i in 0..40 {
            trace.push(frame(if i % 3 == 0 { 20 } else { 10 }));
        }
        trace.push(TraceFrame {
            function: "main".to_string(),
            span: Span { start: 40, end: 45 },
        });
        let error = RuntimeError {
            message: "boom".to_string(),
            trace,
            help: None,
            output: Vec::new(),
        };
        let labels: Vec<String> = error
            .to_diagnostic()
            .secondary
            .into_iter()
            .map(|l| l.message)
            .collect();
        assert_eq!(
            labels,
            [
                "called from `fib` (14 times)",
                "called from `fib` (26 times)",
                "called from `main`"
            ]
        );
    }
}
