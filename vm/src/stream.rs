//! Streaming: the events a program's state emits as it grows, the equivalent of SGLang's
//! `state.text_iter()`. Concatenating every `Text` event gives the final `state.text`.

use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum StreamEvent {
    /// Text appended to the transcript: prompt text, role markers, generated tokens.
    Text { text: String },
    /// A chat message of this role starts (its template prefix follows as `Text`).
    RoleBegin { role: String },
    /// The chat message ends (after its template suffix).
    RoleEnd { role: String },
    /// A `gen` or `select` starts filling this variable (`""` for an unnamed one).
    VarStarted { name: String },
    /// The variable is complete.
    VarFinished {
        name: String,
        value: serde_json::Value,
    },
    /// The program finished.
    Done,
    /// The program failed.
    Error { message: String },
}

/// Receives `(input index, event)` from every program of a run. Called from the VM's thread and
/// from backend threads, in order for any one program.
#[derive(Clone)]
pub struct EventSink(pub Arc<dyn Fn(usize, StreamEvent) + Send + Sync>);

impl EventSink {
    pub fn new(f: impl Fn(usize, StreamEvent) + Send + Sync + 'static) -> EventSink {
        EventSink(Arc::new(f))
    }

    pub fn emit(&self, index: usize, event: StreamEvent) {
        (self.0)(index, event)
    }
}

impl std::fmt::Debug for EventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventSink")
    }
}

/// Handed to a backend with a request: call it with each piece of generated text as it is
/// produced. The pieces must be a prefix of the final text (hold back what a stop string may
/// still cut).
#[derive(Clone)]
pub struct ChunkSink(pub Arc<dyn Fn(&str) + Send + Sync>);

impl ChunkSink {
    pub fn send(&self, chunk: &str) {
        if !chunk.is_empty() {
            (self.0)(chunk)
        }
    }
}

impl std::fmt::Debug for ChunkSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChunkSink")
    }
}
