//! `sglc repl`: an interactive session. Definitions (`fn`, top-level `let`) accumulate into one
//! program that is recompiled on every change; anything else is evaluated as an expression (or
//! run as statements) against them; `:run` runs a program on the backend, streamed.

use super::output::{out, outln};
use super::{BackendArgs, make_backend, stream};
use anyhow::Result;
use clap::Args;
use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::validate::{ValidationContext, ValidationResult, Validator};
use rustyline::{Context, Editor, Helper};
use sglc::{Diagnostic, Engine, Error, RunConfig, Script, TestBackend};
use sglc_compiler::ast::Item;
use sglc_compiler::render::render_diagnostics;
use std::cell::RefCell;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::Arc;

#[derive(Args, Debug)]
pub struct ReplArgs {
    /// Definitions to load first.
    pub file: Option<PathBuf>,
    /// The backend `:run` uses (default: the embedded model, started on the first `:run`).
    #[arg(long, env = "SGLC_BACKEND")]
    pub backend: Option<String>,
    #[command(flatten)]
    pub local: BackendArgs,
}

const HELP: &str = "\
Type definitions (`fn f(x) { ... }`, `let NAME = ...`) to add or replace them, or an
expression or statements to evaluate them. Input continues while brackets are open.

  :run FN [k=v ...]   run a function on the backend, streamed (values are JSON or strings)
  :load FILE          add the definitions of a file
  :disasm FN          show a function's bytecode
  :defs               show the current definitions
  :backend SPEC       use another backend: local, test, openai[:URL], sglang:URL, ...
  :help               this text
  :quit               leave (or Ctrl-D)";

const COMMANDS: &[&str] = &[
    ":run", ":load", ":disasm", ":defs", ":backend", ":help", ":quit",
];

const KEYWORDS: &[&str] = &[
    "fn",
    "let",
    "if",
    "else",
    "while",
    "for",
    "in",
    "break",
    "continue",
    "return",
    "and",
    "or",
    "not",
    "true",
    "false",
    "none",
    "gen",
    "select",
    "system",
    "user",
    "assistant",
];

/// The name of the synthetic function an evaluated input becomes.
const EVAL_FN: &str = "__repl__";

/// One definition: the names it defines and its source text.
struct Definition {
    name: String,
    text: String,
}

/// A compile or run failure, rendered against what the user typed where possible.
struct Failure {
    rendered: String,
}

struct Session {
    definitions: Vec<Definition>,
    /// Compiles and evaluates pure code (which never calls a model).
    eval_engine: Engine,
    /// The backend for `:run`, started on first use.
    run_engine: Option<Engine>,
    backend_spec: Option<String>,
    backend_args: BackendArgs,
    color: bool,
    /// Names for tab completion, shared with the line editor's helper.
    names: Rc<RefCell<Vec<String>>>,
}

impl Session {
    fn definitions_source(&self) -> String {
        let mut source = String::new();
        for definition in &self.definitions {
            source.push_str(&definition.text);
            source.push('\n');
        }
        source
    }

    fn refresh_names(&self) {
        let mut names: Vec<String> = KEYWORDS.iter().map(|s| s.to_string()).collect();
        let env = self.eval_engine.natives().compile_env();
        names.extend(env.functions.into_iter().map(|f| f.name));
        names.extend(env.methods);
        names.extend(self.definitions.iter().map(|d| d.name.clone()));
        names.sort();
        names.dedup();
        *self.names.borrow_mut() = names;
    }

    /// Compiles `prefix + input + suffix` after the definitions. Errors inside the input are
    /// shown against the input alone, so line numbers are the user's.
    fn compile_with(
        &self,
        input_name: &str,
        input: &str,
        prefix: &str,
        suffix: &str,
    ) -> Result<Script, (Failure, bool)> {
        let definitions = self.definitions_source();
        let source = format!("{definitions}{prefix}{input}{suffix}");
        let offset = (definitions.len() + prefix.len()) as u32;
        match self.eval_engine.compile("<repl>", &source) {
            Ok(script) => Ok(script),
            Err(error) => {
                let parse_error = error.diagnostics.iter().any(|d| d.code == "E0100");
                let rendered =
                    self.render_relocated(&error.diagnostics, &source, input_name, input, offset);
                Err((Failure { rendered }, parse_error))
            }
        }
    }

    fn render_relocated(
        &self,
        diagnostics: &[Diagnostic],
        source: &str,
        input_name: &str,
        input: &str,
        offset: u32,
    ) -> String {
        let end = offset + input.len() as u32;
        let (mut inside, mut outside) = (Vec::new(), Vec::new());
        for diagnostic in diagnostics {
            // Errors past the input (in the wrapper's closing lines) are at its end.
            if diagnostic.primary.span.start >= offset {
                let mut moved = diagnostic.clone();
                let shift = |span: &mut sglc_compiler::span::Span| {
                    span.start = span.start.saturating_sub(offset).min(input.len() as u32);
                    span.end = span.end.saturating_sub(offset).min(input.len() as u32);
                };
                shift(&mut moved.primary.span);
                moved
                    .secondary
                    .retain(|l| l.span.start >= offset && l.span.end <= end);
                for label in &mut moved.secondary {
                    shift(&mut label.span);
                }
                inside.push(moved);
            } else {
                outside.push(diagnostic.clone());
            }
        }
        let mut text = render_diagnostics(input_name, input, &inside, self.color);
        text.push_str(&render_diagnostics(
            "<definitions>",
            source,
            &outside,
            self.color,
        ));
        text
    }

    /// Handles one complete input; returns false to end the session.
    fn handle(&mut self, input: &str) -> bool {
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return true;
        }
        if let Some(command) = trimmed.strip_prefix(':') {
            return self.command(command);
        }
        match self.define_or_eval("<input>", input) {
            Ok(Some(shown)) => outln!("{shown}"),
            Ok(None) => {}
            Err(failure) => eprint!("{}", failure.rendered),
        }
        true
    }

    /// Adds the input's definitions, or evaluates it. Returns what to print.
    fn define_or_eval(&mut self, name: &str, input: &str) -> Result<Option<String>, Failure> {
        let (module, parse_errors) = sglc_compiler::parse(input);
        let only_items = parse_errors.is_empty()
            && !module.items.is_empty()
            && module
                .items
                .iter()
                .all(|item| matches!(item, Item::Fn(_) | Item::Const { .. }));
        if only_items {
            self.define(name, input, &module.items)?;
            let names: Vec<String> = module
                .items
                .iter()
                .filter_map(|item| match item {
                    Item::Fn(f) => Some(format!("`{}`", f.name.name)),
                    Item::Const { name, .. } => Some(format!("`{}`", name.name)),
                    _ => None,
                })
                .collect();
            return Ok(Some(format!("defined {}", names.join(", "))));
        }
        self.evaluate(name, input)
    }

    fn define(&mut self, name: &str, input: &str, items: &[Item]) -> Result<(), Failure> {
        let mut candidate: Vec<Definition> = Vec::new();
        for item in items {
            let (ident, span) = match item {
                Item::Fn(f) => (&f.name.name, f.span),
                Item::Const { name, span, .. } => (&name.name, *span),
                _ => continue,
            };
            candidate.push(Definition {
                name: ident.clone(),
                text: input[span.start as usize..span.end as usize].to_string(),
            });
        }
        // A new definition of a name replaces the old one in place.
        let previous = std::mem::take(&mut self.definitions);
        let mut merged: Vec<Definition> = Vec::new();
        for old in previous.iter() {
            let replacement = candidate.iter().position(|c| c.name == old.name);
            match replacement {
                Some(i) => merged.push(candidate.remove(i)),
                None => merged.push(Definition {
                    name: old.name.clone(),
                    text: old.text.clone(),
                }),
            }
        }
        merged.extend(candidate);
        self.definitions = merged;
        let check = self.compile_with(name, "", "", "");
        match check {
            Ok(_) => {
                self.refresh_names();
                Ok(())
            }
            Err(_) => {
                // Show the errors against the input as typed, then restore the old program.
                self.definitions = previous;
                let failure = match self.compile_with(name, input, "", "\n") {
                    Err((failure, _)) => failure,
                    Ok(_) => Failure {
                        rendered: "error: these definitions conflict with earlier ones\n"
                            .to_string(),
                    },
                };
                Err(failure)
            }
        }
    }

    fn evaluate(&mut self, name: &str, input: &str) -> Result<Option<String>, Failure> {
        // An expression first (its value is printed); otherwise statements.
        let expression = self.compile_with(
            name,
            input,
            &format!("fn {EVAL_FN}() {{\nreturn (\n"),
            "\n)\n}\n",
        );
        let script = match expression {
            Ok(script) => script,
            Err((expression_failure, expression_parse_error)) => {
                match self.compile_with(name, input, &format!("fn {EVAL_FN}() {{\n"), "\n}\n") {
                    Ok(script) => script,
                    Err((statement_failure, _)) => {
                        return Err(if expression_parse_error {
                            statement_failure
                        } else {
                            expression_failure
                        });
                    }
                }
            }
        };
        match self.eval_engine.run(
            &script,
            EVAL_FN,
            serde_json::json!({}),
            &RunConfig::default(),
        ) {
            Ok(state) => {
                let mut shown: Vec<String> = state.output.clone();
                if !state.return_value.is_null() {
                    shown.push(state.return_value.to_string());
                }
                Ok((!shown.is_empty()).then(|| shown.join("\n")))
            }
            Err(Error::Runtime(error)) => {
                // What it printed before failing, then the error.
                let printed: String = error.output.iter().map(|l| format!("{l}\n")).collect();
                Err(Failure {
                    rendered: printed + &script.render(&[error.to_diagnostic()], self.color),
                })
            }
            Err(other) => Err(Failure {
                rendered: format!("error: {other}\n"),
            }),
        }
    }

    fn command(&mut self, command: &str) -> bool {
        let (name, rest) = command
            .split_once(char::is_whitespace)
            .map_or((command, ""), |(n, r)| (n, r.trim()));
        let outcome: Result<(), String> = match name {
            "q" | "quit" | "exit" => return false,
            "h" | "help" | "?" => {
                outln!("{HELP}");
                Ok(())
            }
            "defs" => {
                for definition in &self.definitions {
                    outln!("{}", definition.text);
                }
                Ok(())
            }
            "load" => self.load(rest),
            "disasm" => self.disasm(rest),
            "backend" => self.set_backend(rest),
            "run" => self.run(rest),
            other => Err(format!("unknown command `:{other}`; :help lists them")),
        };
        if let Err(message) = outcome {
            eprintln!("error: {message}");
        }
        true
    }

    fn load(&mut self, path: &str) -> Result<(), String> {
        if path.is_empty() {
            return Err("usage: :load FILE".into());
        }
        let source =
            super::read_source(std::path::Path::new(path)).map_err(|e| format!("{e:#}"))?;
        let (module, parse_errors) = sglc_compiler::parse(&source);
        if !parse_errors.is_empty() {
            eprint!(
                "{}",
                render_diagnostics(path, &source, &parse_errors, self.color)
            );
            return Err(format!("{path} not loaded"));
        }
        match self.define(path, &source, &module.items) {
            Ok(()) => {
                outln!("loaded {path}: {} definition(s)", module.items.len());
                Ok(())
            }
            Err(failure) => {
                eprint!("{}", failure.rendered);
                Err(format!("{path} not loaded"))
            }
        }
    }

    fn current_script(&self) -> Result<Script, String> {
        self.compile_with("<input>", "", "", "")
            .map_err(|(failure, _)| failure.rendered)
    }

    fn disasm(&mut self, function: &str) -> Result<(), String> {
        let script = self.current_script()?;
        if function.is_empty() {
            out!("{}", script.disassemble());
            return Ok(());
        }
        outln!("{}", script.disassemble_function(function)?);
        Ok(())
    }

    fn set_backend(&mut self, spec: &str) -> Result<(), String> {
        if spec.is_empty() {
            outln!(
                "backend: {}",
                self.backend_spec
                    .as_deref()
                    .unwrap_or("local (the default)")
            );
            return Ok(());
        }
        let backend = make_backend(Some(spec), &self.backend_args).map_err(|e| format!("{e:#}"))?;
        self.backend_spec = Some(spec.to_string());
        self.run_engine = Some(self.engine_with(backend));
        outln!("backend: {spec}");
        Ok(())
    }

    fn engine_with(&self, backend: Arc<dyn sglc::Backend>) -> Engine {
        Engine::with_backend(backend)
    }

    fn run(&mut self, rest: &str) -> Result<(), String> {
        let mut words = rest.split_whitespace();
        let Some(function) = words.next() else {
            return Err("usage: :run FN [name=value ...]".into());
        };
        let mut args = serde_json::Map::new();
        for pair in words {
            let (name, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("arguments are name=value, not `{pair}`"))?;
            let value = serde_json::from_str(value)
                .unwrap_or_else(|_| serde_json::Value::String(value.to_string()));
            args.insert(name.to_string(), value);
        }
        let script = self.current_script()?;
        if self.run_engine.is_none() {
            let backend = make_backend(self.backend_spec.as_deref(), &self.backend_args)
                .map_err(|e| format!("{e:#}"))?;
            self.run_engine = Some(self.engine_with(backend));
        }
        let engine = self.run_engine.as_ref().expect("started above");
        let config = RunConfig {
            events: Some(stream::transcript()),
            ..RunConfig::default()
        };
        match engine.run(&script, function, serde_json::Value::Object(args), &config) {
            Ok(state) => {
                outln!();
                super::print_outputs(&state);
                Ok(())
            }
            Err(Error::Runtime(error)) => {
                outln!();
                for line in &error.output {
                    outln!("{line}");
                }
                eprint!("{}", script.render(&[error.to_diagnostic()], self.color));
                Ok(())
            }
            Err(Error::Unsupported { diagnostics, .. }) => {
                eprint!("{}", script.render(&diagnostics, self.color));
                Ok(())
            }
            Err(other) => Err(other.to_string()),
        }
    }
}

/// The line editor's helper: multi-line input while brackets are open, tab completion.
struct ReplHelper {
    names: Rc<RefCell<Vec<String>>>,
}

impl Validator for ReplHelper {
    fn validate(&self, ctx: &mut ValidationContext) -> rustyline::Result<ValidationResult> {
        Ok(if input_is_incomplete(ctx.input()) {
            ValidationResult::Incomplete
        } else {
            ValidationResult::Valid(None)
        })
    }
}

/// Whether the input stops inside an open bracket, a block comment or a triple-quoted string.
fn input_is_incomplete(input: &str) -> bool {
    if input.trim_start().starts_with(':') {
        return false;
    }
    use sglc_compiler::lexer::Token;
    let lexed = sglc_compiler::lexer::lex(input);
    let mut depth = 0i64;
    for (token, _) in &lexed.tokens {
        match token {
            Token::LParen | Token::LBracket | Token::LBrace => depth += 1,
            Token::RParen | Token::RBracket | Token::RBrace => depth -= 1,
            _ => {}
        }
    }
    if depth > 0 {
        return true;
    }
    let end = input.trim_end().len() as u32;
    lexed.diagnostics.iter().any(|d| match d.code {
        // A block comment still open at the end.
        "E0003" => true,
        // A string left open at the end: only a triple-quoted one may span lines.
        "E0002" => {
            let start = d.primary.span.start as usize;
            d.primary.span.end >= end
                && (input[start..].starts_with("\"\"\"")
                    || input[start..].starts_with("'''")
                    || input[start..].starts_with("f\"\"\"")
                    || input[start..].starts_with("f'''"))
        }
        _ => false,
    })
}

impl Completer for ReplHelper {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let before = &line[..pos];
        let start = before
            .rfind(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .map_or(0, |i| i + 1);
        let word = &before[start..];
        if word.is_empty() {
            return Ok((pos, Vec::new()));
        }
        let candidates: Vec<Pair> = if word.starts_with(':') {
            COMMANDS
                .iter()
                .filter(|c| c.starts_with(word))
                .map(|c| pair(c))
                .collect()
        } else {
            self.names
                .borrow()
                .iter()
                .filter(|n| n.starts_with(word) && n.as_str() != EVAL_FN)
                .map(|n| pair(n))
                .collect()
        };
        Ok((start, candidates))
    }
}

fn pair(text: &str) -> Pair {
    Pair {
        display: text.to_string(),
        replacement: text.to_string(),
    }
}

impl Hinter for ReplHelper {
    type Hint = String;
}
impl Highlighter for ReplHelper {}
impl Helper for ReplHelper {}

/// Where the history is kept: `$SGLC_HISTORY`, else `$SGLC_HOME/history`, else the data folder.
fn history_path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("SGLC_HISTORY") {
        return Some(PathBuf::from(path));
    }
    if let Some(home) = std::env::var_os("SGLC_HOME") {
        return Some(PathBuf::from(home).join("history"));
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))?;
    Some(data.join("sglc").join("history"))
}

pub fn repl(args: ReplArgs) -> Result<ExitCode> {
    let names = Rc::new(RefCell::new(Vec::new()));
    let mut session = Session {
        definitions: Vec::new(),
        eval_engine: Engine::new(TestBackend::new()),
        run_engine: None,
        backend_spec: args.backend.clone(),
        backend_args: args.local.clone(),
        color: super::color_stderr(),
        names: names.clone(),
    };
    session.refresh_names();
    let config = rustyline::Config::builder()
        .auto_add_history(true)
        .history_ignore_dups(true)?
        .max_history_size(10_000)?
        .build();
    let mut editor: Editor<ReplHelper, rustyline::history::FileHistory> =
        Editor::with_config(config)?;
    let interactive = std::io::stdin().is_terminal();
    // Piped input is joined into complete inputs by the loop below, which also sees an input
    // left open at the end; the editor's validator would drop that one silently.
    if interactive {
        editor.set_helper(Some(ReplHelper { names }));
    }
    let history = history_path();
    if let Some(path) = &history {
        let _ = editor.load_history(path);
    }
    if interactive {
        outln!(
            "sglc {} REPL; :help for help, Ctrl-D to leave",
            env!("CARGO_PKG_VERSION")
        );
    }
    if let Some(file) = &args.file {
        session.handle(&format!(":load {}", file.display()));
    }
    // Input read so far while brackets are open. On a terminal the editor's validator already
    // joins the lines; piped input arrives line by line and is joined here.
    let mut pending = String::new();
    loop {
        let prompt = if pending.is_empty() { "sgl> " } else { "...  " };
        match editor.readline(prompt) {
            Ok(line) => {
                pending.push_str(&line);
                if input_is_incomplete(&pending) {
                    pending.push('\n');
                    continue;
                }
                let go_on = session.handle(&std::mem::take(&mut pending));
                if let Some(path) = &history {
                    if let Some(dir) = path.parent() {
                        let _ = std::fs::create_dir_all(dir);
                    }
                    let _ = editor.save_history(path);
                }
                if !go_on {
                    break;
                }
            }
            // Ctrl-C drops the input being typed, as in a shell.
            Err(ReadlineError::Interrupted) => pending.clear(),
            Err(ReadlineError::Eof) => {
                // Input that ends inside a bracket still gets its diagnostics.
                if !pending.trim().is_empty() {
                    session.handle(&pending);
                }
                break;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(ExitCode::SUCCESS)
}
