//! Failing servers: a fake model server on 127.0.0.1 that, at a set rate, answers 500, 429 or
//! 503 (with and without `Retry-After`), stalls past the client's timeout, resets the
//! connection in the middle of the body, sends invalid JSON or cuts an event stream short.
//! Under transient faults every program of a large batch succeeds; under permanent ones each
//! ends with a clear error; either way each input gets exactly one result.

#![cfg(feature = "http")]

mod support;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value as Json, json};
use sglc::http::{Api, HttpOptions};
use sglc::{Engine, RunConfig};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    Status500,
    Status503RetryAfter,
    Status429,
    Status429RetryAfter,
    /// Answers only after the client has given up.
    Stall,
    /// Sends the start of the body, then resets the connection.
    ResetMidBody,
    InvalidJson,
    /// An event stream that ends before its first event and before `[DONE]`.
    TruncatedStream,
}

const ALL_FAULTS: [Fault; 8] = [
    Fault::Status500,
    Fault::Status503RetryAfter,
    Fault::Status429,
    Fault::Status429RetryAfter,
    Fault::Stall,
    Fault::ResetMidBody,
    Fault::InvalidJson,
    Fault::TruncatedStream,
];

/// How long a stalled answer waits: well past the clients' timeouts below.
const STALL: Duration = Duration::from_millis(1500);

struct Chaos {
    /// Faults per million requests.
    rate_ppm: u64,
    /// `Some`: every request fails this way.
    permanent: Option<Fault>,
    /// `Some`: the faults injected (at `rate_ppm`) are all of this kind.
    only_kind: Option<Fault>,
    rng: Mutex<u64>,
    requests: AtomicU64,
    faults: Mutex<Vec<Fault>>,
}

impl Chaos {
    fn new(rate: f64, permanent: Option<Fault>) -> Chaos {
        Chaos {
            rate_ppm: (rate * 1e6) as u64,
            permanent,
            only_kind: None,
            rng: Mutex::new(0x9e37_79b9_7f4a_7c15),
            requests: AtomicU64::new(0),
            faults: Mutex::new(Vec::new()),
        }
    }

    /// xorshift: the same faults in the same order on every run.
    fn next(&self) -> u64 {
        let mut x = self.rng.lock().unwrap();
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        *x
    }

    /// The fault given as permanent, but only at the rate given.
    fn sometimes(mut self) -> Chaos {
        self.only_kind = self.permanent.take();
        self
    }

    fn pick(&self, streaming: bool) -> Option<Fault> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let fault = match (self.permanent, self.only_kind) {
            (Some(fault), _) => fault,
            (None, Some(kind)) => {
                if self.next() % 1_000_000 >= self.rate_ppm {
                    return None;
                }
                kind
            }
            (None, None) => {
                if self.next() % 1_000_000 >= self.rate_ppm {
                    return None;
                }
                ALL_FAULTS[(self.next() % ALL_FAULTS.len() as u64) as usize]
            }
        };
        // A cut-off event stream only exists for a streaming request; a plain one gets a
        // body cut off in the middle instead.
        let fault = match (fault, streaming) {
            (Fault::TruncatedStream, false) => Fault::ResetMidBody,
            (fault, _) => fault,
        };
        self.faults.lock().unwrap().push(fault);
        Some(fault)
    }
}

async fn faulty(fault: Fault) -> Option<Response> {
    let status = |code: u16, retry_after: Option<&str>| {
        let mut headers = HeaderMap::new();
        if let Some(after) = retry_after {
            headers.insert("retry-after", after.parse().unwrap());
        }
        Some((StatusCode::from_u16(code).unwrap(), headers, "overloaded").into_response())
    };
    match fault {
        Fault::Status500 => status(500, None),
        Fault::Status503RetryAfter => status(503, Some("0.02")),
        Fault::Status429 => status(429, None),
        Fault::Status429RetryAfter => status(429, Some("0")),
        Fault::Stall => {
            tokio::time::sleep(STALL).await;
            None
        }
        Fault::ResetMidBody => {
            let chunks: Vec<Result<&'static str, std::io::Error>> = vec![
                Ok("{\"choices\": [{\"message\": {\"content\": \"half"),
                Err(std::io::Error::other("reset")),
            ];
            Some(Body::from_stream(futures::stream::iter(chunks)).into_response())
        }
        Fault::InvalidJson => Some((StatusCode::OK, "{\"choices\": [oops").into_response()),
        Fault::TruncatedStream => {
            Some(([("content-type", "text/event-stream")], ": keep-alive\n\n").into_response())
        }
    }
}

async fn chat(State(chaos): State<Arc<Chaos>>, axum::Json(body): axum::Json<Json>) -> Response {
    let streaming = body["stream"] == json!(true);
    if let Some(fault) = chaos.pick(streaming)
        && let Some(response) = faulty(fault).await
    {
        return response;
    }
    let question = body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_string();
    let reply = format!("answer to {question}");
    if streaming {
        let events = [
            json!({"choices": [{"delta": {"content": "answer "}, "finish_reason": null}]}),
            json!({"choices": [{"delta": {"content": format!("to {question}")}, "finish_reason": "stop"}]}),
        ];
        let mut text: String = events.iter().map(|e| format!("data: {e}\n\n")).collect();
        text.push_str("data: [DONE]\n\n");
        return ([("content-type", "text/event-stream")], text).into_response();
    }
    json!({
        "choices": [{"message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3}
    })
    .to_string()
    .into_response()
}

/// SGLang's `/generate` with a list of prompts: answers `gen:<last word>` for each.
async fn generate(State(chaos): State<Arc<Chaos>>, axum::Json(body): axum::Json<Json>) -> Response {
    if let Some(fault) = chaos.pick(false)
        && let Some(response) = faulty(fault).await
    {
        return response;
    }
    let answer = |prompt: &str| {
        let last = prompt.split_whitespace().last().unwrap_or_default();
        json!({"text": format!("gen:{last}"), "meta_info": {"prompt_tokens": 5, "completion_tokens": 1, "finish_reason": {"type": "stop"}}})
    };
    match &body["text"] {
        Json::Array(prompts) => Json::Array(
            prompts
                .iter()
                .map(|p| answer(p.as_str().unwrap_or_default()))
                .collect(),
        )
        .to_string()
        .into_response(),
        Json::String(prompt) => answer(prompt).to_string().into_response(),
        _ => (StatusCode::BAD_REQUEST, "bad text").into_response(),
    }
}

/// Starts a chaos server on a free loopback port, for the life of the test process.
fn serve(chaos: Chaos) -> (String, Arc<Chaos>) {
    let chaos = Arc::new(chaos);
    let app = Router::new()
        .route(
            "/get_model_info",
            get(|| async { axum::Json(json!({"model_path": "chaos"})) }),
        )
        .route("/generate", post(generate))
        .route("/v1/chat/completions", post(chat))
        .with_state(chaos.clone());
    (support::serve_on_loopback(app), chaos)
}

const PROGRAM: &str = r#"
fn main(s, q) {
    s += user("question " + q)
    s += assistant(gen("a", max_tokens=8))
    return s["a"]
}
"#;

/// The output lines of a batch job, by input line number.
fn result_lines(out: &str) -> Vec<Json> {
    let mut lines: Vec<Json> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    lines.sort_by_key(|l| l["line"].as_u64());
    lines
}

fn write_job(dir: &std::path::Path, inputs: usize) -> (std::path::PathBuf, std::path::PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let program = dir.join("ask.sgl");
    std::fs::write(&program, PROGRAM).unwrap();
    let input = dir.join("in.jsonl");
    let lines: String = (0..inputs)
        .map(|i| format!("{{\"q\": \"q{i}\"}}\n"))
        .collect();
    std::fs::write(&input, lines).unwrap();
    (program, input)
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("sglc-chaos-{name}-{}", std::process::id()))
}

#[test]
fn a_5000_program_batch_survives_20_percent_transient_faults() {
    let (url, chaos) = serve(Chaos::new(0.2, None));
    let dir = temp_dir("transient");
    let (program, input) = write_job(&dir, 5000);
    let out = dir.join("out.jsonl");
    let output = Command::new(env!("CARGO_BIN_EXE_sglc"))
        .arg("run")
        .arg(&program)
        .args(["--backend", &format!("openai:{url}"), "--model", "m"])
        .args([
            "--timeout",
            "0.5",
            "--attempts",
            "12",
            "--concurrency",
            "256",
        ])
        .arg("--batch")
        .arg(&input)
        .arg("--out")
        .arg(&out)
        .env("OPENAI_API_KEY", "sk-chaos")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let lines = result_lines(&std::fs::read_to_string(&out).unwrap());
    assert_eq!(lines.len(), 5000, "one result per input");
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["line"], json!(i + 1));
        assert_eq!(
            line["return_value"],
            json!(format!("answer to question q{i}")),
            "{line}"
        );
    }
    let faults = chaos.faults.lock().unwrap().clone();
    for kind in ALL_FAULTS.iter().filter(|f| **f != Fault::TruncatedStream) {
        assert!(faults.contains(kind), "{kind:?} was never injected");
    }
    let requests = chaos.requests.load(Ordering::Relaxed);
    assert!(
        faults.len() as u64 * 6 > requests,
        "about one request in five failed"
    );
    // The summary reports the retries: attempts beyond the 5000 requests, and the wait.
    let report = stderr
        .lines()
        .find(|l| l.contains("requests in"))
        .unwrap_or_else(|| panic!("no retry report in: {stderr}"));
    assert!(report.contains("5000 requests in"), "{report}");
    eprintln!(
        "{report} ({} faults injected in {requests} answers)",
        faults.len()
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn batched_sglang_requests_survive_20_percent_transient_faults() {
    let (url, chaos) = serve(Chaos::new(0.2, None));
    let options = HttpOptions {
        timeout: Duration::from_millis(500),
        max_attempts: 12,
        min_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(50),
        max_batch: 16,
        ..Default::default()
    };
    let backend = sglc::http::from_spec(&format!("sglang:{url}"), None, Api::Chat, options)
        .unwrap()
        .unwrap();
    let engine = Engine::with_backend(backend.clone());
    let script = engine.compile("ask.sgl", PROGRAM).unwrap();
    let inputs: Vec<Json> = (0..5000).map(|i| json!({ "q": format!("q{i}") })).collect();
    let results = engine
        .run_batch(&script, "main", inputs, &RunConfig::default())
        .unwrap();
    assert_eq!(results.len(), 5000);
    for (i, result) in results.iter().enumerate() {
        let state = result
            .as_ref()
            .unwrap_or_else(|e| panic!("program {i}: {e}"));
        assert!(
            state.return_value.as_str().unwrap().starts_with("gen:"),
            "{}",
            state.return_value
        );
    }
    assert!(!chaos.faults.lock().unwrap().is_empty());
    eprintln!("{}", backend.report().unwrap());
}

#[test]
fn streamed_runs_survive_streams_cut_before_their_first_event() {
    let (url, chaos) = serve(Chaos::new(1.0, Some(Fault::TruncatedStream)));
    let options = HttpOptions {
        max_attempts: 3,
        min_backoff: Duration::from_millis(5),
        ..Default::default()
    };
    let backend = sglc::http::OpenAiBackend::new(&url, None, "m", Api::Chat, options).unwrap();
    let engine = Engine::new(backend);
    let script = engine.compile("ask.sgl", PROGRAM).unwrap();
    // Every stream is cut: three attempts, then a clear error.
    let error = streamed_error(&engine, &script).expect("the run fails");
    assert!(error.contains("ended before [DONE]"), "{error}");
    assert_eq!(chaos.requests.load(Ordering::Relaxed), 3);

    // One stream in five cut before its first event: every run streams its whole answer.
    let (url, chaos) = serve(Chaos::new(0.2, Some(Fault::TruncatedStream)).sometimes());
    let backend = sglc::http::OpenAiBackend::new(
        &url,
        None,
        "m",
        Api::Chat,
        HttpOptions {
            max_attempts: 10,
            min_backoff: Duration::from_millis(1),
            ..Default::default()
        },
    )
    .unwrap();
    let engine = Engine::new(backend);
    for i in 0..100 {
        let stream = engine.run_stream(
            &script,
            "main",
            json!({"q": format!("q{i}")}),
            &RunConfig::default(),
        );
        let events: Vec<_> = futures::executor::block_on_stream(Box::pin(stream)).collect();
        let text: String = events
            .iter()
            .filter_map(|e| match e {
                sglc::StreamEvent::Text { text } => Some(text.as_str()),
                _ => None,
            })
            .collect();
        assert!(
            text.contains(&format!(
                "<|im_start|>assistant\nanswer to question q{i}<|im_end|>"
            )),
            "{events:?}"
        );
    }
    assert!(chaos.faults.lock().unwrap().len() > 5);
}

/// The error a streamed run ends with, if it fails.
fn streamed_error(engine: &Engine, script: &sglc::Script) -> Option<String> {
    let stream = engine.run_stream(script, "main", json!({"q": "x"}), &RunConfig::default());
    futures::executor::block_on_stream(Box::pin(stream)).find_map(|e| match e {
        sglc::StreamEvent::Error { message } => Some(message),
        _ => None,
    })
}

#[test]
fn permanent_faults_end_every_program_with_a_clear_error() {
    let expected = [
        (
            Fault::Status500,
            "HTTP 500 Internal Server Error: overloaded",
        ),
        (Fault::Status503RetryAfter, "HTTP 503 Service Unavailable"),
        (Fault::Status429RetryAfter, "HTTP 429 Too Many Requests"),
        (Fault::Stall, "timed out"),
        (
            Fault::ResetMidBody,
            "connection closed before message completed",
        ),
        (Fault::InvalidJson, "the response is not valid JSON"),
    ];
    for (fault, message) in expected {
        let (url, _) = serve(Chaos::new(1.0, Some(fault)));
        let dir = temp_dir(&format!("{fault:?}"));
        let (program, input) = write_job(&dir, 40);
        let out = dir.join("out.jsonl");
        let output = Command::new(env!("CARGO_BIN_EXE_sglc"))
            .arg("run")
            .arg(&program)
            .args(["--backend", &format!("openai:{url}"), "--model", "m"])
            .args(["--timeout", "0.3", "--attempts", "2"])
            .arg("--batch")
            .arg(&input)
            .arg("--out")
            .arg(&out)
            .arg("-vv")
            .env("OPENAI_API_KEY", "sk-secret-4f9a")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        let written = std::fs::read_to_string(&out).unwrap();
        assert_eq!(output.status.code(), Some(1), "{fault:?}: {stderr}");
        let lines = result_lines(&written);
        assert_eq!(lines.len(), 40, "{fault:?}: one result per input");
        for (i, line) in lines.iter().enumerate() {
            assert_eq!(line["line"], json!(i + 1));
            let error = line["error"]["message"].as_str().unwrap_or_default();
            assert!(
                error.contains(message) && error.contains("after 2 attempts"),
                "{fault:?}: {line}"
            );
        }
        // The key is in no output of a failing run: results, logs (at -vv), errors.
        for text in [
            &written,
            &stderr.to_string(),
            &String::from_utf8_lossy(&output.stdout).to_string(),
        ] {
            assert!(
                !text.contains("sk-secret-4f9a"),
                "{fault:?}: the API key leaked"
            );
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}
