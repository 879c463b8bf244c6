//! Command definitions (clap) and the `run`, `check` and `disasm` commands.

mod batch;
#[cfg(feature = "local")]
mod bench;
#[cfg(feature = "local")]
mod local;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use sglc::{Backend, Engine, Error, RunConfig, Script, TestBackend};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

/// The program ran but failed, or the source did not compile.
pub const EXIT_FAILURE: u8 = 1;
/// Some programs of a batch failed; the others' results were written.
pub const EXIT_PARTIAL: u8 = 3;

const EXAMPLES: &str = "\
Examples:
  sglc run examples/hello.sgl
  sglc run examples/summarize.sgl --arg text='Rust is a systems language.'
  sglc run examples/summarize.sgl summarize --batch inputs.jsonl --out results.jsonl
  sglc run examples/hello.sgl --backend test          # deterministic, no model
  sglc check examples/judge.sgl
  sglc disasm examples/hello.sgl";

#[derive(Parser, Debug)]
#[command(name = "sglc", version, about = "A compiled language for LLM programs", after_help = EXAMPLES)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a function of a program once, or once per line of a JSONL file with --batch.
    Run(Box<RunArgs>),
    /// Compile a program and report its diagnostics (exit 1 when there are errors).
    Check {
        file: PathBuf,
        /// Also print an intermediate form of the program.
        #[arg(long, value_enum)]
        emit: Option<Emit>,
        /// Also check that this backend can run every call (e.g. `select` on a chat API).
        #[arg(long)]
        backend: Option<String>,
        #[command(flatten)]
        local: BackendArgs,
    },
    /// Manage the embedded model.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Measure the figures the project promises (prints a table).
    #[cfg(feature = "local")]
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Print the bytecode of a program with source locations.
    Disasm {
        file: PathBuf,
        /// Only this function.
        function: Option<String>,
    },
}

#[cfg(feature = "local")]
#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// The embedded model: batching throughput, prefix sharing, time to first token.
    Local(bench::BenchBackendArgs),
}

#[derive(Subcommand, Debug)]
enum ModelCommand {
    /// Fetch the default model into the cache now (it is otherwise fetched on first use).
    Pull,
    /// Print where the model is, or would be, cached.
    Path,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Emit {
    Tokens,
    Ast,
    Bytecode,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// The .sgl source file.
    file: PathBuf,
    /// The function to run; defaults to `main` or the file's only function.
    function: Option<String>,
    /// An argument as NAME=VALUE (the value is a string); repeatable.
    #[arg(long = "arg", value_name = "NAME=VALUE")]
    arg: Vec<String>,
    /// Arguments as a JSON object, for values that are not strings.
    #[arg(long, value_name = "JSON")]
    args: Option<String>,
    /// The model backend: `local` (the embedded model, default) or `test` (deterministic, no
    /// model).
    #[arg(long, env = "SGLC_BACKEND")]
    backend: Option<String>,
    #[command(flatten)]
    local: BackendArgs,
    /// Default max_tokens for gens that do not set it.
    #[arg(long, value_name = "N")]
    max_new_tokens: Option<u32>,
    /// Default sampling temperature.
    #[arg(long, value_name = "T")]
    temperature: Option<f64>,
    /// Default nucleus sampling threshold.
    #[arg(long, value_name = "P")]
    top_p: Option<f64>,
    /// Default top-k (-1: off).
    #[arg(long, value_name = "K")]
    top_k: Option<i64>,
    /// Print the result as JSON: variables, text, messages, meta.
    #[arg(long)]
    json: bool,
    /// Print the transcript as it is generated (generated text highlighted on a terminal).
    #[arg(long, conflicts_with_all = ["json", "batch"])]
    stream: bool,
    /// Run once per line of this JSONL file of argument objects (`-` for stdin).
    #[arg(long, value_name = "FILE")]
    batch: Option<PathBuf>,
    /// Where batch results go, one JSON line per input (default: stdout).
    #[arg(long, value_name = "FILE", requires = "batch")]
    out: Option<PathBuf>,
    /// Programs in flight at once for --batch: `auto` or a number.
    #[arg(long, default_value = "auto", value_name = "auto|N")]
    concurrency: String,
    /// Show a progress bar on stderr during --batch.
    #[arg(long)]
    progress: bool,
}

pub fn dispatch(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Run(args) => run(*args),
        Command::Check {
            file,
            emit,
            backend,
            local,
        } => check(&file, emit, backend.as_deref(), &local),
        Command::Disasm { file, function } => disasm(&file, function.as_deref()),
        Command::Model(command) => model(command),
        #[cfg(feature = "local")]
        Command::Bench(BenchCommand::Local(args)) => bench::bench_local(args),
    }
}

fn color_stderr() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

fn read_source(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{} is not valid UTF-8 (first bad byte at offset {})",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })
}

/// Options of the model backends, shared by `run`, `check` and `bench`.
#[derive(Args, Debug, Clone)]
pub struct BackendArgs {
    /// The model: a GGUF file for the embedded backend (default: SmolLM2-135M-Instruct,
    /// fetched on first use), or the model name for `--backend openai`.
    #[arg(long, env = "SGLC_MODEL", value_name = "PATH|NAME")]
    pub model: Option<PathBuf>,
    /// Which OpenAI API: `chat` (/v1/chat/completions) or `completions` (/v1/completions).
    #[arg(long, default_value = "chat", value_parser = ["chat", "completions"])]
    pub api: String,
    /// Per-request timeout for server backends, in seconds.
    #[arg(long, default_value_t = 300.0, value_name = "SECS")]
    pub timeout: f64,
    /// Attempts per request for server backends (retries on connection errors, 429 and 5xx).
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub attempts: usize,
    /// Most gens per batched request to an SGLang server (and per backend call).
    #[arg(long, default_value_t = 128, value_name = "N")]
    pub max_batch: usize,
    /// Sequences the embedded model decodes together.
    #[arg(long, value_name = "N")]
    pub parallel: Option<usize>,
    /// Threads for the embedded model (default: one per core).
    #[arg(long, env = "SGLC_THREADS", value_name = "N")]
    pub threads: Option<i32>,
}

fn make_backend(spec: Option<&str>, local: &BackendArgs) -> Result<Arc<dyn Backend>> {
    match spec.unwrap_or("local") {
        "test" => Ok(Arc::new(TestBackend::new())),
        "local" => start_local(local),
        other => match server_backend(other, local) {
            Some(backend) => backend,
            None => bail!(
                "unknown backend `{other}`; available: local (the default), test, openai[:URL], vllm:URL, llamacpp:URL, sglang:URL"
            ),
        },
    }
}

#[cfg(feature = "http")]
fn server_backend(spec: &str, args: &BackendArgs) -> Option<Result<Arc<dyn Backend>>> {
    let options = sglc::http::HttpOptions {
        timeout: std::time::Duration::from_secs_f64(args.timeout.max(0.001)),
        max_attempts: args.attempts.max(1),
        max_batch: args.max_batch.max(1),
        ..Default::default()
    };
    let api = if args.api == "completions" {
        sglc::http::Api::Completions
    } else {
        sglc::http::Api::Chat
    };
    let model = args.model.as_ref().and_then(|m| m.to_str());
    sglc::http::from_spec(spec, model, api, options).map(|r| r.map_err(|e| anyhow::anyhow!(e)))
}

#[cfg(not(feature = "http"))]
fn server_backend(_: &str, _: &BackendArgs) -> Option<Result<Arc<dyn Backend>>> {
    None
}

#[cfg(feature = "local")]
fn start_local(local: &BackendArgs) -> Result<Arc<dyn Backend>> {
    Ok(Arc::new(local::start(local)?))
}

#[cfg(not(feature = "local"))]
fn start_local(_: &BackendArgs) -> Result<Arc<dyn Backend>> {
    bail!("this sglc was built without the embedded model (feature `local`); use --backend test")
}

/// Compiles a file, printing warnings; on errors prints them and returns `None`.
fn compile(engine: &Engine, path: &Path) -> Result<Option<Script>> {
    let source = read_source(path)?;
    let name = path.display().to_string();
    match engine.compile(&name, &source) {
        Ok(script) => {
            if !script.warnings.is_empty() {
                eprint!("{}", script.render(&script.warnings, color_stderr()));
            }
            Ok(Some(script))
        }
        Err(error) => {
            eprint!("{}", error.render(color_stderr()));
            Ok(None)
        }
    }
}

fn run_config(args: &RunArgs) -> Result<RunConfig> {
    let mut config = RunConfig::default();
    if let Some(n) = args.max_new_tokens {
        config.defaults.max_new_tokens = n;
    }
    if let Some(t) = args.temperature {
        config.defaults.temperature = t;
    }
    if let Some(p) = args.top_p {
        config.defaults.top_p = p;
    }
    if let Some(k) = args.top_k {
        config.defaults.top_k = k;
    }
    config.concurrency = match args.concurrency.as_str() {
        "auto" => None,
        n => Some(
            n.parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .with_context(|| {
                    format!("--concurrency must be `auto` or a positive number, not `{n}`")
                })?,
        ),
    };
    Ok(config)
}

fn run_arguments(args: &RunArgs) -> Result<serde_json::Value> {
    let mut object = match &args.args {
        Some(json) => match serde_json::from_str(json).context("--args is not valid JSON")? {
            serde_json::Value::Object(map) => map,
            other => bail!("--args must be a JSON object, got {other}"),
        },
        None => serde_json::Map::new(),
    };
    for pair in &args.arg {
        let (name, value) = pair
            .split_once('=')
            .with_context(|| format!("--arg expects NAME=VALUE, got `{pair}`"))?;
        object.insert(
            name.to_string(),
            serde_json::Value::String(value.to_string()),
        );
    }
    Ok(serde_json::Value::Object(object))
}

fn choose_function(script: &Script, requested: Option<&str>) -> Result<String> {
    match requested {
        Some(name) => Ok(name.to_string()),
        None => script
            .default_function()
            .map(str::to_string)
            .with_context(|| {
                format!(
                    "{} has several functions and no `main`; name one: {}",
                    script.name,
                    script.function_names().join(", ")
                )
            }),
    }
}

fn run(args: RunArgs) -> Result<ExitCode> {
    let backend = make_backend(args.backend.as_deref(), &args.local)?;
    let engine = Engine::with_backend(backend);
    let Some(script) = compile(&engine, &args.file)? else {
        return Ok(ExitCode::from(EXIT_FAILURE));
    };
    let function = choose_function(&script, args.function.as_deref())?;
    let config = run_config(&args)?;
    if let Some(batch_path) = &args.batch {
        return batch::run_batch(
            &engine,
            &script,
            &function,
            batch_path,
            args.out.as_deref(),
            &config,
            args.progress,
        );
    }
    let arguments = run_arguments(&args)?;
    let mut config = config;
    if args.stream {
        config.events = Some(stream_printer());
    }
    match engine.run(&script, &function, arguments, &config) {
        Ok(state) if args.stream => {
            println!();
            for line in &state.output {
                println!("{line}");
            }
            if !state.return_value.is_null() {
                println!("=> {}", state.return_value);
            }
            Ok(ExitCode::SUCCESS)
        }
        Ok(state) => {
            if args.json {
                println!("{}", serde_json::to_string_pretty(&state)?);
            } else {
                for line in &state.output {
                    println!("{line}");
                }
                print!("{}", state.text);
                if !state.text.ends_with('\n') && !state.text.is_empty() {
                    println!();
                }
                if !state.return_value.is_null() {
                    println!("=> {}", state.return_value);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(Error::Runtime(error)) => {
            if args.json {
                println!("{}", serde_json::json!({ "error": error }));
            }
            eprint!(
                "{}",
                script.render(&[error.to_diagnostic()], color_stderr())
            );
            Ok(ExitCode::from(EXIT_FAILURE))
        }
        Err(other) => Err(other.into()),
    }
}

#[cfg(feature = "local")]
fn model(command: ModelCommand) -> Result<ExitCode> {
    match command {
        ModelCommand::Pull => {
            let path = sglc_local::model_store::ensure_default_model(&|m| eprintln!("{m}"))?;
            println!("{}", path.display());
        }
        ModelCommand::Path => {
            println!(
                "{}",
                sglc_local::model_store::cache_dir()
                    .join(sglc_local::model_store::DEFAULT_FILE_NAME)
                    .display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(not(feature = "local"))]
fn model(_: ModelCommand) -> Result<ExitCode> {
    bail!("this sglc was built without the embedded model (feature `local`)")
}

/// Prints text events to stdout as they arrive; on a terminal, generated text is green.
fn stream_printer() -> sglc::EventSink {
    use std::io::Write;
    let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    sglc::EventSink::new(move |_, event| {
        let mut out = std::io::stdout().lock();
        let _ = match event {
            sglc::StreamEvent::Text { text } => write!(out, "{text}"),
            sglc::StreamEvent::VarStarted { .. } if color => write!(out, "\x1b[32m"),
            sglc::StreamEvent::VarFinished { .. } if color => write!(out, "\x1b[0m"),
            _ => Ok(()),
        };
        let _ = out.flush();
    })
}

fn check(
    path: &Path,
    emit: Option<Emit>,
    backend: Option<&str>,
    local: &BackendArgs,
) -> Result<ExitCode> {
    let source = read_source(path)?;
    match emit {
        Some(Emit::Tokens) => {
            let lexed = sglc_compiler::lexer::lex(&source);
            let lines = sglc_compiler::span::LineIndex::new(&source);
            for (token, span) in &lexed.tokens {
                let (line, col) = lines.line_col(&source, span.start);
                println!("{line:>4}:{col:<4} {token:?}");
            }
        }
        Some(Emit::Ast) => {
            let (module, _) = sglc_compiler::parse(&source);
            print!("{}", sglc_compiler::ast::dump(&module));
        }
        Some(Emit::Bytecode) | None => {}
    }
    let engine = match backend {
        Some(spec) => Engine::with_backend(make_backend(Some(spec), local)?),
        None => Engine::new(TestBackend::new()),
    };
    let name = path.display().to_string();
    match engine.compile(&name, &source) {
        Ok(script) => {
            eprint!("{}", script.render(&script.warnings, color_stderr()));
            if backend.is_some() {
                let unsupported = engine.check_capabilities(&script);
                if !unsupported.is_empty() {
                    eprint!("{}", script.render(&unsupported, color_stderr()));
                    eprintln!(
                        "{name}: {} call(s) the backend cannot run",
                        unsupported.len()
                    );
                    return Ok(ExitCode::from(EXIT_FAILURE));
                }
            }
            if matches!(emit, Some(Emit::Bytecode)) {
                print!("{}", script.disassemble());
            }
            eprintln!("{name}: ok ({} warning(s))", script.warnings.len());
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            eprint!("{}", error.render(color_stderr()));
            let errors = error.diagnostics.iter().filter(|d| d.is_error()).count();
            eprintln!("{name}: {errors} error(s)");
            Ok(ExitCode::from(EXIT_FAILURE))
        }
    }
}

fn disasm(path: &Path, function: Option<&str>) -> Result<ExitCode> {
    let engine = Engine::new(TestBackend::new());
    let Some(script) = compile(&engine, path)? else {
        return Ok(ExitCode::from(EXIT_FAILURE));
    };
    let listing = script.disassemble();
    match function {
        None => print!("{listing}"),
        Some(name) => {
            let header = format!("fn {name}(");
            let block = listing
                .split("\n\n")
                .find(|block| block.starts_with(&header))
                .with_context(|| {
                    format!(
                        "no function `{name}`; functions: {}",
                        script.function_names().join(", ")
                    )
                })?;
            println!("{block}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
