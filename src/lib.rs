//! sglc as a library: compile `.sgl` programs and run them, once or in batches, from Rust.
//!
//! ```
//! use sglc::{Engine, RunConfig, TestBackend};
//! use serde_json::json;
//!
//! let source = r#"
//! fn summarize(s, text) {
//!     s += system("You are a concise assistant.")
//!     s += user(f"Summarize: {text}")
//!     s += assistant(gen("summary", max_tokens=100))
//!     return shout(s["summary"])
//! }
//! "#;
//!
//! let mut engine = Engine::new(TestBackend::new());
//! // A host function scripts can call; scripts have no other way out.
//! engine.register_fn("shout", 1, |args| Ok(json!(args[0].as_str().unwrap_or("").to_uppercase())));
//! let script = engine.compile("summarize.sgl", source).map_err(|e| e.render(false)).unwrap();
//!
//! // One run, with sampling defaults for gens that leave them unset, and a deadline per
//! // program (the other limits, `sglc::Limits`, keep their defaults).
//! let config = RunConfig::default()
//!     .with_temperature(0.3)
//!     .with_max_new_tokens(200)
//!     .with_deadline(std::time::Duration::from_secs(30));
//! let state = engine.run(&script, "summarize", json!({"text": "Rust is fast."}), &config).unwrap();
//! let summary = state["summary"].as_str().unwrap();
//! assert!(state.text().contains("Summarize: Rust is fast."));
//! assert_eq!(state.messages.len(), 3);
//! assert_eq!(state.return_value, json!(summary.to_uppercase()));
//!
//! // A batch: one result per input, in input order; a failing input does not stop the rest.
//! let inputs = vec![json!({"text": "a"}), json!({"text": "b"}), json!({"wrong": 1})];
//! let results = engine.run_batch(&script, "summarize", inputs, &config).unwrap();
//! assert!(results[0].is_ok() && results[1].is_ok());
//! assert!(results[2].as_ref().unwrap_err().message.contains("missing argument `text`"));
//! ```

use sglc_compiler::render::render_diagnostics;
use std::sync::Arc;

pub mod allocator;

pub use sglc_compiler::{Diagnostic, Program, Severity, bytecode};
/// Server backends (OpenAI-compatible, SGLang), with the `http` feature.
#[cfg(feature = "http")]
pub use sglc_http as http;
/// The embedded model backend (llama.cpp), with the `local` feature.
#[cfg(feature = "local")]
pub use sglc_local as local;
pub use sglc_vm::backend::{self, Backend, BackendError, Message};
pub use sglc_vm::{
    EventSink, GenDefaults, InputArgs, InputSource, JitMode, JitOptions, JitTiers, Limits, Natives,
    NextInput, ProgramState, RunConfig, RuntimeError, StreamEvent, TestBackend, Value,
};

/// Which of the JIT's tiers compiles (for `Engine::jit_compile_times`).
#[cfg(feature = "jit")]
pub use sglc_vm::jit::Tier as JitTier;

/// A compiled source file, ready to run any of its functions.
#[derive(Clone, Debug)]
pub struct Script {
    pub name: String,
    pub source: Arc<str>,
    pub program: Arc<Program>,
    /// Warnings found while compiling (errors make `compile` fail instead).
    pub warnings: Vec<Diagnostic>,
}

impl Script {
    /// The function to run when none is named: `main`, else the file's only function.
    pub fn default_function(&self) -> Option<&str> {
        let mut entries = self.program.entry_points();
        if self.program.function("main").is_some() {
            return Some("main");
        }
        match (entries.next(), entries.next()) {
            (Some(only), None) => Some(&only.name),
            _ => None,
        }
    }

    pub fn function_names(&self) -> Vec<&str> {
        self.program
            .entry_points()
            .map(|f| f.name.as_str())
            .collect()
    }

    /// The bytecode listing with source locations.
    pub fn disassemble(&self) -> String {
        self.program.disassemble(&self.source)
    }

    /// The bytecode listing of one function, or a message naming the functions there are.
    pub fn disassemble_function(&self, name: &str) -> Result<String, String> {
        let header = format!("fn {name}(");
        self.disassemble()
            .split("\n\n")
            .find(|block| block.starts_with(&header))
            .map(str::to_string)
            .ok_or_else(|| {
                format!(
                    "no function `{name}`; functions: {}",
                    self.function_names().join(", ")
                )
            })
    }

    /// Renders diagnostics (warnings, or a runtime error's) against this script's source.
    pub fn render(&self, diagnostics: &[Diagnostic], color: bool) -> String {
        render_diagnostics(&self.name, &self.source, diagnostics, color)
    }
}

/// A source file that did not compile, with every diagnostic found.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{name}: {} error(s)", .diagnostics.iter().filter(|d| d.is_error()).count())]
pub struct CompileError {
    pub name: String,
    pub source_text: Arc<str>,
    pub diagnostics: Vec<Diagnostic>,
}

impl CompileError {
    pub fn render(&self, color: bool) -> String {
        render_diagnostics(&self.name, &self.source_text, &self.diagnostics, color)
    }
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Compile(#[from] CompileError),
    #[error("no function `{name}` in this program (functions: {})", .available.join(", "))]
    UnknownFunction {
        name: String,
        available: Vec<String>,
    },
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The program uses what the backend cannot do; one diagnostic per call site.
    #[error("the {backend} backend cannot run this program: {}", .diagnostics.iter().map(|d| d.message.as_str()).collect::<Vec<_>>().join("; "))]
    Unsupported {
        backend: String,
        diagnostics: Vec<Diagnostic>,
    },
    #[error("internal error: {0}")]
    Internal(String),
}

/// Compiles and runs programs against one backend, with the standard library and any host
/// functions registered. Cloning is cheap and shares the backend.
#[derive(Clone)]
pub struct Engine {
    natives: Natives,
    backend: Arc<dyn Backend>,
}

impl Engine {
    pub fn new(backend: impl Backend) -> Engine {
        Engine::with_backend(Arc::new(backend))
    }

    pub fn with_backend(backend: Arc<dyn Backend>) -> Engine {
        Engine {
            natives: sglc_stdlib::natives(),
            backend,
        }
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Registers a host function over JSON values, callable from scripts as `name(...)`.
    /// The JIT never calls a host function (it may have effects it cannot undo), so a script
    /// function that calls one stays interpreted; registering a standard library name again
    /// replaces it the same way.
    pub fn register_fn(
        &mut self,
        name: &str,
        arity: usize,
        f: impl Fn(&[serde_json::Value]) -> Result<serde_json::Value, String> + Send + Sync + 'static,
    ) {
        self.natives.register_json(name, arity, f);
    }

    /// The functions and methods scripts can call (the standard library and the host's).
    pub fn natives(&self) -> &Natives {
        &self.natives
    }

    /// The cranelift IR the JIT makes of `function` (every function when `None`), compiled for
    /// `arg_types` (`int`, `float`, `bool` or `none`; `int` for parameters beyond those
    /// given), or why it is not compiled.
    pub fn jit_listing(
        &self,
        script: &Script,
        function: Option<&str>,
        arg_types: &[String],
    ) -> Result<String, Error> {
        #[cfg(feature = "jit")]
        {
            let types = arg_types
                .iter()
                .map(|t| t.parse::<sglc_vm::jit::Ty>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(Error::Internal)?;
            let functions = match function {
                None => Vec::new(),
                Some(name) => vec![script.program.function(name).ok_or_else(|| {
                    Error::UnknownFunction {
                        name: name.to_string(),
                        available: script
                            .function_names()
                            .iter()
                            .map(|s| s.to_string())
                            .collect(),
                    }
                })?],
            };
            sglc_vm::jit::listing(&script.program, &self.natives, &functions, &types)
                .map_err(Error::Internal)
        }
        #[cfg(not(feature = "jit"))]
        {
            let _ = (script, function, arg_types);
            Err(Error::Internal(
                "this sglc was built without the JIT (feature `jit`)".into(),
            ))
        }
    }

    /// How long the JIT takes to compile each function of `script` (for int arguments): the
    /// median and best of `rounds` compiles, each in a fresh JIT.
    #[cfg(feature = "jit")]
    pub fn jit_compile_times(
        &self,
        script: &Script,
        rounds: usize,
        tier: JitTier,
    ) -> Result<Vec<sglc_vm::jit::CompileTime>, Error> {
        sglc_vm::jit::compile_times(&script.program, &self.natives, rounds, tier)
            .map_err(Error::Internal)
    }

    /// The native table, for hosts that register functions over VM values directly.
    pub fn natives_mut(&mut self) -> &mut Natives {
        &mut self.natives
    }

    pub fn compile(&self, name: &str, source: &str) -> Result<Script, CompileError> {
        let compiled = sglc_compiler::compile(source, &self.natives.compile_env());
        let source: Arc<str> = Arc::from(source);
        match compiled.program {
            Some(program) => Ok(Script {
                name: name.to_string(),
                source,
                program: Arc::new(program),
                warnings: compiled.diagnostics,
            }),
            None => Err(CompileError {
                name: name.to_string(),
                source_text: source,
                diagnostics: compiled.diagnostics,
            }),
        }
    }

    /// Runs `function` once; `args` is a JSON object naming its parameters after the state.
    pub fn run(
        &self,
        script: &Script,
        function: &str,
        args: serde_json::Value,
        config: &RunConfig,
    ) -> Result<ProgramState, Error> {
        let mut results = self.run_batch(script, function, vec![args], config)?;
        Ok(results.pop().expect("one input gives one result")?)
    }

    /// The call sites of `script` the backend cannot run, as diagnostics (empty when it can).
    pub fn check_capabilities(&self, script: &Script) -> Vec<Diagnostic> {
        let info = self.backend.info();
        backend::unmet_requirements(&script.program, &info.capabilities)
            .into_iter()
            .map(|r| {
                Diagnostic::error(
                    "E0301",
                    format!("the {} backend does not support `{}`", info.name, r.capability),
                    r.span,
                )
                .with_label(format!("needs `{}` (in `{}`)", r.capability, r.function))
                .with_help(match r.capability {
                    "select" => "select needs prompt log-probabilities: use the local or sglang backend, or an OpenAI-compatible server with --api completions",
                    "regex" => "regex, choices and dtype need constrained decoding: use the local or sglang backend",
                    _ => "json_schema needs structured outputs: use the local or sglang backend, or a chat API",
                })
            })
            .collect()
    }

    /// Runs `function` once and streams its events as they happen: text chunks (prompt text
    /// and generated tokens), role and variable boundaries, then `Done` or `Error`. The
    /// concatenated `Text` events equal the final transcript (SGLang's `state.text_iter()`).
    pub fn run_stream(
        &self,
        script: &Script,
        function: &str,
        args: serde_json::Value,
        config: &RunConfig,
    ) -> impl futures::Stream<Item = StreamEvent> + Send + 'static {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut config = config.clone();
        let events = tx.clone();
        config.events = Some(EventSink::new(move |_, event| {
            let _ = events.send(event);
        }));
        let (engine, script, function) = (self.clone(), script.clone(), function.to_string());
        std::thread::spawn(move || {
            // A program error arrives as an `Error` event already; report only failures that
            // happen before the program starts (an unknown function, bad arguments).
            match engine.run(&script, &function, args, &config) {
                Err(Error::Runtime(_)) | Ok(_) => {}
                Err(other) => {
                    let _ = tx.send(StreamEvent::Error {
                        message: other.to_string(),
                    });
                }
            }
        });
        futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|event| (event, rx))
        })
    }

    /// Runs `function` once per input; returns one result per input, in input order.
    pub fn run_batch(
        &self,
        script: &Script,
        function: &str,
        inputs: Vec<serde_json::Value>,
        config: &RunConfig,
    ) -> Result<Vec<Result<ProgramState, RuntimeError>>, Error> {
        let mut results: Vec<Option<Result<ProgramState, RuntimeError>>> = vec![None; inputs.len()];
        self.run_batch_with(script, function, inputs, config, |index, result| {
            results[index] = Some(result);
        })?;
        Ok(results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(RuntimeError::without_location(
                        "the program produced no result",
                    ))
                })
            })
            .collect())
    }

    /// Runs a batch and hands each result to `on_done(input_index, result)` as soon as that
    /// program finishes (completion order), for hosts that stream results out.
    pub fn run_batch_with(
        &self,
        script: &Script,
        function: &str,
        inputs: impl IntoIterator<Item = serde_json::Value, IntoIter: Send>,
        config: &RunConfig,
        on_done: impl FnMut(usize, Result<ProgramState, RuntimeError>) + Send,
    ) -> Result<(), Error> {
        let objects = inputs.into_iter().map(|v| match v {
            serde_json::Value::Object(map) => Ok(map),
            other => Err(format!("arguments must be a JSON object, got {other}")),
        });
        self.run_batch_from(script, function, objects, config, on_done)
    }

    /// Runs a batch whose inputs come from `inputs`, which the scheduler asks for the next
    /// program whenever it has room: a host can read inputs lazily, hold them back (a bounded
    /// output buffer) or end the batch early (Ctrl-C). Input indices count the inputs handed
    /// out, from 0.
    pub fn run_batch_from(
        &self,
        script: &Script,
        function: &str,
        inputs: impl InputSource + Send,
        config: &RunConfig,
        on_done: impl FnMut(usize, Result<ProgramState, RuntimeError>) + Send,
    ) -> Result<(), Error> {
        let function_id = script
            .program
            .function(function)
            .filter(|id| *id != script.program.init)
            .ok_or_else(|| Error::UnknownFunction {
                name: function.to_string(),
                available: script
                    .function_names()
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
            })?;
        let unsupported = self.check_capabilities(script);
        if !unsupported.is_empty() {
            return Err(Error::Unsupported {
                backend: self.backend.info().name.clone(),
                diagnostics: unsupported,
            });
        }
        let program = &script.program;
        let natives = &self.natives;
        let backend = &self.backend;
        // Values are single-threaded (`Rc`), so a batch runs on a thread of its own with a
        // current-thread runtime; this also works when the caller is inside a tokio runtime.
        let outcome = std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| Error::Internal(format!("cannot start the runtime: {e}")))?;
                    let on_done = on_done;
                    runtime.block_on(sglc_vm::run_batch(
                        program,
                        natives,
                        backend,
                        function_id,
                        inputs,
                        config,
                        on_done,
                    ));
                    Ok(())
                })
                .join()
        });
        match outcome {
            Ok(result) => result,
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "a panic".to_string());
                Err(Error::Internal(message))
            }
        }
    }
}
