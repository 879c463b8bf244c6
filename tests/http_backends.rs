//! Server backends against fake servers started on 127.0.0.1: the request bodies sent, the
//! handling of answers, batching into one `/generate`, select, retries and every fault.

#![cfg(feature = "http")]

mod support;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value as Json, json};
use sglc::http::{Api, HttpOptions};
use sglc::{Backend, Engine, Error, RunConfig};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Debug)]
enum Fault {
    /// A streamed answer that stops without `[DONE]`.
    Truncate,
    Status(u16, Option<&'static str>),
    InvalidJson,
    Stall(Duration),
}

#[derive(Default)]
struct Fake {
    requests: Mutex<Vec<(String, Json, Option<String>)>>,
    faults: Mutex<VecDeque<Fault>>,
    /// Applied to every request once the queue is empty.
    permanent: Mutex<Option<Fault>>,
}

impl Fake {
    fn fault(&self) -> Option<Fault> {
        self.faults
            .lock()
            .unwrap()
            .pop_front()
            .or_else(|| self.permanent.lock().unwrap().clone())
    }

    fn bodies(&self, path: &str) -> Vec<Json> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _, _)| p == path)
            .map(|(_, b, _)| b.clone())
            .collect()
    }
}

async fn apply_fault(fault: Option<Fault>) -> Option<Response> {
    match fault? {
        Fault::Status(code, retry_after) => {
            let mut headers = HeaderMap::new();
            if let Some(after) = retry_after {
                headers.insert("retry-after", after.parse().unwrap());
            }
            Some((StatusCode::from_u16(code).unwrap(), headers, "boom").into_response())
        }
        Fault::InvalidJson => Some((StatusCode::OK, "{\"text\": [oops").into_response()),
        Fault::Stall(d) => {
            tokio::time::sleep(d).await;
            None
        }
        Fault::Truncate => None,
    }
}

/// A server-sent-events body from JSON events; `done` adds the closing `[DONE]`.
fn sse(events: &[Json], done: bool) -> Response {
    let mut body: String = events.iter().map(|e| format!("data: {e}\n\n")).collect();
    if done {
        body.push_str("data: [DONE]\n\n");
    }
    ([("content-type", "text/event-stream")], body).into_response()
}

fn record(fake: &Fake, path: &str, body: &Json, headers: &HeaderMap) {
    let auth = headers
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_string());
    fake.requests
        .lock()
        .unwrap()
        .push((path.to_string(), body.clone(), auth));
}

/// SGLang's `/generate`: generated text is `gen(<last word>)`; with `max_new_tokens: 0` and
/// `return_logprob`, input log-probabilities favour words containing "Paris".
async fn generate(
    State(fake): State<Arc<Fake>>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Json>,
) -> Response {
    record(&fake, "/generate", &body, &headers);
    let fault = fake.fault();
    let truncate = matches!(fault, Some(Fault::Truncate));
    if let Some(response) = apply_fault(fault).await {
        return response;
    }
    if body["stream"] == json!(true) {
        // Cumulative text, as SGLang streams it.
        let pieces = ["str", "stream", "streamed ", "streamed text"];
        let events: Vec<Json> = pieces
            .iter()
            .map(|t| json!({"text": t, "meta_info": {"prompt_tokens": 3, "completion_tokens": 2}}))
            .collect();
        return sse(&events, !truncate);
    }
    let answer = |text: &str, params: &Json| {
        let words: Vec<&str> = text.split_whitespace().collect();
        if params["max_new_tokens"] == json!(0) {
            let start = body["logprob_start_len"].as_u64().unwrap_or(0) as usize;
            let logprobs: Vec<Json> = words
                .iter()
                .enumerate()
                .skip(start)
                .map(|(i, w)| {
                    let lp = if i == 0 {
                        Json::Null
                    } else if w.contains("Paris") {
                        json!(-0.1)
                    } else {
                        json!(-2.0)
                    };
                    json!([lp, i, null])
                })
                .collect();
            json!({"text": "", "meta_info": {"prompt_tokens": words.len(), "completion_tokens": 0, "input_token_logprobs": logprobs}})
        } else {
            // The last word of the text, chat markers left out.
            let last = words
                .iter()
                .filter_map(|w| w.split("<|").next())
                .rfind(|w| !w.is_empty())
                .unwrap_or("");
            json!({"text": format!("gen({last})"), "meta_info": {"prompt_tokens": words.len(), "completion_tokens": 1, "cached_tokens": 0, "finish_reason": {"type": "stop"}}})
        }
    };
    match &body["text"] {
        Json::Array(texts) => {
            let params: Vec<Json> = match &body["sampling_params"] {
                Json::Array(p) => p.clone(),
                one => vec![one.clone(); texts.len()],
            };
            Json::Array(
                texts
                    .iter()
                    .zip(&params)
                    .map(|(t, p)| answer(t.as_str().unwrap(), p))
                    .collect(),
            )
            .to_string()
            .into_response()
        }
        Json::String(text) => answer(text, &body["sampling_params"])
            .to_string()
            .into_response(),
        _ => (StatusCode::BAD_REQUEST, "bad text").into_response(),
    }
}

async fn chat(
    State(fake): State<Arc<Fake>>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Json>,
) -> Response {
    record(&fake, "/v1/chat/completions", &body, &headers);
    let fault = fake.fault();
    let truncate = matches!(fault, Some(Fault::Truncate));
    if let Some(response) = apply_fault(fault).await {
        return response;
    }
    if body["stream"] == json!(true) {
        let mut events: Vec<Json> = ["Hel", "lo ", "there"]
            .iter()
            .map(|d| json!({"choices": [{"delta": {"content": d}, "finish_reason": null}]}))
            .collect();
        events.push(json!({"choices": [{"delta": {}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 5, "completion_tokens": 3}}));
        return sse(&events, !truncate);
    }
    if body["logprobs"] == json!(true) {
        let top = json!([{"token": "Par", "logprob": -0.2}, {"token": "Lon", "logprob": -1.5}, {"token": "The", "logprob": -2.5}]);
        return json!({"choices": [{"message": {"content": "Par"}, "finish_reason": "length", "logprobs": {"content": [{"token": "Par", "logprob": -0.2, "top_logprobs": top}]}}]})
            .to_string()
            .into_response();
    }
    let last = body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .cloned()
        .unwrap_or_default();
    json!({
        "choices": [{"message": {"role": "assistant", "content": format!("reply to {}", last["content"].as_str().unwrap_or(""))}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 3}
    })
    .to_string()
    .into_response()
}

/// Starts the fake server on a free loopback port; it lives as long as the test process.
fn serve() -> (String, Arc<Fake>) {
    let fake = Arc::new(Fake::default());
    let app = Router::new()
        .route(
            "/get_model_info",
            get(|| async { axum::Json(json!({"model_path": "fake-model"})) }),
        )
        .route("/generate", post(generate))
        .route("/v1/chat/completions", post(chat))
        .with_state(fake.clone());
    (support::serve_on_loopback(app), fake)
}

fn fast_retries(attempts: usize) -> HttpOptions {
    HttpOptions {
        max_attempts: attempts,
        min_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(50),
        timeout: Duration::from_secs(5),
        ..Default::default()
    }
}

fn sglang(url: &str, options: HttpOptions) -> Arc<dyn Backend> {
    sglc::http::from_spec(&format!("sglang:{url}"), None, Api::Chat, options)
        .unwrap()
        .unwrap()
}

const SUMMARIZE: &str = r#"
fn main(s, text) {
    s += system("Be brief.")
    s += user(f"Summarize: {text}")
    s += assistant(gen("summary", max_tokens=20, stop=["\n"], temperature=0.2))
}
"#;

#[test]
fn sglang_batches_every_ready_gen_into_one_generate_request() {
    let (url, fake) = serve();
    let engine = Engine::with_backend(sglang(&url, fast_retries(3)));
    let script = engine.compile("s.sgl", SUMMARIZE).unwrap();
    let inputs: Vec<Json> = (0..40)
        .map(|i| json!({ "text": format!("doc{i}") }))
        .collect();
    let results = engine
        .run_batch(&script, "main", inputs, &RunConfig::default())
        .unwrap();
    for (i, result) in results.iter().enumerate() {
        assert_eq!(
            result.as_ref().unwrap()["summary"],
            json!(format!("gen(doc{i})"))
        );
    }
    let bodies = fake.bodies("/generate");
    assert_eq!(bodies.len(), 1, "40 ready gens, one request");
    assert_eq!(bodies[0]["text"].as_array().unwrap().len(), 40);
    insta::assert_json_snapshot!(
        "sglang_generate_sampling_params",
        bodies[0]["sampling_params"][0]
    );
}

#[test]
fn sglang_select_scores_choices_by_input_logprobs() {
    let (url, fake) = serve();
    let engine = Engine::with_backend(sglang(&url, fast_retries(3)));
    let source = r#"fn main(s) { s += "The capital is " + select("city", choices=[" London", " Paris", " Rome"]) }"#;
    let script = engine.compile("sel.sgl", source).unwrap();
    let state = engine
        .run(&script, "main", json!({}), &RunConfig::default())
        .unwrap();
    assert_eq!(state["city"], json!(" Paris"));
    let bodies = fake.bodies("/generate");
    assert_eq!(
        bodies[0]["sampling_params"]["max_new_tokens"],
        json!(0),
        "the prefix request"
    );
    assert_eq!(bodies[1]["return_logprob"], json!(true));
    assert_eq!(
        bodies[1]["text"].as_array().unwrap().len(),
        3,
        "all choices in one request"
    );
}

#[test]
fn transient_faults_are_retried_with_backoff() {
    let (url, fake) = serve();
    let backend = sglang(&url, fast_retries(5));
    fake.faults.lock().unwrap().extend([
        Fault::Status(503, Some("0")),
        Fault::Status(429, None),
        Fault::Status(500, None),
    ]);
    let engine = Engine::with_backend(backend);
    let script = engine.compile("s.sgl", SUMMARIZE).unwrap();
    let state = engine
        .run(&script, "main", json!({"text": "x"}), &RunConfig::default())
        .unwrap();
    assert!(state["summary"].as_str().unwrap().starts_with("gen("));
    assert_eq!(
        fake.bodies("/generate").len(),
        4,
        "three failures, then success"
    );
}

#[test]
fn exhausted_retries_fail_only_that_program_with_a_clear_error() {
    let (url, fake) = serve();
    let engine = Engine::with_backend(sglang(&url, fast_retries(2)));
    *fake.permanent.lock().unwrap() = Some(Fault::Status(500, None));
    let script = engine.compile("s.sgl", SUMMARIZE).unwrap();
    let error = engine
        .run(&script, "main", json!({"text": "x"}), &RunConfig::default())
        .unwrap_err();
    let message = error.to_string();
    assert_eq!(
        message,
        format!(
            "backend sglang:{url}: POST /generate failed after 2 attempts: HTTP 500 Internal Server Error: boom"
        )
    );
    let Error::Runtime(runtime) = error else {
        panic!("a runtime error")
    };
    let span = runtime.span().unwrap();
    assert!(SUMMARIZE[span.range()].starts_with("gen(\"summary\""));
}

#[test]
fn malformed_json_and_timeouts_are_reported() {
    let (url, fake) = serve();
    let engine = Engine::with_backend(sglang(&url, fast_retries(3)));
    let script = engine.compile("s.sgl", SUMMARIZE).unwrap();
    // Invalid JSON once: retried (a cut-off answer or a broken proxy), then it succeeds.
    fake.faults.lock().unwrap().push_back(Fault::InvalidJson);
    let state = engine
        .run(&script, "main", json!({"text": "x"}), &RunConfig::default())
        .unwrap();
    assert!(state["summary"].as_str().unwrap().starts_with("gen("));
    // Invalid JSON every time: a clear error after the attempts.
    fake.faults.lock().unwrap().extend([
        Fault::InvalidJson,
        Fault::InvalidJson,
        Fault::InvalidJson,
    ]);
    let error = engine
        .run(&script, "main", json!({"text": "x"}), &RunConfig::default())
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("failed after 3 attempts: the response is not valid JSON"),
        "{error}"
    );

    let options = HttpOptions {
        timeout: Duration::from_millis(200),
        ..fast_retries(2)
    };
    let engine = Engine::with_backend(sglang(&url, options));
    fake.faults.lock().unwrap().extend([
        Fault::Stall(Duration::from_secs(2)),
        Fault::Stall(Duration::from_secs(2)),
    ]);
    let error = engine
        .run(&script, "main", json!({"text": "x"}), &RunConfig::default())
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("failed after 2 attempts: timed out"),
        "{error}"
    );
}

#[test]
fn a_dead_server_is_a_clear_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let error = sglc::http::from_spec(&format!("sglang:{url}"), None, Api::Chat, fast_retries(2))
        .unwrap()
        .err()
        .unwrap();
    assert!(
        error.contains("GET /get_model_info failed after 2 attempts: cannot connect"),
        "{error}"
    );
}

#[test]
fn openai_chat_sends_messages_and_reads_the_reply() {
    let (url, fake) = serve();
    let backend = sglc::http::OpenAiBackend::new(
        &url,
        Some("sk-test-secret".to_string()),
        "gpt-test",
        Api::Chat,
        fast_retries(3),
    )
    .unwrap();
    let engine = Engine::new(backend);
    let source = r#"
        let SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}}
        fn main(s) {
            s += system("Be brief.")
            s += user("Hi")
            s += assistant(gen("a", max_tokens=5, seed=3))
            s += user("Number?")
            s += assistant(gen("b", json_schema=SCHEMA))
        }
    "#;
    let script = engine.compile("o.sgl", source).unwrap();
    let state = engine
        .run(&script, "main", json!({}), &RunConfig::default())
        .unwrap();
    assert_eq!(state["a"], json!("reply to Hi"));
    assert_eq!(state["b"], json!("reply to Number?"));
    let bodies = fake.bodies("/v1/chat/completions");
    insta::assert_json_snapshot!("openai_chat_request", bodies[0]);
    assert_eq!(bodies[1]["response_format"]["type"], json!("json_schema"));
    let auth = fake.requests.lock().unwrap()[0].2.clone();
    assert_eq!(auth.as_deref(), Some("Bearer sk-test-secret"));
}

#[test]
fn the_api_key_never_appears_in_errors() {
    let (url, fake) = serve();
    *fake.permanent.lock().unwrap() = Some(Fault::Status(401, None));
    let backend = sglc::http::OpenAiBackend::new(
        &url,
        Some("sk-very-secret-key".to_string()),
        "m",
        Api::Chat,
        fast_retries(2),
    )
    .unwrap();
    let engine = Engine::new(backend);
    let script = engine
        .compile(
            "k.sgl",
            "fn main(s) { s += user(\"x\"); s += assistant(gen(\"a\")) }",
        )
        .unwrap();
    let error = engine
        .run(&script, "main", json!({}), &RunConfig::default())
        .unwrap_err();
    let shown = format!("{error} {error:?}");
    assert!(shown.contains("HTTP 401"), "{shown}");
    assert!(!shown.contains("sk-very-secret-key"), "{shown}");
}

#[test]
fn programs_needing_what_a_backend_lacks_are_refused_before_running() {
    let (url, fake) = serve();
    let backend =
        sglc::http::OpenAiBackend::new(&url, None, "m", Api::Completions, fast_retries(1)).unwrap();
    let engine = Engine::new(backend);
    let source = "fn main(s) {\n    s += user(\"q\")\n    s += assistant(gen(\"c\", json_schema={}))\n    s += gen(\"n\", regex=\"[0-9]+\")\n}\n";
    let script = engine.compile("cap.sgl", source).unwrap();
    let Err(Error::Unsupported { diagnostics, .. }) =
        engine.run(&script, "main", json!({}), &RunConfig::default())
    else {
        panic!("the program must be refused");
    };
    let rendered = script.render(&diagnostics, false);
    assert!(
        rendered.contains("does not support `json_schema`"),
        "{rendered}"
    );
    assert!(rendered.contains("does not support `regex`"), "{rendered}");
    assert!(rendered.contains("cap.sgl:3:20"), "{rendered}");
    assert!(fake.requests.lock().unwrap().is_empty(), "nothing was sent");
}

fn streamed(engine: &Engine, script: &sglc::Script) -> Vec<sglc::StreamEvent> {
    let stream = engine.run_stream(script, "main", json!({}), &RunConfig::default());
    futures::executor::block_on_stream(Box::pin(stream)).collect()
}

fn text_of(events: &[sglc::StreamEvent]) -> String {
    events
        .iter()
        .filter_map(|e| match e {
            sglc::StreamEvent::Text { text } => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

#[test]
fn both_servers_stream_tokens_and_a_truncated_stream_is_an_error() {
    let (url, fake) = serve();
    let source = "fn main(s) { s += user(\"hi\"); s += assistant(gen(\"a\")) }";
    let backends: Vec<Arc<dyn Backend>> = vec![
        sglang(&url, fast_retries(2)),
        Arc::new(
            sglc::http::OpenAiBackend::new(&url, None, "m", Api::Chat, fast_retries(2)).unwrap(),
        ),
    ];
    for (backend, expected) in backends.into_iter().zip(["streamed text", "Hello there"]) {
        let engine = Engine::with_backend(backend);
        let script = engine.compile("st.sgl", source).unwrap();
        let events = streamed(&engine, &script);
        assert_eq!(events.last(), Some(&sglc::StreamEvent::Done), "{events:?}");
        let chunks = events.iter().filter(|e| matches!(e, sglc::StreamEvent::Text { text } if expected.contains(text.as_str()))).count();
        assert!(chunks >= 2, "the reply arrives in pieces: {events:?}");
        assert!(events.contains(&sglc::StreamEvent::VarFinished {
            name: "a".to_string(),
            value: json!(expected)
        }));
        assert_eq!(
            text_of(&events),
            format!(
                "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n{expected}<|im_end|>\n"
            )
        );
        fake.faults.lock().unwrap().push_back(Fault::Truncate);
        let events = streamed(&engine, &script);
        let Some(sglc::StreamEvent::Error { message }) = events.last() else {
            panic!("{events:?}")
        };
        assert!(
            message.contains("the event stream ended before [DONE]"),
            "{message}"
        );
    }
}

#[test]
fn sglang_fork_sends_the_shared_prefix_once_for_the_server_cache() {
    let (url, fake) = serve();
    let engine = Engine::with_backend(sglang(&url, fast_retries(2)));
    let source = r#"
        fn main(s) {
            s += system("A long shared prefix.")
            let forks = s.fork(3)
            for i, f in enumerate(forks) { f += user(f"Branch {i}") + assistant(gen("x", max_tokens=2)) }
            forks.join()
            return s["x"]
        }
    "#;
    let script = engine.compile("fork.sgl", source).unwrap();
    let state = engine
        .run(&script, "main", json!({}), &RunConfig::default())
        .unwrap();
    assert_eq!(state.return_value.as_array().unwrap().len(), 3);
    let bodies = fake.bodies("/generate");
    let prefix = bodies
        .iter()
        .find(|b| b["text"].is_string())
        .expect("a prefix request");
    assert_eq!(
        prefix["text"],
        json!("<|im_start|>system\nA long shared prefix.<|im_end|>\n")
    );
    assert_eq!(prefix["sampling_params"]["max_new_tokens"], json!(0));
    let batch = bodies
        .iter()
        .find(|b| b["text"].is_array())
        .expect("the branches' batch");
    assert_eq!(batch["text"].as_array().unwrap().len(), 3);
}

#[test]
fn vllm_and_llamacpp_servers_get_constraints_in_their_own_fields() {
    let (url, fake) = serve();
    let source = r#"
        fn main(s) {
            s += user("q")
            s += assistant(gen("a", regex="[0-9]{3}"))
            s += user("q")
            s += assistant(gen("b", choices=["yes", "no"]))
            s += user("q")
            s += assistant(gen("c", json_schema={"type": "object"}))
        }
    "#;
    for flavor in ["vllm", "llamacpp"] {
        let backend = sglc::http::from_spec(
            &format!("{flavor}:{url}"),
            Some("m"),
            Api::Chat,
            fast_retries(2),
        )
        .unwrap()
        .unwrap();
        assert!(backend.info().capabilities.regex);
        let engine = Engine::with_backend(backend);
        let script = engine.compile("c.sgl", source).unwrap();
        engine
            .run(&script, "main", json!({}), &RunConfig::default())
            .unwrap();
    }
    let bodies = fake.bodies("/v1/chat/completions");
    assert_eq!(bodies[0]["guided_regex"], json!("[0-9]{3}"));
    assert_eq!(bodies[1]["guided_choice"], json!(["yes", "no"]));
    assert_eq!(bodies[2]["guided_json"], json!({"type": "object"}));
    assert_eq!(bodies[3]["grammar"], json!("root ::= ([0-9]){3}\n"));
    assert_eq!(bodies[4]["grammar"], json!("root ::= \"yes\" | \"no\"\n"));
    assert_eq!(bodies[5]["json_schema"], json!({"type": "object"}));
}

#[test]
fn chat_select_scores_choices_by_the_first_tokens_top_logprobs() {
    let (url, fake) = serve();
    let backend =
        sglc::http::OpenAiBackend::new(&url, None, "m", Api::Chat, fast_retries(1)).unwrap();
    let engine = Engine::new(backend);
    let source = r#"fn main(s) { s += user("Capital of France?"); s += assistant(select("c", choices=["London", "Paris", "Rome"])) }"#;
    let script = engine.compile("cs.sgl", source).unwrap();
    let state = engine
        .run(&script, "main", json!({}), &RunConfig::default())
        .unwrap();
    assert_eq!(state["c"], json!("Paris"));
    let scores = state.meta["c"]["scores"].as_array().unwrap().clone();
    assert_eq!(scores[0], json!(-1.5));
    let body = &fake.bodies("/v1/chat/completions")[0];
    assert_eq!(
        (body["max_tokens"].clone(), body["top_logprobs"].clone()),
        (json!(1), json!(20))
    );
}
