//! The engine thread: owns the llama.cpp model and context and runs one decode loop for every
//! gen and select call from every program (continuous batching).
//!
//! Each loop step: take new calls; admit waiting calls into free sequences, copying the KV of
//! their longest cached prefix; build one batch with a token for every decoding sequence and a
//! chunk of prompt for every sequence still reading its prompt; decode; sample. A call that
//! finishes answers at once and frees its sequence for the next waiting call.
//!
//! **Architecture Invariant:** only this thread touches llama.cpp; the rest of sglc talks to it
//! through a channel of `Job`s.

use crate::grammar::grammar_for;
use crate::prefix_cache::{PrefixCache, common_prefix};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use sglc_vm::backend::{
    BackendError, ChatTemplate, ChoicesMethod, GenOutput, Request, RequestKind, Response,
    SamplingParams, SelectOutput, SelectParams, Usage, choice_score,
};
use sglc_vm::stream::ChunkSink;
use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

/// How the engine is set up.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    pub model: PathBuf,
    /// Sequences decoded together at most (`--parallel`).
    pub parallel: usize,
    /// KV cache size in tokens, shared by all sequences.
    pub context_tokens: u32,
    /// Threads for llama.cpp.
    pub threads: i32,
    /// Tokens per decode call.
    pub batch_tokens: u32,
    /// Tokens the prefix cache may keep.
    pub cache_tokens: usize,
}

impl EngineOptions {
    pub fn new(model: PathBuf) -> EngineOptions {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        EngineOptions {
            model,
            // Batched decoding gains little past ~32 sequences on a small CPU (measured: 279
            // tok/s at 16, 298 at 32 on 2 cores); fewer cores saturate earlier.
            parallel: (cores * 16).clamp(8, 32),
            context_tokens: 8192,
            threads: cores.min(8) as i32,
            batch_tokens: 512,
            cache_tokens: 8192,
        }
    }
}

/// Counters the benchmark and tests read: what the engine actually evaluated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Prompt tokens evaluated (not taken from the cache).
    pub prompt_tokens_evaluated: u64,
    /// Prompt tokens whose KV was copied from the prefix cache.
    pub prompt_tokens_cached: u64,
    pub generated_tokens: u64,
    pub decode_calls: u64,
    /// The most sequences in one decode call.
    pub max_batch_sequences: usize,
    /// Calls that gave their KV space back and were queued again because the cache was full.
    pub preemptions: u64,
}

pub type Reply = tokio::sync::oneshot::Sender<Result<Response, BackendError>>;

pub enum Job {
    Call { request: Request, reply: Reply },
}

/// What the engine thread reports once the model is loaded.
pub struct Ready {
    pub chat_template: ChatTemplate,
    pub model_name: String,
}

static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();

pub(crate) fn llama_backend() -> Result<&'static LlamaBackend, String> {
    BACKEND
        .get_or_init(|| {
            let mut backend = LlamaBackend::init().map_err(|e| e.to_string())?;
            if std::env::var_os("SGLC_LLAMA_LOG").is_none() {
                backend.void_logs();
            }
            Ok(backend)
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Runs the engine on the current thread until every job sender is dropped.
pub fn run_engine(
    options: EngineOptions,
    jobs: mpsc::Receiver<Job>,
    ready: mpsc::Sender<Result<Ready, String>>,
    stats: Arc<Mutex<EngineStats>>,
) {
    let backend = match llama_backend() {
        Ok(b) => b,
        Err(e) => {
            let _ = ready.send(Err(format!("cannot start llama.cpp: {e}")));
            return;
        }
    };
    let model =
        match LlamaModel::load_from_file(backend, &options.model, &LlamaModelParams::default()) {
            Ok(m) => m,
            Err(e) => {
                let _ = ready.send(Err(format!("cannot load {}: {e}", options.model.display())));
                return;
            }
        };
    let parallel = options.parallel.clamp(1, 64);
    // Sequence ids: one per running call, temporaries for select, and the prefix cache. Each
    // one costs llama.cpp buffer space (outputs, attention masks), so no more than needed.
    let n_seq_max = (parallel * 2 + 16).min(256) as u32;
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(options.context_tokens))
        .with_n_batch(options.batch_tokens)
        .with_n_ubatch(options.batch_tokens)
        .with_n_seq_max(n_seq_max)
        .with_kv_unified(true)
        .with_n_threads(options.threads)
        .with_n_threads_batch(options.threads);
    let ctx = match model.new_context(backend, params) {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(format!("cannot create a llama.cpp context: {e}")));
            return;
        }
    };
    let chat_template = crate::template::derive_chat_template(&model);
    let model_name = model
        .meta_val_str("general.name")
        .unwrap_or_else(|_| options.model.display().to_string());
    if ready
        .send(Ok(Ready {
            chat_template,
            model_name,
        }))
        .is_err()
    {
        return;
    }
    let mut engine = Engine {
        model: &model,
        ctx,
        batch: LlamaBatch::new(options.batch_tokens as usize, 1),
        free_seqs: (0..n_seq_max as i32).rev().collect(),
        waiting: VecDeque::new(),
        active: Vec::new(),
        cache: PrefixCache::default(),
        options: EngineOptions {
            parallel,
            ..options
        },
        stats,
        kv_limit: None,
    };
    engine.run(jobs);
}

struct Waiting {
    request: Request,
    reply: Reply,
    tokens: Vec<LlamaToken>,
    received: Instant,
}

enum Phase {
    /// Reading the prompt; `fed` tokens are in the KV.
    Prompt,
    /// Generating: the next token to feed.
    Decode(LlamaToken),
    /// Select: choice tokens are being scored in temporary sequences.
    Choices,
}

struct GenState {
    params: SamplingParams,
    sampler: LlamaSampler,
    /// Greedy with no grammar: the next token is the argmax of the logits.
    plain_greedy: bool,
    output: Vec<LlamaToken>,
    bytes: Vec<u8>,
    /// Where streamed text goes, and how many bytes of it went already.
    on_chunk: Option<ChunkSink>,
    streamed: usize,
}

struct SelectState {
    params: SelectParams,
    /// Tokens of each choice.
    choices: Vec<Vec<LlamaToken>>,
    /// Log-probabilities of each choice's tokens given the prompt.
    logprobs: Vec<Vec<f64>>,
    /// Log-probabilities of each choice's tokens after its first, without the prompt.
    unconditional: Vec<Vec<f64>>,
    temp_seqs: Vec<i32>,
}

enum Work {
    Gen(GenState),
    Select(SelectState),
}

struct Active {
    seq: i32,
    /// Kept to restart the call if it has to give its KV space back.
    request: Request,
    tokens: Vec<LlamaToken>,
    /// Prompt tokens in the KV (taken from the cache or evaluated).
    fed: usize,
    cached: usize,
    phase: Phase,
    work: Work,
    reply: Option<Reply>,
    received: Instant,
}

/// Where a sequence's logits landed in the last batch.
enum Slot {
    /// The logits after the last prompt token or a decoded token of active `i`.
    Next(usize),
    /// Choice `choice` token `k` of active `i` (`unconditional` for the prompt-free run).
    Choice {
        active: usize,
        choice: usize,
        token: usize,
        unconditional: bool,
    },
}

struct Engine<'m> {
    model: &'m LlamaModel,
    ctx: LlamaContext<'m>,
    batch: LlamaBatch<'static>,
    free_seqs: Vec<i32>,
    waiting: VecDeque<Waiting>,
    active: Vec<Active>,
    cache: PrefixCache,
    options: EngineOptions,
    stats: Arc<Mutex<EngineStats>>,
    /// After the KV cache ran full: how many calls may run until one finishes.
    kv_limit: Option<usize>,
}

fn error(message: impl Into<String>) -> BackendError {
    BackendError {
        backend: "local".to_string(),
        message: message.into(),
    }
}

/// Only prefixes at least this long are worth a cache entry or holding a request back for.
const MIN_SHARED_PREFIX: usize = 16;

impl<'m> Engine<'m> {
    fn run(&mut self, jobs: mpsc::Receiver<Job>) {
        loop {
            // Block only when there is nothing to do.
            if self.active.is_empty() && self.waiting.is_empty() {
                match jobs.recv() {
                    Ok(job) => self.accept(job),
                    Err(_) => return,
                }
            }
            while let Ok(job) = jobs.try_recv() {
                self.accept(job);
            }
            self.admit();
            self.step();
        }
    }

    fn accept(&mut self, job: Job) {
        let Job::Call { request, reply } = job;
        let vocab = self.model.vocab();
        let tokens = vocab.tokenize(request.prompt.as_bytes(), vocab.should_add_bos(), true);
        if tokens.is_empty() {
            let _ = reply.send(Err(error(
                "the prompt is empty: append some text before gen or select",
            )));
            return;
        }
        if tokens.len() + 1 >= self.options.context_tokens as usize {
            let _ = reply.send(Err(error(format!(
                "the prompt has {} tokens, more than the context of {} tokens",
                tokens.len(),
                self.options.context_tokens
            ))));
            return;
        }
        self.waiting.push_back(Waiting {
            request,
            reply,
            tokens,
            received: Instant::now(),
        });
    }

    fn take_seq(&mut self) -> Option<i32> {
        if let Some(seq) = self.free_seqs.pop() {
            return Some(seq);
        }
        let seq = self.cache.evict_lru()?;
        self.clear_seq(seq);
        Some(seq)
    }

    fn clear_seq(&mut self, seq: i32) {
        let _ = self.ctx.clear_kv_cache_seq(Some(seq as u32), None, None);
    }

    fn release_seq(&mut self, seq: i32) {
        self.clear_seq(seq);
        self.free_seqs.push(seq);
    }

    /// Moves waiting calls into free sequences. A call whose prompt shares a long prefix with a
    /// call still reading its prompt waits one step more, then copies that prefix from the cache
    /// instead of evaluating it again (fork branches, batches with a common few-shot prefix).
    fn admit(&mut self) {
        let mut deferred = VecDeque::new();
        let limit = self
            .kv_limit
            .unwrap_or(self.options.parallel)
            .min(self.options.parallel);
        while self.active.len() < limit {
            let Some(waiting) = self.waiting.pop_front() else {
                break;
            };
            let hit = self.cache.lookup(&waiting.tokens);
            let cached_len = hit.map_or(0, |h| h.len);
            let caching = self.options.cache_tokens > 0;
            let shares_pending_prefix = caching
                && self.active.iter().any(|a| {
                    matches!(a.phase, Phase::Prompt)
                        && common_prefix(&a.tokens, &waiting.tokens)
                            >= cached_len + MIN_SHARED_PREFIX
                });
            if shares_pending_prefix {
                deferred.push_back(waiting);
                continue;
            }
            let Some(seq) = self.take_seq() else {
                deferred.push_back(waiting);
                break;
            };
            // Keep at least one prompt token to evaluate: its logits start the generation.
            let reuse = cached_len.min(waiting.tokens.len() - 1);
            if let (Some(hit), true) = (hit, reuse > 0)
                && self
                    .ctx
                    .kv_cache_seq_cp(hit.seq, seq, Some(0), Some(reuse as u32))
                    .is_err()
            {
                self.release_seq(seq);
                deferred.push_back(waiting);
                continue;
            }
            let Waiting {
                request,
                reply,
                tokens,
                received,
            } = waiting;
            let work = match self.start_work(&request) {
                Ok(work) => work,
                Err(e) => {
                    self.release_seq(seq);
                    let _ = reply.send(Err(e));
                    continue;
                }
            };
            self.active.push(Active {
                seq,
                request,
                tokens,
                fed: reuse,
                cached: reuse,
                phase: Phase::Prompt,
                work,
                reply: Some(reply),
                received,
            });
        }
        deferred.append(&mut self.waiting);
        self.waiting = deferred;
    }

    fn start_work(&mut self, request: &Request) -> Result<Work, BackendError> {
        match &request.kind {
            RequestKind::Gen(params) => Ok(Work::Gen(GenState {
                sampler: build_sampler(self.model, params)?,
                plain_greedy: params.temperature <= 0.0
                    && grammar_for(params).map_err(error)?.is_none()
                    && params.frequency_penalty == 0.0
                    && params.presence_penalty == 0.0,
                params: params.clone(),
                output: Vec::new(),
                bytes: Vec::new(),
                on_chunk: request.on_chunk.clone(),
                streamed: 0,
            })),
            RequestKind::Select(params) => {
                let choices: Vec<Vec<LlamaToken>> = params
                    .choices
                    .iter()
                    .map(|c| self.model.vocab().tokenize(c.as_bytes(), false, false))
                    .collect();
                Ok(Work::Select(SelectState {
                    logprobs: vec![Vec::new(); choices.len()],
                    unconditional: vec![Vec::new(); choices.len()],
                    choices,
                    params: params.clone(),
                    temp_seqs: Vec::new(),
                }))
            }
        }
    }

    /// One decode call over every active sequence.
    fn step(&mut self) {
        if self.active.is_empty() {
            return;
        }
        self.batch.clear();
        let capacity = self.options.batch_tokens as usize;
        let mut slots: Vec<(i32, Slot)> = Vec::new();
        let mut sequences = 0;
        // Decoding sequences first: one token each keeps every generation moving.
        for (i, a) in self.active.iter().enumerate() {
            if let Phase::Decode(token) = a.phase {
                let pos = (a.tokens.len() + generated(a) - 1) as i32;
                if self.batch.add(token, pos, &[a.seq], true).is_ok() {
                    slots.push((self.batch.n_tokens() - 1, Slot::Next(i)));
                    sequences += 1;
                }
            }
        }
        // Then prompt chunks and select choices, as room allows.
        let mut prompt_progress: Vec<(usize, usize)> = Vec::new();
        for i in 0..self.active.len() {
            let used = self.batch.n_tokens() as usize;
            if used >= capacity {
                break;
            }
            match self.active[i].phase {
                Phase::Prompt => {
                    let a = &self.active[i];
                    let take = (a.tokens.len() - a.fed).min(capacity - used);
                    for k in 0..take {
                        let pos = a.fed + k;
                        let last = pos + 1 == a.tokens.len();
                        if self
                            .batch
                            .add(a.tokens[pos], pos as i32, &[a.seq], last)
                            .is_err()
                        {
                            break;
                        }
                        if last {
                            slots.push((self.batch.n_tokens() - 1, Slot::Next(i)));
                        }
                    }
                    prompt_progress.push((i, take));
                    sequences += 1;
                }
                Phase::Choices => {
                    if !self.add_choices(i, &mut slots, capacity) {
                        continue;
                    }
                    sequences += 1;
                }
                Phase::Decode(_) => {}
            }
        }
        if self.batch.n_tokens() == 0 {
            return;
        }
        if let Err(e) = self.ctx.decode(&mut self.batch) {
            self.recover_from_decode_error(e.to_string());
            return;
        }
        {
            let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
            stats.decode_calls += 1;
            stats.max_batch_sequences = stats.max_batch_sequences.max(sequences);
            stats.prompt_tokens_evaluated += prompt_progress
                .iter()
                .map(|(_, take)| *take as u64)
                .sum::<u64>();
        }
        for (i, take) in prompt_progress {
            self.active[i].fed += take;
        }
        let mut finished = Vec::new();
        for (index, slot) in slots {
            match slot {
                Slot::Next(i) => {
                    if self.after_logits(i, index) {
                        finished.push(i);
                    }
                }
                Slot::Choice {
                    active,
                    choice,
                    token,
                    unconditional,
                } => self.score_choice_token(active, choice, token, unconditional, index),
            }
        }
        // Choice scoring completes in the step that fed the choice tokens.
        for i in 0..self.active.len() {
            if matches!(self.active[i].phase, Phase::Choices) && self.choices_scored(i) {
                finished.push(i);
            }
        }
        finished.sort_unstable();
        finished.dedup();
        for i in finished.into_iter().rev() {
            self.finish(i);
        }
    }

    /// Adds every choice of select `i` (with and, for that method, without the prompt) to the
    /// batch in temporary sequences. False when there is no room this step.
    fn add_choices(&mut self, i: usize, slots: &mut Vec<(i32, Slot)>, capacity: usize) -> bool {
        let Work::Select(select) = &self.active[i].work else {
            return false;
        };
        if !select.temp_seqs.is_empty() {
            return false;
        }
        let unconditional =
            select.params.method == ChoicesMethod::UnconditionalLikelihoodNormalized;
        let runs = if unconditional { 2 } else { 1 };
        let needed: usize = select.choices.iter().map(Vec::len).sum::<usize>() * runs;
        if self.batch.n_tokens() as usize + needed > capacity
            || self.free_seqs.len() < select.choices.len() * runs
        {
            return false;
        }
        let choices = select.choices.clone();
        let seq = self.active[i].seq;
        let prompt_len = self.active[i].tokens.len();
        let mut temps = Vec::new();
        for (c, tokens) in choices.iter().enumerate() {
            for run in 0..runs {
                let Some(temp) = self.free_seqs.pop() else {
                    return false;
                };
                temps.push(temp);
                let with_prompt = run == 0;
                if with_prompt
                    && self
                        .ctx
                        .kv_cache_seq_cp(seq, temp, Some(0), Some(prompt_len as u32))
                        .is_err()
                {
                    continue;
                }
                let start = if with_prompt { prompt_len } else { 0 };
                for (k, token) in tokens.iter().enumerate() {
                    if self
                        .batch
                        .add(*token, (start + k) as i32, &[temp], true)
                        .is_ok()
                    {
                        slots.push((
                            self.batch.n_tokens() - 1,
                            Slot::Choice {
                                active: i,
                                choice: c,
                                token: k,
                                unconditional: !with_prompt,
                            },
                        ));
                    }
                }
            }
        }
        if let Work::Select(select) = &mut self.active[i].work {
            select.temp_seqs = temps;
        }
        true
    }

    /// Logits at batch index `index` give the log-probability of the choice's next token.
    fn score_choice_token(
        &mut self,
        i: usize,
        choice: usize,
        token: usize,
        unconditional: bool,
        index: i32,
    ) {
        let logits = self.ctx.get_logits_ith(index);
        let Work::Select(select) = &mut self.active[i].work else {
            return;
        };
        let Some(next) = select.choices[choice].get(token + 1) else {
            return;
        };
        let lp = log_softmax_at(logits, next.0 as usize);
        if unconditional {
            select.unconditional[choice].push(lp);
        } else {
            select.logprobs[choice].push(lp);
        }
    }

    fn choices_scored(&self, i: usize) -> bool {
        match &self.active[i].work {
            Work::Select(select) => !select.temp_seqs.is_empty(),
            Work::Gen(_) => false,
        }
    }

    /// Handles the logits that follow the prompt or a generated token. True when finished.
    fn after_logits(&mut self, i: usize, index: i32) -> bool {
        let model = self.model;
        let a = &mut self.active[i];
        match &mut a.work {
            Work::Select(select) => {
                // The logits after the prompt score every choice's first token.
                let logits = self.ctx.get_logits_ith(index);
                for (c, tokens) in select.choices.iter().enumerate() {
                    if let Some(first) = tokens.first() {
                        select.logprobs[c].push(log_softmax_at(logits, first.0 as usize));
                    }
                }
                a.phase = Phase::Choices;
                if a.tokens.len() >= MIN_SHARED_PREFIX && !self.cache.covers(&a.tokens) {
                    let tokens = a.tokens.clone();
                    let seq = a.seq;
                    self.cache_prefix(seq, &tokens);
                }
                false
            }
            Work::Gen(gen_state) => {
                let first_output = gen_state.output.is_empty();
                let token = sample(&self.ctx, model, gen_state, index);
                let done = accept_token(model, gen_state, token);
                if done {
                    return true;
                }
                stream_progress(gen_state);
                a.phase = Phase::Decode(token);
                // The prompt's KV is complete: other calls starting the same way can copy it.
                if first_output
                    && a.tokens.len() >= MIN_SHARED_PREFIX
                    && !self.cache.covers(&a.tokens)
                {
                    let tokens = a.tokens.clone();
                    let seq = a.seq;
                    self.cache_prefix(seq, &tokens);
                }
                false
            }
        }
    }

    /// Copies `tokens` (held by `seq`) into a cache sequence of their own.
    fn cache_prefix(&mut self, seq: i32, tokens: &[LlamaToken]) {
        while self.cache.total_tokens() + tokens.len() > self.options.cache_tokens {
            match self.cache.evict_lru() {
                Some(old) => self.release_seq(old),
                None => return,
            }
        }
        // Keep sequence ids for running calls: the cache takes only spare ones.
        if self.free_seqs.len() <= self.options.parallel + 8
            && let Some(old) = self.cache.evict_lru()
        {
            self.release_seq(old);
        }
        let Some(cache_seq) = self.free_seqs.pop() else {
            return;
        };
        if self
            .ctx
            .kv_cache_seq_cp(seq, cache_seq, Some(0), Some(tokens.len() as u32))
            .is_err()
        {
            self.free_seqs.push(cache_seq);
            return;
        }
        for redundant in self.cache.insert(tokens, cache_seq) {
            self.release_seq(redundant);
        }
    }

    fn finish(&mut self, i: usize) {
        self.kv_limit = None;
        let mut a = self.active.swap_remove(i);
        let elapsed_ms = a.received.elapsed().as_secs_f64() * 1000.0;
        let usage = |completion: usize| Usage {
            prompt_tokens: a.tokens.len() as u32,
            cached_tokens: a.cached as u32,
            completion_tokens: completion as u32,
            latency_ms: elapsed_ms,
        };
        if let Work::Gen(gen_state) = &a.work {
            // The next call of a multi-turn program starts with this prompt and this output:
            // keep what is in the KV (every output token but the last, which was never fed).
            let fed_output = gen_state.output.len().saturating_sub(1);
            let mut tokens = a.tokens.clone();
            tokens.extend_from_slice(&gen_state.output[..fed_output]);
            if tokens.len() >= MIN_SHARED_PREFIX && !self.cache.covers(&tokens) {
                self.cache_prefix(a.seq, &tokens);
            }
        }
        let response = match &mut a.work {
            Work::Gen(gen_state) => {
                let (text, finish_reason) = finish_text(gen_state);
                {
                    let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
                    stats.generated_tokens += gen_state.output.len() as u64;
                    stats.prompt_tokens_cached += a.cached as u64;
                }
                Response::Gen(GenOutput {
                    text,
                    finish_reason,
                    usage: usage(gen_state.output.len()),
                })
            }
            Work::Select(select) => {
                let temps = std::mem::take(&mut select.temp_seqs);
                let scores = select_scores(select);
                let index = best_choice(&scores, select);
                self.stats
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .prompt_tokens_cached += a.cached as u64;
                for temp in temps {
                    self.release_seq(temp);
                }
                Response::Select(SelectOutput {
                    index,
                    scores,
                    usage: usage(0),
                })
            }
        };
        self.release_seq(a.seq);
        if let Some(reply) = a.reply.take() {
            let _ = reply.send(Ok(response));
        }
    }

    /// The KV cache is full. Free cache entries first; then give the newest call's space back
    /// and queue it again (it restarts when others have finished); a call alone that still does
    /// not fit fails.
    fn recover_from_decode_error(&mut self, message: String) {
        if let Some(seq) = self.cache.evict_lru() {
            self.release_seq(seq);
            return;
        }
        let Some(mut a) = self.active.pop() else {
            return;
        };
        if let Work::Select(select) = &mut a.work {
            for temp in std::mem::take(&mut select.temp_seqs) {
                self.release_seq(temp);
            }
        }
        self.release_seq(a.seq);
        let Some(reply) = a.reply.take() else { return };
        if self.active.is_empty() {
            let _ = reply.send(Err(error(format!(
                "llama.cpp could not decode ({message}): the call does not fit in the KV cache of {} tokens",
                self.options.context_tokens
            ))));
            return;
        }
        self.kv_limit = Some(self.active.len());
        self.stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .preemptions += 1;
        self.waiting.push_front(Waiting {
            request: a.request,
            reply,
            tokens: a.tokens,
            received: a.received,
        });
    }
}

fn generated(a: &Active) -> usize {
    match &a.work {
        Work::Gen(g) => g.output.len(),
        Work::Select(_) => 0,
    }
}

fn log_softmax_at(logits: &[f32], index: usize) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|l| (*l as f64 - max).exp()).sum();
    logits
        .get(index)
        .map_or(f64::NEG_INFINITY, |l| *l as f64 - max - sum.ln())
}

fn build_sampler(
    model: &LlamaModel,
    params: &SamplingParams,
) -> Result<LlamaSampler, BackendError> {
    let mut chain = Vec::new();
    if let Some(grammar) = grammar_for(params).map_err(error)? {
        chain.push(
            LlamaSampler::grammar(model, &grammar, "root")
                .map_err(|e| error(format!("llama.cpp rejected the constraint grammar: {e}")))?,
        );
    }
    if params.frequency_penalty != 0.0 || params.presence_penalty != 0.0 {
        chain.push(LlamaSampler::penalties(
            model.n_vocab(),
            64,
            1.0,
            params.frequency_penalty as f32,
            params.presence_penalty as f32,
        ));
    }
    if params.temperature <= 0.0 {
        chain.push(LlamaSampler::greedy());
    } else {
        if params.top_k > 0 {
            chain.push(LlamaSampler::top_k(params.top_k as i32));
        }
        if params.top_p < 1.0 {
            chain.push(LlamaSampler::top_p(params.top_p as f32, 1));
        }
        if params.min_p > 0.0 {
            chain.push(LlamaSampler::min_p(params.min_p as f32, 1));
        }
        chain.push(LlamaSampler::temp(params.temperature as f32));
        let seed = params.seed.map_or_else(rand_seed, |s| s as u32);
        chain.push(LlamaSampler::dist(seed));
    }
    Ok(LlamaSampler::chain_simple(chain))
}

fn rand_seed() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    nanos ^ std::process::id()
}

/// Samples the next token, keeping end-of-generation tokens out while `min_tokens` (or
/// `ignore_eos`) asks for more.
fn sample(ctx: &LlamaContext, model: &LlamaModel, state: &mut GenState, index: i32) -> LlamaToken {
    let ban_eog =
        state.params.ignore_eos || (state.output.len() as u32) < state.params.min_new_tokens;
    if state.plain_greedy {
        // The common case needs no candidate array: take the most likely allowed token.
        let vocab = model.vocab();
        let best = ctx
            .get_logits_ith(index)
            .iter()
            .enumerate()
            .filter(|(t, _)| !ban_eog || !vocab.is_eog(LlamaToken(*t as i32)))
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(t, _)| t);
        return LlamaToken(best as i32);
    }
    let mut candidates = ctx.token_data_array_ith(index);
    if ban_eog {
        for data in candidates.data.iter_mut() {
            if model.vocab().is_eog(data.id()) {
                data.set_logit(f32::NEG_INFINITY);
            }
        }
    }
    candidates.apply_sampler(&mut state.sampler);
    let token = candidates
        .selected_token()
        .unwrap_or_else(|| model.vocab().eos());
    state.sampler.accept(token);
    token
}

/// Records a sampled token; true when the generation is finished.
fn accept_token(model: &LlamaModel, state: &mut GenState, token: LlamaToken) -> bool {
    let p = &state.params;
    if model.vocab().is_eog(token) || p.stop_token_ids.contains(&(token.0 as u32)) {
        return true;
    }
    state.output.push(token);
    state
        .bytes
        .extend(model.vocab().token_to_piece(token, false, None));
    if !p.stop.is_empty() {
        let text = String::from_utf8_lossy(&state.bytes);
        if p.stop
            .iter()
            .any(|s| !s.is_empty() && text.contains(s.as_str()))
        {
            return true;
        }
    }
    state.output.len() as u32 >= p.max_new_tokens
}

/// Sends the text generated since the last call to the stream, holding back an incomplete
/// UTF-8 character and any tail that may still turn out to be a stop string. What has been
/// sent is always a prefix of the final text; the VM sends the rest when the call completes.
fn stream_progress(state: &mut GenState) {
    let Some(sink) = &state.on_chunk else { return };
    let valid = match std::str::from_utf8(&state.bytes) {
        Ok(text) => text,
        Err(e) => std::str::from_utf8(&state.bytes[..e.valid_up_to()]).unwrap_or_default(),
    };
    let mut safe = valid.len();
    for stop in state.params.stop.iter().filter(|s| !s.is_empty()) {
        if let Some(at) = valid.find(stop.as_str()) {
            safe = safe.min(at);
        }
        if let Some(k) = (1..stop.len())
            .rev()
            .find(|k| stop.is_char_boundary(*k) && valid.ends_with(&stop[..*k]))
        {
            safe = safe.min(valid.len() - k);
        }
    }
    while !valid.is_char_boundary(safe) {
        safe -= 1;
    }
    if safe > state.streamed {
        sink.send(&valid[state.streamed..safe]);
        state.streamed = safe;
    }
}

/// The generated text, cut at the first stop string, and why it ended.
fn finish_text(state: &GenState) -> (String, String) {
    let text = String::from_utf8_lossy(&state.bytes).into_owned();
    let cut = state
        .params
        .stop
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min();
    match cut {
        Some(at) => (text[..at].to_string(), "stop".to_string()),
        None if state.output.len() as u32 >= state.params.max_new_tokens => {
            (text, "length".to_string())
        }
        None => (text, "stop".to_string()),
    }
}

/// Each choice's score under the select's method (higher is better).
fn select_scores(select: &SelectState) -> Vec<f64> {
    select
        .logprobs
        .iter()
        .zip(&select.unconditional)
        .map(|(lps, uncond)| choice_score(select.params.method, lps, uncond.iter().sum()))
        .collect()
}

/// The best choice; `greedy` breaks ties on the first token with the following tokens.
fn best_choice(scores: &[f64], select: &SelectState) -> usize {
    let key = |c: usize| -> Vec<f64> {
        match select.params.method {
            ChoicesMethod::Greedy => select.logprobs[c].clone(),
            _ => vec![scores[c]],
        }
    };
    (0..scores.len())
        .max_by(|a, b| {
            key(*a)
                .partial_cmp(&key(*b))
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(b.cmp(a))
        })
        .unwrap_or(0)
}
