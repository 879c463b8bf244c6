//! The scheduler: runs many program instances on one thread, collects the gen/select calls they
//! make into batches for the backend, and resumes each instance when what it waits for is done.
//!
//! **Architecture Invariant:** a program instance is a small object in a slab (frames, a value
//! stack, its states); no OS thread or tokio task per program or per fork branch. The only
//! futures are the backend's batch calls.

use crate::backend::{Backend, BackendError, Message, Request, Response};
use crate::error::RuntimeError;
use crate::interp::{Env, GenDefaults, Halt, Instance, Limits, Linked, state_failure};
use crate::native::Natives;
use crate::state::{self, Outbox, StateRef};
use crate::value::Value;
use futures::FutureExt;
use futures::stream::{FuturesUnordered, StreamExt};
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use sglc_compiler::bytecode::{FunctionId, Program};
use std::collections::VecDeque;
use std::sync::Arc;

/// How a run or batch runs: sampling defaults, limits and how many programs run at once.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunConfig {
    pub defaults: GenDefaults,
    pub limits: Limits,
    /// Programs in flight at once; `None` lets the backend choose.
    pub concurrency: Option<usize>,
    /// Requests per backend call; `None` uses the backend's maximum.
    pub max_batch: Option<usize>,
    /// Receives each program's stream of events, when set.
    #[serde(skip)]
    pub events: Option<crate::stream::EventSink>,
    /// When hot functions are compiled to machine code.
    #[serde(default)]
    pub jit: crate::jit_options::JitOptions,
}

impl RunConfig {
    pub fn with_temperature(mut self, temperature: f64) -> Self {
        self.defaults.temperature = temperature;
        self
    }

    pub fn with_max_new_tokens(mut self, max_new_tokens: u32) -> Self {
        self.defaults.max_new_tokens = max_new_tokens;
        self
    }

    pub fn with_concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = Some(concurrency);
        self
    }

    /// The limits each program runs under (`Limits::default()` unless set).
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Each program's wall-clock deadline, waiting for the model included.
    pub fn with_deadline(mut self, deadline: std::time::Duration) -> Self {
        self.limits.deadline = Some(deadline);
        self
    }
}

/// The finished state of one program: what SGLang's `ProgramState` exposes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProgramState {
    pub function: String,
    /// What the function returned (`none` when it returned nothing).
    pub return_value: serde_json::Value,
    /// Every variable on the root state, in the order they were first set.
    pub variables: IndexMap<String, serde_json::Value>,
    /// The whole prompt and generated text.
    pub text: String,
    pub messages: Vec<Message>,
    /// Per-variable meta info: token counts, finish reason, select scores.
    pub meta: IndexMap<String, serde_json::Value>,
    /// Lines the program printed.
    pub output: Vec<String>,
}

impl std::ops::Index<&str> for ProgramState {
    type Output = serde_json::Value;

    /// `state["summary"]`; `Null` for a variable that was never set.
    fn index(&self, name: &str) -> &serde_json::Value {
        static NULL: serde_json::Value = serde_json::Value::Null;
        self.variables.get(name).unwrap_or(&NULL)
    }
}

impl ProgramState {
    /// The whole transcript: prompt and generated text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// A variable as a string, when it is one.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.variables.get(name).and_then(|v| v.as_str())
    }
}

pub type ProgramResult = Result<ProgramState, RuntimeError>;

/// Binds a JSON argument object to an entry function's parameters. The first parameter gets
/// the state when the function is a program or when the arguments do not name it.
pub fn bind_arguments(
    program: &Program,
    function: FunctionId,
    args: &serde_json::Map<String, serde_json::Value>,
) -> Result<Vec<Value>, String> {
    let f = &program.functions[function as usize];
    let takes_state = f
        .params
        .first()
        .is_some_and(|first| f.is_program || !args.contains_key(first));
    let value_params = &f.params[usize::from(takes_state)..];
    let mut values = Vec::with_capacity(value_params.len());
    let mut missing = Vec::new();
    for name in value_params {
        match args.get(name) {
            Some(v) => values.push(Value::from_json(v)),
            None => missing.push(name.as_str()),
        }
    }
    if !missing.is_empty() {
        return Err(format!(
            "missing argument{} {} for `{}`",
            if missing.len() > 1 { "s" } else { "" },
            missing
                .iter()
                .map(|m| format!("`{m}`"))
                .collect::<Vec<_>>()
                .join(", "),
            f.name
        ));
    }
    if let Some(extra) = args.keys().find(|k| !value_params.contains(k)) {
        return Err(format!(
            "`{}` has no parameter `{extra}` (parameters: {})",
            f.name,
            value_params.join(", ")
        ));
    }
    Ok(values)
}

struct Slot {
    index: usize,
    instance: Instance,
    /// Set once the entry function returned; the program ends when its states are idle.
    returned: Option<Value>,
}

/// One call in flight, with the state its answer goes to (`None` for a prefix hint).
type CallInFlight =
    futures::future::LocalBoxFuture<'static, Option<(StateRef, Result<Response, BackendError>)>>;

/// One program's arguments, or why its input could not be read.
pub type InputArgs = Result<serde_json::Map<String, serde_json::Value>, String>;

/// What an [`InputSource`] has when the scheduler has room for another program.
#[derive(Debug)]
pub enum NextInput {
    /// The next program's arguments; it gets the next input index (0, 1, 2, ...).
    Ready(InputArgs),
    /// Nothing now (inputs still arriving, or the host holds them back); ask again soon.
    NotYet,
    /// No more inputs: the batch ends when the programs in flight finish.
    Exhausted,
}

/// Where a batch's inputs come from. Every iterator of [`InputArgs`] is one; hosts that read
/// inputs lazily, apply backpressure or stop early (Ctrl-C) implement it themselves.
pub trait InputSource {
    fn next_input(&mut self) -> NextInput;
}

impl<I: Iterator<Item = InputArgs>> InputSource for I {
    fn next_input(&mut self) -> NextInput {
        match self.next() {
            Some(args) => NextInput::Ready(args),
            None => NextInput::Exhausted,
        }
    }
}

/// How long the scheduler waits before asking an input source that said `NotYet` again, when
/// no backend answer arrives first.
const INPUT_POLL: std::time::Duration = std::time::Duration::from_millis(2);

/// Runs `function` once per input, calling `on_done(input_index, result)` as each finishes.
/// Results arrive in completion order; the index says which input each belongs to.
pub async fn run_batch(
    program: &Program,
    natives: &Natives,
    backend: &Arc<dyn Backend>,
    function: FunctionId,
    mut inputs: impl InputSource,
    config: &RunConfig,
    mut on_done: impl FnMut(usize, ProgramResult),
) {
    let mut next_index = 0usize;
    let mut linked = match Linked::new(program, natives) {
        Ok(linked) => linked,
        Err(error) => {
            fail_all(&mut inputs, &error, &mut on_done);
            return;
        }
    };
    let info = backend.info();
    let template = info.chat_template.clone();
    let concurrency = config
        .concurrency
        .unwrap_or(info.default_concurrency)
        .max(1);
    let max_batch = config.max_batch.unwrap_or(info.max_batch).max(1);
    let mut outbox = Outbox::default();

    // Constants are computed once per batch, before any program runs.
    if let Err(error) = compute_globals(&mut linked, &template, config) {
        fail_all(&mut inputs, &error, &mut on_done);
        return;
    }
    #[cfg(feature = "jit")]
    if config.jit.mode != crate::jit_options::JitMode::Off {
        // Without a JIT (an unsupported machine) everything is interpreted, as with `off`.
        linked.jit =
            crate::jit::Jit::new(program, linked.natives_table, config.jit, &config.limits)
                .ok()
                .map(std::cell::RefCell::new);
    }

    let mut slots: Vec<Option<Slot>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut runnable: VecDeque<usize> = VecDeque::new();
    let mut active = 0usize;
    let mut inputs_done = false;
    let mut in_flight: FuturesUnordered<CallInFlight> = FuturesUnordered::new();
    // Programs with a deadline, by slot and input index, in the order they started: every
    // program gets the same time, so this is also the order their deadlines fall in.
    let mut deadlines: VecDeque<(usize, usize)> = VecDeque::new();

    loop {
        // Admit new programs up to the concurrency bound.
        let mut waiting_for_input = false;
        while !inputs_done && active < concurrency {
            let args = match inputs.next_input() {
                NextInput::Ready(args) => args,
                NextInput::NotYet => {
                    waiting_for_input = true;
                    break;
                }
                NextInput::Exhausted => {
                    inputs_done = true;
                    break;
                }
            };
            let index = next_index;
            next_index += 1;
            match args.and_then(|args| bind_arguments(program, function, &args)) {
                Ok(values) => {
                    let mut instance = Instance::new(program, function, values);
                    instance.start_clock(&config.limits);
                    if let Some(sink) = &config.events {
                        instance.root.borrow_mut().stream =
                            Some(state::StateStream::new(sink.clone(), index));
                    }
                    let slot = Slot {
                        index,
                        instance,
                        returned: None,
                    };
                    let id = match free.pop() {
                        Some(id) => {
                            slots[id] = Some(slot);
                            id
                        }
                        None => {
                            slots.push(Some(slot));
                            slots.len() - 1
                        }
                    };
                    active += 1;
                    runnable.push_back(id);
                    if instance_deadline(&slots[id]).is_some() {
                        deadlines.push_back((id, index));
                    }
                }
                Err(message) => finish(
                    config,
                    index,
                    Err(RuntimeError::without_location(message)),
                    &mut on_done,
                ),
            }
        }

        // Run everything that can run, once: a program that used up its slice goes to the
        // back for the next pass, after the calls of the others have gone out.
        for _ in 0..runnable.len() {
            let Some(id) = runnable.pop_front() else {
                break;
            };
            let Some(slot) = slots[id].as_mut() else {
                continue;
            };
            let halt = if slot.returned.is_some() {
                None
            } else {
                let mut env = Env {
                    linked: &linked,
                    template: &template,
                    defaults: &config.defaults,
                    limits: &config.limits,
                    outbox: &mut outbox,
                    share_time: active > 1,
                };
                Some(slot.instance.run(&mut env))
            };
            let outcome = match halt {
                None => finish_or_wait(program, id, slot),
                Some(Halt::Done(value)) => {
                    slot.returned = Some(value);
                    finish_or_wait(program, id, slot)
                }
                Some(Halt::Wait(state)) => {
                    state.borrow_mut().waiters.push(id);
                    None
                }
                Some(Halt::Yield) => {
                    runnable.push_back(id);
                    None
                }
                Some(Halt::Error(error)) => Some(Err(error)),
            };
            if let Some(result) = outcome {
                let mut slot = slots[id].take().expect("slot is live");
                // What it printed before failing is kept with the error.
                let result = result.map_err(|mut error| {
                    error.output = std::mem::take(&mut slot.instance.output);
                    error
                });
                free.push(id);
                active -= 1;
                finish(config, slot.index, result, &mut on_done);
            }
        }

        // Send every ready call, in batches.
        for prompt in std::mem::take(&mut outbox.prefix_hints) {
            if let Some(hint) = backend.cache_prefix(prompt) {
                in_flight.push(hint.map(|_| None).boxed_local());
            }
        }
        if !outbox.calls.is_empty() {
            let ready = std::mem::take(&mut outbox.calls);
            let mut ready = ready.into_iter().peekable();
            while ready.peek().is_some() {
                let (states, requests): (Vec<StateRef>, Vec<Request>) =
                    ready.by_ref().take(max_batch).unzip();
                let count = requests.len();
                let mut calls = backend.execute(requests).into_iter();
                for state in states {
                    let call = calls.next().unwrap_or_else(|| {
                        let error = BackendError {
                            backend: info.name.clone(),
                            message: format!(
                                "returned fewer answers than the {count} requests sent"
                            ),
                        };
                        futures::future::ready(Err(error)).boxed()
                    });
                    in_flight.push(call.map(move |result| Some((state, result))).boxed_local());
                }
            }
        }

        // End the programs whose deadline passed while they waited for the backend.
        while let Some(&(id, index)) = deadlines.front() {
            let Some(slot) = slots[id].as_ref().filter(|slot| slot.index == index) else {
                deadlines.pop_front();
                continue;
            };
            let Some(mut error) = slot.instance.check_deadline(program, &config.limits) else {
                break;
            };
            deadlines.pop_front();
            let mut slot = slots[id].take().expect("slot is live");
            error.output = std::mem::take(&mut slot.instance.output);
            slot.instance.cancel();
            runnable.retain(|&r| r != id);
            free.push(id);
            active -= 1;
            finish(config, slot.index, Err(error), &mut on_done);
        }
        let next_deadline = deadlines
            .front()
            .and_then(|&(id, _)| instance_deadline(&slots[id]));

        if active == 0 && inputs_done {
            // Whatever is still in flight belongs to programs that were ended; dropping the
            // calls cancels them.
            break;
        }

        if !runnable.is_empty() {
            // Programs are ready to run on: take the answers already there without waiting
            // (after letting the runtime's IO driver see the sockets).
            if !in_flight.is_empty() {
                tokio::task::yield_now().await;
                let mut finished = Vec::new();
                while let Some(Some(done)) = in_flight.next().now_or_never() {
                    finished.push(done);
                }
                apply_answers(finished, &template, &mut outbox, &mut runnable);
            }
            continue;
        }

        if in_flight.is_empty() {
            if waiting_for_input {
                tokio::time::sleep(INPUT_POLL).await;
                continue;
            }
            if runnable.is_empty() && (inputs_done || active >= concurrency) {
                if active == 0 && inputs_done {
                    break;
                }
                if active > 0 {
                    // Nothing in flight and nothing runnable, yet programs wait: a bug, not a
                    // user error. Fail them rather than hang.
                    for slot in slots.iter_mut() {
                        if let Some(slot) = slot.take() {
                            on_done(
                                slot.index,
                                Err(RuntimeError::without_location(
                                    "internal error: program waits on nothing",
                                )),
                            );
                        }
                    }
                    break;
                }
            }
            continue;
        }

        // Wait for one answer, then take every other answer that is already there, so the
        // next round of calls goes out as one batch.
        let wake_at = match (waiting_for_input, next_deadline) {
            (true, Some(at)) => Some(at.min(std::time::Instant::now() + INPUT_POLL)),
            (true, None) => Some(std::time::Instant::now() + INPUT_POLL),
            (false, at) => at,
        };
        let first = match wake_at {
            Some(at) => match tokio::time::timeout_at(at.into(), in_flight.next()).await {
                Ok(first) => first,
                Err(_) => continue,
            },
            None => in_flight.next().await,
        };
        let mut finished = vec![first.expect("a call is in flight")];
        while let Some(Some(done)) = in_flight.next().now_or_never() {
            finished.push(done);
        }
        apply_answers(finished, &template, &mut outbox, &mut runnable);
    }
}

/// Hands the backend's answers to their states and wakes the programs that waited on them.
fn apply_answers(
    finished: Vec<Option<(StateRef, Result<crate::backend::Response, BackendError>)>>,
    template: &crate::backend::ChatTemplate,
    outbox: &mut Outbox,
    runnable: &mut VecDeque<usize>,
) {
    for (state, result) in finished.into_iter().flatten() {
        if state::complete(&state, result, template, outbox) {
            runnable.extend(std::mem::take(&mut state.borrow_mut().waiters));
        }
    }
}

/// Hands a finished program's result to the caller, after its last stream event.
fn finish(
    config: &RunConfig,
    index: usize,
    result: ProgramResult,
    on_done: &mut impl FnMut(usize, ProgramResult),
) {
    if let Some(sink) = &config.events {
        let event = match &result {
            Ok(_) => crate::stream::StreamEvent::Done,
            Err(e) => crate::stream::StreamEvent::Error {
                message: e.message.clone(),
            },
        };
        sink.emit(index, event);
    }
    on_done(index, result);
}

fn instance_deadline(slot: &Option<Slot>) -> Option<std::time::Instant> {
    slot.as_ref().and_then(|slot| slot.instance.deadline_at)
}

/// Ends every remaining input with `error` (the program could not start at all).
fn fail_all(
    inputs: &mut impl InputSource,
    error: &RuntimeError,
    on_done: &mut impl FnMut(usize, ProgramResult),
) {
    let mut index = 0;
    loop {
        match inputs.next_input() {
            NextInput::Ready(_) => {
                on_done(index, Err(error.clone()));
                index += 1;
            }
            NextInput::NotYet => std::thread::sleep(INPUT_POLL),
            NextInput::Exhausted => return,
        }
    }
}

/// The program returned: it is finished when all its states are idle. Parks it on the first
/// busy state, or returns its result.
fn finish_or_wait(program: &Program, id: usize, slot: &mut Slot) -> Option<ProgramResult> {
    for state in &slot.instance.states {
        if state.borrow().is_busy() {
            state.borrow_mut().waiters.push(id);
            return None;
        }
    }
    for state in &slot.instance.states {
        if let Some(error) = state_failure(program, state) {
            return Some(Err(error));
        }
    }
    let root = slot.instance.root.borrow();
    let function = &program.functions[slot.instance.entry_function() as usize];
    Some(Ok(ProgramState {
        function: function.name.clone(),
        return_value: slot.returned.take().unwrap_or_default().to_json(),
        variables: root
            .vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_json()))
            .collect(),
        text: root.text.clone(),
        messages: root.messages.clone(),
        meta: root
            .meta
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        output: std::mem::take(&mut slot.instance.output),
    }))
}

/// Runs the program's init function, which computes the top-level constants.
pub(crate) fn compute_globals(
    linked: &mut Linked,
    template: &crate::backend::ChatTemplate,
    config: &RunConfig,
) -> Result<(), RuntimeError> {
    let program = linked.program;
    let mut instance = Instance::new(program, program.init, Vec::new());
    let mut outbox = Outbox::default();
    let mut limits = config.limits.clone();
    limits.slice = u32::MAX;
    let globals = {
        let mut env = Env {
            linked,
            template,
            defaults: &config.defaults,
            limits: &limits,
            outbox: &mut outbox,
            share_time: false,
        };
        instance.run_init(&mut env)?
    };
    linked.globals = globals;
    Ok(())
}
