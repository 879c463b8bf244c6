//! OpenAI-compatible servers (`--backend openai[:BASE_URL]`): OpenAI itself, vLLM, llama.cpp's
//! server, Ollama, SGLang's OpenAI routes. Chat models go through `/v1/chat/completions` (roles
//! become messages); completion models through `/v1/completions`, where `select` scores the
//! choices with `echo` and `logprobs`.

use crate::client::{HttpClient, HttpOptions};
use futures::FutureExt;
use serde_json::{Value as Json, json};
use sglc_vm::backend::{
    Backend, BackendError, BackendInfo, CallFuture, Capabilities, ChatTemplate, GenOutput, Request,
    RequestKind, Response, Role, SamplingParams, SelectOutput, SelectParams, Usage, best_choice,
    choice_score,
};
use sglc_vm::stream::ChunkSink;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    Chat,
    Completions,
}

/// Which server: decides how constraints are passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// OpenAI itself: JSON schema through `response_format` (chat), no regex.
    OpenAi,
    /// vLLM: `guided_regex`, `guided_choice`, `guided_json`.
    Vllm,
    /// llama.cpp's server: a GBNF `grammar`, or `json_schema`.
    LlamaCpp,
}

pub struct OpenAiBackend {
    http: Arc<HttpClient>,
    info: BackendInfo,
    model: String,
    api: Api,
    flavor: Flavor,
}

impl OpenAiBackend {
    /// A backend for `model` at `base_url` (which ends before `/v1`).
    pub fn new(
        base_url: &str,
        api_key: Option<String>,
        model: &str,
        api: Api,
        options: HttpOptions,
    ) -> Result<OpenAiBackend, String> {
        let http = HttpClient::new(format!("openai:{base_url}"), base_url, api_key, options)?;
        Ok(OpenAiBackend {
            info: BackendInfo {
                name: format!("{} ({model})", http.name),
                chat_template: ChatTemplate::chatml(),
                capabilities: Capabilities {
                    // Completions score whole choices from echoed prompt log-probabilities; chat
                    // APIs only by the first token's `top_logprobs`. OpenAI has no regex.
                    select: true,
                    regex: false,
                    json_schema: api == Api::Chat,
                    streaming: api == Api::Chat,
                },
                max_batch: 256,
                default_concurrency: 64,
            },
            http: Arc::new(http),
            model: model.to_string(),
            api,
            flavor: Flavor::OpenAi,
        })
    }

    /// Passes constraints the way this server accepts them (and declares it can).
    pub fn with_flavor(mut self, flavor: Flavor) -> OpenAiBackend {
        self.flavor = flavor;
        if flavor != Flavor::OpenAi {
            self.info.capabilities.regex = true;
            self.info.capabilities.json_schema = true;
        }
        self
    }

    pub fn http(&self) -> &Arc<HttpClient> {
        &self.http
    }
}

fn unsupported(http: &HttpClient, what: &str) -> BackendError {
    BackendError {
        backend: http.name.clone(),
        message: what.to_string(),
    }
}

/// The sampling fields both APIs share.
fn sampling_fields(body: &mut serde_json::Map<String, Json>, p: &SamplingParams) {
    body.insert("max_tokens".into(), json!(p.max_new_tokens));
    body.insert("temperature".into(), json!(p.temperature));
    if p.top_p < 1.0 {
        body.insert("top_p".into(), json!(p.top_p));
    }
    if p.frequency_penalty != 0.0 {
        body.insert("frequency_penalty".into(), json!(p.frequency_penalty));
    }
    if p.presence_penalty != 0.0 {
        body.insert("presence_penalty".into(), json!(p.presence_penalty));
    }
    if !p.stop.is_empty() {
        body.insert("stop".into(), json!(p.stop));
    }
    if let Some(seed) = p.seed {
        body.insert("seed".into(), json!(seed));
    }
}

/// Adds a gen's constraints to a request body in the server's own fields.
fn constraint_fields(
    body: &mut serde_json::Map<String, Json>,
    p: &SamplingParams,
    flavor: Flavor,
    api: Api,
) -> Result<(), String> {
    let schema = p
        .json_schema
        .as_ref()
        .map(|s| {
            serde_json::from_str::<Json>(s)
                .map_err(|e| format!("json_schema is not valid JSON: {e}"))
        })
        .transpose()?;
    let dtype_regex = match p.dtype.as_deref() {
        Some("int") => Some(r"-?[0-9]+".to_string()),
        Some("float") => Some(r"-?[0-9]+(\.[0-9]+)?".to_string()),
        Some("bool") => Some("(true|false)".to_string()),
        _ => None,
    };
    match flavor {
        Flavor::Vllm => {
            if let Some(choices) = &p.choices {
                body.insert("guided_choice".into(), json!(choices));
            } else if let Some(regex) = p.regex.clone().or(dtype_regex) {
                body.insert("guided_regex".into(), json!(regex));
            }
            if let Some(schema) = schema {
                body.insert("guided_json".into(), schema);
            }
        }
        Flavor::LlamaCpp => {
            if let Some(grammar) = sglc_vm::backend::gbnf::constraint_grammar(p)? {
                body.insert("grammar".into(), json!(grammar));
            }
            if let Some(schema) = schema {
                body.insert("json_schema".into(), schema);
            }
        }
        Flavor::OpenAi => {
            if p.regex.is_some() || p.choices.is_some() || p.dtype.is_some() {
                return Err("regex, choices and dtype need constrained decoding: use the local, sglang, vllm or llamacpp backend".to_string());
            }
            if let Some(schema) = schema {
                if api == Api::Completions {
                    return Err("json_schema needs the chat API on OpenAI".to_string());
                }
                body.insert(
                    "response_format".into(),
                    json!({ "type": "json_schema", "json_schema": { "name": "output", "schema": schema, "strict": true } }),
                );
            }
        }
    }
    Ok(())
}

/// The chat request for a gen: the closed messages, answered by the open assistant message.
pub fn chat_body(
    model: &str,
    template: &ChatTemplate,
    flavor: Flavor,
    request: &Request,
    p: &SamplingParams,
) -> Result<Json, String> {
    if request.open_role != Some(Role::Assistant) {
        return Err(
            "a chat API generates assistant messages: put the gen inside assistant(...)"
                .to_string(),
        );
    }
    let partial = request
        .prompt
        .rsplit_once(template.prefix(Role::Assistant))
        .map_or("", |(_, tail)| tail);
    if !partial.is_empty() {
        return Err(format!(
            "a chat API cannot continue a started assistant message ({partial:?} comes before the gen)"
        ));
    }
    let mut body = serde_json::Map::new();
    body.insert("model".into(), json!(model));
    body.insert("messages".into(), json!(request.messages));
    sampling_fields(&mut body, p);
    constraint_fields(&mut body, p, flavor, Api::Chat)?;
    Ok(Json::Object(body))
}

fn usage(body: &Json) -> Usage {
    let count = |key: &str| body["usage"][key].as_u64().unwrap_or(0) as u32;
    Usage {
        prompt_tokens: count("prompt_tokens"),
        completion_tokens: count("completion_tokens"),
        cached_tokens: body["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap_or(0) as u32,
        latency_ms: 0.0,
    }
}

fn malformed(http: &HttpClient, path: &str, what: &str, body: &Json) -> BackendError {
    let mut shown = body.to_string();
    shown.truncate(300);
    BackendError {
        backend: http.name.clone(),
        message: format!("POST {path}: {what} in the response: {shown}"),
    }
}

/// The gen result from a response's first choice, whose text is at `text_at`.
fn first_choice_gen(
    http: &HttpClient,
    path: &str,
    answer: &Json,
    text_at: &[&str],
) -> Result<Response, BackendError> {
    let choice = &answer["choices"][0];
    let text = text_at
        .iter()
        .fold(choice, |v, key| &v[*key])
        .as_str()
        .ok_or_else(|| {
            malformed(
                http,
                path,
                &format!("no `choices[0].{}`", text_at.join(".")),
                answer,
            )
        })?;
    Ok(Response::Gen(GenOutput {
        text: text.to_string(),
        finish_reason: choice["finish_reason"]
            .as_str()
            .unwrap_or("stop")
            .to_string(),
        usage: usage(answer),
    }))
}

async fn chat(http: Arc<HttpClient>, body: Json) -> Result<Response, BackendError> {
    let path = "/v1/chat/completions";
    let answer = http.post(path, body).await?;
    first_choice_gen(&http, path, &answer, &["message", "content"])
}

/// A streamed chat reply: the deltas go to the program as they arrive.
async fn chat_stream(
    http: Arc<HttpClient>,
    mut body: Json,
    sink: ChunkSink,
) -> Result<Response, BackendError> {
    body["stream"] = json!(true);
    let mut text = String::new();
    let mut finish_reason = String::from("stop");
    let mut usage_seen = Usage::default();
    http.post_stream("/v1/chat/completions", body, |event| {
        let choice = &event["choices"][0];
        if let Some(delta) = choice["delta"]["content"].as_str() {
            sink.send(delta);
            text.push_str(delta);
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            finish_reason = reason.to_string();
        }
        if event["usage"].is_object() {
            usage_seen = usage(&event);
        }
    })
    .await?;
    Ok(Response::Gen(GenOutput {
        text,
        finish_reason,
        usage: usage_seen,
    }))
}

async fn complete(
    http: Arc<HttpClient>,
    model: String,
    flavor: Flavor,
    prompt: String,
    p: SamplingParams,
) -> Result<Response, BackendError> {
    let path = "/v1/completions";
    let mut body = serde_json::Map::new();
    body.insert("model".into(), json!(model));
    body.insert("prompt".into(), json!(prompt));
    sampling_fields(&mut body, &p);
    constraint_fields(&mut body, &p, flavor, Api::Completions)
        .map_err(|m| unsupported(&http, &m))?;
    let answer = http.post(path, Json::Object(body)).await?;
    first_choice_gen(&http, path, &answer, &["text"])
}

/// Scores each choice from the log-probabilities the server echoes for `prompt + choice`.
async fn select_completions(
    http: Arc<HttpClient>,
    model: String,
    prompt: String,
    params: SelectParams,
) -> Result<Response, BackendError> {
    let path = "/v1/completions";
    let texts: Vec<String> = params
        .choices
        .iter()
        .map(|c| format!("{prompt}{c}"))
        .collect();
    let body = json!({ "model": model, "prompt": texts, "max_tokens": 0, "echo": true, "logprobs": 1, "temperature": 0 });
    let answer = http.post(path, body).await?;
    let choices = answer["choices"]
        .as_array()
        .filter(|c| c.len() == params.choices.len())
        .ok_or_else(|| malformed(&http, path, "expected one choice per text", &answer))?;
    let mut scores = vec![f64::NEG_INFINITY; params.choices.len()];
    for item in choices {
        let index = item["index"].as_u64().unwrap_or(0) as usize;
        let logprobs = &item["logprobs"];
        let (Some(offsets), Some(lps)) = (
            logprobs["text_offset"].as_array(),
            logprobs["token_logprobs"].as_array(),
        ) else {
            return Err(malformed(
                &http,
                path,
                "no `logprobs.text_offset`/`token_logprobs`",
                &answer,
            ));
        };
        // The choice's tokens are those that start at or after the end of the prompt.
        let choice_lps: Vec<f64> = offsets
            .iter()
            .zip(lps)
            .filter(|(o, _)| o.as_u64().is_some_and(|o| o as usize >= prompt.len()))
            .filter_map(|(_, lp)| lp.as_f64())
            .collect();
        if let Some(score) = scores.get_mut(index) {
            *score = choice_score(params.method, &choice_lps, 0.0);
        }
    }
    let index = best_choice(&scores);
    Ok(Response::Select(SelectOutput {
        index,
        scores,
        usage: usage(&answer),
    }))
}

fn default_sampling() -> SamplingParams {
    SamplingParams {
        max_new_tokens: 1,
        min_new_tokens: 0,
        stop: Vec::new(),
        stop_token_ids: Vec::new(),
        temperature: 0.0,
        top_p: 1.0,
        top_k: -1,
        min_p: 0.0,
        frequency_penalty: 0.0,
        presence_penalty: 0.0,
        ignore_eos: false,
        regex: None,
        json_schema: None,
        choices: None,
        dtype: None,
        seed: None,
    }
}

/// Select on a chat API: one token with `top_logprobs`; each choice scores the log-probability
/// of the likeliest listed token it starts with. Works when the first token decides.
async fn select_chat(
    http: Arc<HttpClient>,
    mut body: Json,
    params: SelectParams,
) -> Result<Response, BackendError> {
    let path = "/v1/chat/completions";
    body["logprobs"] = json!(true);
    body["top_logprobs"] = json!(20);
    let answer = http.post(path, body).await?;
    let top = answer["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        .as_array()
        .ok_or_else(|| {
            malformed(
                &http,
                path,
                "no `choices[0].logprobs.content[0].top_logprobs`",
                &answer,
            )
        })?;
    let scores: Vec<f64> = params
        .choices
        .iter()
        .map(|choice| {
            top.iter()
                .filter_map(|t| Some((t["token"].as_str()?, t["logprob"].as_f64()?)))
                .filter(|(token, _)| {
                    !token.is_empty()
                        && (choice.starts_with(token) || token.starts_with(choice.as_str()))
                })
                .map(|(_, lp)| lp)
                .fold(f64::NEG_INFINITY, f64::max)
        })
        .collect();
    if scores.iter().all(|s| s.is_infinite()) {
        return Err(unsupported(
            &http,
            "select on a chat API: none of the choices starts with one of the model's 20 likeliest first tokens; use --api completions",
        ));
    }
    Ok(Response::Select(SelectOutput {
        index: best_choice(&scores),
        scores,
        usage: usage(&answer),
    }))
}

impl Backend for OpenAiBackend {
    fn info(&self) -> &BackendInfo {
        &self.info
    }

    fn report(&self) -> Option<String> {
        self.http.report()
    }

    fn execute(&self, batch: Vec<Request>) -> Vec<CallFuture> {
        batch
            .into_iter()
            .map(|request| -> CallFuture {
                let http = self.http.clone();
                match (&request.kind, self.api) {
                    (RequestKind::Gen(p), Api::Chat) => match chat_body(
                        &self.model,
                        &self.info.chat_template,
                        self.flavor,
                        &request,
                        p,
                    ) {
                        Ok(body) => match request.on_chunk.clone() {
                            Some(sink) => chat_stream(http, body, sink).boxed(),
                            None => chat(http, body).boxed(),
                        },
                        Err(message) => {
                            futures::future::ready(Err(unsupported(&http, &message))).boxed()
                        }
                    },
                    (RequestKind::Gen(p), Api::Completions) => complete(
                        http,
                        self.model.clone(),
                        self.flavor,
                        request.prompt.to_string(),
                        p.clone(),
                    )
                    .boxed(),
                    (RequestKind::Select(params), Api::Completions) => select_completions(
                        http,
                        self.model.clone(),
                        request.prompt.to_string(),
                        params.clone(),
                    )
                    .boxed(),
                    (RequestKind::Select(params), Api::Chat) => {
                        let greedy = SamplingParams {
                            max_new_tokens: 1,
                            temperature: 0.0,
                            ..default_sampling()
                        };
                        match chat_body(
                            &self.model,
                            &self.info.chat_template,
                            Flavor::OpenAi,
                            &request,
                            &greedy,
                        ) {
                            Ok(body) => select_chat(http, body, params.clone()).boxed(),
                            Err(message) => {
                                futures::future::ready(Err(unsupported(&http, &message))).boxed()
                            }
                        }
                    }
                }
            })
            .collect()
    }
}
