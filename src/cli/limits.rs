//! `--max-*` and `--deadline`: the limits the host puts on each program, as flags.

use clap::Args;
use sglc::Limits;
use std::time::Duration;

/// Each flag overrides one field of `Limits::default()`; `none` removes a limit.
#[derive(Args, Debug, Clone, Default)]
#[command(next_help_heading = "Limits (per program; exceeding one ends that program only)")]
pub struct LimitArgs {
    /// Wall-clock time from a program's start, waiting for the model included [default: 10m]
    #[arg(long, value_name = "DURATION|none", value_parser = parse_deadline)]
    deadline: Option<Removable<Duration>>,
    /// Instructions a program may run [default: 10000000000]
    #[arg(long, value_name = "N|none", value_parser = parse_count)]
    max_instructions: Option<Removable<u64>>,
    /// Tokens the model may generate for one program, over all its gen calls [default: 1000000]
    #[arg(long, value_name = "N|none", value_parser = parse_count)]
    max_generated_tokens: Option<Removable<u64>>,
    /// Bytes in any one string, the prompt text included [default: 67108864]
    #[arg(long, value_name = "BYTES")]
    max_string_bytes: Option<usize>,
    /// Items in any one list or map [default: 4194304]
    #[arg(long, value_name = "N")]
    max_collection_len: Option<usize>,
    /// Nested calls [default: 512]
    #[arg(long, value_name = "N")]
    max_call_depth: Option<usize>,
    /// Fork branches a program may create in all [default: 1024]
    #[arg(long, value_name = "N")]
    max_forks: Option<usize>,
}

impl LimitArgs {
    pub fn apply(&self, limits: &mut Limits) {
        if let Some(Removable(deadline)) = self.deadline {
            limits.deadline = deadline;
        }
        if let Some(Removable(max)) = self.max_instructions {
            limits.max_instructions = max;
        }
        if let Some(Removable(max)) = self.max_generated_tokens {
            limits.max_generated_tokens = max;
        }
        if let Some(max) = self.max_string_bytes {
            limits.max_string_bytes = max;
        }
        if let Some(max) = self.max_collection_len {
            limits.max_collection_len = max;
        }
        if let Some(max) = self.max_call_depth {
            limits.max_call_depth = max.max(1);
        }
        if let Some(max) = self.max_forks {
            limits.max_forks = max;
        }
    }
}

/// A limit's value, or `None` for `none` (no limit).
#[derive(Debug, Clone, Copy)]
struct Removable<T>(Option<T>);

fn parse_deadline(text: &str) -> Result<Removable<Duration>, String> {
    if text == "none" {
        return Ok(Removable(None));
    }
    humantime::parse_duration(text)
        .map(|d| Removable(Some(d)))
        .map_err(|e| format!("{e} (write e.g. `30s`, `500ms`, `10m` or `none`)"))
}

fn parse_count(text: &str) -> Result<Removable<u64>, String> {
    if text == "none" {
        return Ok(Removable(None));
    }
    text.replace('_', "")
        .parse()
        .map(|n| Removable(Some(n)))
        .map_err(|_| format!("expected a whole number or `none`, not `{text}`"))
}
