//! The sglc compiler core. It is pure: text in, a program plus diagnostics out, no IO.
//!
//! Stages: [`lexer`] (logos) → [`parser`] (chumsky, with recovery) → [`check`] (names, arity,
//! primitive arguments) → [`lower`] (bytecode). Diagnostics are data ([`diagnostic`]);
//! [`render`] is the only module that draws them.

pub mod ast;
pub mod bytecode;
pub mod diagnostic;
pub mod lexer;
pub mod lower;
pub mod parser;
pub mod pretty;
pub mod render;
pub mod span;

pub use bytecode::Program;
pub use diagnostic::{Diagnostic, Severity};
pub use lower::{CompileEnv, HostFunction};
pub use span::Span;

/// What `compile` returns: the program when there were no errors, and every diagnostic
/// (warnings included) either way.
#[derive(Debug)]
pub struct Compiled {
    pub program: Option<Program>,
    pub diagnostics: Vec<Diagnostic>,
}

impl Compiled {
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }
}

/// The largest source file compiled. Memory while compiling grows with the source (about
/// 60 bytes per byte of source at worst), so this also bounds the compiler's memory.
pub const MAX_SOURCE_BYTES: usize = 8 << 20;

/// Compiles one source file against the names the host provides.
pub fn compile(source: &str, env: &CompileEnv) -> Compiled {
    if let Some(too_large) = check_source_size(source) {
        return Compiled {
            program: None,
            diagnostics: vec![too_large],
        };
    }
    let (module, mut diagnostics) = parse(source);
    let (program, mut lower_diagnostics) = lower::lower(&module, env);
    diagnostics.append(&mut lower_diagnostics);
    diagnostics.sort_by_key(|d| (d.primary.span.start, d.primary.span.end));
    let failed = diagnostics.iter().any(Diagnostic::is_error);
    cap_diagnostics(&mut diagnostics);
    Compiled {
        program: (!failed).then_some(program),
        diagnostics,
    }
}

/// At most this many diagnostics are reported for one file; a file with more is rarely
/// helped by the rest, and rendering them all could take longer than writing the file.
pub const MAX_DIAGNOSTICS: usize = 100;

/// Keeps the first `MAX_DIAGNOSTICS` diagnostics and says how many were left out.
fn cap_diagnostics(diagnostics: &mut Vec<Diagnostic>) {
    if diagnostics.len() <= MAX_DIAGNOSTICS {
        return;
    }
    let left_out = diagnostics.len() - MAX_DIAGNOSTICS;
    diagnostics.truncate(MAX_DIAGNOSTICS);
    let last = diagnostics[MAX_DIAGNOSTICS - 1].primary.span;
    diagnostics.push(
        Diagnostic::error(
            "E0012",
            format!("{left_out} more diagnostics after this one are not shown"),
            last,
        )
        .with_label("the last diagnostic shown")
        .with_help("fix the ones above first"),
    );
}

/// The error for a source file over `MAX_SOURCE_BYTES`.
pub fn check_source_size(source: &str) -> Option<Diagnostic> {
    (source.len() > MAX_SOURCE_BYTES).then(|| {
        Diagnostic::error(
            "E0013",
            format!(
                "the source is {} bytes, more than the {} bytes one file may have",
                source.len(),
                MAX_SOURCE_BYTES
            ),
            Span::new(0, 0),
        )
        .with_label("this file")
        .with_help("split it, or load large data (prompts, examples) as arguments or JSONL input")
    })
}

/// Lexes and parses a source file. The module is always returned, with `Error` nodes where
/// text could not be parsed.
pub fn parse(source: &str) -> (ast::Module, Vec<Diagnostic>) {
    if let Some(too_large) = check_source_size(source) {
        return (ast::Module { items: Vec::new() }, vec![too_large]);
    }
    let lexed = lexer::lex(source);
    if let Some(diagnostic) = lexer::check_nesting(&lexed.tokens) {
        let mut all = lexed.diagnostics;
        all.push(diagnostic);
        return (ast::Module { items: Vec::new() }, all);
    }
    let (module, mut diagnostics) = parser::parse_tokens(&lexed.tokens, source.len());
    let mut all = lexed.diagnostics;
    all.append(&mut diagnostics);
    all.sort_by_key(|d| (d.primary.span.start, d.primary.span.end));
    (module, all)
}

#[cfg(test)]
mod smoke {
    #[test]
    fn compiles_the_judge_example() {
        let host = |name: &str, n| crate::HostFunction {
            name: name.to_string(),
            min_args: n,
            max_args: None,
        };
        let env = crate::CompileEnv {
            functions: vec![host("len", 1), host("zip", 0)],
            methods: vec!["join".to_string()],
        };
        let compiled = crate::compile(include_str!("../../examples/judge.sgl"), &env);
        let program = compiled.program.expect("compiles");
        assert_eq!(program.globals, vec!["GRADES"]);
        assert!(program.functions[0].is_program);
    }
}
