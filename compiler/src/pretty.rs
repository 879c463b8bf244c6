//! Prints a syntax tree back as `.sgl` source that parses to the same tree (spans aside):
//! `sglc check --emit pretty`, and the round-trip property the tests check.
//!
//! Every unary and binary operation is parenthesised, so the output never depends on
//! precedence; blocks are indented four spaces.

use crate::ast::*;
use std::fmt::Write;

pub fn pretty(module: &Module) -> String {
    let mut out = String::new();
    for (i, item) in module.items.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        match item {
            Item::Fn(def) => {
                let params: Vec<&str> = def.params.iter().map(|p| p.name.as_str()).collect();
                let _ = write!(out, "fn {}({}) ", def.name.name, params.join(", "));
                block(&def.body, 0, &mut out);
                out.push('\n');
            }
            Item::Const { name, value, .. } => {
                let _ = writeln!(out, "let {} = {}", name.name, expr(value));
            }
            // Text that did not parse has no tree to print.
            Item::Error(_) => out.push_str("/* error */\n"),
        }
    }
    out
}

fn block(body: &Block, depth: usize, out: &mut String) {
    out.push_str("{\n");
    for s in &body.stmts {
        stmt(s, depth + 1, out);
    }
    out.push_str(&"    ".repeat(depth));
    out.push('}');
}

fn stmt(s: &Stmt, depth: usize, out: &mut String) {
    out.push_str(&"    ".repeat(depth));
    match &s.kind {
        StmtKind::Let { name, value } => {
            let _ = write!(out, "let {} = {}", name.name, expr(value));
        }
        StmtKind::Assign { target, value } => {
            let _ = write!(out, "{} = {}", expr(target), expr(value));
        }
        StmtKind::AugAssign { target, op, value } => {
            let _ = write!(out, "{} {}= {}", expr(target), op.symbol(), expr(value));
        }
        StmtKind::If {
            branches,
            otherwise,
        } => {
            for (i, (cond, body)) in branches.iter().enumerate() {
                if i > 0 {
                    out.push_str(" else ");
                }
                let _ = write!(out, "if {} ", expr(cond));
                block(body, depth, out);
            }
            if let Some(body) = otherwise {
                out.push_str(" else ");
                block(body, depth, out);
            }
        }
        StmtKind::While { cond, body } => {
            let _ = write!(out, "while {} ", expr(cond));
            block(body, depth, out);
        }
        StmtKind::For {
            targets,
            iter,
            body,
        } => {
            let _ = write!(out, "for {} in {} ", names(targets), expr(iter));
            block(body, depth, out);
        }
        StmtKind::Break => out.push_str("break"),
        StmtKind::Continue => out.push_str("continue"),
        StmtKind::Return(None) => out.push_str("return"),
        StmtKind::Return(Some(value)) => {
            let _ = write!(out, "return {}", expr(value));
        }
        StmtKind::Expr(e) => out.push_str(&expr(e)),
        StmtKind::Error => out.push_str("/* error */"),
    }
    out.push('\n');
}

fn names(targets: &[Ident]) -> String {
    let names: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
    names.join(", ")
}

fn args(args: &[Arg]) -> String {
    let args: Vec<String> = args
        .iter()
        .map(|a| match &a.name {
            Some(name) => format!("{}={}", name.name, expr(&a.value)),
            None => expr(&a.value),
        })
        .collect();
    args.join(", ")
}

/// A string literal that the lexer reads back as `text`.
pub fn string_literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    escape_into(text, false, &mut out);
    out.push('"');
    out
}

fn escape_into(text: &str, in_fstring: bool, out: &mut String) {
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '{' if in_fstring => out.push_str("{{"),
            '}' if in_fstring => out.push_str("}}"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
}

/// An expression followed by `.name(...)`, `(...)` or `[...]`: numbers are parenthesised
/// (`(1).x` rather than `1.x`, which would lex as a float).
fn operand(e: &Expr) -> String {
    match e.kind {
        ExprKind::Int(_) | ExprKind::Float(_) => format!("({})", expr(e)),
        _ => expr(e),
    }
}

pub fn expr(e: &Expr) -> String {
    match &e.kind {
        ExprKind::None => "none".to_string(),
        ExprKind::Bool(b) => b.to_string(),
        ExprKind::Int(n) => n.to_string(),
        // `{:?}` keeps a fraction or exponent, so the literal reads back as a float.
        ExprKind::Float(x) => format!("{x:?}"),
        ExprKind::Str(s) => string_literal(s),
        ExprKind::FString(parts) => {
            let mut out = String::from("f\"");
            for part in parts {
                match part {
                    FStringPart::Text(t) => escape_into(t, true, &mut out),
                    FStringPart::Expr(e) => {
                        let _ = write!(out, "{{{}}}", expr(e));
                    }
                }
            }
            out.push('"');
            out
        }
        ExprKind::Name(n) => n.clone(),
        ExprKind::List(items) => {
            let items: Vec<String> = items.iter().map(expr).collect();
            format!("[{}]", items.join(", "))
        }
        ExprKind::Map(entries) => {
            let entries: Vec<String> = entries
                .iter()
                .map(|(k, v)| format!("{}: {}", expr(k), expr(v)))
                .collect();
            format!("{{{}}}", entries.join(", "))
        }
        ExprKind::Comprehension {
            elem,
            targets,
            iter,
            cond,
        } => {
            let cond = cond
                .as_ref()
                .map(|c| format!(" if {}", expr(c)))
                .unwrap_or_default();
            format!(
                "[{} for {} in {}{cond}]",
                expr(elem),
                names(targets),
                expr(iter)
            )
        }
        ExprKind::Unary(UnOp::Neg, operand) => format!("(-{})", expr(operand)),
        ExprKind::Unary(UnOp::Not, operand) => format!("(not {})", expr(operand)),
        ExprKind::Binary(op, l, r) => format!("({} {} {})", expr(l), op.symbol(), expr(r)),
        ExprKind::Call { callee, args: a } => format!("{}({})", operand(callee), args(a)),
        ExprKind::Method {
            receiver,
            name,
            args: a,
        } => format!("{}.{}({})", operand(receiver), name.name, args(a)),
        ExprKind::Index(target, key) => format!("{}[{}]", operand(target), expr(key)),
        ExprKind::Slice { target, lo, hi } => {
            let bound = |b: &Option<Box<Expr>>| b.as_ref().map_or(String::new(), |e| expr(e));
            format!("{}[{}:{}]", operand(target), bound(lo), bound(hi))
        }
        ExprKind::Error => "/* error */".to_string(),
    }
}
