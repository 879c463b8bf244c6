//! The JIT tier: hot pure functions compiled to machine code with cranelift.
//!
//! A function is compiled per *specialization*: the function and the types of its arguments
//! (int, float, bool, none). `analyze` decides whether it is eligible (no suspension point, only
//! what the code generator knows) and types every slot; `codegen` emits cranelift IR. Calls
//! between compiled functions are native calls.
//!
//! **Architecture Invariant:** the JIT never changes a program's meaning. Anything that could
//! make the interpreter raise an error (overflow, division by zero, NaN in a comparison, the call
//! depth limit) is a *deopt*: compiled code spills its frames and the interpreter resumes at that
//! instruction, so errors, messages and spans are the interpreter's. `tests/jit.rs` runs every
//! program both ways and compares.

mod analyze;
mod codegen;
mod inline;
pub mod runtime;

pub use crate::jit_options::{JitMode, JitOptions};

use crate::value::{Iter, Value};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{FuncId, Module};
use sglc_compiler::bytecode::{FunctionId, Program};
use std::cell::RefCell;
// (foldhash, not SipHash, in the compiler's maps: 1.4% fewer instructions compiling the
// benchmark functions by the baseline tier.)
use foldhash::{HashMap, HashMapExt};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The static type of a slot in compiled code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Ty {
    Int,
    Float,
    Bool,
    None,
    /// `range(...)` before `GetIter`.
    Range,
    /// A `for` loop's position in a `range(...)`.
    RangeIter,
    /// Any other value (a string, list, map, ...), or `none`: an object slot (`runtime`).
    Obj,
    /// A `for` loop's iterator over an object: an object slot.
    ObjIter,
    /// A `for` loop's iterator over a list of ints, as a loop entry met it (packed): an object
    /// slot, whose items compiled code takes as ints behind a guard (`runtime::next_scalar`).
    IntsIter,
    /// The same over a list of bools.
    BoolsIter,
}

impl std::str::FromStr for Ty {
    type Err = String;

    fn from_str(s: &str) -> Result<Ty, String> {
        match s {
            "int" => Ok(Ty::Int),
            "float" => Ok(Ty::Float),
            "bool" => Ok(Ty::Bool),
            "none" => Ok(Ty::None),
            "obj" | "str" | "list" | "map" => Ok(Ty::Obj),
            other => Err(format!(
                "argument types are int, float, bool, none or obj, not `{other}`"
            )),
        }
    }
}

impl Ty {
    pub fn of(value: &Value) -> Option<Ty> {
        match value {
            Value::Int(_) => Some(Ty::Int),
            Value::Float(_) => Some(Ty::Float),
            Value::Bool(_) => Some(Ty::Bool),
            Value::None => Some(Ty::None),
            // Only a `for` loop holds one; `osr_frame` looks at what it iterates.
            Value::Iterator(_) => None,
            _ => Some(Ty::Obj),
        }
    }

    fn is_scalar(self) -> bool {
        matches!(self, Ty::Int | Ty::Float | Ty::Bool | Ty::None)
    }

    fn is_number(self) -> bool {
        matches!(self, Ty::Int | Ty::Float)
    }

    fn name(self) -> &'static str {
        match self {
            Ty::Int => "int",
            Ty::Float => "float",
            Ty::Bool => "bool",
            Ty::None => "none",
            Ty::Range | Ty::RangeIter => "a range",
            Ty::Obj => "an object",
            Ty::ObjIter | Ty::IntsIter | Ty::BoolsIter => "an iterator",
        }
    }

    fn code(self) -> char {
        match self {
            Ty::Int => 'i',
            Ty::Float => 'f',
            Ty::Bool => 'b',
            Ty::None => 'n',
            Ty::Range | Ty::RangeIter => 'r',
            Ty::Obj => 'o',
            Ty::ObjIter | Ty::IntsIter | Ty::BoolsIter => 'j',
        }
    }

    /// The value of a slot of this type; an object slot's box is taken over.
    ///
    /// # Safety
    /// For an object type, `bits` is 0 or a box of `runtime::into_slot` that nothing else
    /// will use again.
    unsafe fn value_of(self, bits: i64) -> Value {
        match self {
            Ty::Int => Value::Int(bits),
            Ty::Float => Value::Float(f64::from_bits(bits as u64)),
            Ty::Bool => Value::Bool(bits != 0),
            // SAFETY: as the caller guarantees.
            Ty::Obj | Ty::ObjIter | Ty::IntsIter | Ty::BoolsIter => unsafe {
                runtime::from_slot(bits)
            },
            _ => Value::None,
        }
    }

    /// A value as the bits of its slot: a new box (a clone) for an object, which the slot owns.
    fn bits_of(value: &Value) -> i64 {
        match value {
            Value::Int(n) => *n,
            Value::Float(x) => x.to_bits() as i64,
            Value::Bool(b) => i64::from(*b),
            Value::None => 0,
            other => runtime::into_slot(other.clone()),
        }
    }
}

/// A function compiled for these argument types.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Spec {
    pub function: FunctionId,
    pub args: Vec<Ty>,
}

/// Most arguments a compiled function takes (the native call is made through a fixed set of
/// function-pointer types).
const MAX_ARGS: usize = 6;

/// Shared between compiled code and the runtime; compiled code reads and writes the first
/// three fields at fixed offsets.
#[repr(C)]
pub struct JitCtx {
    /// Nonzero once compiled code has deopted; every caller then deopts too. A guard's deopt
    /// writes its site here (`deopt_site_packed`, never 0 or 1) with its slots in
    /// `spill_buffer`, pending; `take_pending_deopt` moves it to `deopts` and leaves 1.
    status: i64,
    /// Loop iterations compiled code may still run before it hands back to the interpreter,
    /// so a long loop cannot keep the batch's other programs from running.
    fuel: i64,
    /// Where a guard's deopt spills its slots: `spill_buffer`'s memory, as large as the
    /// largest site's spill (a store relative to the context is one instruction; a stack slot
    /// of its own per site cost cranelift an address and a frame).
    spill: *mut i64,
    /// Where a caller whose callee deopted spills its slots before calling `sglc_jit_deopt`:
    /// apart from `spill`, which may still hold the callee's pending slots.
    chain_spill: *mut i64,
    spill_buffer: Vec<i64>,
    chain_spill_buffer: Vec<i64>,
    /// Frames reported by deopts, innermost first: (site, spilled slots).
    deopts: Vec<(usize, Vec<i64>)>,
    /// When out of fuel, compiled code asks `sglc_jit_refuel` whether to go on.
    turn: Turn,
    /// Fuel of the tanks emptied since compiled code was entered (each refill adds one).
    spent_before: u64,
    /// The fuel compiled code was entered with, and each refill's.
    tank: i64,
    /// Some code of the baseline tier is compiled: running out of fuel asks for the optimizing
    /// tier (`tier_up_due`) and hands back to the interpreter, which calls the new code.
    baseline_code: bool,
    tier_up_due: bool,
    /// While a tier-up compiles on its own thread: set by that thread when it is done.
    tier_up_done: Option<Arc<AtomicBool>>,
    /// What the runtime helpers call and check.
    host: Rc<runtime::Host>,
}

impl JitCtx {
    /// Readies the context for a new entry into compiled code.
    fn start(&mut self, turn: Turn) {
        self.status = 0;
        // Baseline code gets smaller tanks, so a loop running it hands back (and the next
        // entry tiers it up) about when a tier-up is due, or soon after its optimized code
        // is ready.
        self.tank = if self.baseline_code || self.tier_up_done.is_some() {
            TIER_UP_WORK as i64
        } else {
            FUEL
        };
        self.fuel = self.tank;
        self.turn = turn;
        self.spent_before = 0;
        self.deopts.clear();
    }

    /// Fuel spent since the entry: every tank emptied and the current one's use.
    fn spent(&self) -> u64 {
        let left = self.fuel.clamp(0, self.tank);
        self.spent_before.saturating_add((self.tank - left) as u64)
    }

    /// Whether handing back to the interpreter now lets it run better code: the baseline
    /// tier's code is due a tier-up and none is compiling, or the one compiling is done.
    fn tier_up_ready(&self) -> bool {
        match &self.tier_up_done {
            Some(done) => done.load(Ordering::Acquire),
            None => self.baseline_code,
        }
    }

    /// Moves a guard's pending deopt (its site in `status`, its slots in `spill_buffer`) to
    /// `deopts`; the innermost frame of a deopt, so it comes first.
    fn take_pending_deopt(&mut self) {
        if self.status & DEOPT_SITE_TAG == 0 {
            return;
        }
        let (site, count) = deopt_site_unpacked(self.status);
        self.deopts
            .push((site, self.spill_buffer[..count].to_vec()));
        self.status = 1;
    }
}

/// When compiled code must hand back to the interpreter: other programs wait, or a limit of
/// the program is reached. Checked each time it runs out of fuel.
#[derive(Clone, Copy, Debug, Default)]
pub struct Turn {
    pub share_time: bool,
    pub deadline: Option<std::time::Instant>,
    /// Fuel (loop iterations and calls) the program may still spend.
    pub budget: Option<u64>,
}

const CTX_STATUS: i32 = 0;

/// What compiled code returns: its result's bits, and whether it deopted instead (then the
/// context's status says where, and `value` means nothing). Compiled callers test `deopted`,
/// a register, rather than load the status after every call; the interpreter reads the
/// status. Two `i64`s, returned in two registers by the C calling convention, as cranelift
/// returns its two results (`codegen::signature`).
#[repr(C)]
struct Returned {
    value: i64,
    deopted: i64,
}
const CTX_FUEL: i32 = 8;
const CTX_SPILL: i32 = 16;
const CTX_CHAIN_SPILL: i32 = 24;

use crate::jit_options::FUEL;

/// Fuel spent by compiled code, while code of the baseline tier exists, after which that code
/// is compiled again by the optimizing tier: 10,000 loop iterations, or some 40,000 calls,
/// 50-200 microseconds, a tenth of what compiling it takes. The compiling runs on a thread
/// of its own, so starting it early costs the program little, and until it is done the
/// program runs baseline code, up to 2x slower (fib(30) runs 5 ms in all). It is also the tank
/// of baseline code and of code running while a tier-up compiles: a long run of baseline code
/// hands back to be tiered up then, and the optimized code is used within a tank of being
/// done. A smaller tank would find it sooner, but a loop hands back to the interpreter and is
/// entered again at every empty tank: with tanks of 2,000 the nested-loop benchmark lost
/// about a tenth of its speed while recursive fib(30) gained nothing measurable.
const TIER_UP_WORK: u64 = FUEL as u64 / 10;

/// Entries into compiled code, while code of the baseline tier exists, after which it is
/// compiled again by the optimizing tier even if it spent little fuel.
const TIER_UP_ENTRIES: u32 = 1000;

/// Called by compiled code out of fuel: 1 to hand back to the interpreter (others wait, the
/// deadline passed or the instruction budget is spent), else 0 with the tank refilled.
extern "C" fn sglc_jit_refuel(ctx: *mut JitCtx) -> i64 {
    // SAFETY: compiled code passes the context it was given.
    let ctx = unsafe { &mut *ctx };
    if ctx.tier_up_ready() {
        // Code that runs this long is worth optimizing (or its optimized code is ready); the
        // interpreter finishes the frames that are running and calls the optimized code for
        // what they call.
        ctx.tier_up_due = true;
        return 1;
    }
    let turn = ctx.turn;
    // The tank empties: it and each refill, all spent.
    let spent = ctx.spent();
    if turn.share_time
        || turn.budget.is_some_and(|budget| spent >= budget)
        || turn
            .deadline
            .is_some_and(|deadline| std::time::Instant::now() >= deadline)
    {
        return 1;
    }
    ctx.spent_before = ctx.spent_before.saturating_add(ctx.tank as u64);
    ctx.fuel = ctx.tank;
    0
}

/// Called by compiled code to report a frame it leaves to the interpreter.
extern "C" fn sglc_jit_deopt(ctx: *mut JitCtx, site: i64) {
    let (site, count) = deopt_site_unpacked(site);
    // SAFETY: compiled code passes the context it was given, having spilled `count` slots
    // into its chain spill buffer, which `Jit::finish` made large enough for every site.
    let ctx = unsafe { &mut *ctx };
    // The callee's frame, if it was a guard that deopted, is inner to this one.
    ctx.take_pending_deopt();
    let slots = ctx.chain_spill_buffer[..count].to_vec();
    ctx.status = 1;
    ctx.deopts.push((site, slots));
}

/// A deopt site's index and the number of slots it spills, as one constant argument. The tag
/// bit keeps it unlike any constant of the hot path: cranelift shares equal constants across
/// blocks, and a deopt's argument that equalled, say, the `1` of `n - 1` kept that `1` in a
/// register saved and restored by every call of the function.
fn deopt_site_packed(site: usize, count: usize) -> i64 {
    DEOPT_SITE_TAG | ((count as i64) << 32) | site as i64
}

/// Marks a packed deopt site; also what tells a guard's pending deopt in `JitCtx::status`
/// from the 1 of a deopt already reported.
const DEOPT_SITE_TAG: i64 = 1 << 62;

fn deopt_site_unpacked(packed: i64) -> (usize, usize) {
    (
        (packed & 0xffff_ffff) as usize,
        ((packed >> 32) & 0x3fff_ffff) as usize,
    )
}

/// Where compiled code resumes in the interpreter, and how to rebuild the frame's values.
#[derive(Clone, Debug)]
pub struct DeoptSite {
    pub function: FunctionId,
    pub ip: u32,
    pub local_count: u32,
    pub kinds: Vec<SlotKind>,
}

impl DeoptSite {
    /// Slots the site writes to the spill buffer.
    fn spilled(&self) -> usize {
        self.kinds.iter().map(|kind| kind.spilled()).sum()
    }
}

#[derive(Clone, Copy, Debug)]
pub enum SlotKind {
    Value(Ty),
    /// A scalar constant at this site (never a box of its own): not spilled.
    Constant(Ty, i64),
    /// Four raw slots: start, step, index, count.
    RangeIter,
}

impl SlotKind {
    /// Raw slots a deopt writes for this one.
    fn spilled(self) -> usize {
        match self {
            SlotKind::Value(_) => 1,
            SlotKind::Constant(..) => 0,
            SlotKind::RangeIter => 4,
        }
    }
}

/// A frame handed back to the interpreter: its function, where to resume, its locals followed
/// by its operand stack.
pub struct ResumeFrame {
    pub function: FunctionId,
    pub ip: u32,
    pub values: Vec<Value>,
}

/// What calling a function through the JIT gave.
pub enum JitCall {
    /// Not compiled (cold, ineligible, or other argument types): interpret it.
    Interpret,
    Returned(Value),
    /// Compiled code stopped; the interpreter resumes these frames, outermost first. When
    /// the code ran out of fuel (a long loop), the program should yield to the others first.
    Deopt {
        frames: Vec<ResumeFrame>,
        out_of_fuel: bool,
    },
}

/// Compiled code's entry point and the type it returns.
type Entry = (*const u8, Ty);

enum FunctionState {
    Cold(u32),
    /// Specializations tried: their code and return type, or `None` when ineligible.
    Tried(Vec<(Vec<Ty>, Option<Entry>)>),
    Ineligible,
}

/// One JIT per batch: the cranelift module, compiled code, hotness counters, deopt sites.
/// Compiled code is shared by every program instance of the batch.
pub struct Jit {
    options: JitOptions,
    /// The module compiles with the optimizing tier's settings; this is the baseline's.
    baseline_isa: cranelift_codegen::isa::OwnedTargetIsa,
    /// The optimizing tier's settings, for tier-ups compiled on a thread of their own.
    optimized_isa: cranelift_codegen::isa::OwnedTargetIsa,
    /// Specializations and loop entries whose code is the baseline tier's: compiled again,
    /// optimized, at the next tier-up.
    baseline_specs: Vec<Spec>,
    baseline_osr: Vec<BaselineLoop>,
    /// The IR of code of the baseline tier that is to tier up, by its id: a tier-up compiles
    /// it again with the optimizing tier's settings, without building it again.
    baseline_ir: HashMap<FuncId, cranelift_codegen::ir::Function>,
    /// The IR of small optimized code and of prefixes, for the optimizing tier to inline
    /// into callers.
    inlinable: inline::Inlinable,
    /// The tier-up compiling on its own thread, if any.
    tier_up_job: Option<TierUpJob>,
    /// Loop entries tiered up: compiled by the optimizing tier from now on.
    optimized_osr: foldhash::HashSet<(FunctionId, u32)>,
    /// Functions declared so far, which numbers their names.
    declared: u64,
    /// Work done and entries made since the last tier-up (`count_baseline_run`).
    baseline_work: u64,
    baseline_entries: u32,
    /// Taken by `Drop for Jit`, which frees its code.
    module: std::mem::ManuallyDrop<JITModule>,
    ctx: cranelift_codegen::Context,
    builder_ctx: FunctionBuilderContext,
    deopt_fn: FuncId,
    refuel_fn: FuncId,
    functions: Vec<FunctionState>,
    compiled: HashMap<Spec, (FuncId, *const u8)>,
    return_types: HashMap<Spec, Ty>,
    /// Loop headers compiled for on-stack replacement, by the slot types they were entered
    /// with, and those that cannot be.
    osr_compiled: HashMap<(FunctionId, u32), Vec<(OsrShape, Entry)>>,
    /// Loop headers that cannot be compiled, by function (a scan of a few entries costs less
    /// than hashing on every iteration of an interpreted loop).
    osr_failed: Vec<Rc<Vec<u32>>>,
    /// Distinct loop headers per function, counted on first need.
    loop_headers: Vec<Option<usize>>,
    /// Which locals each instruction may read, per function, made at its first loop entry:
    /// an entry's shape leaves out the scalars its loop writes before it reads them.
    osr_liveness: Vec<Option<analyze::Liveness>>,
    /// Back edges per function taken in the interpreter after its code was compiled.
    resumed_back_edges: Vec<u32>,
    sites: Vec<DeoptSite>,
    /// Cranelift IR of every compiled specialization, when asked for (`sglc disasm --jit`).
    clif: Option<Vec<(Spec, String)>>,
    /// Why specializations were not compiled, for the disassembler.
    rejected: Vec<(Spec, String)>,
    /// Boxed so it never moves: compiled code has its address as a constant.
    runtime: Box<JitCtx>,
    /// Values compiled code clones from (string constants, globals that are objects): boxes
    /// at fixed addresses, kept as long as the code.
    pinned: codegen::Pinned,
    /// The call depth limit compiled code checks (the run's `Limits::max_call_depth`).
    max_depth: usize,
    /// The longest `range()` compiled code iterates; a longer one is the interpreter's to
    /// refuse (the run's `Limits::max_collection_len`).
    pub max_range: usize,
    /// Nanoseconds spent compiling, and specializations compiled.
    pub compile_nanos: u64,
    pub compiled_count: usize,
    /// Calls the optimizing tier inlined (`inline`), in code installed.
    pub inlined_calls: usize,
}

/// A loop entry compiled by the baseline tier (`Jit::osr`): its function and header, and its
/// code's id (the entries holding that code get the optimized code instead at the tier-up).
struct BaselineLoop {
    key: (FunctionId, u32),
    id: FuncId,
}

/// A tier-up compiling on a thread of its own (`Jit::start_tier_up`), while the baseline
/// tier's code goes on running: what it compiles again, by the ids of their optimized code.
struct TierUpJob {
    specs: Vec<(Spec, Ty, FuncId)>,
    loops: Vec<(BaselineLoop, FuncId)>,
    /// The IR of the small functions among `specs` and their prefixes, for later code to
    /// inline.
    inlinable: inline::Inlinable,
    /// Set by the compile thread when `compiled` holds the result.
    done: Arc<AtomicBool>,
    /// Set when the JIT is dropped: the compile thread skips what is left of the job.
    abandoned: Arc<AtomicBool>,
    compiled: std::sync::mpsc::Receiver<Result<Vec<MachineCode>, String>>,
}

impl TierUpJob {
    fn is_finished(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    /// The compiled code; a job whose thread went away without a word failed.
    fn result(&self) -> Result<Vec<MachineCode>, String> {
        self.compiled
            .recv()
            .unwrap_or_else(|_| Err("the compiling thread stopped".to_string()))
    }
}

/// What a tier-up whose JIT was dropped gives instead of code.
const ABANDONED: &str = "the JIT is gone";

/// Work for the compile thread: it compiles, sends the result and sets the job's `done`.
type CompileWork = Box<dyn FnOnce() + Send>;

/// Hands `work` to the process's compile thread, starting it on first need. One thread is
/// kept for every tier-up of every JIT rather than one started per tier-up: starting a thread
/// took 90-220 µs before it began compiling, handing work to a waiting one 30-40 µs, and the
/// program runs baseline code, up to twice as slow, until the optimized code arrives. Jobs of
/// JITs running at once (batches on several threads) queue, in the order they came.
/// `Err` gives the work back when no thread can be started.
fn send_to_compile_thread(work: CompileWork) -> Result<(), CompileWork> {
    static SENDER: std::sync::Mutex<Option<std::sync::mpsc::Sender<CompileWork>>> =
        std::sync::Mutex::new(None);
    let mut sender = SENDER
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if sender.is_none() {
        let (send, receive) = std::sync::mpsc::channel::<CompileWork>();
        let started = std::thread::Builder::new()
            .name("sglc-jit".into())
            .spawn(move || {
                for work in receive {
                    work();
                }
            });
        if started.is_err() {
            return Err(work);
        }
        *sender = Some(send);
    }
    match sender.as_ref().map(|send| send.send(work)) {
        Some(Ok(())) => Ok(()),
        // The thread is gone (it cannot panic: each work catches its own); start another
        // next time.
        Some(Err(returned)) => {
            *sender = None;
            Err(returned.0)
        }
        None => unreachable!("the sender was set above"),
    }
}

impl Drop for Jit {
    /// Frees the JIT's code. A cranelift module dropped as it is keeps its code pages (a
    /// function pointer taken from it may still be in use), and a JIT is made per batch: a
    /// host that runs programs for days would keep a page or more for every run.
    fn drop(&mut self) {
        // Nothing will install what a tier-up in flight compiles: a host running short
        // batches one after another would otherwise queue work the compile thread does for
        // nothing, as fast as batches end.
        if let Some(job) = &self.tier_up_job {
            job.abandoned.store(true, Ordering::Relaxed);
        }
        // SAFETY: compiled code is reached only through this JIT (`call`, `osr`), and runs
        // only within those calls, so none runs now or later. The tier-up thread holds IR and
        // machine code it compiled, none of the module's memory.
        unsafe { std::mem::ManuallyDrop::take(&mut self.module).free_memory() }
    }
}

/// A function's machine code, compiled apart from the module and defined in it later.
struct MachineCode {
    id: FuncId,
    alignment: u64,
    bytes: Vec<u8>,
    relocs: Vec<cranelift_module::ModuleReloc>,
    /// Calls inlined into it.
    inlined_calls: usize,
}

impl MachineCode {
    /// The code of `ctx`'s function, compiled with `isa`, to be defined as `id`.
    fn compile(
        ctx: &mut cranelift_codegen::Context,
        isa: &dyn cranelift_codegen::isa::TargetIsa,
        id: FuncId,
    ) -> Result<MachineCode, String> {
        let mut control = cranelift_codegen::control::ControlPlane::default();
        let alignment = ctx
            .compile(isa, &mut control)
            .map_err(|e| format!("cranelift rejected the function: {:?}", e.inner))?
            .buffer
            .alignment as u64;
        let code = ctx.compiled_code().ok_or("cranelift kept no code")?;
        let relocs = code
            .buffer
            .relocs()
            .iter()
            .map(|reloc| cranelift_module::ModuleReloc::from_mach_reloc(reloc, &ctx.func, id))
            .collect();
        Ok(MachineCode {
            id,
            alignment,
            bytes: code.code_buffer().to_vec(),
            relocs,
            inlined_calls: 0,
        })
    }

    fn define_in(self, module: &mut JITModule) -> Result<(), String> {
        module
            .define_function_bytes(self.id, self.alignment, &self.bytes, &self.relocs)
            .map(|_| ())
            .map_err(|e| format!("cranelift rejected the function: {e:?}"))
    }
}

/// How hard cranelift works on a function (`JitTiers` picks which are used).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    /// No IR optimiser and the single-pass register allocator: about half the compile time.
    Baseline,
    /// Cranelift's egraph optimiser and its backtracking register allocator.
    Optimized,
}

/// Cranelift's target for this machine, with a tier's settings.
fn target_isa(tier: Tier) -> Result<cranelift_codegen::isa::OwnedTargetIsa, String> {
    let mut flags = settings::builder();
    let mut set = |k: &str, v: &str| {
        flags
            .set(k, v)
            .map_err(|e| format!("cranelift setting {k}: {e}"))
    };
    set("use_colocated_libcalls", "false")?;
    set("is_pic", "false")?;
    match tier {
        Tier::Baseline => {
            set("opt_level", "none")?;
            set("regalloc_algorithm", "single_pass")?;
        }
        Tier::Optimized => set("opt_level", "speed")?,
    }
    // The IR verifier checks every function cranelift compiles: on in debug builds (and so
    // in the tests), off in release builds, where it was a quarter of the compile time.
    set(
        "enable_verifier",
        if cfg!(debug_assertions) {
            "true"
        } else {
            "false"
        },
    )?;
    cranelift_native::builder()
        .map_err(|e| format!("this machine is not supported by cranelift: {e}"))?
        .finish(settings::Flags::new(flags))
        .map_err(|e| e.to_string())
}

impl Tier {
    /// A letter for the names of compiled functions.
    fn code(self) -> char {
        match self {
            Tier::Baseline => 'b',
            Tier::Optimized => 'o',
        }
    }
}

impl Jit {
    /// A JIT for `program`, whose helpers may call the natives and methods of `natives` marked
    /// safe for it, under the run's `limits`.
    pub fn new(
        program: &Program,
        natives: &crate::native::Natives,
        options: JitOptions,
        limits: &crate::interp::Limits,
    ) -> Result<Jit, String> {
        let max_depth = limits.max_call_depth;
        let optimized_isa = target_isa(Tier::Optimized)?;
        let baseline_isa = target_isa(Tier::Baseline)?;
        let mut builder = JITBuilder::with_isa(
            optimized_isa.clone(),
            cranelift_module::default_libcall_names(),
        );
        builder.symbol("sglc_jit_deopt", sglc_jit_deopt as *const u8);
        builder.symbol("sglc_jit_refuel", sglc_jit_refuel as *const u8);
        // Runtime helpers are called through their addresses (`codegen::Helper`).
        let mut module = JITModule::new(builder);
        let mut sig = module.make_signature();
        for _ in 0..2 {
            sig.params.push(cranelift_codegen::ir::AbiParam::new(
                cranelift_codegen::ir::types::I64,
            ));
        }
        let deopt_fn = module
            .declare_function("sglc_jit_deopt", cranelift_module::Linkage::Import, &sig)
            .map_err(|e| e.to_string())?;
        let mut refuel_sig = module.make_signature();
        refuel_sig.params.push(cranelift_codegen::ir::AbiParam::new(
            cranelift_codegen::ir::types::I64,
        ));
        refuel_sig
            .returns
            .push(cranelift_codegen::ir::AbiParam::new(
                cranelift_codegen::ir::types::I64,
            ));
        let refuel_fn = module
            .declare_function(
                "sglc_jit_refuel",
                cranelift_module::Linkage::Import,
                &refuel_sig,
            )
            .map_err(|e| e.to_string())?;
        Ok(Jit {
            options,
            baseline_isa,
            optimized_isa,
            baseline_specs: Vec::new(),
            baseline_osr: Vec::new(),
            baseline_ir: HashMap::new(),
            inlinable: inline::Inlinable::default(),
            inlined_calls: 0,
            tier_up_job: None,
            optimized_osr: foldhash::HashSet::default(),
            declared: 0,
            baseline_work: 0,
            baseline_entries: 0,
            ctx: module.make_context(),
            module: std::mem::ManuallyDrop::new(module),
            builder_ctx: FunctionBuilderContext::new(),
            deopt_fn,
            refuel_fn,
            functions: (0..program.functions.len())
                .map(|_| FunctionState::Cold(0))
                .collect(),
            compiled: HashMap::new(),
            return_types: HashMap::new(),
            osr_compiled: HashMap::new(),
            osr_failed: vec![Rc::default(); program.functions.len()],
            loop_headers: vec![None; program.functions.len()],
            osr_liveness: std::iter::repeat_with(|| None)
                .take(program.functions.len())
                .collect(),
            resumed_back_edges: vec![0; program.functions.len()],
            sites: Vec::new(),
            clif: None,
            rejected: Vec::new(),
            runtime: Box::new(JitCtx {
                status: 0,
                fuel: FUEL,
                tank: FUEL,
                spill: std::ptr::null_mut(),
                chain_spill: std::ptr::null_mut(),
                spill_buffer: Vec::new(),
                chain_spill_buffer: Vec::new(),
                deopts: Vec::new(),
                turn: Turn::default(),
                spent_before: 0,
                baseline_code: false,
                tier_up_due: false,
                tier_up_done: None,
                host: Rc::new(host_tables(program, natives, limits)),
            }),
            pinned: Vec::new(),
            max_depth,
            max_range: limits.max_collection_len,
            compile_nanos: 0,
            compiled_count: 0,
        })
    }

    /// Keeps the cranelift IR of everything compiled from now on.
    pub fn record_clif(&mut self) {
        self.clif.get_or_insert_with(Vec::new);
    }

    /// The recorded IR and the reasons specializations were not compiled.
    pub fn listing(&self, program: &Program) -> String {
        let mut out = String::new();
        for (spec, text) in self.clif.iter().flatten() {
            out.push_str(&format!("; {}\n{text}\n", describe(program, spec)));
        }
        for (spec, reason) in &self.rejected {
            out.push_str(&format!(
                "; {} is not compiled: it {reason}\n",
                describe(program, spec)
            ));
        }
        out
    }

    /// Counts a backward jump in `function` towards its hotness.
    /// Counts a backward jump in `function`; true when the function is hot, so its loop is
    /// worth compiling where it stands (`osr`).
    pub fn back_edge(&mut self, function: FunctionId, header: u32) -> bool {
        if self
            .osr_failed
            .get(function as usize)
            .is_some_and(|failed| failed.contains(&header))
        {
            return false;
        }
        let threshold = match self.options.mode {
            JitMode::Off => return false,
            JitMode::Auto => self.options.threshold,
            JitMode::Eager => 0,
        };
        match self.functions.get_mut(function as usize) {
            Some(FunctionState::Cold(count)) => {
                *count = count.saturating_add(1);
                *count > threshold
            }
            // The function has compiled code, so a deopt left this call of it in the loop (out
            // of fuel, say), and its next call runs compiled. An entry into the loop is only
            // worth compiling if the loop proves hot, by the threshold of `auto` in every
            // mode: the scoring benchmark compiled one for a loop over a sentence's words with
            // a word or two left, 3% of its run.
            Some(FunctionState::Tried(specs))
                if specs.iter().any(|(_, entry)| entry.is_some())
                    && !self.osr_compiled.contains_key(&(function, header)) =>
            {
                let count = &mut self.resumed_back_edges[function as usize];
                *count = count.saturating_add(1);
                *count > self.options.threshold
            }
            Some(_) => true,
            None => false,
        }
    }

    /// Whether `function`'s backward jumps should still be counted: `None` once every loop of
    /// it failed to compile, else the loop headers that failed (their jumps need no counting).
    pub fn wants_back_edges(
        &mut self,
        program: &Program,
        function: FunctionId,
    ) -> Option<Rc<Vec<u32>>> {
        if self.options.mode == JitMode::Off {
            return None;
        }
        let index = function as usize;
        let headers = *self.loop_headers[index].get_or_insert_with(|| {
            let code = &program.functions[index].code;
            let mut targets: Vec<u32> = code
                .iter()
                .enumerate()
                .filter_map(|(ip, instr)| match instr {
                    sglc_compiler::bytecode::Instr::Jump(t) if (*t as usize) <= ip => Some(*t),
                    _ => None,
                })
                .collect();
            targets.sort_unstable();
            targets.dedup();
            targets.len()
        });
        let failed = &self.osr_failed[index];
        (failed.len() < headers).then(|| failed.clone())
    }

    /// On-stack replacement: runs the rest of `function` natively from loop header `ip`, its
    /// frame's slots being `values` (locals, then the operand stack). `depth` counts the call
    /// frames with this one.
    #[allow(clippy::too_many_arguments)] // the interpreter's frame, as it stands, in pieces
    pub fn osr(
        &mut self,
        program: &Program,
        globals: &[Value],
        function: FunctionId,
        ip: u32,
        values: &[Value],
        depth: usize,
        limits: &crate::interp::Limits,
        turn: Turn,
    ) -> JitCall {
        if self.runtime.tier_up_due || self.tier_up_job.is_some() {
            self.advance_tier_up(program, globals);
        }
        let failed = &self.osr_failed[function as usize];
        if !self.compiled_for(limits) || failed.contains(&ip) {
            return JitCall::Interpret;
        }
        let local_count = program.functions[function as usize].local_count as usize;
        // A loop whose iterator is spent leaves at once: nothing to gain now, and its items no
        // longer tell their type (an empty rest of a list would pass for a range of ints and
        // fail against a loop variable holding a string, ruling the loop out for good).
        if values.iter().skip(local_count).any(spent_iterator) {
            return JitCall::Interpret;
        }
        let Some((shape, mut raw, objects)) = osr_frame(values, local_count) else {
            Rc::make_mut(&mut self.osr_failed[function as usize]).push(ip);
            return JitCall::Interpret;
        };
        let live = self.osr_liveness[function as usize].get_or_insert_with(|| {
            analyze::Liveness::of(&program.functions[function as usize].code, local_count)
        });
        let key = forget_dead_scalars(&shape, &mut raw, live, ip as usize);
        let known = self
            .osr_compiled
            .get(&(function, ip))
            .and_then(|entries| entries.iter().find(|(s, _)| *s == key))
            .map(|(_, entry)| *entry);
        let (pointer, return_type) = match known {
            Some(entry) => entry,
            None => {
                let started = std::time::Instant::now();
                let compiled = self.guarded(|jit| {
                    jit.compile_osr(program, globals, function, ip as usize, &shape)
                });
                self.compile_nanos += started.elapsed().as_nanos() as u64;
                match compiled {
                    Ok(entry) => {
                        self.osr_compiled
                            .entry((function, ip))
                            .or_default()
                            .push((key, entry));
                        entry
                    }
                    Err(reason) => {
                        self.builder_ctx = FunctionBuilderContext::new();
                        self.module.clear_context(&mut self.ctx);
                        Rc::make_mut(&mut self.osr_failed[function as usize]).push(ip);
                        self.rejected.push((
                            Spec {
                                function,
                                args: Vec::new(),
                            },
                            format!("(its loop at instruction {ip}) {reason}"),
                        ));
                        return JitCall::Interpret;
                    }
                }
            }
        };
        // The compiled frame owns its objects: boxes of clones of the interpreter's values.
        for (at, value) in objects {
            raw[at] = Ty::bits_of(&values[value]);
        }
        self.runtime.start(turn);
        type Osr = extern "C" fn(i64, *const i64) -> Returned;
        // SAFETY: `pointer` is a finalized on-stack replacement entry of this module, with the
        // signature `(depth, slots) -> Returned`, and this JIT's context at the address it was
        // compiled with; `raw` holds the slots in the layout `osr_frame` describes, which is
        // the one the entry was compiled for.
        let result =
            unsafe { std::mem::transmute::<*const u8, Osr>(pointer) }(depth as i64, raw.as_ptr())
                .value;
        self.count_baseline_run();
        if self.runtime.status == 0 {
            // SAFETY: compiled code returned a slot of `return_type` it no longer owns.
            return JitCall::Returned(unsafe { return_type.value_of(result) });
        }
        self.deopt_frames()
    }

    /// Whether compiled code checks the same limits as the run (it was compiled for them).
    fn compiled_for(&self, limits: &crate::interp::Limits) -> bool {
        let own = &self.runtime.host.limits;
        limits.max_call_depth == own.max_call_depth
            && limits.max_collection_len == own.max_collection_len
            && limits.max_string_bytes == own.max_string_bytes
    }

    /// Calls `function` natively when it is (or now becomes) compiled for these arguments.
    /// `depth` is the interpreter's frame count; `limits` the run's limits.
    #[allow(clippy::too_many_arguments)] // the interpreter's call, as it stands, in pieces
    pub fn call(
        &mut self,
        program: &Program,
        globals: &[Value],
        function: FunctionId,
        args: &[Value],
        depth: usize,
        limits: &crate::interp::Limits,
        turn: Turn,
    ) -> JitCall {
        let threshold = match self.options.mode {
            JitMode::Off => return JitCall::Interpret,
            JitMode::Auto => self.options.threshold,
            JitMode::Eager => 0,
        };
        if self.runtime.tier_up_due || self.tier_up_job.is_some() {
            self.advance_tier_up(program, globals);
        }
        let Some(state) = self.functions.get_mut(function as usize) else {
            return JitCall::Interpret;
        };
        if let FunctionState::Cold(count) = state {
            *count = count.saturating_add(1);
            if *count <= threshold {
                return JitCall::Interpret;
            }
            *state = FunctionState::Tried(Vec::new());
        }
        let matches = |types: &[Ty]| {
            types.len() == args.len() && types.iter().zip(args).all(|(t, a)| Some(*t) == Ty::of(a))
        };
        let known = match &self.functions[function as usize] {
            FunctionState::Ineligible | FunctionState::Cold(_) => return JitCall::Interpret,
            FunctionState::Tried(specs) => specs.iter().find(|(t, _)| matches(t)).map(|s| s.1),
        };
        let compiled = match known {
            Some(compiled) => compiled,
            None => {
                let Some(types) = args.iter().map(Ty::of).collect::<Option<Vec<Ty>>>() else {
                    return JitCall::Interpret;
                };
                let spec = Spec {
                    function,
                    args: types.clone(),
                };
                let compiled = self
                    .compile(program, globals, &spec)
                    .map(|pointer| (pointer, self.return_types[&spec]));
                if let FunctionState::Tried(specs) = &mut self.functions[function as usize] {
                    specs.push((types, compiled));
                    // A function seen with many argument types is left to the interpreter.
                    if specs.len() > 8 {
                        self.functions[function as usize] = FunctionState::Ineligible;
                    }
                }
                compiled
            }
        };
        let Some((pointer, return_type)) = compiled else {
            return JitCall::Interpret;
        };
        self.runtime.start(turn);
        // Compiled code checks the limits the interpreter enforces; it was compiled for them.
        if !self.compiled_for(limits) {
            return JitCall::Interpret;
        }
        let mut bits = [0i64; MAX_ARGS];
        for (slot, arg) in bits.iter_mut().zip(args) {
            *slot = Ty::bits_of(arg);
        }
        // SAFETY: `pointer` is a finalized function of this module with the signature
        // `(depth, i64 x argc) -> Returned` (codegen::signature), argc <= MAX_ARGS, and the
        // context is at the address the code was compiled with (`runtime` is boxed).
        let result = unsafe { invoke(pointer, depth as i64 + 1, &bits[..args.len()]) };
        self.count_baseline_run();
        if self.runtime.status == 0 {
            // SAFETY: compiled code returned a slot of `return_type` it no longer owns.
            return JitCall::Returned(unsafe { return_type.value_of(result) });
        }
        self.deopt_frames()
    }

    /// Counts a run of compiled code while code of the baseline tier exists: in many short
    /// runs as in one long one, a tier-up is due once they have done `TIER_UP_WORK` (or been
    /// entered `TIER_UP_ENTRIES` times, for code that spends no fuel: no loop, no call).
    fn count_baseline_run(&mut self) {
        if !self.runtime.baseline_code {
            return;
        }
        self.baseline_work = self.baseline_work.saturating_add(self.runtime.spent());
        self.baseline_entries += 1;
        if self.baseline_work >= TIER_UP_WORK || self.baseline_entries >= TIER_UP_ENTRIES {
            self.runtime.tier_up_due = true;
        }
    }

    /// Waits for the tier-up compiling on its thread, if any, to be done (tests only: the
    /// program's thread never waits for it).
    #[cfg(test)]
    fn wait_for_tier_up_thread(&self) {
        if let Some(job) = &self.tier_up_job {
            while !job.is_finished() {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    }

    /// Fuel spent by the last run of compiled code (loop iterations and calls), which counts
    /// against the program's instruction budget.
    /// Reading it starts the count again.
    pub fn take_fuel_spent(&mut self) -> u64 {
        let spent = self.runtime.spent();
        self.runtime.fuel = self.runtime.tank;
        self.runtime.spent_before = 0;
        spent
    }

    /// The frames the last deopt reported, outermost first.
    fn deopt_frames(&mut self) -> JitCall {
        self.runtime.take_pending_deopt();
        if self.runtime.fuel <= 0 && self.runtime.baseline_code {
            // A loop ran out of fuel: as at a function's refuel, time to optimize.
            self.runtime.tier_up_due = true;
        }
        let frames = std::mem::take(&mut self.runtime.deopts)
            .into_iter()
            .rev()
            .map(|(site, slots)| self.resume_frame(site, &slots))
            .collect();
        JitCall::Deopt {
            frames,
            out_of_fuel: self.runtime.fuel <= 0,
        }
    }

    fn resume_frame(&self, site: usize, slots: &[i64]) -> ResumeFrame {
        let site = &self.sites[site];
        let mut values = Vec::with_capacity(site.kinds.len());
        let mut raw = slots.iter().copied();
        for kind in &site.kinds {
            match kind {
                // SAFETY: a deopt hands over the slots it spills, each once.
                SlotKind::Value(ty) => {
                    values.push(unsafe { ty.value_of(raw.next().unwrap_or(0)) });
                }
                // SAFETY: only ints, floats, bools and `none` (0) are constants here.
                SlotKind::Constant(ty, bits) => values.push(unsafe { ty.value_of(*bits) }),
                SlotKind::RangeIter => {
                    // The rest of the range, made on demand: the same items the list
                    // iterator would give, without building the list.
                    let mut next = || raw.next().unwrap_or(0);
                    let (start, step, index, count) = (next(), next(), next(), next());
                    values.push(Value::Iterator(Rc::new(RefCell::new(Iter::Range {
                        start,
                        step,
                        index,
                        count,
                    }))));
                }
            }
        }
        ResumeFrame {
            function: site.function,
            ip: site.ip,
            values,
        }
    }

    /// Runs a compile, turning a panic in cranelift (a bug there or in the IR given to it)
    /// into a failure to compile: the code stays interpreted, and the program runs on.
    fn guarded<T>(
        &mut self,
        compile: impl FnOnce(&mut Jit) -> Result<T, String>,
    ) -> Result<T, String> {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| compile(self))) {
            Ok(result) => result,
            Err(_) => {
                // The builder and the context may be halfway through a function.
                self.builder_ctx = FunctionBuilderContext::new();
                self.module.clear_context(&mut self.ctx);
                Err("cranelift panicked compiling it".to_string())
            }
        }
    }

    /// Compiles `spec` and every specialization it calls; `None` when ineligible.
    fn compile(&mut self, program: &Program, globals: &[Value], spec: &Spec) -> Option<*const u8> {
        if let Some((_, pointer)) = self.compiled.get(spec) {
            return Some(*pointer);
        }
        let started = std::time::Instant::now();
        let tier = self.first_tier();
        let result = self.guarded(|jit| jit.compile_all(program, globals, spec, tier));
        self.compile_nanos += started.elapsed().as_nanos() as u64;
        match result {
            Ok(pointer) => Some(pointer),
            Err(reason) => {
                self.rejected.push((spec.clone(), reason));
                None
            }
        }
    }

    fn compile_all(
        &mut self,
        program: &Program,
        globals: &[Value],
        root: &Spec,
        tier: Tier,
    ) -> Result<*const u8, String> {
        let mut analyzer = {
            let host = self.runtime.host.clone();
            analyze::Analyzer::new(program, globals, host)
        };
        let defined =
            self.define_specs(program, globals, &mut analyzer, vec![root.clone()], tier)?;
        self.finish(defined, tier)?;
        self.compiled
            .get(root)
            .map(|(_, p)| *p)
            .ok_or_else(|| "was not compiled".to_string())
    }

    /// Analyses, declares and defines at `tier` every specialization reachable from `roots`
    /// that is not compiled yet; `finish` makes them callable.
    fn define_specs(
        &mut self,
        program: &Program,
        globals: &[Value],
        analyzer: &mut analyze::Analyzer,
        roots: Vec<Spec>,
        tier: Tier,
    ) -> Result<Vec<(Spec, Ty, FuncId)>, String> {
        let mut plans: Vec<analyze::Plan> = Vec::new();
        let mut pending = roots;
        let mut seen = std::collections::HashSet::new();
        while let Some(spec) = pending.pop() {
            if !seen.insert(spec.clone()) || self.compiled.contains_key(&spec) {
                continue;
            }
            if spec.args.len() > MAX_ARGS {
                return Err(format!("takes more than {MAX_ARGS} arguments"));
            }
            let plan = analyzer.plan(&spec)?;
            pending.extend(plan.callees.iter().cloned());
            plans.push(plan);
        }
        let mut ids = HashMap::new();
        for plan in &plans {
            // Numbered: a batch that failed halfway may have defined a function under a name
            // without recording it, and a name is defined once per module.
            self.declared += 1;
            let name = format!(
                "{}#{}_{}_{}{}",
                program.functions[plan.spec.function as usize].name,
                plan.spec.function,
                plan.spec.args.iter().map(|t| t.code()).collect::<String>(),
                tier.code(),
                self.declared
            );
            let id = codegen::declare(&mut self.module, &name, plan.spec.args.len())?;
            ids.insert(plan.spec.clone(), id);
        }
        // Callees first (plans are found callers first), so the optimizing tier has their
        // bodies to inline.
        for plan in plans.iter().rev() {
            self.define(program, globals, plan, (ids[&plan.spec], tier), &ids, None)?;
        }
        Ok(plans
            .into_iter()
            .map(|plan| {
                let id = ids[&plan.spec];
                (plan.spec, plan.return_type, id)
            })
            .collect())
    }

    /// Finalizes what was defined at `tier` and records it as compiled.
    fn finish(&mut self, defined: Vec<(Spec, Ty, FuncId)>, tier: Tier) -> Result<(), String> {
        self.module
            .finalize_definitions()
            .map_err(|e| e.to_string())?;
        // No compiled code runs while compiling, so the buffer may move; code reads its
        // address from the context at each deopt.
        let spill = self.sites.iter().map(DeoptSite::spilled).max().unwrap_or(0);
        if spill > self.runtime.spill_buffer.len() {
            self.runtime.spill_buffer.resize(spill, 0);
            self.runtime.chain_spill_buffer.resize(spill, 0);
        }
        self.runtime.spill = self.runtime.spill_buffer.as_mut_ptr();
        self.runtime.chain_spill = self.runtime.chain_spill_buffer.as_mut_ptr();
        for (spec, return_type, id) in defined {
            let pointer = self.module.get_finalized_function(id);
            // A tier-up replaces the code the interpreter calls.
            if let Some(FunctionState::Tried(tried)) =
                self.functions.get_mut(spec.function as usize)
            {
                for (types, entry) in tried.iter_mut() {
                    if *types == spec.args
                        && let Some((old, _)) = entry
                    {
                        *old = pointer;
                    }
                }
            }
            if self.record_compiled_tier(tier) {
                self.baseline_specs.push(spec.clone());
            }
            self.compiled.insert(spec.clone(), (id, pointer));
            self.return_types.insert(spec, return_type);
            self.compiled_count += 1;
        }
        Ok(())
    }

    /// The tier a function is compiled by first.
    fn first_tier(&self) -> Tier {
        match self.options.tiers {
            crate::jit_options::JitTiers::Optimized => Tier::Optimized,
            _ => Tier::Baseline,
        }
    }

    /// Records that code of `tier` was just compiled; true when it is to be compiled again,
    /// optimized, once it has run a while (baseline code under `JitTiers::Tiered`).
    fn record_compiled_tier(&mut self, tier: Tier) -> bool {
        let tiers_up = self.tiers_up(tier);
        self.runtime.baseline_code |= tiers_up;
        tiers_up
    }

    /// Whether code of `tier` is compiled again, optimized, once it has run a while.
    fn tiers_up(&self, tier: Tier) -> bool {
        tier == Tier::Baseline && self.options.tiers == crate::jit_options::JitTiers::Tiered
    }

    /// Moves tiering up along: installs the optimized code of a tier-up whose thread is done,
    /// and starts the next one when one is due.
    fn advance_tier_up(&mut self, program: &Program, globals: &[Value]) {
        if let Some(job) = &self.tier_up_job {
            if !job.is_finished() {
                return;
            }
            if let Some(job) = self.tier_up_job.take() {
                let compiled = job.result();
                self.install_tier_up(job.specs, job.loops, job.inlinable, compiled);
            }
        }
        if self.runtime.tier_up_due {
            self.start_tier_up(program, globals);
        }
    }

    /// Compiles every specialization and loop entry of the baseline tier again with the
    /// optimizing tier, from the IR kept from their first compile. The compiling runs on a
    /// thread of its own while the baseline code goes on running (`advance_tier_up` installs
    /// the result), so a tier-up costs the program's thread next to nothing. Code of the
    /// baseline tier that calls another function calls its baseline code, which is kept.
    fn start_tier_up(&mut self, program: &Program, globals: &[Value]) {
        self.runtime.tier_up_due = false;
        self.runtime.baseline_code = false;
        self.baseline_work = 0;
        self.baseline_entries = 0;
        let specs = std::mem::take(&mut self.baseline_specs);
        let loops = std::mem::take(&mut self.baseline_osr);
        let started = std::time::Instant::now();
        // Each function to compile again gets an id of its own; calls between them are
        // renamed to the new ids, so optimized code calls optimized code.
        let mut renamed: HashMap<FuncId, FuncId> = HashMap::new();
        let mut functions = Vec::new();
        let mut prefixes = Vec::new();
        // Plans for the small functions' prefixes (`tier_up_prefix`), one analysis for all.
        let mut analyzer = analyze::Analyzer::new(program, globals, self.runtime.host.clone());
        let mut job_specs = Vec::new();
        let mut job_loops = Vec::new();
        for spec in specs {
            let Some(&(old, _)) = self.compiled.get(&spec) else {
                continue;
            };
            if let Some(new) = self.declare_tier_up(old, &mut functions) {
                if let Some(prefix) =
                    self.tier_up_prefix(program, &mut analyzer, &spec, old, &functions)
                {
                    prefixes.push((new, prefix));
                }
                renamed.insert(old, new);
                job_specs.push((spec.clone(), self.return_types[&spec], new));
            }
        }
        for entry in loops {
            if let Some(new) = self.declare_tier_up(entry.id, &mut functions) {
                job_loops.push((entry, new));
            }
        }
        if functions.is_empty() {
            return;
        }
        for (_, function) in functions.iter_mut().chain(&mut prefixes) {
            rename_calls(function, &renamed);
        }
        // The small ones among them and their prefixes can be inlined, as can optimized code
        // of earlier tier-ups; they join `inlinable` once installed.
        let new_inlinable = inline::Inlinable {
            bodies: functions
                .iter()
                .filter(|(id, function)| {
                    job_specs.iter().any(|(_, _, new)| new == id) && inline::is_small(function)
                })
                .map(|(id, function)| (id.as_u32(), Arc::new(function.clone())))
                .collect(),
            prefixes: prefixes
                .into_iter()
                .map(|(id, prefix)| (id.as_u32(), Arc::new(prefix)))
                .collect(),
        };
        let mut inlinable = self.inlinable.clone();
        inlinable.extend(new_inlinable.clone());
        let isa = self.optimized_isa.clone();
        let done = Arc::new(AtomicBool::new(false));
        let abandoned = Arc::new(AtomicBool::new(false));
        let (send_compiled, compiled) = std::sync::mpsc::channel();
        let compile_all: CompileWork = {
            let (done, abandoned) = (done.clone(), abandoned.clone());
            Box::new(move || {
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    functions
                        .into_iter()
                        .map(|(id, function)| {
                            if abandoned.load(Ordering::Relaxed) {
                                return Err(ABANDONED.to_string());
                            }
                            let mut ctx = cranelift_codegen::Context::for_function(function);
                            let inlined = inline::inline_calls(&mut ctx, &inlinable)?;
                            inline::thread_deopt_checks(&mut ctx.func);
                            let mut code = MachineCode::compile(&mut ctx, &*isa, id)?;
                            code.inlined_calls = inlined;
                            Ok(code)
                        })
                        .collect::<Result<Vec<_>, String>>()
                }))
                .unwrap_or_else(|_| Err("cranelift panicked".to_string()));
                // (The JIT may be gone, and its end of the channel with it.)
                let _ = send_compiled.send(outcome);
                done.store(true, Ordering::Release);
            })
        };
        if send_to_compile_thread(compile_all).is_ok() {
            self.runtime.tier_up_done = Some(done.clone());
            self.tier_up_job = Some(TierUpJob {
                specs: job_specs,
                loops: job_loops,
                inlinable: new_inlinable,
                done,
                abandoned,
                compiled,
            });
        }
        // (No thread to be had: the baseline code stays, as correct as optimized code.)
        self.compile_nanos += started.elapsed().as_nanos() as u64;
    }

    /// The prefix (`codegen::in_prefix`) of baseline code `old` of `spec`, whose IR was just
    /// queued last in `functions`, when it is small enough to inline: made now rather than
    /// with the baseline code, which waits for no IR its tier-up may never need.
    fn tier_up_prefix(
        &mut self,
        program: &Program,
        analyzer: &mut analyze::Analyzer,
        spec: &Spec,
        old: FuncId,
        functions: &[(FuncId, cranelift_codegen::ir::Function)],
    ) -> Option<cranelift_codegen::ir::Function> {
        let (_, function) = functions.last()?;
        if !inline::is_small(function) {
            return None;
        }
        let plan = analyzer.plan(spec).ok()?;
        self.prefix_ir(program, analyzer.globals, &plan, old)
    }

    /// Declares the optimized twin of baseline code `baseline` and queues its IR in
    /// `functions`; `None` when its IR was not kept, when it is `helper_bound`, or when the
    /// declaration fails (it stays baseline code, as correct as the optimized code would be).
    fn declare_tier_up(
        &mut self,
        baseline: FuncId,
        functions: &mut Vec<(FuncId, cranelift_codegen::ir::Function)>,
    ) -> Option<FuncId> {
        let function = self.baseline_ir.remove(&baseline)?;
        if helper_bound(&function) {
            return None;
        }
        let declaration = self.module.declarations().get_function_decl(baseline);
        let (name, signature) = (
            declaration.name.clone().unwrap_or_default(),
            declaration.signature.clone(),
        );
        self.declared += 1;
        let name = format!("{name}^{}{}", Tier::Optimized.code(), self.declared);
        let id = self
            .module
            .declare_function(&name, cranelift_module::Linkage::Local, &signature)
            .ok()?;
        functions.push((id, function));
        Some(id)
    }

    /// Defines what a tier-up compiled and makes the interpreter call it; what failed to
    /// compile stays baseline code.
    fn install_tier_up(
        &mut self,
        specs: Vec<(Spec, Ty, FuncId)>,
        loops: Vec<(BaselineLoop, FuncId)>,
        inlinable: inline::Inlinable,
        compiled: Result<Vec<MachineCode>, String>,
    ) {
        self.runtime.tier_up_done = None;
        let Ok(compiled) = compiled else {
            return;
        };
        let started = std::time::Instant::now();
        let inlined: usize = compiled.iter().map(|code| code.inlined_calls).sum();
        let defined = compiled
            .into_iter()
            .try_for_each(|code| code.define_in(&mut self.module));
        if defined.is_ok() && self.finish(specs, Tier::Optimized).is_ok() {
            self.inlinable.extend(inlinable);
            self.inlined_calls += inlined;
            for (entry, id) in loops {
                let pointer = self.module.get_finalized_function(id);
                let baseline = self.module.get_finalized_function(entry.id);
                if let Some(entries) = self.osr_compiled.get_mut(&entry.key) {
                    for (_, (code, _)) in entries.iter_mut() {
                        if *code == baseline {
                            *code = pointer;
                        }
                    }
                }
                self.optimized_osr.insert(entry.key);
            }
        }
        self.compile_nanos += started.elapsed().as_nanos() as u64;
    }
    /// Compiles `function` entered at loop header `ip` with the slots `shape` describes.
    fn compile_osr(
        &mut self,
        program: &Program,
        globals: &[Value],
        function: FunctionId,
        ip: usize,
        shape: &OsrShape,
    ) -> Result<(*const u8, Ty), String> {
        let mut analyzer = {
            let host = self.runtime.host.clone();
            analyze::Analyzer::new(program, globals, host)
        };
        // Named like a specialization with no arguments; never entered through `compiled`.
        let spec = Spec {
            function,
            args: Vec::new(),
        };
        let plan = analyzer.plan_from(&spec, ip, shape.frame.clone())?;
        let tier = if self.optimized_osr.contains(&(function, ip as u32)) {
            Tier::Optimized
        } else {
            self.first_tier()
        };
        let defined =
            self.define_specs(program, globals, &mut analyzer, plan.callees.clone(), tier)?;
        self.declared += 1;
        let name = format!(
            "{}#{}_loop{ip}_{}{}",
            program.functions[function as usize].name,
            function,
            tier.code(),
            self.declared
        );
        let id = codegen::declare(&mut self.module, &name, 1)?;
        let ids: HashMap<Spec, FuncId> = defined
            .iter()
            .map(|(spec, _, id)| (spec.clone(), *id))
            .collect();
        self.define(
            program,
            globals,
            &plan,
            (id, tier),
            &ids,
            Some((ip, shape.clone())),
        )?;
        self.finish(defined, tier)?;
        if self.record_compiled_tier(tier) {
            self.baseline_osr.push(BaselineLoop {
                key: (function, ip as u32),
                id,
            });
        }
        Ok((self.module.get_finalized_function(id), plan.return_type))
    }

    fn define(
        &mut self,
        program: &Program,
        globals: &[Value],
        plan: &analyze::Plan,
        (id, tier): (FuncId, Tier),
        ids: &HashMap<Spec, FuncId>,
        osr_entry: Option<(usize, OsrShape)>,
    ) -> Result<(), String> {
        self.module.clear_context(&mut self.ctx);
        // An on-stack replacement entry takes one argument: the buffer of slots.
        let is_osr = osr_entry.is_some();
        let argc = if is_osr { 1 } else { plan.spec.args.len() };
        self.ctx.func.signature = codegen::signature(&*self.module, argc);
        let mut callee_refs = HashMap::new();
        for callee in &plan.callees {
            let id = ids
                .get(callee)
                .or_else(|| self.compiled.get(callee).map(|(id, _)| id))
                .ok_or("a callee is neither compiled nor being compiled")?;
            let fref = self.module.declare_func_in_func(*id, &mut self.ctx.func);
            callee_refs.insert(callee.clone(), fref);
        }
        let deopt = self
            .module
            .declare_func_in_func(self.deopt_fn, &mut self.ctx.func);
        let refuel = self
            .module
            .declare_func_in_func(self.refuel_fn, &mut self.ctx.func);
        let target = self.codegen_target();
        let builder = FunctionBuilder::new(&mut self.ctx.func, &mut self.builder_ctx);
        let mut codegen = codegen::FunctionCodegen::new(
            builder,
            program,
            globals,
            plan,
            callee_refs,
            (deopt, refuel, target),
            (&mut self.sites, &mut self.pinned),
        );
        codegen.osr_entry = osr_entry;
        let config = self.module.isa().frontend_config();
        if let Err(reason) = codegen.emit(config) {
            // The builder stopped halfway: start the next function from clean state.
            self.builder_ctx = FunctionBuilderContext::new();
            self.module.clear_context(&mut self.ctx);
            return Err(reason);
        }
        // Its IR and prefix, for the optimizing tier to inline into callers: recorded before
        // its own calls are inlined, so an inlined body never holds another one.
        // (Baseline code's prefix is made at its tier-up: `tier_up_prefix`.)
        let tiers_up = self.tiers_up(tier);
        if tier == Tier::Optimized {
            if !is_osr && inline::is_small(&self.ctx.func) {
                self.inlinable
                    .bodies
                    .insert(id.as_u32(), Arc::new(self.ctx.func.clone()));
                if let Some(prefix) = self.prefix_ir(program, globals, plan, id) {
                    self.inlinable
                        .prefixes
                        .insert(id.as_u32(), Arc::new(prefix));
                }
            }
            self.inlined_calls += inline::inline_calls(&mut self.ctx, &self.inlinable)?;
            inline::thread_deopt_checks(&mut self.ctx.func);
        }
        let ir = self
            .clif
            .is_some()
            .then(|| self.ctx.func.display().to_string());
        self.ctx.set_disasm(ir.is_some());
        match tier {
            Tier::Optimized => self
                .module
                .define_function(id, &mut self.ctx)
                .map_err(|e| format!("cranelift rejected the function: {e:?}"))?,
            Tier::Baseline => {
                if tiers_up {
                    // Kept for the tier-up (compiling mutates the context's function).
                    self.baseline_ir.insert(id, self.ctx.func.clone());
                }
                self.define_baseline(id)?
            }
        }
        if let (Some(clif), Some(ir)) = (&mut self.clif, ir) {
            let machine = self
                .ctx
                .compiled_code()
                .and_then(|c| c.vcode.clone())
                .unwrap_or_default();
            clif.push((
                plan.spec.clone(),
                format!("{ir}\n; machine code\n{machine}"),
            ));
        }
        self.module.clear_context(&mut self.ctx);
        Ok(())
    }
}

impl Jit {
    /// What this JIT's code is compiled against.
    fn codegen_target(&mut self) -> codegen::Target {
        codegen::Target {
            // Exposed: compiled code reads and writes the context through this address.
            ctx_address: std::ptr::from_mut::<JitCtx>(&mut self.runtime).expose_provenance() as i64,
            max_depth: self.max_depth as i64,
            max_range: i64::try_from(self.max_range).unwrap_or(i64::MAX),
        }
    }

    /// The prefix of `plan`'s function (`codegen::in_prefix`), handing over to its code
    /// `whole`: `None` when it has no early exit, or cannot be compiled.
    fn prefix_ir(
        &mut self,
        program: &Program,
        globals: &[Value],
        plan: &analyze::Plan,
        whole: FuncId,
    ) -> Option<cranelift_codegen::ir::Function> {
        let signature = codegen::signature(&*self.module, plan.spec.args.len());
        let mut function = cranelift_codegen::ir::Function::with_name_signature(
            cranelift_codegen::ir::UserFuncName::default(),
            signature,
        );
        let whole = self.module.declare_func_in_func(whole, &mut function);
        let deopt = self
            .module
            .declare_func_in_func(self.deopt_fn, &mut function);
        let refuel = self
            .module
            .declare_func_in_func(self.refuel_fn, &mut function);
        let target = self.codegen_target();
        let builder = FunctionBuilder::new(&mut function, &mut self.builder_ctx);
        let mut codegen = codegen::FunctionCodegen::new(
            builder,
            program,
            globals,
            plan,
            HashMap::new(),
            (deopt, refuel, target),
            (&mut self.sites, &mut self.pinned),
        );
        codegen.prefix_of = Some(whole);
        match codegen.emit(self.module.isa().frontend_config()) {
            Ok(returns) if returns > 0 => Some(function),
            Ok(_) => None,
            Err(_) => {
                // The builder stopped halfway: start the next function from clean state.
                self.builder_ctx = FunctionBuilderContext::new();
                None
            }
        }
    }
}

impl Jit {
    /// Compiles the function in the context with the baseline tier's settings and defines
    /// `id` as its code (the module's own compile uses the optimizing tier's).
    fn define_baseline(&mut self, id: FuncId) -> Result<(), String> {
        MachineCode::compile(&mut self.ctx, &*self.baseline_isa, id)?.define_in(&mut self.module)
    }
}

/// The natives and methods `program` uses that compiled code may call.
fn host_tables(
    program: &Program,
    natives: &crate::native::Natives,
    limits: &crate::interp::Limits,
) -> runtime::Host {
    let method_names: std::collections::HashSet<u32> = program
        .functions
        .iter()
        .flat_map(|f| &f.code)
        .filter_map(|instr| match instr {
            sglc_compiler::bytecode::Instr::CallMethod { name, .. } => Some(*name),
            _ => None,
        })
        .collect();
    runtime::Host {
        natives: program
            .natives
            .iter()
            .map(|name| {
                natives
                    .function(name)
                    .filter(|f| f.jit_safe)
                    .map(|f| f.call.clone())
            })
            .collect(),
        methods: program
            .constants
            .iter()
            .enumerate()
            .map(|(i, c)| match c {
                sglc_compiler::bytecode::Constant::Str(name)
                    if method_names.contains(&(i as u32)) =>
                {
                    let methods = if natives.method_jit_safe(name) {
                        natives.methods_named(name)
                    } else {
                        Vec::new()
                    };
                    (name.clone(), methods)
                }
                _ => (String::new(), Vec::new()),
            })
            .collect(),
        limits: limits.clone(),
    }
}

/// Whether code spends its time in runtime helpers (strings, lists, maps) rather than in
/// its own instructions, so the optimizing tier would not make it faster: one instruction in
/// `HELPER_BOUND` or more of its hot path (its blocks that are not cold) calls a helper.
/// Compiled by both tiers, the benchmark programs that work on strings and lists (one call
/// in 7 to 11 instructions) ran within 1% of each other's instruction counts, and their
/// optimized compile took 2-3 times the baseline one, on the compile thread. The numeric
/// ones call no helper, and their optimized code runs 1.4 to 3 times fewer instructions (the
/// nested loop 1.4x, the float integration 1.7x, fib, with its calls inlined, 3.1x).
fn helper_bound(function: &cranelift_codegen::ir::Function) -> bool {
    let layout = &function.layout;
    let (mut instructions, mut helper_calls) = (0usize, 0usize);
    for block in layout.blocks().filter(|block| !layout.is_cold(*block)) {
        for inst in layout.block_insts(block) {
            instructions += 1;
            // Helpers are called at their addresses; compiled functions by name (`call`).
            if function.dfg.insts[inst].opcode() == cranelift_codegen::ir::Opcode::CallIndirect {
                helper_calls += 1;
            }
        }
    }
    helper_calls * HELPER_BOUND >= instructions
}

/// `helper_bound`'s line: a helper call in this many hot instructions.
const HELPER_BOUND: usize = 20;

/// What an on-stack replacement entry is compiled for, and found again by: the types of the
/// frame's slots, and which of the range iterators on its stack count from 0 by 1.
#[derive(Clone, Debug, PartialEq)]
pub struct OsrShape {
    pub frame: analyze::Frame,
    /// By stack slot: a range iterator whose start is 0 and step 1 (`range(n)`, by far the
    /// usual one). The entry takes those two as constants rather than loading them: a loop
    /// nest entered with its ranges' starts and steps as unknowns held four more values in
    /// registers than the same nest compiled as a whole function, and cranelift kept a
    /// loop's running total on the stack instead.
    pub counting: Vec<bool>,
}

/// The shape under which an entry for `shape` is kept: its scalar locals that the loop at
/// `ip` writes before it reads them made `none`, and their slots in `raw` (the locals come
/// first, a word each) made 0, which reads as 0, 0.0, false or `none` in whatever type the
/// entry has for them. Those locals' types only tell apart frames the same entry runs, and they
/// change under a loop: a deopt hands the interpreter `none` for a scalar it will not read, so
/// the next entry to a `for i in range(n)` loop finds `i` none where the first found an int,
/// and without this compiled the loop again (twice more, for the scoring benchmark's main
/// loop). An entry is still compiled for the shape first met, not for this one: a local the
/// loop fills with an object would be an object at the header when `none`, and the loop would
/// compile where the frame first met rules it out (a loop over a list whose items compiled
/// code takes as objects runs faster in the interpreter than through the object helpers).
fn forget_dead_scalars(
    shape: &OsrShape,
    raw: &mut [i64],
    live: &analyze::Liveness,
    ip: usize,
) -> OsrShape {
    let mut key = shape.clone();
    for (slot, local) in key.frame.locals.iter_mut().enumerate() {
        if matches!(local, analyze::Local::Known(ty) if ty.is_scalar()) && !live.at(ip, slot) {
            *local = analyze::Local::Known(Ty::None);
            raw[slot] = 0;
        }
    }
    key
}

/// The shape and raw bits of an interpreter frame's slots, for on-stack replacement: scalars
/// as themselves, a `for` loop's iterator over an arithmetic run of ints (what `range()` makes)
/// as a compiled range, other values as object slots. Object slots are left 0 in the bits and
/// listed as (bit index, value index): they are boxed only once the compiled code is entered,
/// since the compiled frame owns them. `None` when a slot has no compiled form.
#[allow(clippy::type_complexity)]
fn osr_frame(
    values: &[Value],
    local_count: usize,
) -> Option<(OsrShape, Vec<i64>, Vec<(usize, usize)>)> {
    let mut raw = Vec::with_capacity(values.len() + 3);
    let mut objects = Vec::new();
    let mut locals = Vec::with_capacity(local_count);
    for (i, value) in values.iter().take(local_count).enumerate() {
        match Ty::of(value) {
            Some(Ty::Obj) => {
                locals.push(analyze::Local::Known(Ty::Obj));
                objects.push((raw.len(), i));
                raw.push(0);
            }
            Some(ty) => {
                locals.push(analyze::Local::Known(ty));
                raw.push(Ty::bits_of(value));
            }
            None => return None,
        }
    }
    let mut stack = Vec::new();
    let mut counting = Vec::new();
    for (i, value) in values.iter().enumerate().skip(local_count) {
        match Ty::of(value) {
            Some(Ty::Obj) => {
                stack.push(Ty::Obj);
                objects.push((raw.len(), i));
                raw.push(0);
                continue;
            }
            Some(ty) => {
                stack.push(ty);
                raw.push(Ty::bits_of(value));
                continue;
            }
            None => {}
        }
        let Value::Iterator(iter) = value else {
            return None;
        };
        let iter = iter.borrow();
        if let Iter::Range {
            start,
            step,
            index,
            count,
        } = &*iter
        {
            stack.push(Ty::RangeIter);
            raw.extend([*start, *step, *index, *count]);
            counting.resize(stack.len(), false);
            counting[stack.len() - 1] = (*start, *step) == (0, 1);
            continue;
        }
        match int_run(&iter) {
            Some((start, step, count)) => {
                stack.push(Ty::RangeIter);
                raw.extend([start, step, 0, count]);
                counting.resize(stack.len(), false);
                counting[stack.len() - 1] = (start, step) == (0, 1);
            }
            None => {
                stack.push(scalar_items(&iter).unwrap_or(Ty::ObjIter));
                objects.push((raw.len(), i));
                raw.push(0);
            }
        }
    }
    counting.resize(stack.len(), false);
    Some((
        OsrShape {
            frame: analyze::Frame { locals, stack },
            counting,
        },
        raw,
        objects,
    ))
}

/// A `for` loop's iterator with no items left.
fn spent_iterator(value: &Value) -> bool {
    let Value::Iterator(iter) = value else {
        return false;
    };
    match &*iter.borrow() {
        Iter::List { list, next } => *next >= list.borrow().len(),
        Iter::Chars { chars, next } => *next >= chars.len(),
        Iter::Range { index, count, .. } => index >= count,
    }
}

/// The iterator type for a loop entry over a packed list of ints or bools, whose items
/// compiled code can take as scalars. (A list of other values, even numbers only, would take a
/// scan of its items at every entry to tell.)
fn scalar_items(iter: &Iter) -> Option<Ty> {
    let Iter::List { list, .. } = iter else {
        return None;
    };
    match &*list.borrow() {
        crate::list::Items::Ints(_) => Some(Ty::IntsIter),
        crate::list::Items::Bools(_) => Some(Ty::BoolsIter),
        crate::list::Items::Values(_) => None,
    }
}

/// The rest of a list iterator as (start, step, count) when its items are ints in an
/// arithmetic run (what `range()` made).
fn int_run(iter: &Iter) -> Option<(i64, i64, i64)> {
    let Iter::List { list, next } = iter else {
        return None;
    };
    let items = list.borrow();
    // One pass that stops at the first item out of the run: a loop entry meets this at every
    // re-entry, and a long list that is not a run is usually found out in three items.
    let mut ints = items.iter().skip(*next).map(|v| match v {
        Value::Int(n) => Some(n),
        _ => None,
    });
    let Some(first) = ints.next() else {
        return Some((0, 1, 0));
    };
    let first = first?;
    let mut count = 1i64;
    let mut step = None;
    let mut last = first;
    for n in ints {
        let n = n?;
        let gap = n.checked_sub(last)?;
        match step {
            None if gap != 0 => step = Some(gap),
            Some(step) if step == gap => {}
            _ => return None,
        }
        last = n;
        count += 1;
    }
    Some((first, step.unwrap_or(1), count))
}

/// The program's top-level constants, computed as a run computes them (compiled code embeds
/// the numeric ones), for the listings and measurements outside a run.
fn computed_globals(
    program: &Program,
    natives: &crate::native::Natives,
) -> Result<Vec<Value>, String> {
    let mut linked = crate::interp::Linked::new(program, natives).map_err(|e| e.message)?;
    crate::scheduler::compute_globals(
        &mut linked,
        &crate::backend::ChatTemplate::chatml(),
        &crate::scheduler::RunConfig::default(),
    )
    .map_err(|e| e.message)?;
    Ok(linked.globals)
}

/// Compiles `functions` (all entry functions when empty) for `arg_types` (ints for parameters
/// beyond those given) and returns their cranelift IR, or why each is not compiled: what
/// `sglc disasm --jit` prints.
pub fn listing(
    program: &Program,
    natives: &crate::native::Natives,
    functions: &[FunctionId],
    arg_types: &[Ty],
) -> Result<String, String> {
    let globals = computed_globals(program, natives)?;
    let limits = crate::interp::Limits::default();
    // The code that ends up running: the optimizing tier's.
    let options = JitOptions {
        tiers: crate::jit_options::JitTiers::Optimized,
        ..JitOptions::default()
    };
    let mut jit = Jit::new(program, natives, options, &limits)?;
    jit.record_clif();
    let all: Vec<FunctionId> = if functions.is_empty() {
        (0..program.functions.len() as FunctionId)
            .filter(|f| *f != program.init)
            .collect()
    } else {
        functions.to_vec()
    };
    for function in all {
        let params = program.functions[function as usize].params.len();
        let args = (0..params)
            .map(|i| arg_types.get(i).copied().unwrap_or(Ty::Int))
            .collect();
        let spec = Spec { function, args };
        jit.compile(program, &globals, &spec);
    }
    Ok(jit.listing(program))
}

/// How long compiling one function took, over several compiles (`compile_times`).
#[derive(Clone, Debug)]
pub struct CompileTime {
    pub function: String,
    /// Each compile's time, in nanoseconds.
    pub nanos: Vec<u64>,
    /// False when the function is not compiled (then the times are those of finding out).
    pub compiled: bool,
}

/// Compiles each function of `program` on its own (for int arguments, with what it calls) in a
/// fresh JIT, `rounds` times: the compile latency figure.
pub fn compile_times(
    program: &Program,
    natives: &crate::native::Natives,
    rounds: usize,
    tier: Tier,
) -> Result<Vec<CompileTime>, String> {
    let options = JitOptions {
        tiers: match tier {
            // As a run compiles first: baseline code, keeping what its tier-up will need.
            Tier::Baseline => crate::jit_options::JitTiers::Tiered,
            Tier::Optimized => crate::jit_options::JitTiers::Optimized,
        },
        ..JitOptions::default()
    };
    let globals = computed_globals(program, natives)?;
    // `samples[i]`: the times of function i (None where it was compiled already as the callee
    // of an earlier one, or is the init function).
    let mut samples: Vec<Option<(String, Vec<u64>, bool)>> = vec![None; program.functions.len()];
    // The first round pages cranelift's code and the allocator's first arenas in (a one-time
    // cost per process, milliseconds on a cold start) and is not counted; each later round
    // compiles every function in a fresh JIT, reused across functions as a batch reuses it.
    for round in 0..=rounds.max(1) {
        let limits = crate::interp::Limits::default();
        let mut jit = Jit::new(program, natives, options, &limits)?;
        for (id, function) in program.functions.iter().enumerate() {
            if id as FunctionId == program.init {
                continue;
            }
            let spec = Spec {
                function: id as FunctionId,
                args: vec![Ty::Int; function.params.len()],
            };
            let already = jit.compiled.contains_key(&spec);
            let before = jit.compile_nanos;
            let compiled = jit.compile(program, &globals, &spec).is_some();
            if round > 0 && !already {
                let entry = samples[id]
                    .get_or_insert_with(|| (function.name.clone(), Vec::new(), compiled));
                entry.1.push(jit.compile_nanos - before);
            }
        }
    }
    Ok(samples
        .into_iter()
        .flatten()
        .map(|(function, nanos, compiled)| CompileTime {
            function,
            nanos,
            compiled,
        })
        .collect())
}

fn describe(program: &Program, spec: &Spec) -> String {
    let f = &program.functions[spec.function as usize];
    let args: Vec<String> = f
        .params
        .iter()
        .zip(&spec.args)
        .map(|(p, t)| format!("{p}: {}", t.name()))
        .collect();
    format!("fn {}({})", f.name, args.join(", "))
}

/// Renames the calls in `function` of code `renamed` has a new id for.
fn rename_calls(function: &mut cranelift_codegen::ir::Function, renamed: &HashMap<FuncId, FuncId>) {
    let callees: Vec<_> = function
        .params
        .user_named_funcs()
        .iter()
        // Namespace 0 holds functions (cranelift-module's convention), 1 data.
        .filter(|(_, name)| name.namespace == 0)
        .filter_map(|(at, name)| Some((at, *renamed.get(&FuncId::from_u32(name.index))?)))
        .collect();
    for (at, new) in callees {
        function.params.reset_user_func_name(
            at,
            cranelift_codegen::ir::UserExternalName::new(0, new.as_u32()),
        );
    }
}

/// Calls compiled code with `args` as i64 bits; returns its result's bits.
///
/// # Safety
/// `pointer` must be a finalized function with signature `(depth, i64 x args.len()) ->
/// Returned`, compiled by a JIT that is alive (its code reaches the context at a fixed
/// address).
unsafe fn invoke(pointer: *const u8, depth: i64, args: &[i64]) -> i64 {
    type F0 = extern "C" fn(i64) -> Returned;
    type F1 = extern "C" fn(i64, i64) -> Returned;
    type F2 = extern "C" fn(i64, i64, i64) -> Returned;
    type F3 = extern "C" fn(i64, i64, i64, i64) -> Returned;
    type F4 = extern "C" fn(i64, i64, i64, i64, i64) -> Returned;
    type F5 = extern "C" fn(i64, i64, i64, i64, i64, i64) -> Returned;
    type F6 = extern "C" fn(i64, i64, i64, i64, i64, i64, i64) -> Returned;
    let d = depth;
    // SAFETY: the caller guarantees the signature matches the argument count.
    let returned = unsafe {
        match *args {
            [] => std::mem::transmute::<*const u8, F0>(pointer)(d),
            [a] => std::mem::transmute::<*const u8, F1>(pointer)(d, a),
            [a, b] => std::mem::transmute::<*const u8, F2>(pointer)(d, a, b),
            [a, b, c] => std::mem::transmute::<*const u8, F3>(pointer)(d, a, b, c),
            [a, b, c, e] => std::mem::transmute::<*const u8, F4>(pointer)(d, a, b, c, e),
            [a, b, c, e, f] => std::mem::transmute::<*const u8, F5>(pointer)(d, a, b, c, e, f),
            [a, b, c, e, f, g] => {
                std::mem::transmute::<*const u8, F6>(pointer)(d, a, b, c, e, f, g)
            }
            _ => return 0,
        }
    };
    returned.value
}

#[cfg(test)]
mod tests {
    use super::*;
    use sglc_compiler::bytecode::Instr;

    fn compile(source: &str) -> Program {
        let mut natives = crate::native::Natives::new();
        natives.register("range", 1, Some(3), |_, _, _| Ok(Value::None));
        let compiled = sglc_compiler::compile(source, &natives.compile_env());
        compiled.program.expect("the test program compiles")
    }

    /// The interpreter's iterator over a list of `items`, `next` items in.
    fn list_iter_at(items: Vec<Value>, next: usize) -> Value {
        Value::Iterator(Rc::new(RefCell::new(Iter::List {
            list: Rc::new(RefCell::new(items.into())),
            next,
        })))
    }

    /// The interpreter's iterator over what `range(start, stop)` returns, `next` items in.
    fn range_iter(start: i64, stop: i64, next: usize) -> Value {
        list_iter_at((start..stop).map(Value::Int).collect(), next)
    }

    /// Enters the loop at `header` of `function` through on-stack replacement with the
    /// interpreter's slots `values`, at call depth 1 and the default limits.
    fn enter_loop(
        jit: &mut Jit,
        program: &Program,
        (function, header): (FunctionId, u32),
        values: &[Value],
    ) -> JitCall {
        jit.osr(
            program,
            &[],
            function,
            header,
            values,
            1,
            &crate::interp::Limits::default(),
            Turn::default(),
        )
    }

    /// What the loop at `header` of `function` returns, entered with `values` (`enter_loop`);
    /// a panic, with the JIT's reasons, when it did not run compiled to its return.
    fn loop_result(
        jit: &mut Jit,
        program: &Program,
        at: (FunctionId, u32),
        values: &[Value],
    ) -> Value {
        match enter_loop(jit, program, at, values) {
            JitCall::Returned(value) => value,
            _ => panic!("the loop was not compiled: {:?}", jit.rejected),
        }
    }

    fn int(value: Value) -> i64 {
        match value {
            Value::Int(n) => n,
            other => panic!("not an int: {other:?}"),
        }
    }

    fn float(value: Value) -> f64 {
        match value {
            Value::Float(x) => x,
            other => panic!("not a float: {other:?}"),
        }
    }

    /// `main`, its `for` loop's header, and a JIT.
    fn loop_setup(program: &Program) -> (FunctionId, u32, Jit) {
        let main = program.function("main").unwrap();
        let header = program.functions[main as usize]
            .code
            .iter()
            .position(|i| matches!(i, Instr::ForIter { .. }))
            .unwrap() as u32;
        (
            main,
            header,
            Jit::new(
                program,
                &crate::native::Natives::new(),
                JitOptions::default(),
                &crate::interp::Limits::default(),
            )
            .unwrap(),
        )
    }

    /// `main(n)`: the sum of `range(n)` in a `for` loop; its locals are `n`, `total` and `i`.
    fn range_sum_program() -> Program {
        compile(
            "fn main(n) {\n    let total = 0\n    for i in range(n) {\n        total += i\n    }\n    return total\n}\n",
        )
    }

    #[test]
    fn a_loop_is_entered_where_the_interpreter_stands() {
        let program = range_sum_program();
        let (main, header, mut jit) = loop_setup(&program);
        // n = 10, total = 0 + 1 + 2 after three iterations, i = 2, the iterator 3 items in.
        let values = [
            Value::Int(10),
            Value::Int(3),
            Value::Int(2),
            range_iter(0, 10, 3),
        ];
        let locals = program.functions[main as usize].local_count as usize;
        assert_eq!(values.len(), locals + 1, "locals, then the iterator");
        assert_eq!(
            int(loop_result(&mut jit, &program, (main, header), &values)),
            45
        );
        assert_eq!(jit.osr_compiled.len(), 1);
    }

    /// A deopt hands the interpreter `none` for a scalar it will not read again; an entry
    /// compiled where that local held an int still serves.
    #[test]
    fn a_loop_entry_serves_whatever_its_dead_scalars_hold() {
        let program = range_sum_program();
        let (main, header, mut jit) = loop_setup(&program);
        // At the header, `n` (read once, before the loop) and `i` (stored before it is read)
        // are dead; `total` is live.
        let first = [
            Value::Int(10),
            Value::Int(3),
            Value::Int(2),
            range_iter(0, 10, 3),
        ];
        let after_a_deopt = [
            Value::None,
            Value::Int(10),
            Value::None,
            range_iter(0, 10, 5),
        ];
        for (values, expected) in [(&first, 45), (&after_a_deopt, 45)] {
            assert_eq!(
                int(loop_result(&mut jit, &program, (main, header), values)),
                expected
            );
        }
        assert_eq!(jit.osr_compiled[&(main, header)].len(), 1, "compiled once");
        // A live local of another type is another entry.
        let float_total = [
            Value::None,
            Value::Float(0.5),
            Value::None,
            range_iter(0, 10, 0),
        ];
        assert_eq!(
            float(loop_result(
                &mut jit,
                &program,
                (main, header),
                &float_total
            )),
            45.5
        );
        assert_eq!(jit.osr_compiled[&(main, header)].len(), 2);
    }

    /// A loop the interpreter runs in a function that has compiled code (left there by a
    /// deopt) is compiled for entry only once it is hot by the `auto` threshold, even when
    /// eager; a loop that has an entry is entered at once.
    #[test]
    fn a_loop_left_to_the_interpreter_by_a_deopt_waits_for_the_threshold() {
        let program = range_sum_program();
        let limits = crate::interp::Limits::default();
        let (main, header, _) = loop_setup(&program);
        let mut jit = eager_jit(&program, &limits);
        // Never called yet: eager compiles at the first back edge.
        assert!(jit.back_edge(main, header));
        match jit.call(
            &program,
            &[],
            main,
            &[Value::Int(5)],
            0,
            &limits,
            Turn::default(),
        ) {
            JitCall::Returned(Value::Int(10)) => {}
            _ => panic!("main was not compiled"),
        }
        let threshold = jit.options.threshold;
        for _ in 0..threshold {
            assert!(
                !jit.back_edge(main, header),
                "compiled before the threshold"
            );
        }
        assert!(jit.back_edge(main, header));
        // With an entry for the loop, at once.
        let mut fresh = eager_jit(&program, &limits);
        let _ = fresh.call(
            &program,
            &[],
            main,
            &[Value::Int(5)],
            0,
            &limits,
            Turn::default(),
        );
        let values = [Value::None, Value::Int(0), Value::None, range_iter(0, 5, 0)];
        let _ = enter_loop(&mut fresh, &program, (main, header), &values);
        assert!(fresh.back_edge(main, header));
    }

    /// A tier-up still queued when its JIT is dropped is not compiled.
    #[test]
    fn the_tier_up_of_a_dropped_jit_is_not_compiled() {
        let program = fib_program();
        let limits = crate::interp::Limits::default();
        let mut jit = eager_jit(&program, &limits);
        let call = |jit: &mut Jit, n: i64| call_fib(jit, &program, &limits, n);
        // Out of fuel in baseline code (as in
        // `baseline_code_that_keeps_running_is_compiled_again_optimized`): a tier-up is due.
        call(&mut jit, 10);
        call(&mut jit, 27);
        assert!(jit.runtime.tier_up_due);
        // The compile thread is held up by other work while the tier-up is queued behind it.
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let held = send_to_compile_thread(Box::new(move || {
            let _ = hold.recv();
        }));
        assert!(held.is_ok(), "a compile thread");
        assert!(matches!(
            call(&mut jit, 10),
            JitCall::Returned(Value::Int(55))
        ));
        // What the thread makes of the job, read here once the JIT is gone.
        let job = jit.tier_up_job.as_mut().expect("a tier-up queued");
        let outcome = std::mem::replace(&mut job.compiled, std::sync::mpsc::channel().1);
        drop(jit);
        release.send(()).unwrap();
        match outcome.recv() {
            Ok(Err(reason)) => assert_eq!(reason, ABANDONED),
            Ok(Ok(code)) => panic!("the thread compiled {} functions for nobody", code.len()),
            Err(_) => panic!("the thread sent nothing"),
        }
    }

    /// A JIT that compiles every function at its first call, with the default tiers.
    fn eager_jit(program: &Program, limits: &crate::interp::Limits) -> Jit {
        let options = JitOptions {
            mode: JitMode::Eager,
            ..JitOptions::default()
        };
        Jit::new(program, &crate::native::Natives::new(), options, limits).unwrap()
    }

    /// Recursive fib, the tier-up tests' program.
    fn fib_program() -> Program {
        compile("fn fib(n) {\n    if n < 2 { return n }\n    return fib(n - 1) + fib(n - 2)\n}\n")
    }

    /// `fib(n)` through `jit`, as the interpreter calls it.
    fn call_fib(
        jit: &mut Jit,
        program: &Program,
        limits: &crate::interp::Limits,
        n: i64,
    ) -> JitCall {
        let fib = program.function("fib").unwrap();
        jit.call(
            program,
            &[],
            fib,
            &[Value::Int(n)],
            0,
            limits,
            Turn::default(),
        )
    }

    #[test]
    fn baseline_code_that_keeps_running_is_compiled_again_optimized() {
        let program = fib_program();
        let fib = program.function("fib").unwrap();
        let limits = crate::interp::Limits::default();
        let mut jit = eager_jit(&program, &limits);
        let call = |jit: &mut Jit, n: i64| call_fib(jit, &program, &limits, n);
        // Small enough to finish on its first tank: baseline code, awaiting a tier-up.
        assert!(matches!(
            call(&mut jit, 10),
            JitCall::Returned(Value::Int(55))
        ));
        assert_eq!(jit.baseline_specs.len(), 1);
        assert!(jit.runtime.baseline_code && !jit.runtime.tier_up_due);
        // fib(27) spends fuel at every fourth call depth, 164,336 times: out of fuel, the
        // baseline code hands the frames running back to the interpreter and asks for the
        // optimizing tier.
        match call(&mut jit, 27) {
            JitCall::Deopt { frames, .. } => assert!(!frames.is_empty()),
            _ => panic!("baseline code ran a whole tank without asking to tier up"),
        }
        assert!(jit.runtime.tier_up_due);
        let compiled_fib = |jit: &Jit| {
            jit.compiled[&Spec {
                function: fib,
                args: vec![Ty::Int],
            }]
                .1
        };
        let baseline_pointer = compiled_fib(&jit);
        // The next call starts compiling fib again, optimized, on a thread of its own, and
        // calls the baseline code meanwhile.
        assert!(matches!(
            call(&mut jit, 10),
            JitCall::Returned(Value::Int(55))
        ));
        assert!(jit.tier_up_job.is_some() && jit.runtime.tier_up_done.is_some());
        assert!(jit.baseline_specs.is_empty() && !jit.runtime.baseline_code);
        // Once the thread is done, the next call installs the optimized code and runs it to
        // the end: no more baseline code, so running out of fuel just refuels.
        jit.wait_for_tier_up_thread();
        assert!(jit.runtime.tier_up_ready(), "the thread said it is done");
        assert!(matches!(
            call(&mut jit, 27),
            JitCall::Returned(Value::Int(196418))
        ));
        assert!(jit.tier_up_job.is_none() && jit.runtime.tier_up_done.is_none());
        assert_ne!(
            compiled_fib(&jit),
            baseline_pointer,
            "the interpreter calls the optimized code"
        );
        assert!(jit.runtime.spent_before > 0, "the optimized code refuelled");
        assert_eq!(
            jit.inlined_calls,
            2 + 4 + 8,
            "the tier-up inlined fib's two calls of itself, then the four calls those copies \
             make, then fib's prefix (`if n < 2 {{ return n }}`) into the eight calls left"
        );

        // Many short runs of baseline code tier up too.
        let mut jit = eager_jit(&program, &limits);
        for _ in 0..TIER_UP_ENTRIES {
            assert!(matches!(
                call(&mut jit, 3),
                JitCall::Returned(Value::Int(2))
            ));
        }
        assert!(jit.runtime.tier_up_due && jit.baseline_specs.len() == 1);
        let baseline_pointer = compiled_fib(&jit);
        assert!(matches!(
            call(&mut jit, 3),
            JitCall::Returned(Value::Int(2))
        ));
        assert!(jit.baseline_specs.is_empty() && !jit.runtime.baseline_code);
        jit.wait_for_tier_up_thread();
        assert!(matches!(
            call(&mut jit, 3),
            JitCall::Returned(Value::Int(2))
        ));
        assert_ne!(compiled_fib(&jit), baseline_pointer);
    }

    #[test]
    fn a_branch_on_a_comparison_tests_the_comparison_itself() {
        let program = compile(
            "fn f(n, x) {\n    if n < 2 { return 1 }\n    if not (x == 3.5) { return 2 }\n    return 3\n}\n",
        );
        let f = program.function("f").unwrap();
        let natives = crate::native::Natives::new();
        let clif = listing(&program, &natives, &[f], &[Ty::Int, Ty::Float]).unwrap();
        let ir = clif.split("; machine code").next().unwrap();
        // The IR as emitted (before cranelift's optimiser, which the baseline tier skips): the
        // comparisons' results are branched on, not widened to a bool and tested again.
        let compare = ir
            .lines()
            .find(|line| line.contains("icmp") && line.contains(" slt "))
            .and_then(|line| line.trim().split(' ').next())
            .expect("the comparison is emitted")
            .to_string();
        assert!(
            ir.lines()
                .any(|line| line.trim().starts_with(&format!("brif {compare},"))),
            "branches on {compare} itself:\n{ir}"
        );
        assert!(
            !ir.contains("icmp_imm ne"),
            "no bool tested against 0:\n{ir}"
        );
    }

    #[test]
    fn a_panic_while_compiling_is_a_failure_to_compile() {
        let program = compile("fn f(n) {\n    return n + 1\n}\n");
        let limits = crate::interp::Limits::default();
        let mut jit = eager_jit(&program, &limits);
        let failed: Result<(), String> = jit.guarded(|_| panic!("a bug in cranelift"));
        assert!(failed.unwrap_err().contains("panicked"));
        // The JIT is usable afterwards.
        let f = program.function("f").unwrap();
        let call = jit.call(
            &program,
            &[],
            f,
            &[Value::Int(1)],
            0,
            &limits,
            Turn::default(),
        );
        assert!(matches!(call, JitCall::Returned(Value::Int(2))));
    }

    /// Where an inlined callee deopts, the frames reported are those a real call would
    /// have reported: the callee's, then its caller's waiting for the callee's result.
    #[test]
    fn an_inlined_callee_deopts_as_a_called_one() {
        let program = compile(
            "fn triple(x) {\n    return x * 3\n}\n\nfn grow(n, x) {\n    if n < 1 { return x }\n    return grow(n - 1, triple(x))\n}\n",
        );
        let (grow, triple) = (
            program.function("grow").unwrap(),
            program.function("triple").unwrap(),
        );
        let limits = crate::interp::Limits::default();
        let options = JitOptions {
            mode: JitMode::Eager,
            tiers: crate::jit_options::JitTiers::Optimized,
            ..JitOptions::default()
        };
        let mut jit = Jit::new(&program, &crate::native::Natives::new(), options, &limits).unwrap();
        let mut call = |n: i64| {
            jit.call(
                &program,
                &[],
                grow,
                &[Value::Int(n), Value::Int(1)],
                0,
                &limits,
                Turn::default(),
            )
        };
        assert!(matches!(call(5), JitCall::Returned(Value::Int(243))));
        // 3^40 overflows: in the copy of `triple` inlined into a copy of `grow`.
        let JitCall::Deopt { frames, .. } = call(60) else {
            panic!("an overflow in the inlined triple did not deopt");
        };
        let innermost = frames.last().unwrap();
        assert_eq!(innermost.function, triple);
        // `x` is not read again (none); the multiplication's operands are on the stack.
        assert!(
            matches!(innermost.values[..], [Value::None, Value::Int(x), Value::Int(3)] if x == 3i64.pow(39)),
            "triple's frame holds the x that overflows: {:?}",
            innermost.values
        );
        // grow(60), ..., grow(21), waiting for grow's result, then grow(21) waiting for
        // triple's with n - 1 on its stack.
        assert_eq!(frames.len(), 40 + 1);
        let caller = &frames[frames.len() - 2];
        assert_eq!(caller.function, grow);
        assert!(matches!(caller.values[..], [_, _, Value::Int(20)]));
        assert!(
            frames[..39]
                .iter()
                .all(|frame| frame.function == grow && frame.ip == frames[0].ip)
        );
        // grow inlines triple and itself (a call of a function that inlines nothing more).
        assert!(jit.inlined_calls >= 2, "inlined {}", jit.inlined_calls);
    }

    /// A loop compiled by the baseline tier is compiled again, optimized, on the tier-up's
    /// thread, and its next entry runs the optimized code.
    #[test]
    fn a_baseline_loop_tiers_up_on_the_compiling_thread() {
        let program = range_sum_program();
        let (main, header, mut jit) = loop_setup(&program);
        // n = 10, total = 0, i = 0, the iterator `next` items in.
        let entry = |jit: &mut Jit, next: usize| {
            let values = [
                Value::Int(10),
                Value::Int(0),
                Value::Int(0),
                range_iter(0, 10, next),
            ];
            enter_loop(jit, &program, (main, header), &values)
        };
        assert!(matches!(
            entry(&mut jit, 0),
            JitCall::Returned(Value::Int(45))
        ));
        let pointer = |jit: &Jit| jit.osr_compiled[&(main, header)][0].1.0;
        let baseline_pointer = pointer(&jit);
        assert_eq!(jit.baseline_osr.len(), 1);
        jit.runtime.tier_up_due = true;
        assert!(matches!(
            entry(&mut jit, 0),
            JitCall::Returned(Value::Int(45))
        ));
        assert!(jit.baseline_osr.is_empty() && jit.tier_up_job.is_some());
        jit.wait_for_tier_up_thread();
        assert!(matches!(
            entry(&mut jit, 5),
            JitCall::Returned(Value::Int(35))
        ));
        assert_ne!(
            pointer(&jit),
            baseline_pointer,
            "the loop runs its optimized code"
        );
        assert!(jit.optimized_osr.contains(&(main, header)));
    }

    #[test]
    fn a_loop_entered_counting_from_zero_takes_its_start_and_step_as_constants() {
        let program = range_sum_program();
        let (main, header, mut jit) = loop_setup(&program);
        jit.record_clif();
        let entry = |jit: &mut Jit, start: i64| {
            let values = [
                Value::Int(10),
                Value::Int(0),
                Value::Int(0),
                range_iter(start, start + 10, 0),
            ];
            enter_loop(jit, &program, (main, header), &values)
        };
        assert!(matches!(
            entry(&mut jit, 0),
            JitCall::Returned(Value::Int(45))
        ));
        // An iterator starting elsewhere needs an entry of its own, which loads the start.
        assert!(matches!(
            entry(&mut jit, 3),
            JitCall::Returned(Value::Int(75))
        ));
        assert!(matches!(
            entry(&mut jit, 0),
            JitCall::Returned(Value::Int(45))
        ));
        let entries = &jit.osr_compiled[&(main, header)];
        let counting: Vec<&[bool]> = entries
            .iter()
            .map(|(shape, _)| &shape.counting[..])
            .collect();
        assert_eq!(counting, [&[true][..], &[false][..]]);
        let loads = |ir: &str| ir.matches(" = load.i64").count();
        let clif = jit.clif.as_ref().unwrap();
        assert_eq!(
            loads(&clif[0].1) + 2,
            loads(&clif[1].1),
            "the entry for a range counting from 0 by 1 loads neither its start nor its step"
        );
    }

    #[test]
    fn code_that_mostly_calls_helpers_stays_baseline_code() {
        let program = compile(
            "fn main(n) {\n    let s = \"\"\n    for i in range(n) {\n        s = s + \"ab\"\n    }\n    return s\n}\n",
        );
        let (main, header, mut jit) = loop_setup(&program);
        let entry = |jit: &mut Jit| {
            let values = [
                Value::Int(3),
                Value::str(""),
                Value::Int(0),
                range_iter(0, 3, 0),
            ];
            assert_eq!(
                loop_result(jit, &program, (main, header), &values).as_str(),
                Some("ababab")
            );
        };
        entry(&mut jit);
        let baseline_ir = &jit.baseline_ir[&jit.baseline_osr[0].id];
        assert!(helper_bound(baseline_ir), "{}", baseline_ir.display());
        let baseline_pointer = jit.osr_compiled[&(main, header)][0].1.0;
        jit.runtime.tier_up_due = true;
        entry(&mut jit);
        assert!(
            jit.tier_up_job.is_none() && jit.baseline_osr.is_empty(),
            "nothing to compile again"
        );
        assert!(
            !jit.runtime.baseline_code,
            "and no tier-up to ask for again"
        );
        entry(&mut jit);
        assert_eq!(jit.osr_compiled[&(main, header)][0].1.0, baseline_pointer);
        assert!(!jit.optimized_osr.contains(&(main, header)));
    }

    /// A loop compiled after a function it calls reuses that function's code, compiling it
    /// once. (Compiling it again under the same name was refused by cranelift, and the loop
    /// stayed interpreted; names are numbered now, so the count is what tells.)
    #[test]
    fn a_loop_calls_the_code_its_callee_already_has() {
        let program = compile(
            "fn double(x) {\n    return x * 2\n}\n\nfn main(n) {\n    let total = 0\n    for i in range(n) {\n        total += double(i)\n    }\n    return total\n}\n",
        );
        let (main, header, _) = loop_setup(&program);
        let limits = crate::interp::Limits::default();
        let mut jit = eager_jit(&program, &limits);
        let double = program.function("double").unwrap();
        let called = jit.call(
            &program,
            &[],
            double,
            &[Value::Int(4)],
            1,
            &limits,
            Turn::default(),
        );
        assert!(matches!(called, JitCall::Returned(Value::Int(8))));
        let values = [
            Value::Int(10),
            Value::Int(0),
            Value::None,
            range_iter(0, 10, 0),
        ];
        assert_eq!(
            int(loop_result(&mut jit, &program, (main, header), &values)),
            90
        );
        assert_eq!(jit.compiled_count, 1, "`double` was compiled once");
    }

    /// A loop met when its iterator is spent is left to the interpreter this time, and not
    /// ruled out: an empty rest of a list of strings once passed for a range of ints, failed
    /// against the string in the loop variable, and the loop was never compiled after.
    #[test]
    fn a_loop_met_with_its_iterator_spent_is_compiled_later() {
        let program = compile(
            "fn main(words) {\n    let n = 0\n    for w in words {\n        if w == \"ab\" { n += 1 }\n    }\n    return n\n}\n",
        );
        let (main, header, mut jit) = loop_setup(&program);
        let enter = |jit: &mut Jit, next: usize| {
            let words = vec![Value::str("ab"), Value::str("cde")];
            let values = [
                Value::None,
                Value::Int(0),
                Value::str("cde"),
                list_iter_at(words, next),
            ];
            enter_loop(jit, &program, (main, header), &values)
        };
        assert!(matches!(enter(&mut jit, 2), JitCall::Interpret));
        assert!(
            jit.osr_failed[main as usize].is_empty(),
            "the loop is not ruled out"
        );
        assert!(jit.osr_compiled.is_empty());
        // The same loop with items left: compiled, and run to its end.
        assert!(
            matches!(enter(&mut jit, 0), JitCall::Returned(Value::Int(1))),
            "{:?}",
            jit.rejected
        );
        assert_eq!(jit.osr_compiled.len(), 1);
    }

    /// A loop entered over a packed list takes its items as scalars (ints here, bools below),
    /// not as objects; items of another type (a list that is not packed) are objects still.
    #[test]
    fn a_loop_over_a_packed_list_takes_its_items_as_scalars() {
        let program = compile(
            "fn main(xs) {\n    let total = 0\n    for x in xs {\n        if x { total += 1 }\n    }\n    return total\n}\n",
        );
        let (main, header, mut jit) = loop_setup(&program);
        let cases = [
            // Not a run, so not entered as a range.
            (
                vec![Value::Int(3), Value::Int(0), Value::Int(4)],
                0,
                2,
                Ty::IntsIter,
            ),
            (
                vec![Value::Bool(true), Value::Bool(false), Value::Bool(true)],
                0,
                2,
                Ty::BoolsIter,
            ),
            (
                vec![Value::Int(3), Value::str("a"), Value::None],
                0,
                2,
                Ty::ObjIter,
            ),
        ];
        for (items, next, expected, iter_ty) in cases {
            let values = [
                Value::None,
                Value::Int(0),
                Value::None,
                list_iter_at(items, next),
            ];
            assert_eq!(
                int(loop_result(&mut jit, &program, (main, header), &values)),
                expected
            );
            let shapes = &jit.osr_compiled[&(main, header)];
            assert_eq!(shapes.last().unwrap().0.frame.stack, [iter_ty]);
        }
    }

    #[test]
    fn a_loop_over_list_items_takes_them_for_numbers_behind_a_guard() {
        let program = compile(
            "fn main(xs) {\n    let total = 0\n    for x in xs {\n        total += x\n    }\n    return total\n}\n",
        );
        let (main, header, mut jit) = loop_setup(&program);
        // Enters the loop with `total = 0` and the iterator over `items`, none taken yet.
        let mut enter = |items: Vec<Value>| {
            let values = [
                Value::None,
                Value::Int(0),
                Value::None,
                list_iter_at(items, 0),
            ];
            enter_loop(&mut jit, &program, (main, header), &values)
        };
        // Not an arithmetic run, so not entered as a range: an iterator over objects.
        match enter(vec![Value::Int(1), Value::Int(4), Value::Int(9)]) {
            JitCall::Returned(Value::Int(total)) => assert_eq!(total, 14),
            _ => panic!("the loop was not compiled"),
        }
        // An item that is not an int: the guard hands the frame back at that item, at the
        // `+=` with the sum so far and the item on the stack, for the interpreter to raise its
        // error. `total` itself is written before it is read again, so it is not handed back.
        match enter(vec![Value::Int(1), Value::str("a"), Value::Int(2)]) {
            JitCall::Deopt { frames, .. } => {
                assert_eq!(frames.len(), 1);
                let values = &frames[0].values;
                let locals = program.functions[main as usize].local_count as usize;
                let stack = &values[locals..];
                assert!(
                    matches!(stack[stack.len() - 2], Value::Int(1)),
                    "total so far"
                );
                assert_eq!(stack[stack.len() - 1].as_str(), Some("a"), "the item");
                assert_eq!(values[2].as_str(), Some("a"), "the item's variable");
                assert!(matches!(values[1], Value::None), "total is not read again");
            }
            _ => panic!("the guard did not hand back"),
        }
    }
}
