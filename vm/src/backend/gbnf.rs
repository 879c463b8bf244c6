//! GBNF grammars (llama.cpp's grammar format) for the constraints `choices`, `regex` and
//! `dtype`, shared by the embedded model and llama.cpp's server.

use super::SamplingParams;
use std::fmt::Write as _;

/// The grammar for a gen's `choices`, `regex` or `dtype`, if it has one (`json_schema` is left
/// to the caller, which has a converter for it).
pub fn constraint_grammar(params: &SamplingParams) -> Result<Option<String>, String> {
    if let Some(choices) = params.choices.as_ref().filter(|c| !c.is_empty()) {
        let alternatives: Vec<String> = choices.iter().map(|c| quote(c)).collect();
        return Ok(Some(format!("root ::= {}\n", alternatives.join(" | "))));
    }
    if let Some(regex) = &params.regex {
        return regex_to_gbnf(regex).map(Some);
    }
    Ok(match params.dtype.as_deref() {
        Some("int") => Some("root ::= \"-\"? [0-9]{1,18}\n".to_string()),
        Some("float") => Some("root ::= \"-\"? [0-9]{1,15} (\".\" [0-9]{1,15})?\n".to_string()),
        Some("bool") => Some("root ::= \"true\" | \"false\"\n".to_string()),
        _ => None,
    })
}

/// A GBNF string literal.
pub fn quote(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn class_char(c: char) -> String {
    if c.is_ascii_alphanumeric() {
        c.to_string()
    } else if (c as u32) <= 0xFFFF {
        format!("\\u{:04X}", c as u32)
    } else {
        format!("\\U{:08X}", c as u32)
    }
}

/// Translates a regular expression into a GBNF grammar matching the same strings.
/// Anchors and word boundaries are dropped: the grammar always spans the whole output.
pub fn regex_to_gbnf(pattern: &str) -> Result<String, String> {
    let hir = regex_syntax::ParserBuilder::new()
        .build()
        .parse(pattern)
        .map_err(|e| format!("invalid regex {pattern:?}: {e}"))?;
    let mut out = String::new();
    emit(&hir, &mut out)?;
    Ok(format!("root ::= {out}\n"))
}

fn emit(hir: &regex_syntax::hir::Hir, out: &mut String) -> Result<(), String> {
    use regex_syntax::hir::{Class, HirKind};
    match hir.kind() {
        HirKind::Empty | HirKind::Look(_) => out.push_str("\"\""),
        HirKind::Literal(lit) => {
            let text = std::str::from_utf8(&lit.0)
                .map_err(|_| "regex literal is not UTF-8".to_string())?;
            out.push_str(&quote(text));
        }
        HirKind::Class(Class::Unicode(class)) => {
            if class.ranges().is_empty() {
                return Err("regex has a class that matches nothing".to_string());
            }
            out.push('[');
            for range in class.ranges() {
                out.push_str(&class_char(range.start()));
                if range.end() != range.start() {
                    out.push('-');
                    out.push_str(&class_char(range.end()));
                }
            }
            out.push(']');
        }
        HirKind::Class(Class::Bytes(class)) => {
            out.push('[');
            for range in class.ranges() {
                let _ = write!(out, "\\x{:02X}", range.start());
                if range.end() != range.start() {
                    let _ = write!(out, "-\\x{:02X}", range.end());
                }
            }
            out.push(']');
        }
        HirKind::Repetition(rep) => {
            out.push('(');
            emit(&rep.sub, out)?;
            out.push(')');
            match (rep.min, rep.max) {
                (0, None) => out.push('*'),
                (1, None) => out.push('+'),
                (0, Some(1)) => out.push('?'),
                (min, None) => {
                    let _ = write!(out, "{{{min},}}");
                }
                (min, Some(max)) if min == max => {
                    let _ = write!(out, "{{{min}}}");
                }
                (min, Some(max)) => {
                    let _ = write!(out, "{{{min},{max}}}");
                }
            }
        }
        HirKind::Capture(capture) => {
            out.push('(');
            emit(&capture.sub, out)?;
            out.push(')');
        }
        HirKind::Concat(parts) => {
            out.push('(');
            for (i, part) in parts.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                emit(part, out)?;
            }
            out.push(')');
        }
        HirKind::Alternation(parts) => {
            out.push('(');
            for (i, part) in parts.iter().enumerate() {
                if i > 0 {
                    out.push_str(" | ");
                }
                emit(part, out)?;
            }
            out.push(')');
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regexes_translate_to_grammars() {
        assert_eq!(
            regex_to_gbnf("ab|c").unwrap(),
            "root ::= (\"ab\" | \"c\")\n"
        );
        assert_eq!(
            regex_to_gbnf("[0-9]{3}-x?").unwrap(),
            "root ::= (([0-9]){3} \"-\" (\"x\")?)\n"
        );
        assert_eq!(
            regex_to_gbnf("^a+$").unwrap(),
            "root ::= (\"\" (\"a\")+ \"\")\n"
        );
        assert!(regex_to_gbnf("(").is_err());
    }
}
