//! The `Backend` trait: how the VM hands batches of gen/select calls to a model, and the
//! request and response types that cross it.
//!
//! **Architecture Invariant:** the VM never calls a backend one request at a time; the scheduler
//! collects every call that is ready and passes them as one batch.

pub mod gbnf;
pub mod test_backend;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
pub use sglc_compiler::bytecode::Role;
use std::sync::Arc;

pub use test_backend::TestBackend;

/// One chat message as the backend sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// How roles render into prompt text: the text before and after a message of each role.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatTemplate {
    pub system: (String, String),
    pub user: (String, String),
    pub assistant: (String, String),
}

impl ChatTemplate {
    /// ChatML, the format of the SmolLM, Qwen and many other instruct models.
    pub fn chatml() -> ChatTemplate {
        let role = |name: &str| (format!("<|im_start|>{name}\n"), "<|im_end|>\n".to_string());
        ChatTemplate {
            system: role("system"),
            user: role("user"),
            assistant: role("assistant"),
        }
    }

    pub fn prefix(&self, role: Role) -> &str {
        match role {
            Role::System => &self.system.0,
            Role::User => &self.user.0,
            Role::Assistant => &self.assistant.0,
        }
    }

    pub fn suffix(&self, role: Role) -> &str {
        match role {
            Role::System => &self.system.1,
            Role::User => &self.user.1,
            Role::Assistant => &self.assistant.1,
        }
    }
}

/// What a backend can do; a program that needs more is refused before it runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Capabilities {
    pub select: bool,
    pub regex: bool,
    pub json_schema: bool,
    pub streaming: bool,
}

#[derive(Clone, Debug)]
pub struct BackendInfo {
    /// Shown in errors, e.g. `test` or `openai:https://...`.
    pub name: String,
    pub chat_template: ChatTemplate,
    pub capabilities: Capabilities,
    /// The most requests one `execute` call should carry.
    pub max_batch: usize,
    /// Programs in flight for `--concurrency auto`.
    pub default_concurrency: usize,
}

/// Sampling parameters of one gen call, after the run's defaults are applied.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    pub max_new_tokens: u32,
    pub min_new_tokens: u32,
    pub stop: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    pub temperature: f64,
    pub top_p: f64,
    pub top_k: i64,
    pub min_p: f64,
    pub frequency_penalty: f64,
    pub presence_penalty: f64,
    pub ignore_eos: bool,
    pub regex: Option<String>,
    pub json_schema: Option<String>,
    pub choices: Option<Vec<String>>,
    pub dtype: Option<String>,
    pub seed: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChoicesMethod {
    TokenLengthNormalized,
    Greedy,
    UnconditionalLikelihoodNormalized,
}

impl ChoicesMethod {
    pub fn from_name(name: &str) -> Option<ChoicesMethod> {
        match name {
            "token_length_normalized" => Some(ChoicesMethod::TokenLengthNormalized),
            "greedy" => Some(ChoicesMethod::Greedy),
            "unconditional_likelihood_normalized" => {
                Some(ChoicesMethod::UnconditionalLikelihoodNormalized)
            }
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SelectParams {
    pub choices: Vec<String>,
    pub method: ChoicesMethod,
    pub temperature: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum RequestKind {
    Gen(SamplingParams),
    Select(SelectParams),
}

/// One call as the backend receives it: the prompt text so far, the same prompt as chat
/// messages (for chat APIs), and what to do.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Request {
    pub prompt: Arc<str>,
    pub messages: Vec<Message>,
    /// The role left open at the end of the prompt (gen inside `assistant(...)`).
    pub open_role: Option<Role>,
    pub kind: RequestKind,
    /// Set when the program streams: the backend passes generated text here as it comes.
    #[serde(skip)]
    pub on_chunk: Option<crate::stream::ChunkSink>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    /// Prompt tokens taken from a prefix cache rather than evaluated.
    pub cached_tokens: u32,
    pub completion_tokens: u32,
    /// From the backend receiving the call to its answer.
    pub latency_ms: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenOutput {
    pub text: String,
    pub finish_reason: String,
    pub usage: Usage,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SelectOutput {
    /// Index of the chosen choice.
    pub index: usize,
    /// The score of each choice under the requested method (higher is better).
    pub scores: Vec<f64>,
    pub usage: Usage,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Response {
    Gen(GenOutput),
    Select(SelectOutput),
}

/// A failed call. The message names the backend and what came back, never a secret.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("backend {backend}: {message}")]
pub struct BackendError {
    pub backend: String,
    pub message: String,
}

/// The answer to one request.
pub type CallFuture = BoxFuture<'static, Result<Response, BackendError>>;

pub trait Backend: Send + Sync + 'static {
    fn info(&self) -> &BackendInfo;

    /// Starts a batch of calls. Returns one future per request, in order, so each program can
    /// go on as soon as its own call is done (a backend with continuous batching finishes
    /// requests of one batch at different times).
    fn execute(&self, batch: Vec<Request>) -> Vec<CallFuture>;

    /// Several forks are about to continue `prompt`: a backend with a server-side prefix cache
    /// may evaluate it once now. The future's result is ignored.
    fn cache_prefix(&self, _prompt: Arc<str>) -> Option<BoxFuture<'static, ()>> {
        None
    }

    /// A line on how the backend fared, for the end of a batch job: requests, retries and
    /// the time spent waiting to retry. `None` when there is nothing to tell.
    fn report(&self) -> Option<String> {
        None
    }
}

/// A call site that needs a backend capability.
#[derive(Clone, Debug, PartialEq)]
pub struct Requirement {
    /// `select`, `regex` (also `choices` and `dtype` on gen) or `json_schema`.
    pub capability: &'static str,
    pub function: String,
    pub span: sglc_compiler::Span,
}

/// Every call site of `program` that needs something `capabilities` lacks, so a program is
/// refused before it runs instead of failing halfway.
pub fn unmet_requirements(
    program: &sglc_compiler::Program,
    capabilities: &Capabilities,
) -> Vec<Requirement> {
    use sglc_compiler::bytecode::{GenParam, Instr, PrimitiveKind};
    let mut unmet = Vec::new();
    for function in &program.functions {
        for (instr, span) in function.code.iter().zip(&function.spans) {
            let (Instr::MakeCall(spec) | Instr::CallInto(spec)) = instr else {
                continue;
            };
            let spec = &program.call_specs[*spec as usize];
            let mut needs = Vec::new();
            if spec.kind == PrimitiveKind::Select {
                needs.push(("select", capabilities.select));
            }
            if spec
                .params
                .iter()
                .any(|p| matches!(p, GenParam::Regex | GenParam::Choices | GenParam::Dtype))
                && spec.kind == PrimitiveKind::Gen
            {
                needs.push(("regex", capabilities.regex));
            }
            if spec.params.contains(&GenParam::JsonSchema) {
                needs.push(("json_schema", capabilities.json_schema));
            }
            for (capability, _) in needs.into_iter().filter(|(_, has)| !has) {
                unmet.push(Requirement {
                    capability,
                    function: function.name.clone(),
                    span: *span,
                });
            }
        }
    }
    unmet
}

/// A choice's score under `method` from the log-probabilities of its tokens given the prompt
/// (`unconditional`: the sum of its log-probabilities without the prompt, for that method).
pub fn choice_score(method: ChoicesMethod, logprobs: &[f64], unconditional: f64) -> f64 {
    let n = logprobs.len().max(1) as f64;
    let sum: f64 = logprobs.iter().sum();
    match method {
        ChoicesMethod::TokenLengthNormalized => sum / n,
        ChoicesMethod::Greedy => logprobs.first().copied().unwrap_or(f64::NEG_INFINITY),
        ChoicesMethod::UnconditionalLikelihoodNormalized => (sum - unconditional) / n,
    }
}

/// The index of the best score; ties go to the earlier choice.
pub fn best_choice(scores: &[f64]) -> usize {
    (0..scores.len())
        .max_by(|a, b| scores[*a].total_cmp(&scores[*b]).then(b.cmp(a)))
        .unwrap_or(0)
}
