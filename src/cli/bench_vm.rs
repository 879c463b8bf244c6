//! `sglc bench vm`: the frontend's own cost under load, against the test backend answering
//! instantly. Each measurement runs in a child process of its own so peak RSS is its alone; the
//! parent prints one table with the targets.

use super::output::outln;
use anyhow::{Context, Result, bail};
use clap::Args;
use sglc::{Engine, RunConfig, TestBackend};
use std::process::ExitCode;
use std::time::Instant;

/// The program shapes measured, kept as `.sgl` files beside the other benchmark programs.
const SHAPES: &[(&str, &str, Option<f64>)] = &[
    (
        "single_gen",
        include_str!("../../benches/programs/vm/single_gen.sgl"),
        Some(200_000.0),
    ),
    (
        "chat3",
        include_str!("../../benches/programs/vm/chat3.sgl"),
        Some(70_000.0),
    ),
    (
        "select4",
        include_str!("../../benches/programs/vm/select4.sgl"),
        None,
    ),
    (
        "fork4",
        include_str!("../../benches/programs/vm/fork4.sgl"),
        Some(40_000.0),
    ),
    (
        "loop20",
        include_str!("../../benches/programs/vm/loop20.sgl"),
        None,
    ),
];

/// Peak RSS allowed for 100,000 programs in flight at once.
const IN_FLIGHT_TARGET_MB: f64 = 300.0;
/// `sglc run` on a small file, compile and run with the test backend.
const STARTUP_TARGET_MS: f64 = 20.0;

#[derive(Args, Debug)]
pub struct BenchVmArgs {
    /// Programs per throughput measurement.
    #[arg(long, default_value_t = 100_000)]
    programs: usize,
    /// Programs suspended on the backend at once for the memory measurement.
    #[arg(long, default_value_t = 100_000)]
    in_flight: usize,
    /// A smoke run with small counts: checks the benchmark works, not the figures.
    #[arg(long)]
    quick: bool,
    /// Internal: run one measurement in this process and print it as JSON.
    #[arg(long, hide = true)]
    child: Option<String>,
}

/// What one child process measured.
#[derive(serde::Serialize, serde::Deserialize, Debug, Default)]
struct Measurement {
    programs: usize,
    failed: usize,
    wall_s: f64,
    cpu_s: f64,
    peak_rss_kb: u64,
    baseline_rss_kb: u64,
    batches: usize,
    full_batches: usize,
    max_batch: usize,
}

/// User plus system CPU time of this process, and its peak RSS in KB.
fn usage() -> (f64, u64) {
    // SAFETY: getrusage fills the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (
        secs(usage.ru_utime) + secs(usage.ru_stime),
        usage.ru_maxrss as u64,
    )
}

fn inputs(n: usize) -> impl Iterator<Item = serde_json::Value> + Send {
    (0..n).map(|i| serde_json::json!({ "q": format!("Question number {i}: what is next?") }))
}

/// Runs `n` programs of `source` on `backend` with `config`; measures this process.
fn measure(
    source: &str,
    backend: TestBackend,
    n: usize,
    config: &RunConfig,
) -> Result<Measurement> {
    let sizes = backend.batch_sizes();
    let engine = Engine::new(backend);
    let script = engine
        .compile("bench.sgl", source)
        .map_err(|e| anyhow::anyhow!(e.render(false)))?;
    let (cpu_before, baseline_rss_kb) = usage();
    let started = Instant::now();
    let mut failed = 0;
    engine.run_batch_with(&script, "main", inputs(n), config, |_, result| {
        if result.is_err() {
            failed += 1;
        }
    })?;
    let wall_s = started.elapsed().as_secs_f64();
    let (cpu_after, peak_rss_kb) = usage();
    let sizes = sizes.lock().map(|s| s.clone()).unwrap_or_default();
    let max_batch = sizes.iter().copied().max().unwrap_or(0);
    Ok(Measurement {
        programs: n,
        failed,
        wall_s,
        cpu_s: cpu_after - cpu_before,
        peak_rss_kb,
        baseline_rss_kb,
        batches: sizes.len(),
        full_batches: sizes.iter().filter(|s| **s == max_batch).count(),
        max_batch,
    })
}

fn child(kind: &str, args: &BenchVmArgs) -> Result<Measurement> {
    let single = SHAPES[0].1;
    match kind {
        "in_flight" => {
            let n = args.in_flight;
            let config = RunConfig::default().with_concurrency(n);
            measure(single, TestBackend::new().with_barrier(n), n, &config)
        }
        "batches" => {
            // Every program is ready at once; the backend takes up to 256 per call.
            let n = args.programs.min(10_000);
            let config = RunConfig::default().with_concurrency(n);
            measure(single, TestBackend::new().with_max_batch(256), n, &config)
        }
        shape => {
            let (_, source, _) = SHAPES
                .iter()
                .find(|(name, _, _)| *name == shape)
                .with_context(|| format!("no shape `{shape}`"))?;
            measure(
                source,
                TestBackend::new(),
                args.programs,
                &RunConfig::default(),
            )
        }
    }
}

fn run_child(kind: &str, args: &BenchVmArgs) -> Result<Measurement> {
    let exe = std::env::current_exe().context("cannot find the sglc executable")?;
    let output = std::process::Command::new(exe)
        .args(["bench", "vm", "--child", kind])
        .args(["--programs", &args.programs.to_string()])
        .args(["--in-flight", &args.in_flight.to_string()])
        .output()
        .context("cannot start a benchmark process")?;
    if !output.status.success() {
        bail!(
            "the `{kind}` measurement failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    serde_json::from_slice(&output.stdout).context("the measurement printed no result")
}

/// Median wall time of `sglc run` on a small file with the test backend, in ms.
fn startup_ms(runs: usize) -> Result<f64> {
    let exe = std::env::current_exe().context("cannot find the sglc executable")?;
    let dir = std::env::temp_dir().join(format!("sglc-bench-startup-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("hello.sgl");
    std::fs::write(&file, include_str!("../../examples/hello.sgl"))?;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        let status = std::process::Command::new(&exe)
            .arg("run")
            .arg(&file)
            .args(["--backend", "test"])
            .stdout(std::process::Stdio::null())
            .status()?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        if !status.success() {
            bail!("`sglc run` failed in the start-up measurement");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

fn verdict(met: bool, quick: bool) -> &'static str {
    match (quick, met) {
        (true, _) => "(smoke run)",
        (false, true) => "met",
        (false, false) => "MISSED",
    }
}

pub fn bench_vm(mut args: BenchVmArgs) -> Result<ExitCode> {
    if let Some(kind) = args.child.clone() {
        let measurement = child(&kind, &args)?;
        outln!("{}", serde_json::to_string(&measurement)?);
        return Ok(ExitCode::SUCCESS);
    }
    if args.quick {
        args.programs = args.programs.min(500);
        args.in_flight = args.in_flight.min(500);
    }
    outln!("sglc bench vm: the test backend answers instantly; one process per row");
    outln!();
    outln!(
        "{:<12} {:>9} {:>12} {:>10} {:>10}  target",
        "shape",
        "programs",
        "programs/s",
        "CPU µs/p",
        "peak MB"
    );
    let mut exit = ExitCode::SUCCESS;
    for (name, _, target) in SHAPES {
        let m = run_child(name, &args)?;
        let rate = m.programs as f64 / m.wall_s;
        let target_text = match target {
            Some(t) => format!(
                ">= {:.0}/s: {}",
                t,
                verdict(rate >= *t && m.failed == 0, args.quick)
            ),
            None => "-".to_string(),
        };
        if m.failed > 0 {
            exit = ExitCode::FAILURE;
        }
        outln!(
            "{:<12} {:>9} {:>12.0} {:>10.2} {:>10.1}  {target_text}",
            name,
            m.programs,
            rate,
            m.cpu_s * 1e6 / m.programs as f64,
            m.peak_rss_kb as f64 / 1024.0,
        );
    }

    let m = run_child("in_flight", &args)?;
    let peak_mb = m.peak_rss_kb as f64 / 1024.0;
    let per_program_kb =
        (m.peak_rss_kb.saturating_sub(m.baseline_rss_kb)) as f64 / m.programs as f64;
    outln!();
    outln!(
        "in flight:  {} programs suspended at once: peak RSS {peak_mb:.1} MB, {per_program_kb:.2} KB per program; target < {IN_FLIGHT_TARGET_MB:.0} MB: {}",
        m.programs,
        verdict(peak_mb < IN_FLIGHT_TARGET_MB && m.failed == 0, args.quick)
    );

    let m = run_child("batches", &args)?;
    let mean = m.programs as f64 / m.batches.max(1) as f64;
    outln!(
        "batches:    {} programs ready at once, batch size 256: {} backend calls, mean {mean:.1} requests, {} of them full ({}); {}",
        m.programs,
        m.batches,
        m.full_batches,
        m.max_batch,
        verdict(
            m.max_batch == 256 && m.full_batches + 1 >= m.batches,
            args.quick
        )
    );

    let runs = if args.quick { 3 } else { 21 };
    let startup = startup_ms(runs)?;
    outln!(
        "start-up:   `sglc run hello.sgl --backend test`, median of {runs}: {startup:.1} ms; target < {STARTUP_TARGET_MS:.0} ms: {}",
        verdict(startup < STARTUP_TARGET_MS, args.quick)
    );
    Ok(exit)
}
