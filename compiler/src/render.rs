//! The one place diagnostics are drawn: ariadne reports with labelled spans and a help line.

use crate::diagnostic::{Diagnostic, Severity};
use ariadne::{Color, Config, IndexType, Label, Report, ReportKind, Source};

/// Renders diagnostics for one source file into a string. `color` is off for snapshots and pipes.
pub fn render_diagnostics(
    file_name: &str,
    source: &str,
    diagnostics: &[Diagnostic],
    color: bool,
) -> String {
    let mut out = Vec::new();
    for diagnostic in diagnostics {
        render_one(file_name, source, diagnostic, color, &mut out);
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn render_one(
    file_name: &str,
    source: &str,
    diagnostic: &Diagnostic,
    color: bool,
    out: &mut Vec<u8>,
) {
    let (kind, primary_color) = match diagnostic.severity {
        Severity::Error => (ReportKind::Error, Color::Red),
        Severity::Warning => (ReportKind::Warning, Color::Yellow),
    };
    let clamp = |span: crate::span::Span| {
        let start = (span.start as usize).min(source.len());
        let end = (span.end as usize).clamp(start, source.len());
        (file_name, start..end)
    };
    let primary = clamp(diagnostic.primary.span);
    let mut report = Report::build(kind, primary.clone())
        .with_config(
            Config::new()
                .with_index_type(IndexType::Byte)
                .with_color(color),
        )
        .with_code(diagnostic.code)
        .with_message(&diagnostic.message);
    let mut label = Label::new(primary).with_color(primary_color);
    if !diagnostic.primary.message.is_empty() {
        label = label.with_message(&diagnostic.primary.message);
    }
    report = report.with_label(label);
    for secondary in &diagnostic.secondary {
        report = report.with_label(
            Label::new(clamp(secondary.span))
                .with_message(&secondary.message)
                .with_color(Color::Blue),
        );
    }
    if let Some(help) = &diagnostic.help {
        report = report.with_help(help);
    }
    let _ = report
        .finish()
        .write((file_name, Source::from(source)), &mut *out);
}
