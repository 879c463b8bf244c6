//! A deterministic backend for tests: output derived from a hash of the prompt, no model.
//!
//! Gen produces `words` words picked by an FNV-1a hash of the prompt (honouring `stop`,
//! `max_tokens`, `choices` and `dtype`); select scores each choice by a hash of prompt and choice.
//! Same prompt, same answer, on every machine.

use super::*;
use futures::FutureExt;
use std::sync::Mutex;
use std::time::Duration;

const WORDS: &[&str] = &[
    "alpha", "bravo", "cedar", "delta", "ember", "fable", "grove", "harbor", "ivory", "jasper",
    "kernel", "lumen", "maple", "nectar", "orbit", "prism", "quartz", "raven", "sierra", "tundra",
    "umber", "velvet", "willow", "xenon", "yarrow", "zephyr", "amber", "basalt", "cobalt", "dune",
    "echo", "flint",
];

/// A scripted answer: given the request, return `Some(text)` to override the hash-derived output.
pub type Script = Arc<dyn Fn(&Request) -> Option<String> + Send + Sync>;

pub struct TestBackend {
    info: BackendInfo,
    words: usize,
    latency: Option<Duration>,
    script: Option<Script>,
    batch_sizes: Arc<Mutex<Vec<usize>>>,
    barrier: Option<Barrier>,
}

/// Holds every answer until `count` requests have arrived (to measure programs in flight).
struct Barrier {
    count: usize,
    arrived: std::sync::atomic::AtomicUsize,
    open: tokio::sync::watch::Sender<bool>,
}

impl Default for TestBackend {
    fn default() -> Self {
        TestBackend::new()
    }
}

impl TestBackend {
    pub fn new() -> TestBackend {
        TestBackend {
            info: BackendInfo {
                name: "test".to_string(),
                chat_template: ChatTemplate::chatml(),
                capabilities: Capabilities {
                    select: true,
                    regex: true,
                    json_schema: true,
                    streaming: true,
                },
                max_batch: 256,
                default_concurrency: 1024,
            },
            words: 8,
            latency: None,
            script: None,
            batch_sizes: Arc::default(),
            barrier: None,
        }
    }

    /// Holds every answer until `count` requests have arrived, then releases them all: every
    /// program is suspended on the backend at once.
    pub fn with_barrier(mut self, count: usize) -> Self {
        self.barrier = Some(Barrier {
            count,
            arrived: std::sync::atomic::AtomicUsize::new(0),
            open: tokio::sync::watch::Sender::new(false),
        });
        self
    }

    /// Words per gen when `max_tokens` allows (default 8).
    pub fn with_words(mut self, words: usize) -> Self {
        self.words = words;
        self
    }

    /// Answers every batch after this delay, to test concurrency and ordering.
    pub fn with_latency(mut self, latency: Duration) -> Self {
        self.latency = Some(latency);
        self
    }

    pub fn with_max_batch(mut self, max_batch: usize) -> Self {
        self.info.max_batch = max_batch.max(1);
        self
    }

    pub fn with_script(
        mut self,
        script: impl Fn(&Request) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.script = Some(Arc::new(script));
        self
    }

    /// The size of every batch received so far, for tests of batching.
    pub fn batch_sizes(&self) -> Arc<Mutex<Vec<usize>>> {
        self.batch_sizes.clone()
    }

    fn answer(&self, request: &Request) -> Result<Response, BackendError> {
        let prompt_tokens = request.prompt.split_whitespace().count() as u32;
        match &request.kind {
            RequestKind::Gen(params) => {
                let (text, finish_reason) = match self.script.as_ref().and_then(|s| s(request)) {
                    Some(text) => (text, "stop"),
                    None => self.generate(&request.prompt, params),
                };
                let (text, finish_reason) = apply_stop(text, &params.stop, finish_reason);
                let completion_tokens = text.split_whitespace().count() as u32;
                Ok(Response::Gen(GenOutput {
                    text,
                    finish_reason: finish_reason.to_string(),
                    usage: Usage {
                        prompt_tokens,
                        completion_tokens,
                        ..Usage::default()
                    },
                }))
            }
            RequestKind::Select(params) => {
                if params.choices.is_empty() {
                    return Err(BackendError {
                        backend: self.info.name.clone(),
                        message: "select with no choices".to_string(),
                    });
                }
                let scripted = self.script.as_ref().and_then(|s| s(request));
                let scores: Vec<f64> = params
                    .choices
                    .iter()
                    .map(|choice| {
                        if scripted.as_deref() == Some(choice.as_str()) {
                            return 0.0;
                        }
                        let h = fnv1a(&[request.prompt.as_bytes(), choice.as_bytes()]);
                        let per_token = -((h % 1000) as f64) / 250.0 - 0.01;
                        let tokens = choice.split_whitespace().count().max(1) as f64;
                        match params.method {
                            ChoicesMethod::Greedy => per_token,
                            ChoicesMethod::TokenLengthNormalized => per_token,
                            ChoicesMethod::UnconditionalLikelihoodNormalized => {
                                per_token * tokens / (tokens + 1.0)
                            }
                        }
                    })
                    .collect();
                let index = scores
                    .iter()
                    .enumerate()
                    .fold(0, |best, (i, s)| if *s > scores[best] { i } else { best });
                Ok(Response::Select(SelectOutput {
                    index,
                    scores,
                    usage: Usage {
                        prompt_tokens,
                        ..Usage::default()
                    },
                }))
            }
        }
    }

    fn generate(&self, prompt: &str, params: &SamplingParams) -> (String, &'static str) {
        let h = fnv1a(&[prompt.as_bytes()]);
        if let Some(choices) = params.choices.as_ref().filter(|c| !c.is_empty()) {
            return (choices[(h % choices.len() as u64) as usize].clone(), "stop");
        }
        match params.dtype.as_deref() {
            Some("int") => return (((h % 200) as i64 - 100).to_string(), "stop"),
            Some("float") => return (format!("{}.{}", h % 100, (h >> 8) % 100), "stop"),
            Some("bool") => return (h.is_multiple_of(2).to_string(), "stop"),
            _ => {}
        }
        let limit = (params.max_new_tokens as usize).min(self.words);
        let mut words = Vec::with_capacity(limit);
        let mut state = h;
        for _ in 0..limit {
            words.push(WORDS[(state % WORDS.len() as u64) as usize]);
            state = state.wrapping_mul(0x100000001b3).rotate_left(17) ^ 0x9e3779b97f4a7c15;
        }
        let finish = if limit < self.words { "length" } else { "stop" };
        (words.join(" "), finish)
    }
}

fn apply_stop(
    text: String,
    stops: &[String],
    finish_reason: &'static str,
) -> (String, &'static str) {
    let cut = stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min();
    match cut {
        Some(at) => (text[..at].to_string(), "stop"),
        None => (text, finish_reason),
    }
}

/// FNV-1a over several byte strings, separated so ("ab","c") and ("a","bc") differ.
pub fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for part in parts {
        for b in part.iter().chain(std::iter::once(&0xffu8)) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x100000001b3);
        }
    }
    h
}

impl Backend for TestBackend {
    fn info(&self) -> &BackendInfo {
        &self.info
    }

    fn execute(&self, batch: Vec<Request>) -> Vec<CallFuture> {
        if let Ok(mut sizes) = self.batch_sizes.lock() {
            sizes.push(batch.len());
        }
        let gate = self.barrier.as_ref().map(|barrier| {
            let arrived = barrier
                .arrived
                .fetch_add(batch.len(), std::sync::atomic::Ordering::SeqCst)
                + batch.len();
            if arrived >= barrier.count {
                barrier.open.send_replace(true);
            }
            barrier.open.subscribe()
        });
        batch
            .iter()
            .map(|r| {
                let answer = self.answer(r);
                match (self.latency, gate.clone()) {
                    (None, None) => futures::future::ready(answer).boxed(),
                    (latency, gate) => async move {
                        if let Some(mut gate) = gate {
                            let _ = gate.wait_for(|open| *open).await;
                        }
                        if let Some(delay) = latency {
                            tokio::time::sleep(delay).await;
                        }
                        answer
                    }
                    .boxed(),
                }
            })
            .collect()
    }
}
