//! llama.cpp driven directly, with no VM and no scheduler: the baseline the benchmark compares
//! the engine against. Every sequence gets its prompt in one batch, then one token per sequence
//! per decode call, greedy, for exactly `new_tokens` tokens.

use crate::engine::llama_backend;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use std::num::NonZeroU32;
use std::path::Path;
use std::time::{Duration, Instant};

pub struct DirectRun {
    pub generated_tokens: usize,
    pub elapsed: Duration,
}

/// Generates `new_tokens` tokens greedily for each prompt, all sequences in one batch.
pub fn generate_batch(
    model_path: &Path,
    prompts: &[String],
    new_tokens: usize,
    threads: i32,
) -> Result<DirectRun, String> {
    let backend = llama_backend()?;
    let model = LlamaModel::load_from_file(backend, model_path, &LlamaModelParams::default())
        .map_err(|e| format!("cannot load the model: {e}"))?;
    let vocab = model.vocab();
    let prompts: Vec<_> = prompts
        .iter()
        .map(|p| vocab.tokenize(p.as_bytes(), vocab.should_add_bos(), true))
        .collect();
    let total: usize = prompts.iter().map(|p| p.len() + new_tokens).sum();
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new((total + 64) as u32))
        .with_n_batch(512)
        .with_n_ubatch(512)
        .with_n_seq_max(prompts.len() as u32)
        .with_kv_unified(true)
        .with_n_threads(threads)
        .with_n_threads_batch(threads);
    let mut ctx = model
        .new_context(backend, params)
        .map_err(|e| format!("cannot create a context: {e}"))?;
    let started = Instant::now();
    let mut batch = LlamaBatch::new(512, 1);
    let argmax = |logits: &[f32]| {
        let best = logits
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(t, _)| t);
        llama_cpp_2::token::LlamaToken(best as i32)
    };
    // Prompts, in chunks of the batch size. A sequence's first token comes from the logits of
    // its last prompt token, read right after the chunk that held it.
    let mut next = vec![llama_cpp_2::token::LlamaToken(0); prompts.len()];
    let mut pending: Vec<(usize, usize)> = prompts
        .iter()
        .enumerate()
        .flat_map(|(s, p)| (0..p.len()).map(move |k| (s, k)))
        .collect();
    pending.reverse();
    while !pending.is_empty() {
        batch.clear();
        let mut finishing = Vec::new();
        while batch.n_tokens() < 512 {
            let Some((s, k)) = pending.pop() else { break };
            let last = k + 1 == prompts[s].len();
            batch
                .add(prompts[s][k], k as i32, &[s as i32], last)
                .map_err(|e| e.to_string())?;
            if last {
                finishing.push((s, batch.n_tokens() - 1));
            }
        }
        ctx.decode(&mut batch).map_err(|e| e.to_string())?;
        for (s, index) in finishing {
            next[s] = argmax(ctx.get_logits_ith(index));
        }
    }
    let mut positions: Vec<usize> = prompts.iter().map(Vec::len).collect();
    let mut generated = 0;
    for step in 0..new_tokens {
        batch.clear();
        for (s, token) in next.iter().enumerate() {
            batch
                .add(*token, positions[s] as i32, &[s as i32], true)
                .map_err(|e| e.to_string())?;
            positions[s] += 1;
            generated += 1;
        }
        if step + 1 == new_tokens {
            break;
        }
        ctx.decode(&mut batch).map_err(|e| e.to_string())?;
        for (s, token) in next.iter_mut().enumerate() {
            *token = argmax(ctx.get_logits_ith(s as i32));
        }
    }
    Ok(DirectRun {
        generated_tokens: generated,
        elapsed: started.elapsed(),
    })
}
