//! Command definitions (clap) and the `run`, `check` and `disasm` commands.

mod batch;
#[cfg(feature = "local")]
mod bench;
#[cfg(feature = "jit")]
mod bench_jit;
mod bench_vm;
#[cfg(feature = "local")]
mod limits;
mod local;
mod output;
mod repl;
mod stream;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use output::{out, outln};
use sglc::{Backend, Engine, Error, RunConfig, Script, TestBackend};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

/// The program ran but failed, or the source did not compile.
pub const EXIT_FAILURE: u8 = 1;
/// Some programs of a batch failed; the others' results were written.
pub const EXIT_PARTIAL: u8 = 3;
/// Ctrl-C stopped a batch before every input ran (`--resume` finishes it).
pub const EXIT_INTERRUPTED: u8 = 130;

const EXAMPLES: &str = "\
Examples:
  sglc run examples/hello.sgl
  sglc run examples/hello.sgl --stream
  sglc run examples/summarize.sgl --arg text='Rust is a systems language.'
  sglc run examples/summarize.sgl --batch inputs.jsonl --out results.jsonl
  sglc run examples/summarize.sgl --batch inputs.jsonl --out results.jsonl --resume
  sglc run examples/hello.sgl --backend test          # deterministic, no model
  sglc run examples/hello.sgl --backend sglang:http://127.0.0.1:30000
  sglc check examples/judge.sgl --backend openai
  sglc disasm examples/hello.sgl
  sglc repl

Exit codes: 0 success, 1 failure, 2 usage error, 3 some programs of a batch failed,
130 a batch was interrupted (finish it with --resume).
Logs: -v/-vv/-vvv or RUST_LOG=sglc=debug; NO_COLOR turns colour off.";

#[derive(Parser, Debug)]
#[command(name = "sglc", version, about = "A compiled language for LLM programs", after_help = EXAMPLES)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// More log output on stderr (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Only errors on stderr: no progress, summaries or warnings.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
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
        /// Print the diagnostics as JSON (with line and column) instead of rendering them.
        #[arg(long, conflicts_with = "emit")]
        json: bool,
        #[command(flatten)]
        local: BackendArgs,
    },
    /// Manage the embedded model.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Measure the figures the project promises (prints a table).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Print the bytecode of a program with source locations (or, with --jit, the machine
    /// code's cranelift IR).
    Disasm {
        file: PathBuf,
        /// Only this function.
        function: Option<String>,
        /// Show the cranelift IR the JIT makes instead, or why a function is not compiled.
        #[arg(long)]
        jit: bool,
        /// Argument types to compile for with --jit (default: int for every parameter; obj is
        /// any other value: a string, list or map).
        #[arg(
            long,
            value_delimiter = ',',
            value_name = "int|float|bool|none|obj,...",
            requires = "jit"
        )]
        arg_types: Vec<String>,
    },
    /// An interactive session: definitions, expressions, `:run`, `:disasm` (also `sglc` alone).
    Repl(repl::ReplArgs),
    /// Print a shell completion script: `sglc completions bash > /etc/bash_completion.d/sglc`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// The embedded model: batching throughput, prefix sharing, time to first token.
    #[cfg(feature = "local")]
    Local(bench::BenchBackendArgs),
    /// The VM under load: programs/s, CPU and memory per program, batch sizes, start-up.
    Vm(bench_vm::BenchVmArgs),
    /// The JIT against the interpreter and CPython on compute-heavy programs.
    #[cfg(feature = "jit")]
    Jit(bench_jit::BenchJitArgs),
}

#[derive(Subcommand, Debug)]
enum ModelCommand {
    /// Fetch the default model into the cache now (it is otherwise fetched on first use), and
    /// re-encode its weights for batching unless `--weights shipped`.
    Pull(ModelArgs),
    /// Print where the model the embedded backend loads is, or would be, cached.
    Path(ModelArgs),
}

#[derive(Args, Debug)]
struct ModelArgs {
    /// Which weights of the default model (see `sglc run --help`).
    #[arg(long, env = "SGLC_WEIGHTS", value_enum, default_value_t = WeightsArg::Batched)]
    weights: WeightsArg,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Emit {
    Tokens,
    Ast,
    Bytecode,
    /// The cranelift IR of every function the JIT compiles (for int arguments).
    Clif,
    /// The source printed back from its syntax tree (every operation parenthesised).
    Pretty,
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
    /// The model backend: `local` (the embedded model, default), `test[:latency=MS]`
    /// (deterministic, no model), `openai[:URL]`, `vllm:URL`, `llamacpp:URL`, `sglang:URL`.
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
    /// Compile hot pure functions to machine code: `off`, `auto` (when hot) or `eager` (at
    /// their first call).
    #[arg(
        long,
        default_value = "auto",
        value_name = "off|auto|eager",
        env = "SGLC_JIT"
    )]
    jit: sglc::JitMode,
    /// Calls plus loop iterations before a function is compiled with `--jit auto`.
    #[arg(long, value_name = "N")]
    jit_threshold: Option<u32>,
    /// Which cranelift tiers compile: `tiered` (a fast baseline compile first, optimized
    /// again when the code keeps running), `baseline` or `optimized` only.
    #[arg(
        long,
        default_value = "tiered",
        value_name = "tiered|baseline|optimized"
    )]
    jit_tiers: sglc::JitTiers,
    /// Print the result as JSON: variables, text, messages, meta (with --stream: one JSON
    /// event per line).
    #[arg(long)]
    json: bool,
    /// Print the transcript as it is generated: role headers and generated text highlighted
    /// on a terminal, the plain transcript when piped.
    #[arg(long, conflicts_with = "batch")]
    stream: bool,
    /// Run once per input line of this file (`-` for stdin): JSONL argument objects, or CSV
    /// with a header row.
    #[arg(long, value_name = "FILE")]
    batch: Option<PathBuf>,
    /// The --batch input format (default: from the extension, `.csv` or JSONL).
    #[arg(long, value_enum, value_name = "FORMAT", requires = "batch")]
    input_format: Option<batch::InputFormat>,
    /// Where batch results go, one JSON line per input, each flushed as it is written
    /// (default: stdout).
    #[arg(long, value_name = "FILE", requires = "batch")]
    out: Option<PathBuf>,
    /// Write results in input order (the default), through a bounded reorder buffer.
    #[arg(long, requires = "batch", conflicts_with = "unordered")]
    ordered: bool,
    /// Write results as programs finish instead of in input order.
    #[arg(long, requires = "batch")]
    unordered: bool,
    /// Skip inputs that already have a result in --out and append the rest.
    #[arg(long, requires = "out")]
    resume: bool,
    /// Programs in flight at once (`auto`: chosen from the backend).
    #[arg(long, default_value = "auto", value_name = "auto|N")]
    concurrency: String,
    /// Draw the progress bar even when stderr is not a terminal (plain lines otherwise).
    #[arg(long, requires = "batch")]
    progress: bool,
    #[command(flatten)]
    limits: limits::LimitArgs,
}

pub fn dispatch(cli: Cli) -> Result<ExitCode> {
    init_logging(cli.verbose, cli.quiet);
    let Some(command) = cli.command else {
        if std::io::stdin().is_terminal() && std::io::stdout().is_terminal() {
            return dispatch(Cli::parse_from(["sglc", "repl"]));
        }
        use clap::CommandFactory;
        Cli::command().print_help()?;
        return Ok(ExitCode::from(2));
    };
    let quiet = cli.quiet;
    match command {
        Command::Run(args) => run(*args, quiet),
        Command::Check {
            file,
            emit,
            backend,
            json,
            local,
        } => check(&file, emit, backend.as_deref(), json, &local),
        Command::Disasm {
            file,
            function,
            jit,
            arg_types,
        } => disasm(&file, function.as_deref(), jit, &arg_types),
        Command::Model(command) => model(command),
        #[cfg(feature = "local")]
        Command::Bench(BenchCommand::Local(args)) => bench::bench_local(args),
        Command::Bench(BenchCommand::Vm(args)) => bench_vm::bench_vm(args),
        #[cfg(feature = "jit")]
        Command::Bench(BenchCommand::Jit(args)) => bench_jit::bench_jit(args),
        Command::Repl(args) => repl::repl(args),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "sglc", &mut script);
            out!("{}", String::from_utf8_lossy(&script));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Logs go to stderr: warnings by default, more with -v, only errors with -q; `RUST_LOG`
/// (e.g. `sglc_http=debug`) overrides.
fn init_logging(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(color_stderr())
        .with_target(verbose >= 2)
        .without_time()
        .try_init();
}

fn color_stderr() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// Reads a source file: at most `MAX_SOURCE_BYTES` (so a huge file costs no memory), and
/// UTF-8, with the line and column of the first byte that is not.
fn read_source(path: &Path) -> Result<String> {
    use std::io::Read;
    let limit = sglc_compiler::MAX_SOURCE_BYTES;
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(limit as u64 + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.len() > limit {
        bail!(
            "{} is larger than the {limit} bytes one source file may have",
            path.display()
        );
    }
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let valid = &e.as_bytes()[..at];
        let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
        let line_start = valid.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let column = String::from_utf8_lossy(&valid[line_start..])
            .chars()
            .count()
            + 1;
        anyhow::anyhow!(
            "{}:{line}:{column}: the file is not valid UTF-8 (byte 0x{:02x} at offset {at})",
            path.display(),
            e.as_bytes()[at]
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
    /// The default model's weights: `batched` (Q8_0, re-encoded once from the shipped file:
    /// about 45% faster for batches, 15% slower for one sequence) or `shipped` (Q4_1 as
    /// downloaded). A model given with --model is loaded as it is.
    #[arg(long, env = "SGLC_WEIGHTS", value_enum, default_value_t = WeightsArg::Batched)]
    pub weights: WeightsArg,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum WeightsArg {
    Batched,
    Shipped,
}

#[cfg(feature = "local")]
impl From<WeightsArg> for sglc_local::Weights {
    fn from(weights: WeightsArg) -> Self {
        match weights {
            WeightsArg::Batched => sglc_local::Weights::Batched,
            WeightsArg::Shipped => sglc_local::Weights::Shipped,
        }
    }
}

fn make_backend(spec: Option<&str>, local: &BackendArgs) -> Result<Arc<dyn Backend>> {
    let spec = spec.unwrap_or("local");
    tracing::info!("backend: {spec}");
    match spec {
        "test" => Ok(Arc::new(TestBackend::new())),
        "local" => start_local(local),
        test if test.starts_with("test:") => {
            let latency = test
                .strip_prefix("test:latency=")
                .and_then(|ms| ms.trim_end_matches("ms").parse::<f64>().ok())
                .filter(|ms| ms.is_finite() && *ms >= 0.0)
                .with_context(|| {
                    format!("bad test backend `{test}`: write `test` or `test:latency=MS`")
                })?;
            Ok(Arc::new(TestBackend::new().with_latency(
                std::time::Duration::from_secs_f64(latency / 1000.0),
            )))
        }
        other => match server_backend(other, local) {
            Some(backend) => backend,
            None => bail!(
                "unknown backend `{other}`; available: local (the default), test[:latency=MS], openai[:URL], vllm:URL, llamacpp:URL, sglang:URL"
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

/// Compiles a file, printing warnings (unless `quiet`); on errors prints them and returns
/// `None`.
fn compile(engine: &Engine, path: &Path, quiet: bool) -> Result<Option<Script>> {
    let source = read_source(path)?;
    let name = path.display().to_string();
    match engine.compile(&name, &source) {
        Ok(script) => {
            if !script.warnings.is_empty() && !quiet {
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
    args.limits.apply(&mut config.limits);
    config.jit.mode = args.jit;
    config.jit.tiers = args.jit_tiers;
    if let Some(threshold) = args.jit_threshold {
        config.jit.threshold = threshold;
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

fn run(args: RunArgs, quiet: bool) -> Result<ExitCode> {
    let backend = make_backend(args.backend.as_deref(), &args.local)?;
    let engine = Engine::with_backend(backend);
    let Some(script) = compile(&engine, &args.file, quiet)? else {
        return Ok(ExitCode::from(EXIT_FAILURE));
    };
    let function = choose_function(&script, args.function.as_deref())?;
    let mut config = run_config(&args)?;
    if let Some(input) = &args.batch {
        let options = batch::BatchOptions {
            input: input.clone(),
            format: args
                .input_format
                .unwrap_or_else(|| batch::InputFormat::for_path(input)),
            out: args.out.clone(),
            ordered: !args.unordered,
            resume: args.resume,
            progress: match (quiet, args.progress) {
                (true, _) => batch::ProgressMode::Off,
                (false, true) => batch::ProgressMode::Bar,
                (false, false) => batch::ProgressMode::Auto,
            },
        };
        return batch::run_batch(&engine, &script, &function, &config, &options);
    }
    let arguments = run_arguments(&args)?;
    if args.stream {
        config.events = Some(if args.json {
            stream::json_lines()
        } else {
            stream::transcript()
        });
    }
    match engine.run(&script, &function, arguments, &config) {
        Ok(state) if args.stream => {
            if !args.json {
                outln!();
                print_outputs(&state);
            }
            Ok(ExitCode::SUCCESS)
        }
        Ok(state) => {
            if args.json {
                outln!("{}", serde_json::to_string_pretty(&state)?);
            } else {
                out!("{}", state.text);
                if !state.text.ends_with('\n') && !state.text.is_empty() {
                    outln!();
                }
                print_outputs(&state);
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(Error::Runtime(error)) => {
            // With --stream --json the error already went out as an event.
            if args.json && !args.stream {
                outln!("{}", serde_json::json!({ "error": error }));
            }
            if !args.json {
                // What it printed before failing is part of the run.
                for line in &error.output {
                    outln!("{line}");
                }
            }
            eprint!(
                "{}",
                script.render(&[error.to_diagnostic()], color_stderr())
            );
            Ok(ExitCode::from(EXIT_FAILURE))
        }
        Err(Error::Unsupported { diagnostics, .. }) => {
            eprint!("{}", script.render(&diagnostics, color_stderr()));
            Ok(ExitCode::from(EXIT_FAILURE))
        }
        Err(other) => Err(other.into()),
    }
}

/// What the program printed, then its return value.
fn print_outputs(state: &sglc::ProgramState) {
    for line in &state.output {
        outln!("{line}");
    }
    if !state.return_value.is_null() {
        outln!("=> {}", state.return_value);
    }
}

#[cfg(feature = "local")]
fn model(command: ModelCommand) -> Result<ExitCode> {
    match command {
        ModelCommand::Pull(args) => {
            let path =
                sglc_local::model_store::default_model(args.weights.into(), &|m| eprintln!("{m}"))?;
            outln!("{}", path.display());
        }
        ModelCommand::Path(args) => {
            let path = sglc_local::model_store::cached_model_path(args.weights.into());
            outln!("{}", path.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(not(feature = "local"))]
fn model(_: ModelCommand) -> Result<ExitCode> {
    bail!("this sglc was built without the embedded model (feature `local`)")
}

fn check(
    path: &Path,
    emit: Option<Emit>,
    backend: Option<&str>,
    json: bool,
    local: &BackendArgs,
) -> Result<ExitCode> {
    let source = read_source(path)?;
    match emit {
        Some(Emit::Tokens) => {
            if let Some(too_large) = sglc_compiler::check_source_size(&source) {
                bail!("{}: {}", path.display(), too_large.message);
            }
            let lexed = sglc_compiler::lexer::lex(&source);
            let lines = sglc_compiler::span::LineIndex::new(&source);
            for (token, span) in &lexed.tokens {
                let (line, col) = lines.line_col(&source, span.start);
                outln!("{line:>4}:{col:<4} {token:?}");
            }
        }
        Some(Emit::Ast) => {
            let (module, _) = sglc_compiler::parse(&source);
            out!("{}", sglc_compiler::ast::dump(&module));
        }
        Some(Emit::Pretty) => {
            let (module, _) = sglc_compiler::parse(&source);
            out!("{}", sglc_compiler::pretty::pretty(&module));
        }
        Some(Emit::Bytecode) | Some(Emit::Clif) | None => {}
    }
    let engine = match backend {
        Some(spec) => Engine::with_backend(make_backend(Some(spec), local)?),
        None => Engine::new(TestBackend::new()),
    };
    let name = path.display().to_string();
    let (script, diagnostics) = match engine.compile(&name, &source) {
        Ok(script) => {
            let mut diagnostics = script.warnings.clone();
            if backend.is_some() {
                diagnostics.extend(engine.check_capabilities(&script));
            }
            (Some(script), diagnostics)
        }
        Err(error) => (None, error.diagnostics),
    };
    let errors = diagnostics.iter().filter(|d| d.is_error()).count();
    if json {
        let lines = sglc_compiler::span::LineIndex::new(&source);
        let located: Vec<serde_json::Value> = diagnostics
            .iter()
            .map(|d| {
                let (line, column) = lines.line_col(&source, d.primary.span.start);
                let mut value = serde_json::to_value(d).unwrap_or_default();
                value["line"] = line.into();
                value["column"] = column.into();
                value
            })
            .collect();
        let report = serde_json::json!({
            "file": name,
            "ok": errors == 0,
            "errors": errors,
            "diagnostics": located,
        });
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        eprint!(
            "{}",
            sglc_compiler::render::render_diagnostics(&name, &source, &diagnostics, color_stderr())
        );
        if let (Some(script), Some(Emit::Bytecode)) = (&script, emit) {
            out!("{}", script.disassemble());
        }
        if let (Some(script), Some(Emit::Clif)) = (&script, emit) {
            out!("{}", engine.jit_listing(script, None, &[])?);
        }
        let warnings = diagnostics.len() - errors;
        match (script.is_some(), errors) {
            (true, 0) => eprintln!("{name}: ok ({warnings} warning(s))"),
            (true, n) => eprintln!("{name}: {n} call(s) the backend cannot run"),
            (false, n) => eprintln!("{name}: {n} error(s)"),
        }
    }
    Ok(if errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILURE)
    })
}

fn disasm(
    path: &Path,
    function: Option<&str>,
    jit: bool,
    arg_types: &[String],
) -> Result<ExitCode> {
    let engine = Engine::new(TestBackend::new());
    let Some(script) = compile(&engine, path, false)? else {
        return Ok(ExitCode::from(EXIT_FAILURE));
    };
    if jit {
        out!("{}", engine.jit_listing(&script, function, arg_types)?);
        return Ok(ExitCode::SUCCESS);
    }
    match function {
        None => out!("{}", script.disassemble()),
        Some(name) => {
            let listing = script
                .disassemble_function(name)
                .map_err(|message| anyhow::anyhow!(message))?;
            outln!("{listing}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
