//! `sglc bench local`: the embedded model's figures, measured in one run and reported as ratios.

use super::BackendArgs;
use super::output::outln;
use anyhow::{Context, Result, anyhow};
use serde_json::json;
use sglc::local::{EngineOptions, LocalBackend, direct, resolve_model};
use sglc::{Engine, RunConfig};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct BenchBackendArgs {
    #[command(flatten)]
    local: BackendArgs,
    /// Programs in the batch figures.
    #[arg(long, default_value_t = 32)]
    programs: usize,
    /// New tokens per program in the throughput figure.
    #[arg(long, default_value_t = 64)]
    tokens: usize,
}

const TOPICS: &[&str] = &[
    "a lighthouse",
    "a dragon",
    "the sea",
    "a robot",
    "a garden",
    "a mountain",
    "a city at night",
    "a violin",
];

/// About 270 tokens of few-shot text shared by the prefix figures.
fn long_prefix() -> String {
    let mut text = String::from("You answer geography questions in one word. Examples follow.\n");
    let facts = [
        ("France", "Paris"),
        ("Germany", "Berlin"),
        ("Italy", "Rome"),
        ("Spain", "Madrid"),
        ("Portugal", "Lisbon"),
        ("Austria", "Vienna"),
        ("Poland", "Warsaw"),
        ("Greece", "Athens"),
        ("Norway", "Oslo"),
        ("Sweden", "Stockholm"),
        ("Finland", "Helsinki"),
        ("Denmark", "Copenhagen"),
        ("Ireland", "Dublin"),
        ("Belgium", "Brussels"),
        ("Hungary", "Budapest"),
        ("Czechia", "Prague"),
        ("Romania", "Bucharest"),
        ("Bulgaria", "Sofia"),
        ("Croatia", "Zagreb"),
        ("Serbia", "Belgrade"),
        ("Japan", "Tokyo"),
    ];
    for (country, capital) in facts {
        text.push_str(&format!(
            "Q: What is the capital of {country}?\nA: {capital}\n"
        ));
    }
    text
}

/// Prompts the direct driver runs one at a time for the batching ceiling.
const DIRECT_ALONE_SAMPLE: usize = 4;

struct Row {
    figure: String,
    measured: String,
    target: String,
    ok: bool,
}

fn start(model: &Path, args: &BackendArgs, parallel: usize, cache: bool) -> Result<LocalBackend> {
    let mut options = EngineOptions::new(model.to_path_buf());
    options.parallel = args.parallel.unwrap_or(parallel);
    if let Some(threads) = args.threads {
        options.threads = threads;
    }
    if !cache {
        options.cache_tokens = 0;
    }
    LocalBackend::start(options).map_err(|e| anyhow!(e))
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

pub fn bench_local(args: BenchBackendArgs) -> Result<ExitCode> {
    let mut rows = Vec::new();
    let n = args.programs;
    let greedy = RunConfig::default().with_temperature(0.0);
    let threads = args
        .local
        .threads
        .unwrap_or_else(|| EngineOptions::new(Default::default()).threads);
    let model = resolve_model(
        args.local.model.as_deref(),
        args.local.weights.into(),
        &|m| eprintln!("sglc: {m}"),
    )?;
    eprintln!(
        "model: {}, threads: {threads}, programs: {n}, new tokens: {}",
        model.file_name().unwrap_or_default().to_string_lossy(),
        args.tokens
    );

    // 1. Throughput: run_batch against one-by-one runs and against llama.cpp driven directly.
    let backend = Arc::new(start(&model, &args.local, n, true)?);
    let engine = Engine::with_backend(backend.clone());
    let source = format!(
        "fn main(s, topic) {{\n    s += user(\"Write a story about \" + topic + \".\")\n    s += assistant(gen(\"story\", max_tokens={}, ignore_eos=true))\n}}\n",
        args.tokens
    );
    let script = engine
        .compile("throughput.sgl", &source)
        .map_err(|e| anyhow!(e.render(false)))?;
    let topics: Vec<String> = (0..n)
        .map(|i| format!("{} (number {i})", TOPICS[i % TOPICS.len()]))
        .collect();
    let inputs: Vec<_> = topics.iter().map(|t| json!({ "topic": t })).collect();
    let generated = (n * args.tokens) as f64;

    let started = Instant::now();
    for input in &inputs {
        engine.run(&script, "main", input.clone(), &greedy)?;
    }
    let one_by_one = generated / secs(started.elapsed());

    let started = Instant::now();
    let results = engine.run_batch(
        &script,
        "main",
        inputs.clone(),
        &greedy.clone().with_concurrency(n),
    )?;
    let batched = generated / secs(started.elapsed());
    if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
        return Err(anyhow!("a benchmark program failed: {e}"));
    }
    let template = sglc::Backend::info(&*backend).chat_template.clone();
    let prompts: Vec<String> = topics
        .iter()
        .map(|t| {
            format!(
                "{}Write a story about {t}.{}{}",
                template.user.0, template.user.1, template.assistant.0
            )
        })
        .collect();
    drop(engine);
    drop(backend);
    let direct_run =
        direct::generate_batch(&model, &prompts, args.tokens, threads).map_err(|e| anyhow!(e))?;
    let direct_rate = direct_run.generated_tokens as f64 / secs(direct_run.elapsed);
    // The same driver one sequence at a time (a sample of the prompts): how much batching can
    // gain on this machine at all, whatever drives llama.cpp.
    let (mut alone_tokens, mut alone_time) = (0, Duration::ZERO);
    for prompt in prompts.iter().take(DIRECT_ALONE_SAMPLE) {
        let run =
            direct::generate_batch(&model, std::slice::from_ref(prompt), args.tokens, threads)
                .map_err(|e| anyhow!(e))?;
        alone_tokens += run.generated_tokens;
        alone_time += run.elapsed;
    }
    let direct_alone_rate = alone_tokens as f64 / secs(alone_time);
    rows.push(Row {
        figure: format!("run_batch of {n} x {} tokens vs one by one", args.tokens),
        measured: format!(
            "{batched:.0} vs {one_by_one:.0} tok/s = {:.2}x",
            batched / one_by_one
        ),
        target: ">= 2x".to_string(),
        ok: batched >= 2.0 * one_by_one,
    });
    rows.push(Row {
        figure: format!("run_batch vs llama.cpp direct, {n} sequences"),
        measured: format!(
            "{batched:.0} vs {direct_rate:.0} tok/s = {:.0}%",
            100.0 * batched / direct_rate
        ),
        target: ">= 85%".to_string(),
        ok: batched >= 0.85 * direct_rate,
    });
    let ceiling = format!(
        "llama.cpp direct, {n} sequences in one batch vs one at a time: {direct_rate:.0} vs {direct_alone_rate:.0} tok/s = {:.2}x (what batching gains on this machine; the 2x figure cannot exceed it by much)",
        direct_rate / direct_alone_rate
    );

    // 2. fork(8) after a long prefix: the prefix is evaluated once.
    let prefix = long_prefix();
    let fork_source = format!(
        "fn main(s) {{\n    s += system({prefix:?})\n    let forks = s.fork(8)\n    for i, f in enumerate(forks) {{\n        f += user(f\"Q: What is the capital of country {{i}}?\")\n        f += assistant(gen(\"a\", max_tokens=1))\n    }}\n    forks.join()\n}}\n"
    );
    let mut fork_times = Vec::new();
    let mut fork_stats = Vec::new();
    for cache in [true, false] {
        let backend = Arc::new(start(&model, &args.local, 8, cache)?);
        let engine = Engine::with_backend(backend.clone());
        let script = engine
            .compile("fork.sgl", &fork_source)
            .map_err(|e| anyhow!(e.render(false)))?;
        let started = Instant::now();
        engine.run(&script, "main", json!({}), &greedy)?;
        fork_times.push(started.elapsed());
        fork_stats.push(backend.stats());
    }
    let shared = &fork_stats[0];
    let unshared = &fork_stats[1];
    let prefix_tokens = shared.prompt_tokens_cached / 7;
    rows.push(Row {
        figure: format!("fork(8) after a {prefix_tokens}-token prefix: prompt tokens evaluated"),
        measured: format!(
            "{} shared vs {} unshared ({} copied from the cache)",
            shared.prompt_tokens_evaluated,
            unshared.prompt_tokens_evaluated,
            shared.prompt_tokens_cached
        ),
        target: "prefix once".to_string(),
        ok: shared.prompt_tokens_evaluated < unshared.prompt_tokens_evaluated / 4,
    });
    let speedup = secs(fork_times[1]) / secs(fork_times[0]);
    rows.push(Row {
        figure: "fork(8) prompt processing, shared vs unshared".to_string(),
        measured: format!(
            "{:.0} ms vs {:.0} ms = {speedup:.1}x",
            secs(fork_times[0]) * 1000.0,
            secs(fork_times[1]) * 1000.0
        ),
        target: ">= 4x".to_string(),
        ok: speedup >= 4.0,
    });

    // 3. A batch of programs sharing a few-shot prefix.
    let backend = Arc::new(start(&model, &args.local, n, true)?);
    let engine = Engine::with_backend(backend.clone());
    let batch_source = format!(
        "fn main(s, country) {{\n    s += system({prefix:?})\n    s += user(f\"Q: What is the capital of {{country}}?\")\n    s += assistant(gen(\"a\", max_tokens=1))\n}}\n"
    );
    let script = engine
        .compile("fewshot.sgl", &batch_source)
        .map_err(|e| anyhow!(e.render(false)))?;
    let inputs: Vec<_> = (0..n)
        .map(|i| json!({ "country": format!("number {i}") }))
        .collect();
    engine.run_batch(&script, "main", inputs, &greedy.clone().with_concurrency(n))?;
    let stats = backend.stats();
    let evaluations =
        (stats.prompt_tokens_evaluated as f64 - (n as f64) * 20.0) / prefix_tokens.max(1) as f64;
    rows.push(Row {
        figure: format!("{n} programs with one {prefix_tokens}-token prefix"),
        measured: format!(
            "{} evaluated, {} from the cache (prefix evaluated ~{:.1} times)",
            stats.prompt_tokens_evaluated,
            stats.prompt_tokens_cached,
            evaluations.max(1.0)
        ),
        target: "prefix once".to_string(),
        ok: stats.prompt_tokens_cached >= (n as u64 - 1) * prefix_tokens * 9 / 10,
    });
    drop(engine);
    drop(backend);

    // 4. Time to first token of `sglc run examples/hello.sgl` on a warm cache: the whole command
    // (start, model load, compile, prompt, one token, exit) with the program's gen cut to one
    // token, an upper bound on the time its first token appears.
    let exe = std::env::current_exe().context("cannot find the sglc executable")?;
    let hello = std::fs::read_to_string("examples/hello.sgl")
        .context("run the benchmark from the repository root")?;
    let one_token =
        std::env::temp_dir().join(format!("sglc-bench-hello-{}.sgl", std::process::id()));
    std::fs::write(&one_token, hello.replace("max_tokens=32", "max_tokens=1"))?;
    let mut ttft = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let mut command = std::process::Command::new(&exe);
        command.arg("run").arg(&one_token);
        if let Some(threads) = args.local.threads {
            command.args(["--threads", &threads.to_string()]);
        }
        let output = command.output().context("cannot run sglc")?;
        if !output.status.success() {
            return Err(anyhow!(
                "sglc run failed: {}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        ttft.push(started.elapsed());
    }
    let _ = std::fs::remove_file(&one_token);
    ttft.sort();
    let median = ttft[1];
    rows.push(Row {
        figure: "`sglc run examples/hello.sgl`, 1 token, warm cache".to_string(),
        measured: format!("{:.0} ms", secs(median) * 1000.0),
        target: "< 1000 ms".to_string(),
        ok: median < Duration::from_secs(1),
    });

    outln!("| figure | measured | target | |");
    outln!("|---|---|---|---|");
    for row in &rows {
        outln!(
            "| {} | {} | {} | {} |",
            row.figure,
            row.measured,
            row.target,
            if row.ok { "ok" } else { "MISSED" }
        );
    }
    outln!("\n{ceiling}");
    Ok(ExitCode::SUCCESS)
}
