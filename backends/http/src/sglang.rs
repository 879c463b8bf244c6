//! SGLang's native server (`--backend sglang:URL`): `POST /generate` with lists of texts, so
//! every gen the VM has ready goes out as one HTTP request; `select` scores the choices' input
//! log-probabilities in one batched request; regex and JSON schema are passed natively.

use crate::client::{HttpClient, HttpOptions};
use futures::FutureExt;
use serde_json::{Value as Json, json};
use sglc_vm::backend::{
    Backend, BackendError, BackendInfo, CallFuture, Capabilities, ChatTemplate, ChoicesMethod,
    GenOutput, Request, RequestKind, Response, SamplingParams, SelectOutput, SelectParams, Usage,
    best_choice, choice_score,
};
use std::sync::Arc;

pub struct SglangBackend {
    http: Arc<HttpClient>,
    info: BackendInfo,
}

impl SglangBackend {
    /// Checks the server (`GET /get_model_info`) and returns a backend for it.
    pub async fn connect(url: &str, options: HttpOptions) -> Result<SglangBackend, String> {
        let http = HttpClient::new(format!("sglang:{url}"), url, None, options)?;
        let model = http
            .get("/get_model_info")
            .await
            .map_err(|e| e.to_string())?;
        let model_path = model["model_path"]
            .as_str()
            .unwrap_or("unknown model")
            .to_string();
        let max_batch = http.options.max_batch;
        Ok(SglangBackend {
            info: BackendInfo {
                name: format!("{} ({model_path})", http.name),
                chat_template: ChatTemplate::chatml(),
                capabilities: Capabilities {
                    select: true,
                    regex: true,
                    json_schema: true,
                    streaming: true,
                },
                max_batch,
                default_concurrency: 512,
            },
            http: Arc::new(http),
        })
    }

    pub fn http(&self) -> &Arc<HttpClient> {
        &self.http
    }
}

/// SGLang's sampling parameters for one gen. `choices` and `dtype` become regexes.
pub fn sampling_params(p: &SamplingParams) -> Json {
    let mut params = json!({
        "max_new_tokens": p.max_new_tokens,
        "temperature": p.temperature,
        "top_p": p.top_p,
        "top_k": p.top_k,
        "min_p": p.min_p,
        "frequency_penalty": p.frequency_penalty,
        "presence_penalty": p.presence_penalty,
    });
    let object = params.as_object_mut().expect("an object");
    if p.min_new_tokens > 0 {
        object.insert("min_new_tokens".into(), json!(p.min_new_tokens));
    }
    if !p.stop.is_empty() {
        object.insert("stop".into(), json!(p.stop));
    }
    if !p.stop_token_ids.is_empty() {
        object.insert("stop_token_ids".into(), json!(p.stop_token_ids));
    }
    if p.ignore_eos {
        object.insert("ignore_eos".into(), json!(true));
    }
    if let Some(seed) = p.seed {
        object.insert("sampling_seed".into(), json!(seed));
    }
    let regex = match (&p.choices, p.dtype.as_deref()) {
        (Some(choices), _) if !choices.is_empty() => Some(
            choices
                .iter()
                .map(|c| regex_syntax::escape(c))
                .collect::<Vec<_>>()
                .join("|"),
        ),
        (_, Some("int")) => Some(r"-?[0-9]+".to_string()),
        (_, Some("float")) => Some(r"-?[0-9]+(\.[0-9]+)?".to_string()),
        (_, Some("bool")) => Some("(true|false)".to_string()),
        _ => p.regex.clone(),
    };
    if let Some(regex) = regex {
        object.insert("regex".into(), json!(regex));
    }
    if let Some(schema) = &p.json_schema {
        object.insert("json_schema".into(), json!(schema));
    }
    params
}

fn malformed(http: &HttpClient, what: &str, body: &Json) -> BackendError {
    let mut shown = body.to_string();
    shown.truncate(300);
    BackendError {
        backend: http.name.clone(),
        message: format!("POST /generate: {what} in the response: {shown}"),
    }
}

fn gen_output(http: &HttpClient, item: &Json) -> Result<Response, BackendError> {
    let text = item["text"]
        .as_str()
        .ok_or_else(|| malformed(http, "no `text`", item))?
        .to_string();
    let meta = &item["meta_info"];
    let count = |key: &str| meta[key].as_u64().unwrap_or(0) as u32;
    let finish_reason = meta["finish_reason"]["type"]
        .as_str()
        .or_else(|| meta["finish_reason"].as_str())
        .unwrap_or("stop")
        .to_string();
    Ok(Response::Gen(GenOutput {
        text,
        finish_reason,
        usage: Usage {
            prompt_tokens: count("prompt_tokens"),
            cached_tokens: count("cached_tokens"),
            completion_tokens: count("completion_tokens"),
            latency_ms: meta["e2e_latency"].as_f64().map_or(0.0, |s| s * 1000.0),
        },
    }))
}

/// One `/generate` call for a batch of gens; one result per prompt.
async fn generate_batch(
    http: Arc<HttpClient>,
    prompts: Vec<String>,
    params: Vec<Json>,
) -> Vec<Result<Response, BackendError>> {
    let n = prompts.len();
    let body = json!({ "text": prompts, "sampling_params": params });
    match http.post("/generate", body).await {
        Err(e) => vec![Err(e); n],
        Ok(Json::Array(items)) if items.len() == n => {
            items.iter().map(|item| gen_output(&http, item)).collect()
        }
        Ok(other) => vec![
            Err(malformed(
                &http,
                &format!("expected a list of {n} results"),
                &other
            ));
            n
        ],
    }
}

/// Log-probabilities of each text's tokens from `start`, as SGLang returns them.
fn input_logprobs(http: &HttpClient, item: &Json) -> Result<Vec<f64>, BackendError> {
    let entries = item["meta_info"]["input_token_logprobs"]
        .as_array()
        .ok_or_else(|| malformed(http, "no `input_token_logprobs`", item))?;
    // Each entry is `[logprob, token_id, text]`; the first token of a text has no logprob.
    Ok(entries.iter().filter_map(|e| e[0].as_f64()).collect())
}

async fn select(
    http: Arc<HttpClient>,
    prompt: String,
    params: SelectParams,
) -> Result<Response, BackendError> {
    // 1. The prompt alone (caching it on the server) tells its length in tokens.
    let prefix = http
        .post(
            "/generate",
            json!({ "text": prompt, "sampling_params": { "max_new_tokens": 0 } }),
        )
        .await?;
    let prompt_tokens = prefix["meta_info"]["prompt_tokens"]
        .as_u64()
        .ok_or_else(|| malformed(&http, "no `prompt_tokens`", &prefix))?
        as usize;
    let start = prompt_tokens.saturating_sub(1);
    // 2. Every choice after the prompt, in one request.
    let texts: Vec<String> = params
        .choices
        .iter()
        .map(|c| format!("{prompt}{c}"))
        .collect();
    let scored = http
        .post(
            "/generate",
            json!({
                "text": texts,
                "sampling_params": { "max_new_tokens": 0, "temperature": 0 },
                "return_logprob": true,
                "logprob_start_len": start,
            }),
        )
        .await?;
    let items = scored
        .as_array()
        .filter(|a| a.len() == params.choices.len())
        .ok_or_else(|| malformed(&http, "expected one result per choice", &scored))?;
    // Entries start at the prompt's last token, whose own logprob is not the choice's.
    let choice_logprobs: Vec<Vec<f64>> = items
        .iter()
        .map(|item| {
            input_logprobs(&http, item)
                .map(|lps| lps.into_iter().skip(prompt_tokens - start).collect())
        })
        .collect::<Result<_, _>>()?;
    // 3. For the unconditional method, the choices without the prompt.
    let unconditional: Vec<f64> =
        if params.method == ChoicesMethod::UnconditionalLikelihoodNormalized {
            let alone = http
                .post(
                    "/generate",
                    json!({
                        "text": params.choices,
                        "sampling_params": { "max_new_tokens": 0, "temperature": 0 },
                        "return_logprob": true,
                        "logprob_start_len": 0,
                    }),
                )
                .await?;
            let items = alone
                .as_array()
                .filter(|a| a.len() == params.choices.len())
                .ok_or_else(|| malformed(&http, "expected one result per choice", &alone))?;
            items
                .iter()
                .map(|item| input_logprobs(&http, item).map(|lps| lps.iter().sum()))
                .collect::<Result<_, _>>()?
        } else {
            vec![0.0; params.choices.len()]
        };
    let scores: Vec<f64> = choice_logprobs
        .iter()
        .zip(&unconditional)
        .map(|(lps, uncond)| choice_score(params.method, lps, *uncond))
        .collect();
    let index = best_choice(&scores);
    Ok(Response::Select(SelectOutput {
        index,
        scores,
        usage: Usage {
            prompt_tokens: prompt_tokens as u32,
            ..Usage::default()
        },
    }))
}

/// A streamed gen, on its own request: SGLang sends the text so far with every event.
async fn generate_stream(
    http: Arc<HttpClient>,
    request: Request,
    params: Json,
) -> Result<Response, BackendError> {
    let sink = request.on_chunk.clone();
    let RequestKind::Gen(p) = &request.kind else {
        unreachable!("only gens stream")
    };
    // Hold back what a stop string may still cut, so the streamed text stays a prefix.
    let hold = p.stop.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut last = Json::Null;
    let mut sent = 0;
    let body =
        json!({ "text": request.prompt.to_string(), "sampling_params": params, "stream": true });
    http.post_stream("/generate", body, |event| {
        if let (Some(sink), Some(text)) = (&sink, event["text"].as_str()) {
            let mut safe = text.len().saturating_sub(hold);
            while !text.is_char_boundary(safe) {
                safe -= 1;
            }
            if safe > sent && text.is_char_boundary(sent) {
                sink.send(&text[sent..safe]);
                sent = safe;
            }
        }
        last = event;
    })
    .await?;
    gen_output(&http, &last)
}

impl Backend for SglangBackend {
    fn info(&self) -> &BackendInfo {
        &self.info
    }

    fn report(&self) -> Option<String> {
        self.http.report()
    }

    fn cache_prefix(&self, prompt: Arc<str>) -> Option<futures::future::BoxFuture<'static, ()>> {
        let http = self.http.clone();
        let body =
            json!({ "text": prompt.to_string(), "sampling_params": { "max_new_tokens": 0 } });
        Some(async move { drop(http.post("/generate", body).await) }.boxed())
    }

    fn execute(&self, batch: Vec<Request>) -> Vec<CallFuture> {
        // Every gen of the batch goes out as one `/generate` request with a list of texts.
        let mut gen_positions = Vec::new();
        let mut prompts = Vec::new();
        let mut params = Vec::new();
        for (i, request) in batch.iter().enumerate() {
            if let (RequestKind::Gen(p), None) = (&request.kind, &request.on_chunk) {
                gen_positions.push(i);
                prompts.push(request.prompt.to_string());
                params.push(sampling_params(p));
            }
        }
        let shared = (!prompts.is_empty()).then(|| {
            generate_batch(self.http.clone(), prompts, params)
                .boxed()
                .shared()
        });
        batch
            .into_iter()
            .enumerate()
            .map(|(i, request)| -> CallFuture {
                match request.kind {
                    RequestKind::Gen(ref p) if request.on_chunk.is_some() => {
                        let params = sampling_params(p);
                        generate_stream(self.http.clone(), request, params).boxed()
                    }
                    RequestKind::Gen(_) => {
                        let k = gen_positions
                            .iter()
                            .position(|p| *p == i)
                            .expect("a gen position");
                        let shared = shared.clone().expect("gens are batched");
                        async move { shared.await[k].clone() }.boxed()
                    }
                    RequestKind::Select(params) => {
                        select(self.http.clone(), request.prompt.to_string(), params).boxed()
                    }
                }
            })
            .collect()
    }
}
