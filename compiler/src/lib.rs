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

/// Compiles one source file against the names the host provides.
pub fn compile(source: &str, env: &CompileEnv) -> Compiled {
    let (module, mut diagnostics) = parse(source);
    let (program, mut lower_diagnostics) = lower::lower(&module, env);
    diagnostics.append(&mut lower_diagnostics);
    diagnostics.sort_by_key(|d| (d.primary.span.start, d.primary.span.end));
    let failed = diagnostics.iter().any(Diagnostic::is_error);
    Compiled {
        program: (!failed).then_some(program),
        diagnostics,
    }
}

/// Lexes and parses a source file. The module is always returned, with `Error` nodes where
/// text could not be parsed.
pub fn parse(source: &str) -> (ast::Module, Vec<Diagnostic>) {
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
