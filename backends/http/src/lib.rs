//! Server backends: OpenAI-compatible APIs (`openai[:URL]`) and SGLang's native server
//! (`sglang:URL`), over reqwest with one connection pool per backend, retries and timeouts.

pub mod client;
pub mod openai;
pub mod sglang;

pub use client::{HttpOptions, HttpStats};
pub use openai::{Api, Flavor, OpenAiBackend};
pub use sglang::SglangBackend;

use sglc_vm::backend::Backend;
use std::sync::Arc;

/// Builds a server backend from a `--backend` spec: `openai`, `openai:URL`, `vllm:URL`,
/// `llamacpp:URL` (OpenAI-compatible servers that also take regex and grammars) or `sglang:URL`.
/// Returns `None` for a spec that names no server backend.
pub fn from_spec(
    spec: &str,
    model: Option<&str>,
    api: Api,
    options: HttpOptions,
) -> Option<Result<Arc<dyn Backend>, String>> {
    let (kind, url) = match spec.split_once(':') {
        Some((kind, url)) => (kind, Some(url)),
        None => (spec, None),
    };
    match kind {
        "openai" | "vllm" | "llamacpp" => Some((|| {
            let flavor = match kind {
                "vllm" => Flavor::Vllm,
                "llamacpp" => Flavor::LlamaCpp,
                _ => Flavor::OpenAi,
            };
            if flavor != Flavor::OpenAi && url.is_none() {
                return Err(format!(
                    "--backend {kind} needs the server's URL: {kind}:http://HOST:PORT"
                ));
            }
            let base = url
                .map(str::to_string)
                .or_else(|| std::env::var("OPENAI_BASE_URL").ok())
                .unwrap_or_else(|| "https://api.openai.com".to_string());
            // Accept base URLs with or without the `/v1` the paths add.
            let base = base
                .trim_end_matches('/')
                .trim_end_matches("/v1")
                .to_string();
            let model = model.ok_or("--model NAME is required with --backend openai")?;
            let key = std::env::var("OPENAI_API_KEY")
                .ok()
                .filter(|k| !k.is_empty());
            Ok(
                Arc::new(OpenAiBackend::new(&base, key, model, api, options)?.with_flavor(flavor))
                    as Arc<dyn Backend>,
            )
        })()),
        "sglang" => Some((|| {
            let url =
                url.ok_or("--backend sglang needs the server's URL: sglang:http://HOST:PORT")?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            let backend = runtime.block_on(SglangBackend::connect(url, options))?;
            Ok(Arc::new(backend) as Arc<dyn Backend>)
        })()),
        _ => None,
    }
}
