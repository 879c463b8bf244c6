//! Program states: the prompt text, chat messages and variables of one `s`, and the queue of
//! appends and calls waiting on it.
//!
//! As in SGLang's stream executor, `s += gen(...)` does not block the program: the call is
//! queued on the state and the program runs on; only reading the state (`s["x"]`, `s.text()`,
//! `fork`, `join`, the end of the program) waits for it.

use crate::backend::{
    BackendError, ChatTemplate, Message, Request, RequestKind, Response, SamplingParams,
};
use crate::stream::{ChunkSink, EventSink, StreamEvent};
use crate::value::{Str, Value};
use indexmap::IndexMap;
use sglc_compiler::bytecode::{FunctionId, Role};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

pub type StateRef = Rc<RefCell<StateData>>;

/// Where a call was made, to point errors at it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Site {
    pub function: FunctionId,
    pub ip: u32,
}

/// A `gen` or `select` waiting to run, with every parameter resolved.
#[derive(Debug)]
pub struct CallOp {
    pub name: Option<Str>,
    pub kind: RequestKind,
    pub site: Site,
}

/// One piece of a prompt fragment.
#[derive(Clone, Debug)]
pub enum Part {
    Text(Str),
    RoleBegin(Role),
    RoleEnd(Role),
    Call(Rc<CallOp>),
}

impl Part {
    pub fn describe(&self) -> String {
        match self {
            Part::Text(t) => format!("{:?}", &**t),
            Part::RoleBegin(r) => format!("{}(", r.name()),
            Part::RoleEnd(_) => ")".to_string(),
            Part::Call(op) => {
                let what = match op.kind {
                    RequestKind::Gen(_) => "gen",
                    RequestKind::Select(_) => "select",
                };
                match &op.name {
                    Some(n) => format!("{what}({:?})", &**n),
                    None => format!("{what}()"),
                }
            }
        }
    }
}

/// A failure recorded on a state: a backend error or a malformed append.
#[derive(Clone, Debug)]
pub struct StateError {
    pub message: String,
    pub site: Option<Site>,
}

/// Where a streaming state sends its events.
pub struct StateStream {
    sink: EventSink,
    index: usize,
    /// Bytes of the call in flight that the backend has streamed already.
    streamed: Arc<AtomicUsize>,
}

impl StateStream {
    pub fn new(sink: EventSink, index: usize) -> StateStream {
        StateStream {
            sink,
            index,
            streamed: Arc::default(),
        }
    }

    fn emit(&self, event: StreamEvent) {
        self.sink.emit(self.index, event);
    }

    fn text(&self, text: &str) {
        if !text.is_empty() {
            self.emit(StreamEvent::Text {
                text: text.to_string(),
            });
        }
    }

    /// A chunk sink for the backend that forwards generated text and counts it.
    fn chunk_sink(&self) -> ChunkSink {
        self.streamed.store(0, Ordering::SeqCst);
        let (sink, index, streamed) = (self.sink.clone(), self.index, self.streamed.clone());
        ChunkSink(Arc::new(move |chunk: &str| {
            streamed.fetch_add(chunk.len(), Ordering::SeqCst);
            sink.emit(
                index,
                StreamEvent::Text {
                    text: chunk.to_string(),
                },
            );
        }))
    }

    /// The part of a call's final text the backend did not stream.
    fn rest<'t>(&self, text: &'t str) -> &'t str {
        let done = self.streamed.swap(0, Ordering::SeqCst);
        text.get(done..).unwrap_or(text)
    }
}

/// Calls that became ready while the VM ran: each goes to the backend in the next batch.
#[derive(Default)]
pub struct Outbox {
    pub calls: Vec<(StateRef, Request)>,
    /// Prompts that several forks are about to continue: a backend with a server-side prefix
    /// cache can evaluate them once ahead of the branches (SGLang's fork does this).
    pub prefix_hints: Vec<Arc<str>>,
}

impl Outbox {
    pub fn push(&mut self, call: (StateRef, Request)) {
        self.calls.push(call);
    }

    pub fn is_empty(&self) -> bool {
        self.calls.is_empty() && self.prefix_hints.is_empty()
    }
}

/// What one program may still use, shared by its root state and all its forks.
#[derive(Debug)]
pub struct ProgramBudget {
    pub max_generated_tokens: Option<u64>,
    pub max_text_bytes: usize,
    /// Tokens generated so far by all the program's gen calls.
    pub generated: Cell<u64>,
    /// The program was ended (its deadline passed): answers still in flight are dropped.
    pub cancelled: Cell<bool>,
}

impl Default for ProgramBudget {
    fn default() -> Self {
        ProgramBudget {
            max_generated_tokens: None,
            max_text_bytes: usize::MAX,
            generated: Cell::new(0),
            cancelled: Cell::new(false),
        }
    }
}

impl ProgramBudget {
    pub fn new(limits: &crate::interp::Limits) -> Rc<ProgramBudget> {
        Rc::new(ProgramBudget {
            max_generated_tokens: limits.max_generated_tokens,
            max_text_bytes: limits.max_string_bytes,
            ..ProgramBudget::default()
        })
    }
}

#[derive(Default)]
pub struct StateData {
    pub text: String,
    pub messages: Vec<Message>,
    open_role: Option<(Role, usize)>,
    pub vars: IndexMap<Str, Value>,
    /// Variables generated in this state itself (not inherited from a fork parent), for `join`.
    pub generated: Vec<Str>,
    pub meta: IndexMap<Str, serde_json::Value>,
    queue: VecDeque<(Part, Site)>,
    in_flight: Option<Rc<CallOp>>,
    pub error: Option<StateError>,
    /// Program instances parked until this state is idle.
    pub waiters: Vec<usize>,
    pub parent: Option<Weak<RefCell<StateData>>>,
    /// Set on a program's root state when the run streams.
    pub stream: Option<StateStream>,
    pub budget: Rc<ProgramBudget>,
}

impl StateData {
    pub fn new() -> StateRef {
        Rc::new(RefCell::new(StateData::default()))
    }

    /// True while an append or call is queued or running.
    pub fn is_busy(&self) -> bool {
        self.in_flight.is_some() || !self.queue.is_empty()
    }

    /// A new state starting from this one's prompt and variables, as `s.fork(n)` makes.
    pub fn fork(this: &StateRef) -> StateRef {
        let parent = this.borrow();
        Rc::new(RefCell::new(StateData {
            text: parent.text.clone(),
            messages: parent.messages.clone(),
            open_role: parent.open_role,
            vars: parent.vars.clone(),
            parent: Some(Rc::downgrade(this)),
            budget: parent.budget.clone(),
            ..StateData::default()
        }))
    }
}

/// Appends a part made by the instruction at `site`: applied at once when the state is idle,
/// queued behind its pending work otherwise. A call that starts goes to `outbox`.
pub fn push_part(
    state: &StateRef,
    part: Part,
    site: Site,
    template: &ChatTemplate,
    outbox: &mut Outbox,
) {
    let mut s = state.borrow_mut();
    if s.error.is_some() {
        return;
    }
    if s.is_busy() {
        s.queue.push_back((part, site));
        return;
    }
    drop(s);
    apply(state, part, site, template, outbox);
}

impl StateData {
    /// Fails the state when its prompt text grew past the program's limit.
    fn check_text_size(&mut self, site: Site) {
        if self.text.len() > self.budget.max_text_bytes {
            self.error = Some(StateError {
                message: format!(
                    "the prompt text of {} bytes exceeds the limit of {} bytes (max_string_bytes)",
                    self.text.len(),
                    self.budget.max_text_bytes
                ),
                site: Some(site),
            });
            self.queue.clear();
        }
    }
}

fn apply(state: &StateRef, part: Part, site: Site, template: &ChatTemplate, outbox: &mut Outbox) {
    let mut s = state.borrow_mut();
    match part {
        Part::Text(text) => {
            s.text.push_str(&text);
            s.check_text_size(site);
            if let Some(stream) = &s.stream {
                stream.text(&text);
            }
        }
        Part::RoleBegin(role) => {
            if let Some((open, _)) = s.open_role {
                s.error = Some(StateError {
                    message: format!(
                        "`{}(...)` opened inside `{}(...)`",
                        role.name(),
                        open.name()
                    ),
                    site: Some(site),
                });
                return;
            }
            s.text.push_str(template.prefix(role));
            let start = s.text.len();
            s.open_role = Some((role, start));
            if let Some(stream) = &s.stream {
                stream.emit(StreamEvent::RoleBegin {
                    role: role.name().to_string(),
                });
                stream.text(template.prefix(role));
            }
        }
        Part::RoleEnd(role) => {
            if let Some((_, start)) = s.open_role.take() {
                let content = s.text[start..].to_string();
                s.messages.push(Message {
                    role: role.name().to_string(),
                    content,
                });
                s.text.push_str(template.suffix(role));
                if let Some(stream) = &s.stream {
                    stream.text(template.suffix(role));
                    stream.emit(StreamEvent::RoleEnd {
                        role: role.name().to_string(),
                    });
                }
            }
        }
        Part::Call(op) => {
            let mut kind = op.kind.clone();
            if let (RequestKind::Gen(params), Some(max)) =
                (&mut kind, s.budget.max_generated_tokens)
            {
                let left = max.saturating_sub(s.budget.generated.get());
                if left == 0 {
                    s.error = Some(StateError {
                        message: format!(
                            "the program has generated its limit of {max} tokens (max_generated_tokens)"
                        ),
                        site: Some(op.site),
                    });
                    s.queue.clear();
                    return;
                }
                // The last call gets only what is left, so the total never passes the limit.
                params.max_new_tokens = params
                    .max_new_tokens
                    .min(u32::try_from(left).unwrap_or(u32::MAX));
                params.min_new_tokens = params.min_new_tokens.min(params.max_new_tokens);
            }
            let on_chunk = s.stream.as_ref().map(|stream| {
                stream.emit(StreamEvent::VarStarted {
                    name: op.name.as_deref().unwrap_or_default().to_string(),
                });
                stream.chunk_sink()
            });
            let request = Request {
                prompt: Arc::from(s.text.as_str()),
                messages: s.messages.clone(),
                open_role: s.open_role.map(|(r, _)| r),
                kind,
                on_chunk,
            };
            s.in_flight = Some(op);
            drop(s);
            outbox.push((state.clone(), request));
        }
    }
}

/// Applies a backend's answer to the call in flight, then runs the queue on. Returns true
/// when the state became idle (its waiters can be woken).
pub fn complete(
    state: &StateRef,
    result: Result<Response, BackendError>,
    template: &ChatTemplate,
    outbox: &mut Outbox,
) -> bool {
    {
        let mut s = state.borrow_mut();
        if s.budget.cancelled.get() {
            // The program has already ended; nothing waits for this answer.
            s.in_flight = None;
            s.queue.clear();
            return false;
        }
        let Some(op) = s.in_flight.take() else {
            return !s.is_busy();
        };
        match (result, &op.kind) {
            (Ok(Response::Gen(out)), RequestKind::Gen(params)) => {
                let budget = s.budget.clone();
                budget
                    .generated
                    .set(budget.generated.get() + u64::from(out.usage.completion_tokens));
                s.text.push_str(&out.text);
                s.check_text_size(op.site);
                if let Some(stream) = &s.stream {
                    stream.text(stream.rest(&out.text));
                    stream.emit(StreamEvent::VarFinished {
                        name: op.name.as_deref().unwrap_or_default().to_string(),
                        value: typed_value(&out.text, params).to_json(),
                    });
                }
                if let Some(name) = &op.name {
                    let value = typed_value(&out.text, params);
                    let meta = serde_json::json!({
                        "finish_reason": out.finish_reason,
                        "prompt_tokens": out.usage.prompt_tokens,
                        "cached_tokens": out.usage.cached_tokens,
                        "completion_tokens": out.usage.completion_tokens,
                        "latency_ms": out.usage.latency_ms,
                    });
                    s.vars.insert(name.clone(), value);
                    s.generated.push(name.clone());
                    s.meta.insert(name.clone(), meta);
                }
            }
            (Ok(Response::Select(out)), RequestKind::Select(params)) => {
                let Some(choice) = params.choices.get(out.index) else {
                    s.error = Some(StateError {
                        message: format!(
                            "the backend chose choice {} of {}",
                            out.index,
                            params.choices.len()
                        ),
                        site: Some(op.site),
                    });
                    s.queue.clear();
                    return true;
                };
                s.text.push_str(choice);
                if let Some(stream) = &s.stream {
                    stream.text(choice);
                    stream.emit(StreamEvent::VarFinished {
                        name: op.name.as_deref().unwrap_or_default().to_string(),
                        value: serde_json::Value::String(choice.clone()),
                    });
                }
                if let Some(name) = &op.name {
                    let meta = serde_json::json!({
                        "choices": params.choices,
                        "scores": out.scores,
                        "method": params.method,
                        "prompt_tokens": out.usage.prompt_tokens,
                        "cached_tokens": out.usage.cached_tokens,
                        "latency_ms": out.usage.latency_ms,
                    });
                    s.vars.insert(name.clone(), Value::str(choice));
                    s.generated.push(name.clone());
                    s.meta.insert(name.clone(), meta);
                }
            }
            (Ok(_), _) => {
                s.error = Some(StateError {
                    message: "the backend answered a different kind of call".to_string(),
                    site: Some(op.site),
                });
            }
            (Err(e), _) => {
                s.error = Some(StateError {
                    message: e.to_string(),
                    site: Some(op.site),
                });
            }
        }
        if s.error.is_some() {
            s.queue.clear();
            return true;
        }
    }
    loop {
        let next = {
            let mut s = state.borrow_mut();
            if s.in_flight.is_some() {
                return false;
            }
            s.queue.pop_front()
        };
        match next {
            Some((part, site)) => apply(state, part, site, template, outbox),
            None => return true,
        }
    }
}

/// `dtype` turns a generated string into an int, float or bool where it parses.
fn typed_value(text: &str, params: &SamplingParams) -> Value {
    let trimmed = text.trim();
    match params.dtype.as_deref() {
        Some("int") => trimmed
            .parse()
            .map_or_else(|_| Value::str(text), Value::Int),
        Some("float") => trimmed
            .parse()
            .map_or_else(|_| Value::str(text), Value::Float),
        Some("bool") => match trimmed.to_ascii_lowercase().as_str() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => Value::str(text),
        },
        _ => Value::str(text),
    }
}
