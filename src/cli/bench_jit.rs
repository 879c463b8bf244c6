//! `sglc bench jit`: compute-heavy programs interpreted, JIT-compiled, and as CPython runs the
//! same algorithm, plus the JIT's compile latency. The programs and their Python twins live in
//! `benches/programs/jit/`.

use super::output::outln;
use anyhow::{Context, Result, bail};
use clap::Args;
use sglc::{Engine, JitMode, JitTier, JitTiers, RunConfig, TestBackend};
use std::process::ExitCode;
use std::time::Instant;

struct Program {
    name: &'static str,
    label: &'static str,
    sgl: &'static str,
    py: &'static str,
    /// `main`'s argument for the full run and for `--quick`.
    n: i64,
    quick_n: i64,
    /// Integer or float work: the JIT must be 10x faster than the interpreter here.
    numeric: bool,
}

macro_rules! program {
    ($name:literal, $label:literal, $n:expr, $quick:expr, $numeric:expr) => {
        Program {
            name: $name,
            label: $label,
            sgl: include_str!(concat!("../../benches/programs/jit/", $name, ".sgl")),
            py: include_str!(concat!("../../benches/programs/jit/", $name, ".py")),
            n: $n,
            quick_n: $quick,
            numeric: $numeric,
        }
    };
}

const PROGRAMS: &[Program] = &[
    program!("fib", "fib(30)", 30, 15, true),
    program!("nested_loop", "nested int loop", 1500, 60, true),
    program!("integrate", "float integration", 2_000_000, 5_000, true),
    program!("sieve", "prime sieve (list)", 300_000, 2_000, false),
    program!("strings", "string building", 100_000, 1_000, false),
    program!("scoring", "scoring strings", 20_000, 500, false),
];

/// Runs `main(n)` under CPython once per line read from stdin, printing each run's time in
/// seconds and its result: the benchmark drives it run by run, between its own runs.
const PY_RUNNER: &str = r#"
import importlib, json, sys, time
sys.setrecursionlimit(100000)
module = importlib.import_module(sys.argv[1])
n = int(sys.argv[2])
for _ in sys.stdin:
    t = time.perf_counter()
    result = module.main(n)
    elapsed = time.perf_counter() - t
    print(json.dumps({"seconds": elapsed, "result": result, "version": sys.version.split()[0]}), flush=True)
"#;

#[derive(Args, Debug)]
pub struct BenchJitArgs {
    /// Runs per measurement, at least; the best is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// A short program runs more times than `--runs` (up to 60), until its interpreter runs
    /// add up to this many seconds: a few noisy milliseconds weigh less in a best of more.
    #[arg(long, default_value_t = 1.0, value_name = "SECONDS")]
    min_time: f64,
    /// Small inputs, one run: checks the benchmark works, not the figures.
    #[arg(long)]
    quick: bool,
    /// Skip the CPython comparison.
    #[arg(long)]
    no_python: bool,
    /// Only measure compile latency (no program runs): for profiling the compiler.
    #[arg(long)]
    latency_only: bool,
    /// Only the programs whose names contain this (fib, nested_loop, integrate, sieve,
    /// strings, scoring), in the table and in the latency report.
    #[arg(long, value_name = "NAME")]
    only: Option<String>,
    /// The JIT column's tiers: `tiered` (as a run has them by default), `baseline` or
    /// `optimized` only, to see what each tier contributes.
    #[arg(
        long,
        default_value = "tiered",
        value_name = "tiered|baseline|optimized"
    )]
    jit_tiers: JitTiers,
    /// When the JIT column compiles: `eager` (every function at its first call, so compile
    /// time counts in full) or `auto` (as a run does by default: functions and loops once
    /// they are hot).
    #[arg(long, default_value = "eager", value_name = "eager|auto")]
    jit_mode: JitMode,
}

impl BenchJitArgs {
    /// Runs per measurement: one with `--quick`.
    fn runs(&self) -> usize {
        if self.quick { 1 } else { self.runs.max(1) }
    }

    fn programs(&self) -> impl Iterator<Item = &'static Program> + '_ {
        PROGRAMS.iter().filter(|p| {
            self.only
                .as_deref()
                .is_none_or(|only| p.name.contains(only))
        })
    }
}

/// A best time and the result of that program's run.
type Timing = (f64, String);

/// The interpreter's and the JIT's timings, CPython's with its version, and the runs made.
type Timings = ([Timing; 2], Option<(Timing, String)>, usize);

/// The most runs `--min-time` asks of a short program.
const MAX_RUNS: usize = 60;

/// Best-of-`runs` wall times of `main(n)` interpreted, JIT-compiled (compile time included)
/// and, given a runner, under CPython, with their results (and CPython's version). The three
/// take turns run by run, so a machine that slows down for a while slows all alike; a short
/// program takes more turns (`--min-time`).
fn time_program(
    program: &Program,
    n: i64,
    args: &BenchJitArgs,
    mut python: Option<PythonRunner>,
) -> Result<Timings> {
    let runs = args.runs();
    let engine = Engine::new(TestBackend::new());
    let script = engine
        .compile(program.name, program.sgl)
        .map_err(|e| anyhow::anyhow!(e.render(false)))?;
    let mut timings = [JitMode::Off, args.jit_mode].map(|mode| {
        let mut config = RunConfig::default();
        config.jit.mode = mode;
        config.jit.tiers = args.jit_tiers;
        (config, f64::INFINITY, String::new())
    });
    let mut python_best: Option<Timing> = None;
    let (mut made, mut interpreted_for) = (0, 0.0);
    while made < runs || (!args.quick && interpreted_for < args.min_time && made < MAX_RUNS) {
        made += 1;
        for (k, (config, best, result)) in timings.iter_mut().enumerate() {
            let started = Instant::now();
            let state = engine
                .run(&script, "main", serde_json::json!({ "n": n }), config)
                .map_err(|e| anyhow::anyhow!("{}: {e}", program.name))?;
            let seconds = started.elapsed().as_secs_f64();
            *best = best.min(seconds);
            if k == 0 {
                interpreted_for += seconds;
            }
            *result = result_text(state.return_value);
        }
        if let Some(runner) = &mut python {
            let (seconds, result) = runner.run_once()?;
            if python_best.as_ref().is_none_or(|(best, _)| seconds < *best) {
                python_best = Some((seconds, result));
            }
        }
    }
    let version = python.as_ref().map(|runner| runner.version.clone());
    Ok((
        timings.map(|(_, best, result)| (best, result)),
        python_best.zip(version),
        made,
    ))
}

/// A result as the table compares it: a string as it is, anything else as JSON.
fn result_text(value: serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    }
}

/// CPython running one program's Python twin (`PY_RUNNER`), one run per request.
struct PythonRunner {
    name: &'static str,
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
    version: String,
}

impl PythonRunner {
    fn start(dir: &std::path::Path, program: &Program, n: i64) -> Result<PythonRunner> {
        let mut child = std::process::Command::new("python3")
            .arg(dir.join("runner.py"))
            .args([program.name, &n.to_string()])
            .current_dir(dir)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("cannot run python3 (use --no-python to skip the comparison)")?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            bail!("python3 started without pipes");
        };
        Ok(PythonRunner {
            name: program.name,
            child,
            stdin,
            stdout: std::io::BufReader::new(stdout),
            version: String::new(),
        })
    }

    /// One run: its time in seconds and its result.
    fn run_once(&mut self) -> Result<(f64, String)> {
        use std::io::{BufRead, Read, Write};
        let mut line = String::new();
        let answered = writeln!(self.stdin, "run")
            .and_then(|()| self.stdin.flush())
            .and_then(|()| self.stdout.read_line(&mut line));
        if !matches!(answered, Ok(1..)) {
            let mut stderr = String::new();
            if let Some(mut pipe) = self.child.stderr.take() {
                let _ = self.child.kill();
                let _ = pipe.read_to_string(&mut stderr);
            }
            bail!("python3 failed on {}: {}", self.name, stderr.trim_end());
        }
        let mut report: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("python3 on {} printed {line:?}", self.name))?;
        self.version = report["version"].as_str().unwrap_or("?").to_string();
        let seconds = report["seconds"].as_f64().unwrap_or(f64::NAN);
        Ok((seconds, result_text(report["result"].take())))
    }
}

impl Drop for PythonRunner {
    fn drop(&mut self) {
        // End of input ends the runner; a kill in case it is stuck.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn verdict(met: bool, quick: bool) -> &'static str {
    match (quick, met) {
        (true, _) => "smoke",
        (false, true) => "met",
        (false, false) => "MISSED",
    }
}

pub fn bench_jit(args: BenchJitArgs) -> Result<ExitCode> {
    // A slice before the programs and one after each.
    let slices = if args.latency_only || args.quick {
        1
    } else {
        args.programs().count() + 1
    };
    let mut latency = CompileLatency::new(&args, slices)?;
    latency.slice()?;
    let exit = if args.latency_only {
        ExitCode::SUCCESS
    } else {
        run_programs(&args, &mut latency)?
    };
    latency.report(args.quick);
    Ok(exit)
}

/// Runs every program interpreted, compiled and under CPython; prints the table and verdicts.
fn run_programs(args: &BenchJitArgs, latency: &mut CompileLatency) -> Result<ExitCode> {
    if args.jit_mode == JitMode::Off {
        bail!("--jit-mode is auto or eager: the JIT column needs the JIT");
    }
    let runs = args.runs();
    let dir = std::env::temp_dir().join(format!("sglc-bench-jit-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("runner.py"), PY_RUNNER)?;
    for program in args.programs() {
        std::fs::write(dir.join(format!("{}.py", program.name)), program.py)?;
    }
    let mode = match args.jit_mode {
        JitMode::Eager => "eager",
        _ => "auto",
    };
    outln!(
        "sglc bench jit: best of at least {runs} run(s), interpreter, JIT (--jit {mode}) and CPython taking turns; JIT times include compiling"
    );
    if !args.quick {
        outln!(
            "(a short program runs until its interpreter runs add up to {} s, at most {MAX_RUNS} times)",
            args.min_time
        );
    }
    if args.jit_tiers != JitTiers::Tiered {
        outln!("(the JIT column: {:?} tier only)", args.jit_tiers);
    }
    outln!();
    outln!(
        "{:<20} {:>11} {:>11} {:>9} {:>11} {:>13} {:>11} {:>5}",
        "program",
        "interpreter",
        "jit",
        "speedup",
        "CPython",
        "CPython/interp",
        "CPython/jit",
        "runs"
    );
    let mut exit = ExitCode::SUCCESS;
    let mut version = String::new();
    let mut verdicts = Vec::new();
    for program in args.programs() {
        let n = if args.quick {
            program.quick_n
        } else {
            program.n
        };
        let runner = if args.no_python {
            None
        } else {
            Some(PythonRunner::start(&dir, program, n)?)
        };
        let ([(interpreted, expected), (compiled, result)], python, made) =
            time_program(program, n, args, runner)?;
        latency.slice()?;
        if result != expected {
            eprintln!(
                "{}: the JIT gave {result}, the interpreter {expected}",
                program.name
            );
            exit = ExitCode::FAILURE;
        }
        let python = python.map(|((seconds, py_result), py_version)| {
            if py_result != expected {
                eprintln!(
                    "{}: CPython gave {py_result}, sglc {expected}",
                    program.name
                );
                exit = ExitCode::FAILURE;
            }
            version = py_version;
            seconds
        });
        let speedup = interpreted / compiled;
        let ms = |s: f64| format!("{:.1} ms", s * 1e3);
        let ratio = |to: f64, digits: usize| {
            python.map_or("-".to_string(), |p| format!("{:.digits$}x", p / to))
        };
        outln!(
            "{:<20} {:>11} {:>11} {:>8.1}x {:>11} {:>13} {:>11} {:>5}",
            program.label,
            ms(interpreted),
            ms(compiled),
            speedup,
            python.map_or("-".into(), ms),
            ratio(interpreted, 2),
            ratio(compiled, 1),
            made,
        );
        let jit_target = if program.numeric {
            speedup >= 10.0
        } else {
            speedup >= 1.0
        };
        verdicts.push(format!(
            "{}: JIT {} the interpreter ({}x): {}{}",
            program.label,
            if program.numeric {
                ">= 10x"
            } else {
                "not slower than"
            },
            format_args!("{speedup:.1}"),
            verdict(jit_target, args.quick),
            match python {
                Some(p) => format!(
                    "; interpreter >= CPython: {}{}",
                    verdict(p / interpreted >= 1.0, args.quick),
                    if program.name == "fib" {
                        format!(
                            "; JIT >= 20x CPython: {}",
                            verdict(p / compiled >= 20.0, args.quick)
                        )
                    } else {
                        String::new()
                    }
                ),
                None => String::new(),
            }
        ));
    }
    let _ = std::fs::remove_dir_all(&dir);
    if !version.is_empty() {
        outln!("(CPython {version})");
    }
    outln!();
    for line in verdicts {
        outln!("{line}");
    }
    outln!();
    Ok(exit)
}

/// Compile times of every benchmark function by the tiers `--jit-tiers` names, gathered in
/// slices spread over the whole run, between the programs' timings (`--latency-only`: in one
/// go): a function's best compile is then the best of moments seconds apart, as a program's
/// best run is, and not of one second that a slow stretch of a shared machine may cover.
struct CompileLatency {
    engine: Engine,
    tiers: &'static [JitTier],
    /// Compiles of each function per slice.
    rounds: usize,
    /// Slices taken, and to take: more calls of `slice` do nothing.
    slices: usize,
    planned: usize,
    programs: Vec<ProgramCompiles>,
}

/// A program's name and script and, per tier, its functions' compile times so far.
type ProgramCompiles = (
    &'static str,
    sglc::Script,
    Vec<Vec<sglc_vm::jit::CompileTime>>,
);

/// Compiles of each function for the latency, in all.
const LATENCY_COMPILES: usize = 50;

impl CompileLatency {
    /// Ready to take `slices` slices (`slice`).
    fn new(args: &BenchJitArgs, slices: usize) -> Result<CompileLatency> {
        let engine = Engine::new(TestBackend::new());
        let programs = args
            .programs()
            .map(|program| {
                let script = engine
                    .compile(program.name, program.sgl)
                    .map_err(|e| anyhow::anyhow!(e.render(false)))?;
                Ok((program.name, script, Vec::new()))
            })
            .collect::<Result<Vec<_>>>()?;
        let total = if args.quick { 3 } else { LATENCY_COMPILES };
        Ok(CompileLatency {
            engine,
            tiers: match args.jit_tiers {
                JitTiers::Tiered => &[JitTier::Baseline, JitTier::Optimized],
                JitTiers::Baseline => &[JitTier::Baseline],
                JitTiers::Optimized => &[JitTier::Optimized],
            },
            rounds: total.div_ceil(slices.max(1)),
            slices: 0,
            planned: slices.max(1),
            programs,
        })
    }

    /// Compiles every function `rounds` times more by each tier, unless all slices are taken.
    fn slice(&mut self) -> Result<()> {
        if self.slices == self.planned {
            return Ok(());
        }
        self.slices += 1;
        for (_, script, times) in &mut self.programs {
            for (k, tier) in self.tiers.iter().enumerate() {
                let slice = self.engine.jit_compile_times(script, self.rounds, *tier)?;
                match times.get_mut(k) {
                    Some(so_far) => {
                        for (function, more) in so_far.iter_mut().zip(slice) {
                            function.nanos.extend(more.nanos);
                        }
                    }
                    None => times.push(slice),
                }
            }
        }
        Ok(())
    }

    /// Prints each function's median and best compile by each tier, and the medians over the
    /// functions: the first tier's is how long a hot function waits for native code. The
    /// target is judged on the best compiles, as the programs' times are (best of the runs):
    /// on a shared machine the median also measures whatever else runs.
    fn report(self, quick: bool) {
        let tier_name = |tier: JitTier| match tier {
            JitTier::Baseline => "baseline",
            JitTier::Optimized => "optimized",
        };
        outln!(
            "compile latency (each function with what it calls, for int arguments; {} compiles each, in {} slice(s) over the run):",
            self.rounds * self.slices,
            self.slices
        );
        let mut header = format!("  {:<24}", "");
        for tier in self.tiers {
            header += &format!(" {:>21}", format!("{} median/best", tier_name(*tier)));
        }
        outln!("{header}");
        // Per tier, the median and the best compile of every compiled function, in nanoseconds.
        let mut medians = vec![Vec::new(); self.tiers.len()];
        let mut bests = vec![Vec::new(); self.tiers.len()];
        let micros = |nanos: u64| nanos as f64 / 1e3;
        let median = |nanos: &mut Vec<u64>| {
            nanos.sort_unstable();
            nanos.get(nanos.len() / 2).copied()
        };
        for (name, _, mut times) in self.programs {
            let Some(first) = times.first().cloned() else {
                continue;
            };
            for (function, first) in first.iter().enumerate() {
                if !first.compiled {
                    continue;
                }
                let mut row = format!("  {:<24}", format!("{name}::{}", first.function));
                for (tier, tier_times) in times.iter_mut().enumerate() {
                    let nanos = &mut tier_times[function].nanos;
                    let (Some(mid), Some(&best)) = (median(nanos), nanos.first()) else {
                        continue;
                    };
                    medians[tier].push(mid);
                    bests[tier].push(best);
                    row += &format!(" {:>8.1} /{:>7.1} µs", micros(mid), micros(best));
                }
                outln!("{row}");
            }
        }
        let summaries: Option<Vec<(u64, u64)>> = medians
            .iter_mut()
            .zip(&mut bests)
            .map(|(medians, bests)| median(medians).zip(median(bests)))
            .collect();
        let Some(summaries) = summaries else {
            return;
        };
        let parts: Vec<String> = self
            .tiers
            .iter()
            .zip(&summaries)
            .map(|(tier, (mid, best))| {
                format!(
                    "{} {:.1} µs ({:.1} µs of the best compiles)",
                    tier_name(*tier),
                    micros(*mid),
                    micros(*best)
                )
            })
            .collect();
        outln!(
            "  median over {} functions: {}",
            bests[0].len(),
            parts.join(", ")
        );
        // The first tier measured is the one that gives a hot function native code.
        let to_native = micros(summaries[0].1);
        outln!(
            "  target < 200 µs to native code ({} tier, best compiles): {}",
            tier_name(self.tiers[0]),
            verdict(to_native < 200.0, quick)
        );
    }
}
