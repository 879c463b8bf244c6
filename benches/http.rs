//! The frontend's own cost over HTTP: single-gen programs against a fake SGLang server (a child
//! process) that answers instantly. Prints a table with the figures.
//!
//! `cargo bench --bench http` (full: 10,000 programs) or `cargo bench --bench http -- --quick`.

use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use serde_json::{Value as Json, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The same allocator as the `sglc` binary, so the figure is what users get.
#[global_allocator]
static ALLOCATOR: sglc::allocator::Allocator = sglc::allocator::Allocator;

const SERVE_ENV: &str = "SGLC_BENCH_FAKE_SERVER";

/// The child process: a fake `/generate` that answers every text with one token at once.
fn serve() {
    let requests = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route("/get_model_info", get(|| async { axum::Json(json!({"model_path": "fake"})) }))
        .route("/requests", get(|State(r): State<Arc<AtomicUsize>>| async move { r.load(Ordering::Relaxed).to_string() }))
        .route(
            "/generate",
            post(|State(r): State<Arc<AtomicUsize>>, axum::Json(body): axum::Json<Json>| async move {
                r.fetch_add(1, Ordering::Relaxed);
                let one = json!({"text": "ok", "meta_info": {"prompt_tokens": 8, "completion_tokens": 1, "finish_reason": {"type": "stop"}}});
                let n = body["text"].as_array().map_or(1, Vec::len);
                axum::Json(if body["text"].is_array() { Json::Array(vec![one; n]) } else { one })
            }),
        )
        .with_state(requests);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("{}", listener.local_addr().unwrap());
        axum::serve(listener, app).await.unwrap();
    });
}

/// User plus system CPU seconds of this process (Linux `/proc/self/stat`).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn threads() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("Threads:")
                .map(|n| n.trim().parse().unwrap_or(0))
        })
        .unwrap_or(0)
}

/// Open file descriptors of this process, and how many of them are sockets.
fn open_fds() -> (usize, usize) {
    std::fs::read_dir("/proc/self/fd").map_or((0, 0), |d| {
        let links: Vec<_> = d
            .filter_map(Result::ok)
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .collect();
        let sockets = links
            .iter()
            .filter(|t| t.to_string_lossy().starts_with("socket:"))
            .count();
        (links.len(), sockets)
    })
}

fn main() {
    if std::env::var_os(SERVE_ENV).is_some() {
        serve();
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let programs = if quick { 1_000 } else { 10_000 };

    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .env(SERVE_ENV, "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the fake server starts");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let url = format!("http://{}", line.trim());

    let options = sglc::http::HttpOptions::default();
    let pool = options.pool_size;
    let backend = sglc::http::from_spec(
        &format!("sglang:{url}"),
        None,
        sglc::http::Api::Chat,
        options,
    )
    .unwrap()
    .unwrap();
    let engine = sglc::Engine::with_backend(backend);
    let source = "fn main(s, i) {\n    s += user(f\"Question {i}?\")\n    s += assistant(gen(\"a\", max_tokens=1))\n}\n";
    let script = engine.compile("bench.sgl", source).unwrap();
    let inputs: Vec<Json> = (0..programs).map(|i| json!({ "i": i })).collect();
    let config = sglc::RunConfig::default().with_concurrency(programs);

    // Warm up the connection pool and allocator.
    engine
        .run_batch(&script, "main", inputs[..100].to_vec(), &config)
        .unwrap();
    let requests_before: usize = reqwest_free_get(&format!("{url}/requests"));

    let running = Arc::new(AtomicBool::new(true));
    let peak = Arc::new((
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    ));
    let monitor = {
        let (running, peak) = (running.clone(), peak.clone());
        std::thread::spawn(move || {
            while running.load(Ordering::Relaxed) {
                peak.0.fetch_max(threads(), Ordering::Relaxed);
                let (fds, sockets) = open_fds();
                peak.1.fetch_max(fds, Ordering::Relaxed);
                peak.2.fetch_max(sockets, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let baseline_threads = threads();
    let (baseline_fds, baseline_sockets) = open_fds();
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let results = engine.run_batch(&script, "main", inputs, &config).unwrap();
    let elapsed = started.elapsed();
    let cpu = cpu_seconds() - cpu_before;
    running.store(false, Ordering::Relaxed);
    monitor.join().unwrap();
    let failed = results.iter().filter(|r| r.is_err()).count();
    let requests = reqwest_free_get(&format!("{url}/requests")) - requests_before;
    let _ = child.kill();
    let _ = child.wait();

    let cpu_per_program_us = cpu * 1e6 / programs as f64;
    let python_us = 700.0;
    println!(
        "{programs} single-gen programs against an instant fake SGLang server, {failed} failed"
    );
    println!("| figure | measured | target | |");
    println!("|---|---|---|---|");
    println!(
        "| frontend CPU per program | {cpu_per_program_us:.1} us ({:.0}x below the Python frontend's ~700 us) | >= 20x lower | {} |",
        python_us / cpu_per_program_us,
        if python_us / cpu_per_program_us >= 20.0 {
            "ok"
        } else {
            "MISSED"
        }
    );
    println!(
        "| throughput | {:.0} programs/s (wall {:.2} s) | | |",
        programs as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    let per_program = requests as f64 / programs as f64;
    println!(
        "| HTTP requests per program | {per_program:.4} ({requests} requests) | < 0.1 | {} |",
        if per_program < 0.1 { "ok" } else { "MISSED" }
    );
    let extra_threads = peak
        .0
        .load(Ordering::Relaxed)
        .saturating_sub(baseline_threads);
    let extra_fds = peak.1.load(Ordering::Relaxed).saturating_sub(baseline_fds);
    let extra_sockets = peak
        .2
        .load(Ordering::Relaxed)
        .saturating_sub(baseline_sockets);
    println!(
        "| {programs} programs in flight | +{extra_threads} threads, +{extra_sockets} sockets (+{extra_fds} fds in all, the rest the runtime's own) at peak | sockets and threads <= pool ({pool}) | {} |",
        if extra_threads <= pool && extra_sockets <= pool {
            "ok"
        } else {
            "MISSED"
        }
    );
}

/// A plain HTTP/1.0 GET, so the measurement's own requests go through no client pool.
fn reqwest_free_get(url: &str) -> usize {
    use std::io::{Read, Write};
    let address = url.trim_start_matches("http://");
    let (host, path) = address.split_once('/').unwrap();
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    write!(stream, "GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
        .rsplit("\r\n\r\n")
        .next()
        .unwrap_or("0")
        .trim()
        .parse()
        .unwrap_or(0)
}
