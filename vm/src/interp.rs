//! The interpreter: runs one program instance until it finishes, must wait for a state, or
//! uses up its slice of instructions. One `match` dispatches to one small `op_*` method per
//! instruction.
//!
//! **Architecture Invariant:** the interpreter never blocks and never calls a backend. A call
//! becomes a request in the outbox; a read of a busy state halts with `Halt::Wait` and the same
//! instruction runs again when the scheduler resumes the instance.

use crate::backend::{ChatTemplate, ChoicesMethod, RequestKind, SamplingParams, SelectParams};
use crate::error::{RuntimeError, TraceFrame};
use crate::native::{MethodFn, NativeCtx, NativeFn, Natives};
use crate::state::{self, CallOp, Outbox, Part, Site, StateData, StateRef};
use crate::value::{Dict, Iter, Str, Value, dict_index_of, drop_value};
use serde::{Deserialize, Serialize};
use sglc_compiler::bytecode::{
    CallSpec, Constant, FunctionId, GenParam, Instr, NO_KEYWORDS, NO_STORE, PrimitiveKind, Program,
};
use std::cell::RefCell;
use std::rc::Rc;

/// Run-level defaults for parameters a `gen` or `select` leaves unset (SGLang's `run(...)`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenDefaults {
    pub max_new_tokens: u32,
    pub temperature: f64,
    pub top_p: f64,
    pub top_k: i64,
    pub min_p: f64,
    pub frequency_penalty: f64,
    pub presence_penalty: f64,
    pub seed: Option<u64>,
}

impl Default for GenDefaults {
    fn default() -> Self {
        GenDefaults {
            max_new_tokens: 128,
            temperature: 1.0,
            top_p: 1.0,
            top_k: -1,
            min_p: 0.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            seed: None,
        }
    }
}

/// Bounds on what one program instance may do. Exceeding one ends that program (only that
/// one) with an error that names the limit and points at the instruction that crossed it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    pub max_call_depth: usize,
    /// Fork branches one program may create in all.
    pub max_forks: usize,
    /// Instructions one program may run; a loop iteration of compiled code counts as one.
    pub max_instructions: Option<u64>,
    /// Bytes in any one string, the prompt text of a state included.
    pub max_string_bytes: usize,
    /// Items in any one list or map.
    pub max_collection_len: usize,
    /// Tokens the backend may generate for one program, over all its gen calls.
    pub max_generated_tokens: Option<u64>,
    /// Wall-clock time one program may take from its start, waiting for the backend included.
    pub deadline: Option<std::time::Duration>,
    /// Instructions an instance runs before others get a turn.
    pub slice: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_call_depth: 512,
            max_forks: 1024,
            max_instructions: Some(10_000_000_000),
            max_string_bytes: 64 << 20,
            max_collection_len: 4 << 20,
            max_generated_tokens: Some(1_000_000),
            deadline: Some(std::time::Duration::from_secs(600)),
            slice: 20_000,
        }
    }
}

impl Limits {
    /// Checks a string length before it is allocated.
    pub fn fits_string(&self, bytes: usize) -> Result<(), String> {
        if bytes > self.max_string_bytes {
            return Err(format!(
                "a string of {bytes} bytes would exceed the limit of {} bytes (max_string_bytes)",
                self.max_string_bytes
            ));
        }
        Ok(())
    }

    /// Checks a list or map length before it is allocated.
    pub fn fits_items(&self, items: usize) -> Result<(), String> {
        if items > self.max_collection_len {
            return Err(format!(
                "a collection of {items} items would exceed the limit of {} items (max_collection_len)",
                self.max_collection_len
            ));
        }
        Ok(())
    }

    /// The error for a value that grew past its limit, or `None` when it is within bounds.
    #[inline]
    pub fn oversized(&self, value: &Value) -> Option<String> {
        let within = match value {
            Value::Str(s) => s.len() <= self.max_string_bytes,
            Value::List(l) => l.borrow().len() <= self.max_collection_len,
            Value::Map(m) => m.borrow().len() <= self.max_collection_len,
            _ => true,
        };
        if within {
            None
        } else {
            self.oversized_message(value)
        }
    }

    #[cold]
    #[inline(never)]
    fn oversized_message(&self, value: &Value) -> Option<String> {
        let (what, size, limit, unit, name) = match value {
            Value::Str(s) => (
                "string",
                s.len(),
                self.max_string_bytes,
                "bytes",
                "max_string_bytes",
            ),
            Value::List(l) => (
                "list",
                l.borrow().len(),
                self.max_collection_len,
                "items",
                "max_collection_len",
            ),
            Value::Map(m) => (
                "map",
                m.borrow().len(),
                self.max_collection_len,
                "items",
                "max_collection_len",
            ),
            _ => return None,
        };
        (size > limit).then(|| {
            format!("a {what} of {size} {unit} exceeds the limit of {limit} {unit} ({name})")
        })
    }
}

/// A program linked against its natives, with constants turned into values.
pub struct Linked<'p> {
    pub program: &'p Program,
    natives: Vec<NativeFn>,
    constants: Vec<Value>,
    /// What the interpreter runs: each function's code with common sequences fused
    /// (`crate::quicken`); same length and indices as the program's.
    code: Vec<Vec<Instr>>,
    /// `methods[c]`: for string constant `c` used as a method name, each receiver type with
    /// such a method and the method, resolved once instead of by two hash lookups per call.
    methods: Vec<Vec<(&'static str, MethodFn)>>,
    pub globals: Vec<Value>,
    pub natives_table: &'p Natives,
    /// Compiled code for this batch's hot functions, when the JIT is on.
    #[cfg(feature = "jit")]
    pub jit: Option<std::cell::RefCell<crate::jit::Jit>>,
}

impl<'p> Linked<'p> {
    pub fn new(
        program: &'p Program,
        natives_table: &'p Natives,
    ) -> Result<Linked<'p>, RuntimeError> {
        let natives = program
            .natives
            .iter()
            .map(|name| {
                natives_table
                    .function(name)
                    .map(|f| f.call.clone())
                    .ok_or_else(|| {
                        RuntimeError::without_location(format!(
                            "the host provides no function `{name}`"
                        ))
                    })
            })
            .collect::<Result<_, _>>()?;
        let constants = program
            .constants
            .iter()
            .map(|c| match c {
                Constant::Int(n) => Value::Int(*n),
                Constant::Float(x) => Value::Float(*x),
                Constant::Str(s) => Value::str(s),
            })
            .collect();
        let range = program
            .natives
            .iter()
            .position(|name| name == "range")
            .map(|id| id as u32);
        let method_names: std::collections::HashSet<u32> = program
            .functions
            .iter()
            .flat_map(|f| &f.code)
            .filter_map(|instr| match instr {
                Instr::CallMethod { name, .. } => Some(*name),
                _ => None,
            })
            .collect();
        let methods = program
            .constants
            .iter()
            .enumerate()
            .map(|(i, c)| match c {
                Constant::Str(name) if method_names.contains(&(i as u32)) => {
                    natives_table.methods_named(name)
                }
                _ => Vec::new(),
            })
            .collect();
        Ok(Linked {
            program,
            natives,
            constants,
            methods,
            code: program
                .functions
                .iter()
                .map(|f| crate::quicken::quicken(&f.code, range))
                .collect(),
            globals: vec![Value::None; program.globals.len()],
            natives_table,
            #[cfg(feature = "jit")]
            jit: None,
        })
    }
}

/// Everything an instance needs from outside while it runs.
pub struct Env<'a, 'p> {
    pub linked: &'a Linked<'p>,
    pub template: &'a ChatTemplate,
    pub defaults: &'a GenDefaults,
    pub limits: &'a Limits,
    pub outbox: &'a mut Outbox,
    /// Other programs of the batch are in flight: long-running compiled code should hand
    /// back now and then so they (and the answers they wait for) get their turn.
    pub share_time: bool,
}

struct Frame {
    function: FunctionId,
    ip: u32,
    base: u32,
    /// `CallValue` leaves the callee below the arguments; drop it on return.
    drop_callee: bool,
}

/// Why `run` stopped.
pub enum Halt {
    /// The entry function returned this value.
    Done(Value),
    /// The instance reads this state, which is busy; resume it when the state is idle.
    Wait(StateRef),
    /// The instruction slice is used up; run it again later.
    Yield,
    Error(RuntimeError),
}

pub(crate) enum Flow {
    Wait(StateRef),
    /// Compiled code used up its fuel: let other programs run (the frames are consistent).
    #[cfg_attr(not(feature = "jit"), allow(dead_code))]
    Yield,
    Done(Value),
    Error(String, Option<String>),
    /// A state this instance reads failed; the error points at the call that failed.
    Failed(StateRef),
}

type OpResult = Result<(), Flow>;

fn fail<T>(message: impl Into<String>) -> Result<T, Flow> {
    Err(Flow::Error(message.into(), None))
}

fn fail_with_help<T>(message: impl Into<String>, help: impl Into<String>) -> Result<T, Flow> {
    Err(Flow::Error(message.into(), Some(help.into())))
}

/// Pushes without holding the value in memory across a possible reallocation: growth is a
/// cold call, so the common path writes the value straight from registers.
#[inline(always)]
fn push_value(stack: &mut Vec<Value>, v: Value) {
    if stack.len() == stack.capacity() {
        grow(stack);
    }
    // SAFETY: capacity exceeds length (checked above); the slot is written before it counts.
    unsafe {
        stack.as_mut_ptr().add(stack.len()).write(v);
        stack.set_len(stack.len() + 1);
    }
}

#[cold]
#[inline(never)]
fn grow(stack: &mut Vec<Value>) {
    stack.reserve(stack.len().max(64));
}

/// Replaces the top two values of the stack with `result`, when both are ints or floats: they
/// own nothing, so no destructor runs, and `result` is written straight into its slot (dropping
/// first made the compiler build it in memory a byte and a word at a time and then copy it,
/// which stalls the load that follows).
#[inline(always)]
fn replace_two_scalars(stack: &mut Vec<Value>, result: Value) {
    let n = stack.len();
    debug_assert!(n >= 2);
    debug_assert!(
        stack[n - 2..]
            .iter()
            .all(|v| matches!(v, Value::Int(_) | Value::Float(_)))
    );
    // SAFETY: callers checked that there are two values and that both are ints or floats,
    // which have no destructor, so forgetting them leaks nothing.
    unsafe {
        stack.set_len(n - 1);
        std::ptr::write(stack.as_mut_ptr().add(n - 2), result);
    }
}

/// An int or float operand as a float (`binary_div` takes only these two).
#[inline(always)]
fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Int(n) => Some(*n as f64),
        Value::Float(x) => Some(*x),
        _ => None,
    }
}

/// One running program: its call frames, value stack and the states it created.
pub struct Instance {
    frames: Vec<Frame>,
    stack: Vec<Value>,
    /// The state passed to the entry function.
    pub root: StateRef,
    /// Every state this instance created (the root and all forks); the program is finished
    /// only when all are idle.
    pub states: Vec<StateRef>,
    /// Lines printed by `print`.
    pub output: Vec<String>,
    entry: FunctionId,
    /// Where `StoreGlobal` writes; only the init function has it.
    globals_out: Option<Vec<Value>>,
    /// Instructions run so far, for `Limits::max_instructions`.
    executed: u64,
    /// When the program must have finished, for `Limits::deadline`.
    pub deadline_at: Option<std::time::Instant>,
}

impl Instance {
    /// Prepares a call of `function` with `args`; the state is prepended when it is a program.
    /// Prepares a call of `function`. `args` are the values after the state; the state goes
    /// first when the function takes one more parameter than `args` holds.
    pub fn new(program: &Program, function: FunctionId, args: Vec<Value>) -> Instance {
        let root = StateData::new();
        let f = &program.functions[function as usize];
        let mut stack = Vec::with_capacity(f.local_count as usize + 8);
        if args.len() < f.params.len() {
            stack.push(Value::State(root.clone()));
        }
        stack.extend(args);
        stack.resize(f.local_count as usize, Value::None);
        Instance {
            frames: vec![Frame {
                function,
                ip: 0,
                base: 0,
                drop_callee: false,
            }],
            stack,
            states: vec![root.clone()],
            root,
            output: Vec::new(),
            entry: function,
            globals_out: None,
            executed: 0,
            deadline_at: None,
        }
    }

    /// Applies the host's limits to a program about to start.
    pub fn start_clock(&mut self, limits: &Limits) {
        self.deadline_at = limits
            .deadline
            .and_then(|d| std::time::Instant::now().checked_add(d));
        self.root.borrow_mut().budget = state::ProgramBudget::new(limits);
    }

    /// Ends the program from outside (its deadline passed while it waited): answers still in
    /// flight for its states are dropped, and nothing waits on them.
    pub fn cancel(&self) {
        for state in &self.states {
            let mut s = state.borrow_mut();
            s.budget.cancelled.set(true);
            s.waiters.clear();
        }
    }

    /// The function this instance was started with.
    pub fn entry_function(&self) -> FunctionId {
        self.entry
    }

    /// Runs the init function to completion and returns the globals it computed.
    pub fn run_init(&mut self, env: &mut Env) -> Result<Vec<Value>, RuntimeError> {
        self.globals_out = Some(vec![Value::None; env.linked.program.globals.len()]);
        match self.run(env) {
            Halt::Done(_) if env.outbox.is_empty() => {
                Ok(self.globals_out.take().unwrap_or_default())
            }
            Halt::Error(error) => Err(error),
            _ => Err(RuntimeError::without_location(
                "top-level constants must be computed without gen, select or waiting",
            )),
        }
    }

    fn pop(&mut self) -> Value {
        self.stack.pop().unwrap_or_default()
    }

    fn peek(&self, depth: usize) -> &Value {
        &self.stack[self.stack.len() - 1 - depth]
    }

    fn pop_n(&mut self, n: usize) -> Vec<Value> {
        let at = self.stack.len() - n;
        self.stack.split_off(at)
    }

    fn frame(&self) -> &Frame {
        self.frames.last().expect("a running instance has a frame")
    }

    /// The error at the instruction being executed, with the trace of callers.
    fn locate(&self, program: &Program, message: String, help: Option<String>) -> RuntimeError {
        self.locate_at(program, message, help, 1)
    }

    /// The error at the instruction the stopped instance would run next (it was stopped
    /// between instructions: a used-up budget, a passed deadline).
    fn locate_next(
        &self,
        program: &Program,
        message: String,
        help: Option<String>,
    ) -> RuntimeError {
        self.locate_at(program, message, help, 0)
    }

    /// `back`: how far the innermost frame's ip is past the instruction to blame.
    fn locate_at(
        &self,
        program: &Program,
        message: String,
        help: Option<String>,
        back: usize,
    ) -> RuntimeError {
        let innermost = self.frames.len().saturating_sub(1);
        let trace = self
            .frames
            .iter()
            .enumerate()
            .rev()
            .map(|(depth, frame)| {
                let function = &program.functions[frame.function as usize];
                let back = if depth == innermost { back } else { 1 };
                let ip = (frame.ip as usize).saturating_sub(back);
                TraceFrame {
                    function: function.name.clone(),
                    span: function.spans.get(ip).copied().unwrap_or(function.span),
                }
            })
            .collect();
        RuntimeError {
            message,
            trace,
            help,
            output: Vec::new(),
        }
    }

    /// Runs until the instance finishes, waits or uses up `limits.slice` instructions; ends
    /// it with an error when it has used up its instruction budget or passed its deadline.
    pub fn run(&mut self, env: &mut Env) -> Halt {
        let slice = match env.limits.max_instructions {
            Some(max) => {
                let left = max.saturating_sub(self.executed);
                u32::try_from(left)
                    .unwrap_or(u32::MAX)
                    .min(env.limits.slice)
            }
            None => env.limits.slice,
        };
        let mut left = slice;
        let halt = self.run_slice(env, &mut left);
        self.executed += u64::from(slice - left);
        if !matches!(halt, Halt::Yield) {
            return halt;
        }
        if let Some(max) = env.limits.max_instructions
            && self.executed >= max
        {
            return Halt::Error(self.locate_next(
                env.linked.program,
                format!("the program ran its limit of {max} instructions (max_instructions)"),
                Some("is a loop running without end? the host sets this limit".to_string()),
            ));
        }
        if let Some(error) = self.check_deadline(env.linked.program, env.limits) {
            return Halt::Error(error);
        }
        halt
    }

    /// The error for a program past its deadline, pointing at where it is now.
    pub fn check_deadline(&self, program: &Program, limits: &Limits) -> Option<RuntimeError> {
        let deadline_at = self.deadline_at?;
        if std::time::Instant::now() < deadline_at {
            return None;
        }
        let limit = limits.deadline.unwrap_or_default();
        Some(self.locate_next(
            program,
            format!(
                "the program passed its deadline of {} (deadline)",
                humanize_duration(limit)
            ),
            None,
        ))
    }

    /// When compiled code entered now must hand back: others wait, or this program's
    /// deadline or instruction budget is reached.
    #[cfg(feature = "jit")]
    fn jit_turn(&self, env: &Env) -> crate::jit::Turn {
        crate::jit::Turn {
            share_time: env.share_time,
            deadline: self.deadline_at,
            budget: env
                .limits
                .max_instructions
                .map(|max| max.saturating_sub(self.executed)),
        }
    }

    /// Counts what compiled code ran (loop iterations and calls) against the instruction
    /// budget.
    #[cfg(feature = "jit")]
    fn charge_compiled(&mut self, env: &Env) {
        if let Some(jit) = &env.linked.jit {
            let spent = jit.borrow_mut().take_fuel_spent();
            self.executed = self.executed.saturating_add(spent);
        }
    }

    fn run_slice(&mut self, env: &mut Env, budget_out: &mut u32) -> Halt {
        let program = env.linked.program;
        // Loops with a backward jump count towards JIT hotness in `step`.
        #[cfg(feature = "jit")]
        let count_back_edges = env.linked.jit.is_some();
        #[cfg(not(feature = "jit"))]
        let count_back_edges = false;
        let mut budget = *budget_out;
        // The current frame's code, instruction pointer and locals base live in locals here;
        // the frame is written back only before an instruction that needs it (`step`), and
        // read again after it, since calls and returns change frames.
        // Which of this function's loops still interest the JIT: `None` for none; else the
        // loop headers that cannot be compiled, whose backward jumps stay in the fast loop.
        let loops_wanted = |function: FunctionId| -> Option<Rc<Vec<u32>>> {
            #[cfg(feature = "jit")]
            if let Some(jit) = &env.linked.jit {
                return jit.borrow_mut().wants_back_edges(program, function);
            }
            let _ = function;
            None
        };
        loop {
            let frame = self.frames.last().expect("a running instance has a frame");
            let mut code: &[Instr] = &env.linked.code[frame.function as usize];
            let mut base = frame.base as usize;
            let mut ip = frame.ip as usize;
            let mut count_loops = if count_back_edges {
                loops_wanted(frame.function)
            } else {
                None
            };
            let instr = loop {
                if budget == 0 {
                    self.frames.last_mut().expect("frame").ip = ip as u32;
                    *budget_out = 0;
                    return Halt::Yield;
                }
                budget -= 1;
                // By reference: each arm loads only its own operands (a copy was taken apart
                // field by field, and spilled, before the dispatch).
                let instr = &code[ip];
                ip += 1;
                match *instr {
                    // Calls and returns between functions of the program stay in this loop.
                    Instr::Call { function, argc }
                        if self.frames.len() < env.limits.max_call_depth =>
                    {
                        self.frames.last_mut().expect("frame").ip = ip as u32;
                        #[cfg(feature = "jit")]
                        if count_back_edges {
                            match self.call_compiled(env, function, argc) {
                                Ok(true) => break None,
                                Ok(false) => {}
                                Err(_) => {
                                    *budget_out = budget;
                                    return Halt::Yield;
                                }
                            }
                        }
                        base = self.push_frame(program, function, argc, false);
                        code = &env.linked.code[function as usize];
                        ip = 0;
                        if count_back_edges {
                            count_loops = loops_wanted(function);
                        }
                    }
                    Instr::Return if self.frames.len() > 1 => {
                        let v = self.stack.pop().unwrap_or_default();
                        let frame = self.frames.pop().expect("returning from a frame");
                        let keep = frame.base as usize - usize::from(frame.drop_callee);
                        while self.stack.len() > keep {
                            drop_value(self.stack.pop().unwrap_or_default());
                        }
                        self.stack.push(v);
                        let caller = self.frames.last().expect("a caller");
                        code = &env.linked.code[caller.function as usize];
                        base = caller.base as usize;
                        ip = caller.ip as usize;
                        if count_back_edges {
                            count_loops = loops_wanted(caller.function);
                        }
                    }
                    _ => {
                        if !self.fast_step(
                            instr,
                            base,
                            &mut ip,
                            &mut budget,
                            count_loops.as_deref(),
                            &env.linked.constants,
                        ) {
                            break Some(*instr);
                        }
                    }
                }
            };
            // `None`: the JIT handled a call and the frames are already right.
            let Some(instr) = instr else {
                continue;
            };
            self.frames.last_mut().expect("frame").ip = ip as u32;
            if let Err(flow) = self.step(instr, env) {
                *budget_out = budget;
                return match flow {
                    Flow::Wait(state) => {
                        if let Some(frame) = self.frames.last_mut() {
                            frame.ip -= 1;
                        }
                        Halt::Wait(state)
                    }
                    Flow::Yield => Halt::Yield,
                    Flow::Done(value) => Halt::Done(value),
                    Flow::Error(message, help) => Halt::Error(self.locate(program, message, help)),
                    Flow::Failed(state) => {
                        Halt::Error(state_failure(program, &state).unwrap_or_else(|| {
                            self.locate(program, "a state failed".to_string(), None)
                        }))
                    }
                };
            }
        }
    }

    /// The common instructions on the common types, done in place without leaving the run
    /// loop. Returns false when `step` must do it: another instruction, another type, or a
    /// case that raises an error (which `step` then reports).
    #[inline(always)]
    fn fast_step(
        &mut self,
        instr: &Instr,
        base: usize,
        ip: &mut usize,
        budget: &mut u32,
        count_back_edges: Option<&Vec<u32>>,
        constants: &[Value],
    ) -> bool {
        let stack = &mut self.stack;
        // A fused instruction that did its whole sequence skips the rest of it and counts it
        // against the budget; one that did not does only the instruction it replaced.
        let mut fused_done = |ip: &mut usize, rest: u32| {
            *ip += rest as usize;
            *budget = budget.saturating_sub(rest);
        };
        match *instr {
            Instr::FusedCompareLocals { a, b, op, target } => {
                let (a, b) = (base + a as usize, base + b as usize);
                if let (Value::Int(x), Value::Int(y)) = (&stack[a], &stack[b]) {
                    let holds = op.ints(*x, *y);
                    fused_done(ip, 3);
                    if !holds {
                        *ip = target as usize;
                    }
                } else {
                    push_value(stack, stack[a].clone());
                }
            }
            Instr::FusedCompareLocalInt { a, op, k, target } => {
                let a = base + a as usize;
                if let Value::Int(x) = stack[a] {
                    fused_done(ip, 3);
                    if !op.ints(x, k as i64) {
                        *ip = target as usize;
                    }
                } else {
                    push_value(stack, stack[a].clone());
                }
            }
            Instr::FusedArithLocals { a, b, op, store } => {
                let (a, b) = (base + a as usize, base + b as usize);
                let result = match (&stack[a], &stack[b]) {
                    (Value::Int(x), Value::Int(y)) => op.ints(*x, *y).map(Value::Int),
                    (x, y) => match (number(x), number(y)) {
                        (Some(x), Some(y)) => op.floats(x, y).map(Value::Float),
                        _ => None,
                    },
                };
                match result {
                    Some(r) => Self::fused_result(stack, base, ip, r, store, &mut fused_done),
                    None => push_value(stack, stack[a].clone()),
                }
            }
            Instr::FusedArithLocalInt { a, op, k, store } => {
                let a = base + a as usize;
                let result = match stack[a] {
                    Value::Int(x) => op.ints(x, k as i64).map(Value::Int),
                    Value::Float(x) => op.floats(x, k as f64).map(Value::Float),
                    _ => None,
                };
                match result {
                    Some(r) => Self::fused_result(stack, base, ip, r, store, &mut fused_done),
                    None => push_value(stack, stack[a].clone()),
                }
            }
            Instr::FusedContainsLocals {
                item,
                container,
                negated,
                target,
            } => {
                let (item, container) = (base + item as usize, base + container as usize);
                // A string in a map, the usual case, inline: `contains` is a call that
                // returns a `Result` in memory.
                let found = match (&stack[container], &stack[item]) {
                    (Value::Map(map), Value::Str(key)) => {
                        Ok(dict_index_of(&map.borrow(), key).is_some())
                    }
                    (container, item) => contains(container, item),
                };
                match found {
                    Ok(found) => {
                        fused_done(ip, 3);
                        if found == negated {
                            *ip = target as usize;
                        }
                    }
                    // The original sequence runs on and raises the error at its span.
                    Err(_) => push_value(stack, stack[item].clone()),
                }
            }
            Instr::FusedIndexLocals { list, index } => {
                let (list, index) = (base + list as usize, base + index as usize);
                let item = match (&stack[list], &stack[index]) {
                    (Value::List(items), Value::Int(i)) => {
                        let items = items.borrow();
                        normalize_index(*i, items.len()).and_then(|at| items.get(at))
                    }
                    _ => None,
                };
                match item {
                    Some(item) => {
                        fused_done(ip, 2);
                        push_value(stack, item);
                    }
                    None => push_value(stack, stack[list].clone()),
                }
            }
            Instr::FusedStoreBoolLocals { list, index, value } => {
                let (list, index) = (base + list as usize, base + index as usize);
                let stored = match (&stack[list], &stack[index]) {
                    (Value::List(items), Value::Int(i)) => {
                        let mut items = items.borrow_mut();
                        match normalize_index(*i, items.len()) {
                            Some(at) => {
                                items.set(at, Value::Bool(value));
                                true
                            }
                            None => false,
                        }
                    }
                    _ => false,
                };
                if stored {
                    fused_done(ip, 3);
                } else {
                    push_value(stack, stack[list].clone());
                }
            }
            Instr::LoadLocal(slot) => {
                let v = stack[base + slot as usize].clone();
                push_value(stack, v);
            }
            Instr::StoreLocal(slot) => {
                let v = stack.pop().unwrap_or_default();
                drop_value(std::mem::replace(&mut stack[base + slot as usize], v));
            }
            Instr::PushInt(n) => push_value(stack, Value::Int(n)),
            Instr::Const(i) => push_value(stack, constants[i as usize].clone()),
            Instr::Div => {
                let n = stack.len();
                if n < 2 {
                    return false;
                }
                let (Some(x), Some(y)) = (number(&stack[n - 2]), number(&stack[n - 1])) else {
                    return false;
                };
                if y == 0.0 {
                    return false;
                }
                replace_two_scalars(stack, Value::Float(x / y));
            }
            Instr::PushNone => push_value(stack, Value::None),
            Instr::PushBool(b) => push_value(stack, Value::Bool(b)),
            Instr::Pop => drop_value(stack.pop().unwrap_or_default()),
            Instr::Jump(target) => {
                if Self::counted_back_edge(count_back_edges, target, *ip) {
                    return false;
                }
                *ip = target as usize;
            }
            Instr::FusedLoopCompareLocals { header, exit, .. }
            | Instr::FusedLoopCompareLocalInt { header, exit, .. } => {
                // A back edge the JIT counts is `step`'s, as a plain jump's is.
                if Self::counted_back_edge(count_back_edges, header, *ip) {
                    return false;
                }
                let holds = match *instr {
                    Instr::FusedLoopCompareLocals { a, b, op, .. } => {
                        match (&stack[base + a as usize], &stack[base + b as usize]) {
                            (Value::Int(x), Value::Int(y)) => Some(op.ints(*x, *y)),
                            _ => None,
                        }
                    }
                    Instr::FusedLoopCompareLocalInt { a, op, k, .. } => {
                        match stack[base + a as usize] {
                            Value::Int(x) => Some(op.ints(x, k as i64)),
                            _ => None,
                        }
                    }
                    _ => None,
                };
                // The header's test made: on into the body past its four instructions, which
                // count against the budget as if they ran, or out of the loop. Otherwise the
                // jump alone, and the header runs.
                *ip = match holds {
                    Some(holds) => {
                        *budget = budget.saturating_sub(4);
                        if holds {
                            header as usize + 4
                        } else {
                            exit as usize
                        }
                    }
                    None => header as usize,
                };
            }
            Instr::JumpIfFalse(target) => {
                let v = stack.pop().unwrap_or_default();
                let holds = match v {
                    Value::Bool(b) => b,
                    ref other => other.is_truthy(),
                };
                if !holds {
                    *ip = target as usize;
                }
                drop_value(v);
            }
            Instr::FusedJumpIfFalseLocal { slot, target } => match stack[base + slot as usize] {
                Value::Bool(holds) => {
                    fused_done(ip, 1);
                    if !holds {
                        *ip = target as usize;
                    }
                }
                ref other => push_value(stack, other.clone()),
            },
            Instr::FusedForIterStore { exit, slot } => {
                let Some(Value::Iterator(iter)) = stack.last() else {
                    return false;
                };
                let next = iter.borrow_mut().next_item();
                match next {
                    Some(item) => {
                        drop_value(std::mem::replace(&mut stack[base + slot as usize], item));
                        fused_done(ip, 1);
                    }
                    None => {
                        drop_value(stack.pop().unwrap_or_default());
                        *ip = exit as usize;
                    }
                }
            }
            Instr::ForIter { exit } => {
                let Some(Value::Iterator(iter)) = stack.last() else {
                    return false;
                };
                let next = iter.borrow_mut().next_item();
                match next {
                    Some(item) => push_value(stack, item),
                    None => {
                        drop_value(stack.pop().unwrap_or_default());
                        *ip = exit as usize;
                    }
                }
            }
            Instr::Index => {
                let n = stack.len();
                if n < 2 {
                    return false;
                }
                let (Value::List(list), Value::Int(i)) = (&stack[n - 2], &stack[n - 1]) else {
                    return false;
                };
                let item = {
                    let items = list.borrow();
                    match normalize_index(*i, items.len()) {
                        Some(at) => items.get(at).unwrap_or_default(),
                        None => return false,
                    }
                };
                stack.truncate(n - 1);
                stack[n - 2] = item;
            }
            Instr::StoreIndex => {
                let n = stack.len();
                if n < 3 {
                    return false;
                }
                let (Value::List(list), Value::Int(i)) = (&stack[n - 3], &stack[n - 2]) else {
                    return false;
                };
                let (list, i) = (list.clone(), *i);
                {
                    let mut items = list.borrow_mut();
                    let Some(at) = normalize_index(i, items.len()) else {
                        return false;
                    };
                    let v = stack.pop().unwrap_or_default();
                    items.set(at, v);
                }
                stack.truncate(n - 3);
            }
            Instr::Add
            | Instr::AddAssign
            | Instr::Sub
            | Instr::Mul
            | Instr::Mod
            | Instr::Lt
            | Instr::Le
            | Instr::Gt
            | Instr::Ge
            | Instr::Eq
            | Instr::NotEq => {
                let n = stack.len();
                if n < 2 {
                    return false;
                }
                let (a, b) = match (&stack[n - 2], &stack[n - 1]) {
                    (Value::Int(a), Value::Int(b)) => (*a, *b),
                    (
                        x @ (Value::Int(_) | Value::Float(_)),
                        y @ (Value::Int(_) | Value::Float(_)),
                    ) => {
                        // At least one float: as `arith`, for the operators that cannot fail.
                        let (x, y) = (
                            x.as_float().unwrap_or_default(),
                            y.as_float().unwrap_or_default(),
                        );
                        let result = match instr {
                            Instr::Add | Instr::AddAssign => x + y,
                            Instr::Sub => x - y,
                            Instr::Mul => x * y,
                            _ => return false,
                        };
                        replace_two_scalars(stack, Value::Float(result));
                        return true;
                    }
                    _ => return false,
                };
                let result = match instr {
                    Instr::Add | Instr::AddAssign => match a.checked_add(b) {
                        Some(r) => Value::Int(r),
                        None => return false,
                    },
                    // Floored, as `binary_mod`; zero and -1 (overflow) take the general path.
                    Instr::Mod if b != 0 && b != -1 => {
                        let r = a % b;
                        Value::Int(if r != 0 && (r < 0) != (b < 0) {
                            r + b
                        } else {
                            r
                        })
                    }
                    Instr::Mod => return false,
                    Instr::Sub => match a.checked_sub(b) {
                        Some(r) => Value::Int(r),
                        None => return false,
                    },
                    Instr::Mul => match a.checked_mul(b) {
                        Some(r) => Value::Int(r),
                        None => return false,
                    },
                    Instr::Lt => Value::Bool(a < b),
                    Instr::Le => Value::Bool(a <= b),
                    Instr::Gt => Value::Bool(a > b),
                    Instr::Ge => Value::Bool(a >= b),
                    Instr::Eq => Value::Bool(a == b),
                    _ => Value::Bool(a != b),
                };
                replace_two_scalars(stack, result);
            }
            _ => return false,
        }
        true
    }

    /// `for x in range(...)` without the list: replaces the `argc` int bounds on the stack with
    /// an iterator over the range. False, touching nothing, when `range()` itself must run
    /// (bounds that are not ints, a zero step, more items than a list may hold) and report.
    fn push_range_iter(&mut self, argc: usize, limits: &Limits) -> bool {
        let Some(at) = self.stack.len().checked_sub(argc) else {
            return false;
        };
        let mut bounds = [0i64; 3];
        for (k, v) in self.stack[at..].iter().enumerate() {
            match v {
                Value::Int(n) if k < 3 => bounds[k] = *n,
                _ => return false,
            }
        }
        let (start, stop, step) = match argc {
            1 => (0, bounds[0], 1),
            2 => (bounds[0], bounds[1], 1),
            3 => (bounds[0], bounds[1], bounds[2]),
            _ => return false,
        };
        if step == 0 {
            return false;
        }
        let count = crate::value::range_count(start, stop, step);
        let Ok(count) = usize::try_from(count) else {
            return false;
        };
        if limits.fits_items(count).is_err() {
            return false;
        }
        self.stack.truncate(at);
        self.stack
            .push(Value::Iterator(Rc::new(RefCell::new(Iter::Range {
                start,
                step,
                index: 0,
                count: count as i64,
            }))));
        true
    }

    /// Finishes a fused arithmetic instruction: stores `r` (skipping the rest of its four
    /// instructions) or pushes it (skipping the rest of its three).
    #[inline(always)]
    fn fused_result(
        stack: &mut Vec<Value>,
        base: usize,
        ip: &mut usize,
        r: Value,
        store: u32,
        fused_done: &mut impl FnMut(&mut usize, u32),
    ) {
        if store == NO_STORE {
            fused_done(ip, 2);
            push_value(stack, r);
        } else {
            fused_done(ip, 3);
            drop_value(std::mem::replace(&mut stack[base + store as usize], r));
        }
    }

    /// Whether a jump to `target` from before `ip` is a back edge the JIT counts (`step`
    /// counts it), given the loop headers it cannot compile, or `None` when it counts none.
    #[inline(always)]
    fn counted_back_edge(count_back_edges: Option<&Vec<u32>>, target: u32, ip: usize) -> bool {
        count_back_edges
            .is_some_and(|uncompilable| (target as usize) < ip && !uncompilable.contains(&target))
    }

    fn step(&mut self, instr: Instr, env: &mut Env) -> OpResult {
        match instr {
            // `fast_step` does these whole, or their first instruction.
            Instr::FusedCompareLocals { .. }
            | Instr::FusedCompareLocalInt { .. }
            | Instr::FusedArithLocals { .. }
            | Instr::FusedArithLocalInt { .. }
            | Instr::FusedIndexLocals { .. }
            | Instr::FusedContainsLocals { .. }
            | Instr::FusedStoreBoolLocals { .. }
            | Instr::FusedJumpIfFalseLocal { .. } => {
                return fail(
                    "internal error: a fused instruction outside the interpreter's fast path",
                );
            }
            // Its first instruction, when the top of the stack is not an iterator.
            Instr::FusedForIterStore { exit, .. } => self.op_for_iter(exit),
            Instr::FusedRangeIter { native, argc } => {
                if self.push_range_iter(argc as usize, env.limits) {
                    // The `GetIter` after the call is done too.
                    self.frames.last_mut().expect("frame").ip += 1;
                } else {
                    self.op_call_native(env, native, argc, NO_KEYWORDS)?;
                }
            }
            Instr::PushNone => self.stack.push(Value::None),
            Instr::PushBool(b) => self.stack.push(Value::Bool(b)),
            Instr::PushInt(n) => self.stack.push(Value::Int(n)),
            Instr::Const(i) => self.stack.push(env.linked.constants[i as usize].clone()),
            Instr::LoadLocal(slot) => {
                let v = self.stack[(self.frame().base + slot) as usize].clone();
                self.stack.push(v);
            }
            Instr::StoreLocal(slot) => {
                let v = self.pop();
                let at = (self.frame().base + slot) as usize;
                self.stack[at] = v;
            }
            Instr::LoadGlobal(slot) => self.stack.push(env.linked.globals[slot as usize].clone()),
            Instr::StoreGlobal(slot) => {
                let v = self.pop();
                match self.globals_out.as_mut() {
                    Some(globals) => globals[slot as usize] = v,
                    None => return fail("globals are set only while loading"),
                }
            }
            Instr::LoadFunction(id) => self.stack.push(Value::Function(id)),
            Instr::Pop => {
                self.pop();
            }
            Instr::Dup => self.stack.push(self.peek(0).clone()),
            Instr::Add => {
                let limits = env.limits;
                self.op_binary(|a, b| binary_add(a, b, limits))?
            }
            Instr::Sub => {
                self.op_binary(|a, b| arith(a, b, "-", i64::checked_sub, |x, y| x - y))?
            }
            Instr::Mul => {
                let limits = env.limits;
                self.op_binary(|a, b| binary_mul(a, b, limits))?
            }
            Instr::Div => self.op_binary(binary_div)?,
            Instr::Mod => self.op_binary(binary_mod)?,
            Instr::Neg => self.op_neg()?,
            Instr::Not => {
                let v = self.pop();
                self.stack.push(Value::Bool(!v.is_truthy()));
            }
            Instr::Eq => self.op_binary(|a, b| Ok(Value::Bool(a.equals(b))))?,
            Instr::NotEq => self.op_binary(|a, b| Ok(Value::Bool(!a.equals(b))))?,
            Instr::Lt => self.op_compare("<", |o| o.is_lt())?,
            Instr::Le => self.op_compare("<=", |o| o.is_le())?,
            Instr::Gt => self.op_compare(">", |o| o.is_gt())?,
            Instr::Ge => self.op_compare(">=", |o| o.is_ge())?,
            Instr::In => self.op_binary(|a, b| contains(b, a).map(Value::Bool))?,
            Instr::NotIn => self.op_binary(|a, b| contains(b, a).map(|c| Value::Bool(!c)))?,
            // A fused back edge whose loop the JIT counts: the jump alone.
            Instr::Jump(target)
            | Instr::FusedLoopCompareLocals { header: target, .. }
            | Instr::FusedLoopCompareLocalInt { header: target, .. } => {
                // The frame's ip is already past this jump: a target before it is a loop.
                let backward = target < self.frame().ip;
                self.jump(target);
                #[cfg(feature = "jit")]
                if let Some(jit) = &env.linked.jit {
                    let frame = self.frame();
                    if backward
                        && !frame.drop_callee
                        && jit.borrow_mut().back_edge(frame.function, target)
                    {
                        return self.run_loop_compiled(env);
                    }
                }
                #[cfg(not(feature = "jit"))]
                let _ = backward;
            }
            Instr::JumpIfFalse(target) => {
                if !self.pop().is_truthy() {
                    self.jump(target);
                }
            }
            Instr::JumpIfFalseOrPop(target) => {
                if self.peek(0).is_truthy() {
                    self.pop();
                } else {
                    self.jump(target);
                }
            }
            Instr::JumpIfTrueOrPop(target) => {
                if self.peek(0).is_truthy() {
                    self.jump(target);
                } else {
                    self.pop();
                }
            }
            Instr::GetIter => self.op_get_iter()?,
            Instr::ForIter { exit } => self.op_for_iter(exit),
            Instr::Unpack(n) => self.op_unpack(n as usize)?,
            Instr::BuildList(n) => {
                let items = self.pop_n(n as usize);
                self.stack.push(Value::list(items));
                self.check_size(env.limits, 0)?;
            }
            Instr::BuildMap(n) => {
                self.op_build_map(n as usize)?;
                self.check_size(env.limits, 0)?;
            }
            Instr::ListAppendUnder(depth) => {
                let item = self.pop();
                match self.peek(depth as usize) {
                    Value::List(list) => list.borrow_mut().push(item),
                    other => return fail(format!("cannot append to {}", other.type_name())),
                }
                self.check_size(env.limits, depth as usize)?;
            }
            Instr::Index => self.op_index()?,
            Instr::StoreIndex => self.op_store_index(env.limits)?,
            Instr::Slice { lo, hi } => self.op_slice(lo, hi)?,
            Instr::FormatValue => {
                let v = self.pop();
                let s = match v {
                    Value::Str(_) => v,
                    other => Value::Str(other.display_str()),
                };
                self.stack.push(s);
            }
            Instr::BuildString(n) => {
                // Read in place, sized once: no vector of parts, no second copy.
                let at = self.stack.len() - n as usize;
                let s = match Value::concat_display(&self.stack[at..], env.limits.max_string_bytes)
                {
                    Ok(s) => s,
                    Err(len) => return env.limits.fits_string(len).or_else(fail),
                };
                self.stack.truncate(at);
                self.stack.push(Value::Str(s));
            }
            Instr::Call { function, argc } => self.op_call(env, function, argc, false)?,
            Instr::CallValue { argc } => self.op_call_value(env, argc)?,
            Instr::CallNative {
                native,
                argc,
                keywords,
            } => {
                self.op_call_native(env, native, argc, keywords)?;
                self.check_size(env.limits, 0)?;
            }
            Instr::CallMethod {
                name,
                argc,
                keywords,
            } => self.op_call_method(env, name, argc, keywords)?,
            Instr::Return => self.op_return()?,
            Instr::MakeCall(spec) => {
                let op = self.build_call(env, spec)?;
                self.stack
                    .push(Value::Fragment(Rc::from(vec![Part::Call(Rc::new(op))])));
            }
            Instr::MakeRole(role) => {
                let v = self.pop();
                let mut parts = vec![Part::RoleBegin(role)];
                parts.extend(fragment_parts(&v, role.name())?);
                parts.push(Part::RoleEnd(role));
                self.stack.push(Value::Fragment(Rc::from(parts)));
            }
            Instr::AppendState => {
                let v = self.pop();
                let state = self.state_on_top()?;
                let site = self.site();
                for part in fragment_parts(&v, "+=")? {
                    state::push_part(&state, part, site, env.template, env.outbox);
                }
                failed_now(&state)?;
            }
            Instr::CallInto(spec) => {
                let op = self.build_call(env, spec)?;
                let state = self.state_on_top()?;
                let site = op.site;
                state::push_part(
                    &state,
                    Part::Call(Rc::new(op)),
                    site,
                    env.template,
                    env.outbox,
                );
            }
            Instr::RoleBegin(role) => self.op_role(env, Part::RoleBegin(role))?,
            Instr::RoleEnd(role) => self.op_role(env, Part::RoleEnd(role))?,
            Instr::AddAssign => self.op_add_assign(env)?,
        }
        Ok(())
    }

    fn jump(&mut self, target: u32) {
        self.frames.last_mut().expect("frame").ip = target;
    }

    fn op_binary(&mut self, f: impl FnOnce(&Value, &Value) -> Result<Value, String>) -> OpResult {
        let b = self.pop();
        let a = self.pop();
        match f(&a, &b) {
            Ok(v) => {
                self.stack.push(v);
                Ok(())
            }
            Err(message) => fail(message),
        }
    }

    fn op_compare(&mut self, symbol: &str, test: fn(std::cmp::Ordering) -> bool) -> OpResult {
        let b = self.pop();
        let a = self.pop();
        match a.compare(&b) {
            Some(ordering) => {
                self.stack.push(Value::Bool(test(ordering)));
                Ok(())
            }
            None => fail(format!(
                "cannot compare {} {symbol} {}",
                a.type_name(),
                b.type_name()
            )),
        }
    }

    fn op_neg(&mut self) -> OpResult {
        let v = self.pop();
        let r = match v {
            Value::Int(n) => match n.checked_neg() {
                Some(r) => Value::Int(r),
                None => return fail("integer overflow in negation"),
            },
            Value::Float(x) => Value::Float(-x),
            other => return fail(format!("cannot negate {}", other.type_name())),
        };
        self.stack.push(r);
        Ok(())
    }

    fn op_get_iter(&mut self) -> OpResult {
        let v = self.pop();
        let iter = iterate(v)?;
        self.stack.push(iter);
        Ok(())
    }

    fn op_for_iter(&mut self, exit: u32) {
        let next = match self.peek(0) {
            Value::Iterator(it) => it.borrow_mut().next_item(),
            _ => None,
        };
        match next {
            Some(item) => self.stack.push(item),
            None => {
                self.pop();
                self.jump(exit);
            }
        }
    }

    fn op_unpack(&mut self, n: usize) -> OpResult {
        let v = self.pop();
        let items: Vec<Value> = match &v {
            Value::List(list) => list.borrow().to_vec(),
            other => {
                return fail(format!(
                    "cannot unpack {} into {n} names",
                    other.type_name()
                ));
            }
        };
        if items.len() != n {
            return fail(format!(
                "cannot unpack {} items into {n} names",
                items.len()
            ));
        }
        self.stack.extend(items.into_iter().rev());
        Ok(())
    }

    fn op_build_map(&mut self, n: usize) -> OpResult {
        let flat = self.pop_n(n * 2);
        let mut map = Dict::with_capacity_and_hasher(n, Default::default());
        let mut it = flat.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            match k {
                Value::Str(s) => {
                    map.insert(s, v);
                }
                other => {
                    return fail(format!(
                        "map keys must be strings, not {}",
                        other.type_name()
                    ));
                }
            }
        }
        self.stack.push(Value::map(map));
        Ok(())
    }

    fn op_index(&mut self) -> OpResult {
        if let Value::State(state) = self.peek(1) {
            wait_until_idle(state)?;
        }
        let key = self.pop();
        let obj = self.pop();
        let v = index(&obj, &key)?;
        self.stack.push(v);
        Ok(())
    }

    fn op_store_index(&mut self, limits: &Limits) -> OpResult {
        let v = self.pop();
        let key = self.pop();
        let obj = self.pop();
        match (&obj, &key) {
            (Value::List(list), Value::Int(i)) => {
                let mut list = list.borrow_mut();
                let len = list.len();
                match normalize_index(*i, len) {
                    Some(at) => list.set(at, v),
                    None => return fail(format!("list index {i} out of range for length {len}")),
                }
            }
            (Value::Map(map), Value::Str(k)) => {
                map.borrow_mut().insert(k.clone(), v);
                if let Some(message) = limits.oversized(&obj) {
                    return fail(message);
                }
            }
            (Value::State(state), Value::Str(k)) => {
                state.borrow_mut().vars.insert(k.clone(), v);
            }
            _ => {
                return fail(format!(
                    "cannot set an item of {} with a {} key",
                    obj.type_name(),
                    key.type_name()
                ));
            }
        }
        Ok(())
    }

    fn op_slice(&mut self, has_lo: bool, has_hi: bool) -> OpResult {
        let hi = if has_hi { Some(self.pop()) } else { None };
        let lo = if has_lo { Some(self.pop()) } else { None };
        let target = self.pop();
        let bound = |v: Option<Value>| -> Result<Option<i64>, Flow> {
            match v {
                None | Some(Value::None) => Ok(None),
                Some(Value::Int(n)) => Ok(Some(n)),
                Some(other) => fail(format!(
                    "slice bounds must be ints, not {}",
                    other.type_name()
                )),
            }
        };
        let (lo, hi) = (bound(lo)?, bound(hi)?);
        let range = |len: usize| {
            let clamp = |i: i64| -> usize {
                if i < 0 {
                    (len as i64 + i).max(0) as usize
                } else {
                    (i as usize).min(len)
                }
            };
            let start = lo.map_or(0, clamp);
            let end = hi.map_or(len, clamp);
            start..end.max(start)
        };
        let v = match &target {
            Value::List(list) => {
                let list = list.borrow();
                Value::list_of(list.slice(range(list.len())))
            }
            Value::Str(s) => {
                let chars: Vec<char> = s.chars().collect();
                Value::string(chars[range(chars.len())].iter().collect::<String>())
            }
            other => return fail(format!("cannot slice {}", other.type_name())),
        };
        self.stack.push(v);
        Ok(())
    }

    /// The instruction being run, for errors found later (a queued append, a backend answer).
    fn site(&self) -> Site {
        let frame = self.frame();
        Site {
            function: frame.function,
            ip: frame.ip - 1,
        }
    }

    /// Fails when the value `depth` below the top of the stack grew past its size limit.
    /// Inlined so numbers, the common case, cost one comparison.
    #[inline(always)]
    fn check_size(&self, limits: &Limits, depth: usize) -> OpResult {
        match self.peek(depth) {
            Value::Str(_) | Value::List(_) | Value::Map(_) => self.check_size_of(limits, depth),
            _ => Ok(()),
        }
    }

    #[inline]
    fn check_size_of(&self, limits: &Limits, depth: usize) -> OpResult {
        match limits.oversized(self.peek(depth)) {
            Some(message) => {
                fail_with_help(message, "the host sets this limit (see `sglc run --help`)")
            }
            None => Ok(()),
        }
    }

    fn enter(&mut self, env: &Env, function: FunctionId, argc: u32, drop_callee: bool) -> OpResult {
        if self.frames.len() >= env.limits.max_call_depth {
            return fail_with_help(
                format!("call depth limit of {} exceeded", env.limits.max_call_depth),
                "is a function calling itself without end?",
            );
        }
        self.push_frame(env.linked.program, function, argc, drop_callee);
        Ok(())
    }

    /// Starts `function` on the `argc` arguments on top of the stack (they become its first
    /// locals); returns the new frame's base.
    #[inline(always)]
    fn push_frame(
        &mut self,
        program: &Program,
        function: FunctionId,
        argc: u32,
        drop_callee: bool,
    ) -> usize {
        let f = &program.functions[function as usize];
        let base = self.stack.len() - argc as usize;
        let locals_end = base + f.local_count as usize;
        if self.stack.len() < locals_end {
            grow_with_nones(&mut self.stack, locals_end);
        }
        self.frames.push(Frame {
            function,
            ip: 0,
            base: base as u32,
            drop_callee,
        });
        base
    }

    fn op_call(
        &mut self,
        env: &Env,
        function: FunctionId,
        argc: u32,
        drop_callee: bool,
    ) -> OpResult {
        #[cfg(feature = "jit")]
        if !drop_callee && self.call_compiled(env, function, argc)? {
            return Ok(());
        }
        self.enter(env, function, argc, drop_callee)
    }

    /// On-stack replacement: the current frame stands at a hot loop's header; when the JIT
    /// can compile the rest of the function from here, it runs natively, and its return (or
    /// the frames it leaves to interpret) replaces this frame.
    #[cfg(feature = "jit")]
    fn run_loop_compiled(&mut self, env: &Env) -> OpResult {
        let Some(jit) = &env.linked.jit else {
            return Ok(());
        };
        let frame = self.frame();
        let (function, ip, base) = (frame.function, frame.ip, frame.base as usize);
        let outcome = jit.borrow_mut().osr(
            env.linked.program,
            &env.linked.globals,
            function,
            ip,
            &self.stack[base..],
            self.frames.len(),
            env.limits,
            self.jit_turn(env),
        );
        self.charge_compiled(env);
        match outcome {
            crate::jit::JitCall::Interpret => Ok(()),
            crate::jit::JitCall::Returned(value) => {
                self.stack.push(value);
                self.op_return()
            }
            crate::jit::JitCall::Deopt {
                frames,
                out_of_fuel,
            } => {
                self.frames.pop();
                while self.stack.len() > base {
                    drop_value(self.stack.pop().unwrap_or_default());
                }
                self.push_resumed(frames);
                if out_of_fuel {
                    return Err(Flow::Yield);
                }
                Ok(())
            }
        }
    }

    /// Runs the call natively when the JIT has (or now makes) code for it; false to interpret.
    /// A deopt leaves the compiled frames on the frame stack, to be interpreted from where
    /// compiled code stopped.
    #[cfg(feature = "jit")]
    fn call_compiled(&mut self, env: &Env, function: FunctionId, argc: u32) -> Result<bool, Flow> {
        let Some(jit) = &env.linked.jit else {
            return Ok(false);
        };
        let max_depth = env.limits.max_call_depth;
        if self.frames.len() >= max_depth {
            return Ok(false);
        }
        let at = self.stack.len() - argc as usize;
        let outcome = jit.borrow_mut().call(
            env.linked.program,
            &env.linked.globals,
            function,
            &self.stack[at..],
            self.frames.len(),
            env.limits,
            self.jit_turn(env),
        );
        self.charge_compiled(env);
        match outcome {
            crate::jit::JitCall::Interpret => Ok(false),
            crate::jit::JitCall::Returned(value) => {
                self.stack.truncate(at);
                self.stack.push(value);
                Ok(true)
            }
            crate::jit::JitCall::Deopt {
                frames,
                out_of_fuel,
            } => {
                self.stack.truncate(at);
                self.push_resumed(frames);
                if out_of_fuel {
                    return Err(Flow::Yield);
                }
                Ok(true)
            }
        }
    }

    /// Pushes the frames compiled code left to interpret, outermost first.
    #[cfg(feature = "jit")]
    fn push_resumed(&mut self, frames: Vec<crate::jit::ResumeFrame>) {
        for frame in frames {
            let base = self.stack.len() as u32;
            self.stack.extend(frame.values);
            self.frames.push(Frame {
                function: frame.function,
                ip: frame.ip,
                base,
                drop_callee: false,
            });
        }
    }

    fn op_call_value(&mut self, env: &Env, argc: u32) -> OpResult {
        let callee = self.peek(argc as usize).clone();
        match callee {
            Value::Function(id) => {
                let f = &env.linked.program.functions[id as usize];
                if f.params.len() != argc as usize {
                    return fail(format!(
                        "`{}` takes {} arguments but {argc} were given",
                        f.name,
                        f.params.len()
                    ));
                }
                self.enter(env, id, argc, true)
            }
            other => fail(format!("{} is not callable", other.type_name())),
        }
    }

    fn op_return(&mut self) -> OpResult {
        let v = self.pop();
        let frame = self.frames.pop().expect("returning from a frame");
        let base = frame.base as usize - usize::from(frame.drop_callee);
        while self.stack.len() > base {
            drop_value(self.stack.pop().unwrap_or_default());
        }
        if self.frames.is_empty() {
            return Err(Flow::Done(v));
        }
        self.stack.push(v);
        Ok(())
    }

    /// The keyword arguments of a call (none, usually, which costs nothing).
    #[inline]
    fn pop_keywords(&mut self, env: &Env, keywords: u32) -> Vec<(Str, Value)> {
        if keywords == NO_KEYWORDS {
            return Vec::new();
        }
        self.pop_keyword_values(env, keywords)
    }

    #[inline(never)]
    fn pop_keyword_values(&mut self, env: &Env, keywords: u32) -> Vec<(Str, Value)> {
        let names = &env.linked.program.keyword_lists[keywords as usize];
        let values = self.pop_n(names.len());
        names
            .iter()
            .map(|n| Str::from(n.as_str()))
            .zip(values)
            .collect()
    }

    fn op_call_native(&mut self, env: &Env, native: u32, argc: u32, keywords: u32) -> OpResult {
        let kwargs = self.pop_keywords(env, keywords);
        let f = &env.linked.natives[native as usize];
        // The arguments are read in place on the stack, then dropped.
        let at = self.stack.len() - argc as usize;
        let mut ctx = NativeCtx {
            output: &mut self.output,
            limits: env.limits,
        };
        let result = f(&mut ctx, &self.stack[at..], &kwargs);
        self.stack.truncate(at);
        match result {
            Ok(v) => {
                self.stack.push(v);
                Ok(())
            }
            Err(message) => fail(format!(
                "{}: {message}",
                env.linked.program.natives[native as usize]
            )),
        }
    }

    fn op_call_method(&mut self, env: &mut Env, name: u32, argc: u32, keywords: u32) -> OpResult {
        let keyword_count = if keywords == NO_KEYWORDS {
            0
        } else {
            env.linked.program.keyword_lists[keywords as usize].len()
        };
        let name_str = || match &env.linked.constants[name as usize] {
            Value::Str(s) => s.clone(),
            _ => Str::from("?"),
        };
        let receiver_at = self.stack.len() - argc as usize - keyword_count - 1;
        // The VM's own methods are on states, and `join` on a list (of forks).
        let own_method = match &self.stack[receiver_at] {
            Value::State(_) => true,
            Value::List(_) => {
                matches!(&env.linked.constants[name as usize], Value::Str(s) if &**s == "join")
            }
            _ => false,
        };
        if own_method {
            let receiver = self.stack[receiver_at].clone();
            if let Some(result) = self.state_method(env, &receiver, &name_str(), argc as usize)? {
                self.pop_n(argc as usize + keyword_count + 1);
                self.stack.push(result);
                return Ok(());
            }
        }
        // Borrowed from the linked program, not from `env`, so the stack can change meanwhile.
        let linked = env.linked;
        let type_name = self.stack[receiver_at].type_name();
        let Some((_, method)) = linked.methods[name as usize]
            .iter()
            .find(|(t, _)| *t == type_name)
        else {
            return fail(format!("{type_name} has no method `{}`", name_str()));
        };
        let kwargs = self.pop_keywords(env, keywords);
        let at = self.stack.len() - argc as usize;
        // The receiver and the arguments are read in place, then dropped.
        let (below, args) = self.stack.split_at(at);
        let mut ctx = NativeCtx {
            output: &mut self.output,
            limits: env.limits,
        };
        let result = method(&mut ctx, &below[at - 1], args, &kwargs);
        // Methods such as `append` grow their receiver in place.
        let grown = result
            .is_ok()
            .then(|| env.limits.oversized(&self.stack[at - 1]))
            .flatten();
        self.stack.truncate(at - 1);
        if let Some(message) = grown {
            return fail(message);
        }
        match result {
            Ok(v) => {
                self.stack.push(v);
                self.check_size(env.limits, 0)
            }
            Err(message) => fail(format!("{type_name}.{}: {message}", name_str())),
        }
    }

    /// Methods the VM implements itself: on states, and `join` on a list of forks. Returns
    /// `None` when the receiver and name are not one of them. Arguments stay on the stack
    /// until the method can run, so a wait can retry the instruction.
    fn state_method(
        &mut self,
        env: &mut Env,
        receiver: &Value,
        name: &str,
        argc: usize,
    ) -> Result<Option<Value>, Flow> {
        let arg = |i: usize| self.peek(argc - 1 - i).clone();
        match receiver {
            Value::State(state) => {
                wait_until_idle(state)?;
                let v = match (name, argc) {
                    ("fork", 0 | 1) => {
                        let n = if argc == 1 {
                            match arg(0) {
                                Value::Int(n)
                                    if n >= 1
                                        && (self.states.len() - 1).saturating_add(n as usize)
                                            <= env.limits.max_forks =>
                                {
                                    n as usize
                                }
                                Value::Int(n) if n >= 1 => {
                                    return fail(format!(
                                        "fork({n}) would bring the program's branches to {}, past the limit of {} (max_forks)",
                                        (self.states.len() - 1).saturating_add(n as usize),
                                        env.limits.max_forks
                                    ));
                                }
                                Value::Int(n) => {
                                    return fail(format!("fork size must be at least 1, got {n}"));
                                }
                                other => {
                                    return fail(format!(
                                        "fork size must be an int, not {}",
                                        other.type_name()
                                    ));
                                }
                            }
                        } else {
                            1
                        };
                        if n > 1 {
                            env.outbox
                                .prefix_hints
                                .push(std::sync::Arc::from(state.borrow().text.as_str()));
                        }
                        let forks: Vec<Value> = (0..n)
                            .map(|_| {
                                let fork = StateData::fork(state);
                                self.states.push(fork.clone());
                                Value::State(fork)
                            })
                            .collect();
                        Value::list(forks)
                    }
                    ("text", 0) => Value::str(&state.borrow().text),
                    ("messages", 0) => Value::list(
                        state
                            .borrow()
                            .messages
                            .iter()
                            .map(|m| {
                                let mut map = Dict::default();
                                map.insert(Str::from("role"), Value::str(&m.role));
                                map.insert(Str::from("content"), Value::str(&m.content));
                                Value::map(map)
                            })
                            .collect(),
                    ),
                    ("get_var", 1) => index(receiver, &arg(0))?,
                    ("get_meta_info", 1) => {
                        let key = arg(0);
                        let s = state.borrow();
                        match key.as_str().and_then(|k| s.meta.get(k)) {
                            Some(meta) => Value::from_json(meta),
                            None => Value::None,
                        }
                    }
                    ("join", 0) => Value::None,
                    ("fork" | "text" | "messages" | "get_var" | "get_meta_info" | "join", _) => {
                        return fail(format!(
                            "state.{name} takes a different number of arguments"
                        ));
                    }
                    _ => return fail(format!("state has no method `{name}`")),
                };
                Ok(Some(v))
            }
            Value::List(list) if name == "join" && argc == 0 => {
                let forks: Vec<StateRef> = list
                    .borrow()
                    .iter()
                    .filter_map(|v| match v {
                        Value::State(s) => Some(s.clone()),
                        _ => None,
                    })
                    .collect();
                if forks.len() != list.borrow().len() {
                    return Ok(None);
                }
                for fork in &forks {
                    wait_until_idle(fork)?;
                }
                join_forks(&forks);
                Ok(Some(Value::None))
            }
            _ => Ok(None),
        }
    }

    fn state_on_top(&self) -> Result<StateRef, Flow> {
        match self.peek(0) {
            Value::State(s) => Ok(s.clone()),
            other => fail_with_help(
                format!("cannot append a prompt to {}", other.type_name()),
                "gen, select and roles are appended to a program state: `s += gen(\"x\")`",
            ),
        }
    }

    fn op_role(&mut self, env: &mut Env, part: Part) -> OpResult {
        let state = self.state_on_top()?;
        state::push_part(&state, part, self.site(), env.template, env.outbox);
        Ok(())
    }

    fn op_add_assign(&mut self, env: &mut Env) -> OpResult {
        let v = self.pop();
        let target = self.pop();
        match &target {
            Value::State(state) => {
                let site = self.site();
                for part in fragment_parts(&v, "+=")? {
                    state::push_part(state, part, site, env.template, env.outbox);
                }
                failed_now(state)?;
            }
            Value::List(list) => match &v {
                Value::List(other) => {
                    let items = other.borrow().clone();
                    list.borrow_mut().extend_from(&items);
                    if let Some(message) = env.limits.oversized(&target) {
                        return fail(message);
                    }
                }
                other => return fail(format!("cannot extend a list with {}", other.type_name())),
            },
            _ => {
                let sum = binary_add(&target, &v, env.limits).or_else(fail)?;
                self.stack.push(sum);
                return Ok(());
            }
        }
        self.stack.push(target);
        Ok(())
    }

    /// Pops a primitive's arguments and resolves them against the run's defaults.
    fn build_call(&mut self, env: &Env, spec: u32) -> Result<CallOp, Flow> {
        let spec: &CallSpec = &env.linked.program.call_specs[spec as usize];
        let values = self.pop_n(spec.params.len());
        let site = self.site();
        let d = env.defaults;
        let mut name = None;
        let mut p = SamplingParams {
            max_new_tokens: d.max_new_tokens,
            min_new_tokens: 0,
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            temperature: d.temperature,
            top_p: d.top_p,
            top_k: d.top_k,
            min_p: d.min_p,
            frequency_penalty: d.frequency_penalty,
            presence_penalty: d.presence_penalty,
            ignore_eos: false,
            regex: None,
            json_schema: None,
            choices: None,
            dtype: None,
            seed: d.seed,
        };
        let mut method = ChoicesMethod::TokenLengthNormalized;
        for (param, value) in spec.params.iter().zip(values) {
            if matches!(value, Value::None) {
                continue;
            }
            let what = param.name();
            match param {
                GenParam::Name => name = Some(expect_str(&value, what)?),
                GenParam::MaxTokens => p.max_new_tokens = expect_count(&value, what)?,
                GenParam::MinTokens => p.min_new_tokens = expect_count(&value, what)?,
                GenParam::Stop => p.stop = expect_str_list(&value, what, true)?,
                GenParam::StopTokenIds => {
                    p.stop_token_ids = expect_list(&value, what)?
                        .iter()
                        .map(|v| expect_count(v, what))
                        .collect::<Result<_, _>>()?
                }
                GenParam::Temperature => p.temperature = expect_number(&value, what)?,
                GenParam::TopP => p.top_p = expect_number(&value, what)?,
                GenParam::TopK => p.top_k = expect_int(&value, what)?,
                GenParam::MinP => p.min_p = expect_number(&value, what)?,
                GenParam::FrequencyPenalty => p.frequency_penalty = expect_number(&value, what)?,
                GenParam::PresencePenalty => p.presence_penalty = expect_number(&value, what)?,
                GenParam::IgnoreEos => p.ignore_eos = value.is_truthy(),
                GenParam::Regex => p.regex = Some(expect_str(&value, what)?.to_string()),
                GenParam::JsonSchema => {
                    p.json_schema = Some(match &value {
                        Value::Str(s) => s.to_string(),
                        Value::Map(_) => value.to_json().to_string(),
                        other => {
                            return fail(format!(
                                "json_schema must be a string or a map, not {}",
                                other.type_name()
                            ));
                        }
                    })
                }
                GenParam::Choices => p.choices = Some(expect_str_list(&value, what, false)?),
                GenParam::Dtype => {
                    let dtype = expect_str(&value, what)?;
                    if !["int", "float", "bool", "str"].contains(&&*dtype) {
                        return fail(format!(
                            "dtype must be \"int\", \"float\", \"bool\" or \"str\", not {dtype:?}"
                        ));
                    }
                    p.dtype = Some(dtype.to_string());
                }
                GenParam::Seed => p.seed = Some(expect_int(&value, what)? as u64),
                GenParam::ChoicesMethod => {
                    let m = expect_str(&value, what)?;
                    method = ChoicesMethod::from_name(&m).ok_or_else(|| {
                        Flow::Error(format!("unknown choices_method {m:?}"), None)
                    })?;
                }
            }
        }
        let kind = match spec.kind {
            PrimitiveKind::Gen => RequestKind::Gen(p),
            PrimitiveKind::Select => {
                let choices = p.choices.unwrap_or_default();
                if choices.is_empty() {
                    return fail("select needs at least one choice");
                }
                RequestKind::Select(SelectParams {
                    choices,
                    method,
                    temperature: p.temperature,
                })
            }
        };
        Ok(CallOp { name, kind, site })
    }
}

/// Halts the instance until `state` is idle; fails it if the state failed.
fn wait_until_idle(state: &StateRef) -> OpResult {
    let s = state.borrow();
    if s.is_busy() {
        return Err(Flow::Wait(state.clone()));
    }
    if s.error.is_some() {
        return Err(Flow::Failed(state.clone()));
    }
    Ok(())
}

/// Copies the variables generated in each fork back to the parent, as lists (SGLang's
/// `gather_variable` join).
fn join_forks(forks: &[StateRef]) {
    let Some(parent) = forks
        .first()
        .and_then(|f| f.borrow().parent.as_ref().and_then(|p| p.upgrade()))
    else {
        return;
    };
    let mut names: Vec<Str> = Vec::new();
    for fork in forks {
        for name in &fork.borrow().generated {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
    }
    let mut p = parent.borrow_mut();
    for name in names {
        let values = forks
            .iter()
            .map(|f| f.borrow().vars.get(&name).cloned().unwrap_or_default())
            .collect();
        p.vars.insert(name, Value::list(values));
    }
}

/// The parts a value contributes to a prompt: a string is text, a fragment its parts.
fn fragment_parts(v: &Value, context: &str) -> Result<Vec<Part>, Flow> {
    match v {
        Value::Str(s) => Ok(vec![Part::Text(s.clone())]),
        Value::Fragment(parts) => Ok(parts.to_vec()),
        other => fail_with_help(
            format!(
                "cannot use {} as prompt text in `{context}`",
                other.type_name()
            ),
            "convert it first, e.g. `str(x)`",
        ),
    }
}

/// What `for` iterates over `v`: an iterator value (`GetIter`).
pub(crate) fn iterate(v: Value) -> Result<Value, Flow> {
    let iter = match v {
        Value::List(list) => Iter::List { list, next: 0 },
        Value::Str(s) => Iter::Chars {
            chars: s.chars().collect(),
            next: 0,
        },
        Value::Map(m) => Iter::List {
            list: Rc::new(RefCell::new(
                m.borrow().keys().map(|k| Value::Str(k.clone())).collect(),
            )),
            next: 0,
        },
        Value::Iterator(it) => return Ok(Value::Iterator(it)),
        other => {
            return fail_with_help(
                format!("cannot iterate over {}", other.type_name()),
                "`for` works on lists, strings and maps; use range(n) for numbers",
            );
        }
    };
    Ok(Value::Iterator(Rc::new(RefCell::new(iter))))
}

pub(crate) fn index(obj: &Value, key: &Value) -> Result<Value, Flow> {
    match (obj, key) {
        (Value::List(list), Value::Int(i)) => {
            let list = list.borrow();
            match normalize_index(*i, list.len()) {
                Some(at) => Ok(list.get(at).unwrap_or_default()),
                None => fail(format!(
                    "list index {i} out of range for length {}",
                    list.len()
                )),
            }
        }
        (Value::Str(s), Value::Int(i)) => {
            let count = s.chars().count();
            match normalize_index(*i, count) {
                Some(at) => Ok(Value::str(
                    &s.chars().nth(at).map(String::from).unwrap_or_default(),
                )),
                None => fail(format!("string index {i} out of range for length {count}")),
            }
        }
        (Value::Map(map), Value::Str(k)) => match dict_index_of(&map.borrow(), k) {
            Some(at) => Ok(map.borrow()[at].clone()),
            None => fail_with_help(
                format!("map has no key {:?}", &**k),
                "use `m.get(key, default)` when a key may be missing",
            ),
        },
        (Value::State(state), Value::Str(k)) => {
            let s = state.borrow();
            match s.vars.get(k) {
                Some(v) => Ok(v.clone()),
                None => {
                    let known: Vec<&str> = s.vars.keys().map(|k| &**k).collect();
                    let help = if known.is_empty() {
                        "no variable has been generated on this state yet".to_string()
                    } else {
                        format!("variables on this state: {}", known.join(", "))
                    };
                    fail_with_help(format!("state has no variable {:?}", &**k), help)
                }
            }
        }
        _ => fail(format!(
            "cannot index {} with {}",
            obj.type_name(),
            key.type_name()
        )),
    }
}

pub(crate) fn normalize_index(i: i64, len: usize) -> Option<usize> {
    let at = if i < 0 { len as i64 + i } else { i };
    (0..len as i64).contains(&at).then_some(at as usize)
}

pub(crate) fn contains(container: &Value, item: &Value) -> Result<bool, String> {
    match (container, item) {
        (Value::Str(s), Value::Str(sub)) => Ok(s.contains(&**sub)),
        (Value::List(list), _) => Ok(list.borrow().iter().any(|v| v.equals(item))),
        (Value::Map(map), Value::Str(k)) => Ok(dict_index_of(&map.borrow(), k).is_some()),
        _ => Err(format!(
            "cannot test {} in {}",
            item.type_name(),
            container.type_name()
        )),
    }
}

pub(crate) fn arith(
    a: &Value,
    b: &Value,
    symbol: &str,
    int_op: fn(i64, i64) -> Option<i64>,
    float_op: fn(f64, f64) -> f64,
) -> Result<Value, String> {
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => int_op(*x, *y)
            .map(Value::Int)
            .ok_or_else(|| format!("integer overflow in {x} {symbol} {y}")),
        (Value::Int(_) | Value::Float(_), Value::Int(_) | Value::Float(_)) => {
            Ok(Value::Float(float_op(
                a.as_float().unwrap_or_default(),
                b.as_float().unwrap_or_default(),
            )))
        }
        _ => Err(format!(
            "unsupported operand types for {symbol}: {} and {}",
            a.type_name(),
            b.type_name()
        )),
    }
}

/// Grows the stack to `len` with `none`s: a frame's locals past its arguments. (`resize`
/// clones one `none` per slot through `Value::clone`; kept out of line, as `resize` was, so
/// the interpreter's loop keeps its registers.)
#[inline(never)]
fn grow_with_nones(stack: &mut Vec<Value>, len: usize) {
    // One reserve, then plain writes (`resize_with` went through `extend`'s machinery, 50
    // instructions for the usual two or three slots).
    stack.reserve(len.saturating_sub(stack.len()));
    while stack.len() < len {
        push_value(stack, Value::None);
    }
}

/// `+`; a string or list it makes is checked against the size limits before it is built, so
/// numbers pay nothing for the limits.
pub fn binary_add(a: &Value, b: &Value, limits: &Limits) -> Result<Value, String> {
    match (a, b) {
        (Value::Str(x), Value::Str(y)) => {
            limits.fits_string(x.len() + y.len())?;
            Ok(Value::Str(Str::concat(x.len() + y.len(), [&**x, &**y])))
        }
        (Value::List(x), Value::List(y)) => {
            limits.fits_items(x.borrow().len() + y.borrow().len())?;
            let mut items = x.borrow().clone();
            items.extend_from(&y.borrow());
            Ok(Value::list_of(items))
        }
        (Value::Fragment(_) | Value::Str(_), Value::Fragment(_) | Value::Str(_)) => {
            let mut parts = fragment_parts(a, "+").map_err(flow_message)?;
            parts.extend(fragment_parts(b, "+").map_err(flow_message)?);
            Ok(Value::Fragment(Rc::from(parts)))
        }
        (Value::Str(_), _) | (_, Value::Str(_)) => Err(format!(
            "cannot add {} and {}; convert with str(...) first",
            a.type_name(),
            b.type_name()
        )),
        _ => arith(a, b, "+", i64::checked_add, |x, y| x + y),
    }
}

fn flow_message(flow: Flow) -> String {
    match flow {
        Flow::Error(m, _) => m,
        _ => "unexpected suspension".to_string(),
    }
}

/// `*`; a repetition is checked against the size limits before anything is allocated.
pub(crate) fn binary_mul(a: &Value, b: &Value, limits: &Limits) -> Result<Value, String> {
    match (a, b) {
        (Value::Str(s), Value::Int(n)) | (Value::Int(n), Value::Str(s)) => {
            let n = (*n).max(0) as usize;
            limits.fits_string(s.len().saturating_mul(n))?;
            Ok(Value::string(s.repeat(n)))
        }
        (Value::List(l), Value::Int(n)) | (Value::Int(n), Value::List(l)) => {
            let n = (*n).max(0) as usize;
            let items = l.borrow();
            limits.fits_items(items.len().saturating_mul(n))?;
            Ok(Value::list_of(items.repeat(n)))
        }
        _ => arith(a, b, "*", i64::checked_mul, |x, y| x * y),
    }
}

pub(crate) fn binary_div(a: &Value, b: &Value) -> Result<Value, String> {
    let numeric = |v: &Value| matches!(v, Value::Int(_) | Value::Float(_));
    match (a.as_float(), b.as_float()) {
        (Some(_), Some(y)) if numeric(a) && numeric(b) && y == 0.0 => {
            Err("division by zero".to_string())
        }
        (Some(x), Some(y)) if numeric(a) && numeric(b) => Ok(Value::Float(x / y)),
        _ => Err(format!(
            "unsupported operand types for /: {} and {}",
            a.type_name(),
            b.type_name()
        )),
    }
}

pub(crate) fn binary_mod(a: &Value, b: &Value) -> Result<Value, String> {
    match (a, b) {
        (Value::Int(_), Value::Int(0)) => Err("modulo by zero".to_string()),
        (Value::Int(x), Value::Int(y)) => {
            // Floored, as in Python: the result takes the divisor's sign.
            let r = x.wrapping_rem(*y);
            Ok(Value::Int(if r != 0 && (r < 0) != (*y < 0) {
                r + y
            } else {
                r
            }))
        }
        (Value::Int(_) | Value::Float(_), Value::Int(_) | Value::Float(_)) => {
            let (x, y) = (
                a.as_float().unwrap_or_default(),
                b.as_float().unwrap_or_default(),
            );
            if y == 0.0 {
                return Err("modulo by zero".to_string());
            }
            Ok(Value::Float(x - y * (x / y).floor()))
        }
        _ => Err(format!(
            "unsupported operand types for %: {} and {}",
            a.type_name(),
            b.type_name()
        )),
    }
}

fn expect_str(v: &Value, what: &str) -> Result<Str, Flow> {
    match v {
        Value::Str(s) => Ok(s.clone()),
        other => fail(format!(
            "{what} must be a string, not {}",
            other.type_name()
        )),
    }
}

fn expect_int(v: &Value, what: &str) -> Result<i64, Flow> {
    match v {
        Value::Int(n) => Ok(*n),
        other => fail(format!("{what} must be an int, not {}", other.type_name())),
    }
}

fn expect_count(v: &Value, what: &str) -> Result<u32, Flow> {
    let n = expect_int(v, what)?;
    u32::try_from(n).or_else(|_| {
        fail(format!(
            "{what} must be between 0 and {}, got {n}",
            u32::MAX
        ))
    })
}

fn expect_number(v: &Value, what: &str) -> Result<f64, Flow> {
    match v {
        Value::Int(n) => Ok(*n as f64),
        Value::Float(x) => Ok(*x),
        other => fail(format!(
            "{what} must be a number, not {}",
            other.type_name()
        )),
    }
}

fn expect_list(v: &Value, what: &str) -> Result<Vec<Value>, Flow> {
    match v {
        Value::List(l) => Ok(l.borrow().to_vec()),
        other => fail(format!("{what} must be a list, not {}", other.type_name())),
    }
}

/// A list of strings; with `single_ok` a lone string stands for a list of one.
fn expect_str_list(v: &Value, what: &str, single_ok: bool) -> Result<Vec<String>, Flow> {
    match v {
        Value::Str(s) if single_ok => Ok(vec![s.to_string()]),
        Value::List(l) => l
            .borrow()
            .iter()
            .map(|item| match item {
                Value::Str(s) => Ok(s.to_string()),
                other => fail(format!(
                    "{what} must hold strings, found {}",
                    other.type_name()
                )),
            })
            .collect(),
        other => fail(format!(
            "{what} must be a list of strings, not {}",
            other.type_name()
        )),
    }
}

/// The error that ended an instance because one of its states failed.
/// Stops the program at once when an append failed the state (it grew past a limit); later
/// failures (a backend error) surface when the state is read.
fn failed_now(state: &StateRef) -> OpResult {
    if state.borrow().error.is_some() {
        return Err(Flow::Failed(state.clone()));
    }
    Ok(())
}

/// `1.5s`, `250ms`, `10m`: a limit as the user would write it.
fn humanize_duration(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(60_000) && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else if ms >= 1000 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format!("{ms}ms")
    }
}

pub fn state_failure(program: &Program, state: &StateRef) -> Option<RuntimeError> {
    let s = state.borrow();
    let error = s.error.as_ref()?;
    let trace = match error.site {
        Some(site) => {
            let f = &program.functions[site.function as usize];
            vec![TraceFrame {
                function: f.name.clone(),
                span: f.spans.get(site.ip as usize).copied().unwrap_or(f.span),
            }]
        }
        None => Vec::new(),
    };
    Some(RuntimeError {
        message: error.message.clone(),
        trace,
        help: None,
        output: Vec::new(),
    })
}
