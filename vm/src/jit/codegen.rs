//! Cranelift code for one analysed specialization.
//!
//! Every local and stack slot is a cranelift `Variable` per (slot, representation), so control
//! flow merges come from the SSA builder. Ints, bools and `none` are `i64`, floats `f64`; a
//! `range()` being iterated is four `i64`s (start, step, index, count); any other value is an
//! object slot, an `i64` owning a box (`objects`, `super::runtime`). Anything that could make
//! the interpreter raise an error or change type (overflow, division by zero, NaN in a
//! comparison, the call depth limit) branches to a cold *deopt* block instead: it spills every
//! live slot, reports them with the resume point, and returns; the interpreter then re-runs the
//! instruction itself, so errors, their messages and their spans are the interpreter's own.
//! A guard's deopt block writes the slots into the context's spill buffer and its site into
//! the context's status, and calls nothing; a caller whose callee deopted writes its slots into
//! a second buffer and calls `sglc_jit_deopt(ctx, site)`, which reports the callee's frame
//! first (`Report`). Constants are recorded in the site (`SlotKind::Constant`) rather than
//! written, so the cold path keeps no hot-path constant alive in a register.

use super::analyze::{Frame, Local, Plan};
use super::{CTX_CHAIN_SPILL, CTX_FUEL, CTX_SPILL, CTX_STATUS, DeoptSite, SlotKind, Spec, Ty};
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{
    AbiParam, Block, InstBuilder, InstructionData, MemFlagsData, Opcode, Value, ValueDef, types,
};
use cranelift_frontend::{FunctionBuilder, Variable};
use cranelift_module::{FuncId, Module};
use foldhash::{HashMap, HashMapExt};
use sglc_compiler::bytecode::{Constant, Instr, Program};

/// How a deopt block reports its frame.
#[derive(Clone, Copy)]
enum Report {
    /// A guard failed: the first frame of a deopt. Its site goes in the context's status and
    /// its slots in the spill buffer, pending (`JitCtx::take_pending_deopt`), with no call.
    Guard,
    /// The callee deopted: this frame is an outer one. Its slots go in the chain spill buffer
    /// and `sglc_jit_deopt` reports it, after the callee's pending frame.
    AfterCallee,
}

/// One slot of the frame a deopt reports, as read where the deopt branches off.
enum DeoptRead {
    /// A value of this type; `true` when it is a borrowed box the interpreter needs a clone of.
    Value(Value, Ty, bool),
    /// A local not read again before it is written.
    Unknown,
    /// A `range` iterator's start, step, index and count.
    Range([Value; 4]),
}

mod objects;

/// Values compiled code clones from, each boxed so its address stays put as the list grows.
#[allow(clippy::vec_box)]
pub type Pinned = Vec<Box<crate::value::Value>>;

/// How a slot's value is held.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Rep {
    I64,
    F64,
    RangeStart,
    RangeStep,
    RangeIndex,
    RangeCount,
}

const REPS: usize = 6;

fn rep(ty: Ty) -> Rep {
    if ty == Ty::Float { Rep::F64 } else { Rep::I64 }
}

/// Builds one function's body.
pub struct FunctionCodegen<'a, 'b> {
    pub b: FunctionBuilder<'b>,
    pub program: &'a Program,
    pub globals: &'a [crate::value::Value],
    pub plan: &'a Plan,
    /// Callees, by specialization, as imported into this function.
    pub callees: HashMap<Spec, cranelift_codegen::ir::FuncRef>,
    pub deopt: cranelift_codegen::ir::FuncRef,
    /// `sglc_jit_refuel(ctx) -> stop`, called out of fuel.
    pub refuel: cranelift_codegen::ir::FuncRef,
    pub sites: &'a mut Vec<DeoptSite>,
    /// `vars[slot][rep]`: a slot's variable in one representation, declared on first use
    /// (indexed, not hashed: looking variables up was a few percent of compiling).
    vars: Vec<[Option<Variable>; REPS]>,
    target: Target,
    /// Call frames in use, this one included: a parameter, so calls cost no memory traffic.
    depth: Option<Value>,
    /// On-stack replacement: enter at this instruction with the slots (as the interpreter's
    /// frame has them) read from a buffer, instead of at 0 with arguments.
    pub osr_entry: Option<(usize, super::OsrShape)>,
    /// 0 and 1 defined once in the entry block, for every range's start and step: a loop
    /// header that ranges reach from several places (the loop nest's entry and each pass of
    /// the outer loop) then sees one value from all of them, no block parameter, and the
    /// optimizer folds `start + index * step` to `index`.
    range_constants: Option<[Value; 2]>,
    /// The call depth limit was tested once at the entry, for every call of the function.
    depth_checked_at_entry: bool,
    /// Which locals the interpreter may read from each instruction on.
    live: Option<super::analyze::Liveness>,
    local_count: usize,
    /// Boxes compiled code clones from (string constants, object globals), kept by the JIT.
    pinned: &'a mut Pinned,
    /// Signatures of runtime helpers, by (argument count, whether it returns).
    helper_sigs: HashMap<(usize, bool), cranelift_codegen::ir::SigRef>,
    /// `borrows[ip]`: the object instruction `ip` pushes is only read before it goes, so it
    /// may borrow its box instead of cloning it (`objects::borrowable`).
    borrows: Vec<bool>,
    /// Stack slots that hold a borrowed box just now: freeing one does nothing, and a deopt
    /// clones it so the interpreter gets a value of its own.
    borrowed: foldhash::HashSet<usize>,
    /// What the code knows of int values: their lower bounds (`Bounds`).
    bounds: Bounds,
    /// Emit the function's prefix only (`in_prefix`), handing over to its whole code, this
    /// function, everywhere else.
    pub prefix_of: Option<cranelift_codegen::ir::FuncRef>,
    /// The arguments the function was entered with, for the hand-over.
    entry_args: Vec<Value>,
    /// Returns emitted in prefix mode: none, and the prefix is of no use.
    prefix_returns: usize,
}

/// Lower bounds of int values known where code is being emitted, from the comparisons that
/// branched there: after `if n < 2 { return n }`, `n - 1` and `n - 2` cannot overflow, and
/// their checks go. A bound holds from the branch's target to the end of its basic block, and
/// only where that target has no other way in; a value is an SSA value, so no later store can
/// change it.
#[derive(Default)]
struct Bounds {
    /// The bounds in the basic block being emitted.
    known: HashMap<Value, i64>,
    /// `compared[v]`: the bool `v` is `x cc k` for an int `x` and a constant `k`.
    compared: HashMap<Value, (Value, IntCC, i64)>,
    /// Bounds for the start of a basic block, by its first instruction, from the branch
    /// that is its only way in.
    at_block: HashMap<usize, HashMap<Value, i64>>,
    /// `single_entry[ip]`: one edge (a branch or falling through) leads to `ip`.
    single_entry: Vec<bool>,
}

impl Bounds {
    /// The bounds a branch on `condition` gives its two targets: where it is true, where false.
    fn of_branch(&self, condition: Value) -> [Option<(Value, i64)>; 2] {
        let Some(&(x, cc, k)) = self.compared.get(&condition) else {
            return [None, None];
        };
        let at_least = |m: Option<i64>| m.map(|m| (x, m));
        match cc {
            IntCC::SignedGreaterThan => [at_least(k.checked_add(1)), None],
            IntCC::SignedGreaterThanOrEqual => [at_least(Some(k)), None],
            IntCC::SignedLessThan => [None, at_least(Some(k))],
            IntCC::SignedLessThanOrEqual => [None, at_least(k.checked_add(1))],
            _ => [None, None],
        }
    }

    /// Passes what is known now, plus `bound`, to the block starting at `target` when the
    /// branch is its only way in.
    fn pass_to(&mut self, target: usize, bound: Option<(Value, i64)>) {
        if !self.single_entry.get(target).copied().unwrap_or(false) {
            return;
        }
        let mut known = self.known.clone();
        if let Some((x, m)) = bound {
            let m = known.get(&x).map_or(m, |&old| old.max(m));
            known.insert(x, m);
        }
        self.at_block.insert(target, known);
    }
}

/// Whether a function's *prefix* may run instruction `instr`: scalar arithmetic,
/// comparisons, locals and forward branches, whose only effects are on the frame (a
/// failing check deopts, which reports the frame as it is). A loop, a call or anything
/// on an object ends the prefix.
///
/// A function's prefix is its code up to the first such instruction on every path: for
/// `fib`, `if n < 2 { return n }`. Emitted on its own (`prefix_of`), it returns where the
/// function returns early and calls the whole function everywhere else; inlined into the
/// callers of a function too large to inline again, it saves the call wherever the callee
/// would return at once, as a recursion's base case does in half of its calls.
fn in_prefix(
    ip: usize,
    instr: Instr,
    frame: &Frame,
    program: &Program,
    globals: &[crate::value::Value],
) -> bool {
    let scalar = |ty: &Ty| ty.is_scalar();
    let frame_scalar = frame.stack.iter().all(scalar)
        && frame.locals.iter().all(|local| match local {
            Local::Known(ty) => ty.is_scalar(),
            Local::Unknown => true,
        });
    if !frame_scalar {
        return false;
    }
    match instr {
        Instr::PushNone
        | Instr::PushBool(_)
        | Instr::PushInt(_)
        | Instr::LoadLocal(_)
        | Instr::StoreLocal(_)
        | Instr::Pop
        | Instr::Dup
        | Instr::Add
        | Instr::Sub
        | Instr::Mul
        | Instr::AddAssign
        | Instr::Div
        | Instr::Mod
        | Instr::Neg
        | Instr::Not
        | Instr::Eq
        | Instr::NotEq
        | Instr::Lt
        | Instr::Le
        | Instr::Gt
        | Instr::Ge
        | Instr::Return => true,
        Instr::JumpIfFalse(target)
        | Instr::JumpIfFalseOrPop(target)
        | Instr::JumpIfTrueOrPop(target)
        | Instr::Jump(target) => target as usize > ip,
        Instr::Const(i) => matches!(
            program.constants[i as usize],
            Constant::Int(_) | Constant::Float(_)
        ),
        Instr::LoadGlobal(g) => globals
            .get(g as usize)
            .and_then(Ty::of)
            .is_some_and(|ty| ty.is_scalar()),
        _ => false,
    }
}

/// `single_entry[ip]` for reachable code (`reachable[ip]`): whether exactly one edge leads
/// to `ip` (a branch to it, or the instruction before falling through).
fn single_entry(code: &[Instr], reachable: impl Fn(usize) -> bool) -> Vec<bool> {
    let mut edges = vec![0u32; code.len() + 1];
    for (ip, instr) in code.iter().enumerate() {
        if !reachable(ip) {
            continue;
        }
        if let Some(target) = super::analyze::branch_target(*instr) {
            edges[target] += 1;
        }
        if !matches!(instr, Instr::Jump(_) | Instr::Return) {
            edges[ip + 1] += 1;
        }
    }
    edges.into_iter().map(|n| n == 1).collect()
}

/// What every function a JIT compiles is compiled against.
#[derive(Clone, Copy)]
pub struct Target {
    /// Where the JIT's context is (`Jit::runtime`, boxed: it never moves while code of the
    /// JIT exists).
    pub ctx_address: i64,
    /// The interpreter's call depth limit.
    pub max_depth: i64,
    /// The longest `range()` iterated here; the interpreter refuses longer ones.
    pub max_range: i64,
}

impl<'a, 'b> FunctionCodegen<'a, 'b> {
    pub fn new(
        b: FunctionBuilder<'b>,
        program: &'a Program,
        globals: &'a [crate::value::Value],
        plan: &'a Plan,
        callees: HashMap<Spec, cranelift_codegen::ir::FuncRef>,
        // The runtime's entry points, and what the code is compiled against.
        (deopt, refuel, target): (
            cranelift_codegen::ir::FuncRef,
            cranelift_codegen::ir::FuncRef,
            Target,
        ),
        // What the JIT keeps for compiled code: deopt sites and values it clones from.
        (sites, pinned): (&'a mut Vec<DeoptSite>, &'a mut Pinned),
    ) -> Self {
        let local_count = program.functions[plan.spec.function as usize].local_count as usize;
        FunctionCodegen {
            b,
            program,
            globals,
            plan,
            callees,
            deopt,
            refuel,
            sites,
            vars: Vec::new(),
            target,
            depth: None,
            osr_entry: None,
            range_constants: None,
            depth_checked_at_entry: false,
            live: None,
            local_count,
            pinned,
            helper_sigs: HashMap::new(),
            borrows: Vec::new(),
            borrowed: foldhash::HashSet::default(),
            bounds: Bounds::default(),
            prefix_of: None,
            entry_args: Vec::new(),
            prefix_returns: 0,
        }
    }

    fn var(&mut self, slot: usize, rep: Rep) -> Variable {
        if let Some(v) = self.vars.get(slot).and_then(|reps| reps[rep as usize]) {
            return v;
        }
        let ty = if rep == Rep::F64 {
            types::F64
        } else {
            types::I64
        };
        let v = self.b.declare_var(ty);
        if self.vars.len() <= slot {
            self.vars.resize(slot + 1, [None; REPS]);
        }
        self.vars[slot][rep as usize] = Some(v);
        v
    }

    fn get(&mut self, slot: usize, ty: Ty) -> Value {
        let v = self.var(slot, rep(ty));
        self.b.use_var(v)
    }

    fn set(&mut self, slot: usize, ty: Ty, value: Value) {
        let v = self.var(slot, rep(ty));
        self.b.def_var(v, value);
    }

    /// The entry block's 0 and 1 for ranges (`range_constants`).
    fn range_constants(&self) -> [Value; 2] {
        self.range_constants
            .expect("the entry block defines the range constants")
    }

    /// The JIT's context: its address, a constant where it is used (`Jit::runtime`), so no
    /// register carries it through the code, across calls or into callees.
    fn ctx(&mut self) -> Value {
        self.b.ins().iconst(types::I64, self.target.ctx_address)
    }

    fn as_f64(&mut self, value: Value, ty: Ty) -> Value {
        match ty {
            Ty::Float => value,
            _ => self.b.ins().fcvt_from_sint(types::F64, value),
        }
    }

    /// The value as the `i64` bits the calling convention and the deopt buffer use.
    fn as_bits(&mut self, value: Value, ty: Ty) -> Value {
        if ty == Ty::Float {
            self.b.ins().bitcast(types::I64, MemFlagsData::new(), value)
        } else {
            value
        }
    }

    fn bits_as(&mut self, value: Value, ty: Ty) -> Value {
        if ty == Ty::Float {
            self.b.ins().bitcast(types::F64, MemFlagsData::new(), value)
        } else {
            value
        }
    }

    fn truthy(&mut self, value: Value, ty: Ty) -> Value {
        match ty {
            Ty::Float => {
                let zero = self.b.ins().f64const(0.0);
                self.b.ins().fcmp(FloatCC::NotEqual, value, zero)
            }
            Ty::None => self.b.ins().iconst(types::I8, 0),
            _ => match self.widened_from(value) {
                // A bool made by widening a comparison: its truth is the comparison's, which
                // cranelift fuses into the branch that tests it (`cmp; jl` rather than
                // `cmp; setl; movzx; test; jne`). The baseline tier has no optimiser to do it.
                Some(narrow) => narrow,
                None => self.b.ins().icmp_imm_s(IntCC::NotEqual, value, 0),
            },
        }
    }

    /// The narrow value `value` is the zero extension of, if it is one: nonzero exactly when
    /// `value` is.
    fn widened_from(&self, value: Value) -> Option<Value> {
        match self.definition(value)? {
            InstructionData::Unary {
                opcode: Opcode::Uextend,
                arg,
            } => Some(arg),
            _ => None,
        }
    }

    /// The instruction that defines `value` (through aliases), if one does (not a block's
    /// parameter).
    fn definition(&self, value: Value) -> Option<InstructionData> {
        let dfg = &self.b.func.dfg;
        match dfg.value_def(dfg.resolve_aliases(value)) {
            ValueDef::Result(inst, _) => Some(dfg.insts[inst]),
            _ => None,
        }
    }

    /// Branches to a deopt block when `failed` is true; code continues in a new block.
    fn deopt_if(&mut self, failed: Value, frame: &Frame, resume_ip: usize, stack_len: usize) {
        self.branch_to_deopt(failed, frame, resume_ip, stack_len, (Report::Guard, None));
    }

    /// After a call of compiled code: deopts when the callee did (`deopted` is nonzero);
    /// returns the call's `result` as the code after the check has it. It is passed to that
    /// code as a block argument, so that where the callee is inlined, its returns can jump
    /// straight there (`inline::thread_deopt_checks`).
    fn deopt_if_callee_deopted(
        &mut self,
        (result, deopted): (Value, Value),
        frame: &Frame,
        resume_ip: usize,
        stack_len: usize,
    ) -> Value {
        let after = self.branch_to_deopt(
            deopted,
            frame,
            resume_ip,
            stack_len,
            (Report::AfterCallee, Some(result)),
        );
        after.expect("the result is passed on")
    }

    /// Branches to a deopt block when `failed`; code goes on in a new block, which receives
    /// `carried` as its parameter (returned) when there is one.
    fn branch_to_deopt(
        &mut self,
        failed: Value,
        frame: &Frame,
        resume_ip: usize,
        stack_len: usize,
        (report, carried): (Report, Option<Value>),
    ) -> Option<Value> {
        // Read where the branch leaves, so the deopt block sees constants as constants.
        let state = self.read_deopt_state(frame, resume_ip, stack_len);
        let fail = self.b.create_block();
        let cont = self.b.create_block();
        self.b.set_cold_block(fail);
        match carried {
            Some(value) => {
                self.b.append_block_param(cont, types::I64);
                self.b.ins().brif(failed, fail, &[], cont, &[value.into()]);
            }
            None => {
                self.b.ins().brif(failed, fail, &[], cont, &[]);
            }
        }
        self.b.seal_block(fail);
        self.b.seal_block(cont);
        self.b.switch_to_block(fail);
        self.emit_deopt_of(state, resume_ip, report);
        self.b.switch_to_block(cont);
        carried.map(|_| self.b.block_params(cont)[0])
    }

    /// Deopts where the divisor `value` is zero (the interpreter's error), unless it is a
    /// nonzero constant.
    fn deopt_if_float_zero(&mut self, value: Value, frame: &Frame, ip: usize, stack_len: usize) {
        let nonzero = self
            .constant_bits(value)
            .is_some_and(|bits| f64::from_bits(bits as u64) != 0.0);
        if !nonzero {
            let zero = self.b.ins().f64const(0.0);
            let by_zero = self.b.ins().fcmp(FloatCC::Equal, value, zero);
            self.deopt_if(by_zero, frame, ip, stack_len);
        }
    }

    /// The values of the frame's locals and first `stack_len` stack slots (no instructions
    /// emitted: conversions and clones are the deopt block's work).
    fn read_deopt_state(
        &mut self,
        frame: &Frame,
        resume_ip: usize,
        stack_len: usize,
    ) -> Vec<DeoptRead> {
        let mut state = Vec::new();
        for (slot, local) in frame.locals.iter().enumerate() {
            let live = self
                .live
                .as_ref()
                .is_none_or(|live| live.at(resume_ip, slot));
            state.push(match *local {
                // A scalar the interpreter will not read is not reported: keeping it for the
                // deopt alone would keep it alive (in a register saved across calls, say) in
                // the hot path. An object still goes to the interpreter, which owns it then.
                Local::Known(ty) if !live && ty.is_scalar() => DeoptRead::Unknown,
                Local::Known(ty) => DeoptRead::Value(self.get(slot, ty), ty, false),
                // Not read again before it is written: any value will do.
                Local::Unknown => DeoptRead::Unknown,
            });
        }
        for (k, ty) in frame.stack.iter().take(stack_len).enumerate() {
            let slot = self.local_count + k;
            state.push(match ty {
                Ty::Range | Ty::RangeIter => {
                    let reps = [
                        Rep::RangeStart,
                        Rep::RangeStep,
                        Rep::RangeIndex,
                        Rep::RangeCount,
                    ];
                    DeoptRead::Range(reps.map(|r| {
                        let v = self.var(slot, r);
                        self.b.use_var(v)
                    }))
                }
                ty => DeoptRead::Value(self.get(slot, *ty), *ty, self.borrowed.contains(&slot)),
            });
        }
        state
    }

    /// `x % d` for `0 <= x < 2^63` by multiplications (see `DivisionMagic`). Shorter than
    /// what cranelift makes of `urem` by a constant, which must also serve dividends of 64
    /// bits and so needs an add-and-shift fix-up for most divisors: in a loop whose next
    /// iteration waits for the remainder (`total = (total + x) % m`), that chain is the loop.
    /// A dividend below 2^32 (the usual one, and a branch the CPU predicts) takes the direct
    /// remainder, two multiplications long instead of a multiplication, a shift, another
    /// multiplication and a subtraction.
    fn remainder_by_magic(&mut self, x: Value, magic: DivisionMagic) -> Value {
        let Some(direct) = magic.direct_multiplier else {
            return self.remainder_through_quotient(x, magic);
        };
        let small = self
            .b
            .ins()
            .icmp_imm_u(IntCC::UnsignedLessThan, x, 1i64 << 32);
        self.usually(
            small,
            |this| {
                let fraction = this.b.ins().imul_imm_u(x, direct as i64);
                let divisor = this.b.ins().iconst(types::I64, magic.divisor as i64);
                this.b.ins().umulhi(fraction, divisor)
            },
            |this| this.remainder_through_quotient(x, magic),
        )
    }

    /// An int made by `usual` where `condition` holds, which it almost always does, and by
    /// `rare` where it does not: a branch the CPU predicts, and unlike a `select` the result
    /// waits only for the side taken. The usual side is laid out first.
    fn usually(
        &mut self,
        condition: Value,
        usual: impl FnOnce(&mut Self) -> Value,
        rare: impl FnOnce(&mut Self) -> Value,
    ) -> Value {
        let (usual_block, rare_block, done) = (
            self.b.create_block(),
            self.b.create_block(),
            self.b.create_block(),
        );
        self.b.append_block_param(done, types::I64);
        self.b
            .ins()
            .brif(condition, usual_block, &[], rare_block, &[]);
        self.b.seal_block(usual_block);
        self.b.seal_block(rare_block);
        self.b.switch_to_block(usual_block);
        let v = usual(self);
        self.b.ins().jump(done, &[v.into()]);
        self.b.switch_to_block(rare_block);
        let v = rare(self);
        self.b.ins().jump(done, &[v.into()]);
        self.b.seal_block(done);
        self.b.switch_to_block(done);
        self.b.block_params(done)[0]
    }

    /// Whether a division truncated toward zero, leaving the remainder `r` of a division by
    /// `b`, missed Python's floored result: `r` is nonzero and its sign (the dividend's) is not
    /// the divisor's. Then the floored quotient is one less and the remainder `r + b`.
    fn truncation_off_floor(&mut self, r: Value, b: Value) -> Value {
        let r_nonzero = self.b.ins().icmp_imm_s(IntCC::NotEqual, r, 0);
        let r_neg = self.b.ins().icmp_imm_s(IntCC::SignedLessThan, r, 0);
        let b_neg = self.b.ins().icmp_imm_s(IntCC::SignedLessThan, b, 0);
        let signs_differ = self.b.ins().bxor(r_neg, b_neg);
        self.b.ins().band(r_nonzero, signs_differ)
    }

    /// `x - (x / d) * d`, the quotient by `magic`'s multiplication and shift.
    fn remainder_through_quotient(&mut self, x: Value, magic: DivisionMagic) -> Value {
        let multiplier = self.b.ins().iconst(types::I64, magic.multiplier as i64);
        let high = self.b.ins().umulhi(x, multiplier);
        let quotient = self.b.ins().ushr_imm_u(high, i64::from(magic.shift));
        let product = self.b.ins().imul_imm_u(quotient, magic.divisor as i64);
        self.b.ins().isub(x, product)
    }

    /// The bits of `value` when it is a constant.
    fn constant_bits(&self, value: Value) -> Option<i64> {
        match self.definition(value)? {
            InstructionData::UnaryImm {
                opcode: Opcode::Iconst,
                imm,
            } => Some(imm.bits()),
            InstructionData::UnaryIeee64 {
                opcode: Opcode::F64const,
                imm,
            } => Some(imm.bits() as i64),
            _ => None,
        }
    }

    /// `a + k`, `a - k` or `k + a` for an int constant `k`: the sum and the condition under
    /// which it overflows (none when `k` is 0), or `None` when neither operand is a constant
    /// or the instruction is not an addition or subtraction.
    fn add_constant(&mut self, instr: Instr, a: Value, b: Value) -> Option<(Value, Option<Value>)> {
        let (x, k) = match (instr, self.constant_bits(a), self.constant_bits(b)) {
            (Instr::Add | Instr::AddAssign | Instr::Sub, _, Some(k)) => (a, k),
            (Instr::Add | Instr::AddAssign, Some(k), None) => (b, k),
            _ => return None,
        };
        // Subtracting k is adding -k, except for i64::MIN, which has no negation.
        let k = if matches!(instr, Instr::Sub) {
            k.checked_neg()?
        } else {
            k
        };
        let sum = self.b.ins().iadd_imm_s(x, k);
        // The SSA builder may have read `x` as a block parameter it later found redundant.
        let x_resolved = self.b.func.dfg.resolve_aliases(x);
        if let Some(low) = self.bounds.known.get(&x_resolved).copied()
            && let Some(sum_low) = low.checked_add(k)
        {
            // A negative k cannot take `x` below i64::MIN; a positive one may still overflow
            // above, which its check tests (after it, the sum is at least `low + k`).
            self.bounds.known.insert(sum, sum_low);
            if k < 0 {
                return Some((sum, None));
            }
        }
        // Adding a positive k overflowed exactly when the sum wrapped below `x`; a negative k,
        // when it wrapped above.
        let overflow = match k.cmp(&0) {
            std::cmp::Ordering::Equal => None,
            std::cmp::Ordering::Greater => Some(self.b.ins().icmp(IntCC::SignedLessThan, sum, x)),
            std::cmp::Ordering::Less => Some(self.b.ins().icmp(IntCC::SignedGreaterThan, sum, x)),
        };
        Some((sum, overflow))
    }

    /// Emits the spill of `state` and the report of a frame resuming at `resume_ip`.
    fn emit_deopt_of(&mut self, state: Vec<DeoptRead>, resume_ip: usize, report: Report) {
        let mut kinds = Vec::new();
        let mut raw: Vec<Value> = Vec::new();
        for read in state {
            match read {
                DeoptRead::Value(v, ty, borrowed) => {
                    // A constant is the site's to report, not the code's to keep: a deopt
                    // block that used the hot path's constant would keep it in a register
                    // (saved and restored by every call) for a path almost never taken.
                    let scalar = matches!(ty, Ty::Int | Ty::Float | Ty::Bool | Ty::None);
                    if let Some(bits) = self.constant_bits(v)
                        && !borrowed
                        && (scalar || bits == 0)
                    {
                        kinds.push(SlotKind::Constant(ty, bits));
                        continue;
                    }
                    let mut bits = self.as_bits(v, ty);
                    if borrowed {
                        bits = self.clone_object(bits);
                    }
                    raw.push(bits);
                    kinds.push(SlotKind::Value(ty));
                }
                DeoptRead::Unknown => kinds.push(SlotKind::Constant(Ty::None, 0)),
                DeoptRead::Range(values) => {
                    raw.extend(values);
                    kinds.push(SlotKind::RangeIter);
                }
            }
        }
        let site = self.sites.len();
        self.sites.push(DeoptSite {
            function: self.plan.spec.function,
            ip: resume_ip as u32,
            local_count: self.local_count as u32,
            kinds,
        });
        debug_assert_eq!(self.sites[site].spilled(), raw.len());
        let ctx = self.ctx();
        let buffer = match report {
            Report::Guard => CTX_SPILL,
            Report::AfterCallee => CTX_CHAIN_SPILL,
        };
        if !raw.is_empty() {
            let spill = self
                .b
                .ins()
                .load(types::I64, MemFlagsData::trusted(), ctx, buffer);
            for (i, v) in raw.iter().enumerate() {
                self.b
                    .ins()
                    .store(MemFlagsData::trusted(), *v, spill, (i * 8) as i32);
            }
        }
        let site = self
            .b
            .ins()
            .iconst(types::I64, super::deopt_site_packed(site, raw.len()));
        match report {
            // The site in the status is the report: no call, whose clobbers and argument
            // registers were a large part of the register allocator's work on a deopt block.
            Report::Guard => {
                self.b
                    .ins()
                    .store(MemFlagsData::trusted(), site, ctx, CTX_STATUS);
            }
            Report::AfterCallee => {
                self.b.ins().call(self.deopt, &[ctx, site]);
            }
        }
        // The site, never zero, says "deopted": a constant of this block alone, where a
        // shared `1` would be kept in a register (or on the stack) across the hot path.
        let zero = self.b.ins().iconst(types::I64, 0);
        self.b.ins().return_(&[zero, site]);
    }

    /// Spends one unit of fuel; the value is true when the tank is empty. Loops spend at
    /// their back edge and functions that call at their entry, so no compiled code runs long
    /// without spending (a loop-free function that calls nothing runs a bounded time).
    fn spend_fuel(&mut self) -> Value {
        let ctx = self.ctx();
        let fuel = self
            .b
            .ins()
            .load(types::I64, MemFlagsData::trusted(), ctx, CTX_FUEL);
        let fuel = self.b.ins().iadd_imm_s(fuel, -1);
        self.b
            .ins()
            .store(MemFlagsData::trusted(), fuel, ctx, CTX_FUEL);
        self.b
            .ins()
            .icmp_imm_s(IntCC::SignedLessThanOrEqual, fuel, 0)
    }

    /// A loop's back edge spends fuel; out of it, the loop hands back to the interpreter,
    /// resuming at `ip`, which re-enters it compiled (through on-stack replacement) unless it
    /// must stop. A call here, to refuel and go on, would keep every value the loop uses live
    /// across it, and in this register pressure cranelift keeps some of them on the stack, in
    /// the hot path.
    fn spend_loop_fuel(&mut self, frame: &Frame, ip: usize, depth: usize) {
        let empty = self.spend_fuel();
        self.deopt_if(empty, frame, ip, depth);
    }

    /// Emits the whole function (or its prefix, with `prefix_of`); returns how many
    /// returns a prefix has (0 for a whole function).
    pub fn emit(
        mut self,
        config: cranelift_codegen::isa::TargetFrontendConfig,
    ) -> Result<usize, String> {
        let spec = self.plan.spec.clone();
        let function = &self.program.functions[spec.function as usize];
        let code = &function.code;
        self.live = Some(super::analyze::Liveness::of(code, self.local_count));
        let entry = self.b.create_block();
        self.b.append_block_params_for_function_params(entry);
        self.b.switch_to_block(entry);
        self.b.seal_block(entry);
        let params: Vec<Value> = self.b.block_params(entry).to_vec();
        self.depth = Some(params[0]);
        self.range_constants = Some([0, 1].map(|k| self.b.ins().iconst(types::I64, k)));
        if let Some((entry_ip, shape)) = self.osr_entry.clone() {
            return self.emit_osr(code, params[1], entry_ip, &shape, config);
        }
        self.entry_args = params[1..].to_vec();
        for slot in 0..self.local_count {
            match spec.args.get(slot) {
                Some(ty) => {
                    let v = self.bits_as(params[slot + 1], *ty);
                    self.set(slot, *ty, v);
                }
                None => {
                    let zero = self.b.ins().iconst(types::I64, 0);
                    self.set(slot, Ty::None, zero);
                }
            }
        }
        let mut blocks: HashMap<usize, Block> = HashMap::new();
        for (ip, leader) in self.plan.leaders.iter().enumerate() {
            if *leader && self.plan.before.get(ip).is_some_and(Option::is_some) {
                blocks.insert(ip, self.b.create_block());
            }
        }
        // A prefix neither loops nor calls (it hands over first): it needs no entry checks.
        if self.prefix_of.is_none()
            && !self.plan.callees.is_empty()
            && let Some(frame) = self.plan.before[0].clone()
        {
            self.emit_entry_checks(&frame, blocks[&0]);
            self.depth_checked_at_entry = true;
        } else {
            self.b.ins().jump(blocks[&0], &[]);
        }
        self.emit_body(code, &blocks, config)
    }

    /// The entry checks of a function that calls, before its `body`: the call depth limit,
    /// and fuel at every fourth call depth. Both hand back to the interpreter through one
    /// deopt block, which resumes at the start with the arguments.
    fn emit_entry_checks(&mut self, frame: &Frame, body: Block) {
        // A function that calls may recurse: without a loop it could still run for ever. It
        // spends fuel when entered at every fourth call depth: a test of a register on most
        // calls, and a recursion still meets a check every few levels (a function with c call
        // sites makes at most c^3 calls between two checks).
        //
        // The interpreter refuses a call at the depth limit. Every call this function makes
        // is made at the depth it was entered with, so one test here stands for all of them:
        // at the limit the interpreter runs the function from its start and raises its own
        // error at the call. Compiled code is never entered deeper than the limit (the
        // interpreter and every compiled caller refuse a call at it), so with a limit that is
        // a multiple of 4 it can only be reached at a depth the fuel check already stops at,
        // and the test goes there, off the path most calls take.
        let depth = self.depth.expect("the entry block defines depth");
        let state = self.read_deopt_state(frame, 0, 0);
        let deopt = self.b.create_block();
        let slow = self.b.create_block();
        let refuel = self.b.create_block();
        for block in [deopt, slow, refuel] {
            self.b.set_cold_block(block);
        }
        let max_depth = self.target.max_depth;
        let limit_at_fuel_check = max_depth > 0 && max_depth % 4 == 0;
        if !limit_at_fuel_check {
            let too_deep =
                self.b
                    .ins()
                    .icmp_imm_s(IntCC::SignedGreaterThanOrEqual, depth, max_depth);
            let on = self.b.create_block();
            self.b.ins().brif(too_deep, deopt, &[], on, &[]);
            self.b.seal_block(on);
            self.b.switch_to_block(on);
        }
        let low = self.b.ins().band_imm_u(depth, 3);
        self.b.ins().brif(low, body, &[], slow, &[]);
        self.b.seal_block(slow);
        self.b.switch_to_block(slow);
        if limit_at_fuel_check {
            let too_deep =
                self.b
                    .ins()
                    .icmp_imm_s(IntCC::SignedGreaterThanOrEqual, depth, max_depth);
            let on = self.b.create_block();
            self.b.set_cold_block(on);
            self.b.ins().brif(too_deep, deopt, &[], on, &[]);
            self.b.seal_block(on);
            self.b.switch_to_block(on);
        }
        let empty = self.spend_fuel();
        self.b.ins().brif(empty, refuel, &[], body, &[]);
        self.b.seal_block(refuel);
        // Out of fuel: ask whether to hand back (others wait, or a limit is reached) or to
        // refuel and go on.
        self.b.switch_to_block(refuel);
        let ctx = self.ctx();
        let call = self.b.ins().call(self.refuel, &[ctx]);
        let stop = self.b.inst_results(call)[0];
        self.b.ins().brif(stop, deopt, &[], body, &[]);
        self.b.seal_block(deopt);
        self.b.switch_to_block(deopt);
        self.emit_deopt_of(state, 0, Report::Guard);
    }

    /// The entry of an on-stack replacement: every slot loaded from the buffer at `slots`
    /// (but the start and step of a range counting from 0 by 1, which are constants), then on
    /// at the loop header.
    fn emit_osr(
        mut self,
        code: &[Instr],
        slots: Value,
        entry_ip: usize,
        shape: &super::OsrShape,
        config: cranelift_codegen::isa::TargetFrontendConfig,
    ) -> Result<usize, String> {
        let frame = &shape.frame;
        let [zero, one] = self.range_constants();
        let mut offset = 0i32;
        let load = |b: &mut FunctionBuilder, offset: &mut i32| {
            let v = b
                .ins()
                .load(types::I64, MemFlagsData::trusted(), slots, *offset);
            *offset += 8;
            v
        };
        for (slot, local) in frame.locals.iter().enumerate() {
            let raw = load(&mut self.b, &mut offset);
            if let Local::Known(ty) = local {
                let v = self.bits_as(raw, *ty);
                self.set(slot, *ty, v);
            }
        }
        for (k, ty) in frame.stack.iter().enumerate() {
            let slot = self.local_count + k;
            if matches!(ty, Ty::Range | Ty::RangeIter) {
                let counting = shape.counting.get(k) == Some(&true);
                for (r, constant) in [
                    (Rep::RangeStart, zero),
                    (Rep::RangeStep, one),
                    (Rep::RangeIndex, zero),
                    (Rep::RangeCount, zero),
                ] {
                    let value = if counting && matches!(r, Rep::RangeStart | Rep::RangeStep) {
                        offset += 8;
                        constant
                    } else {
                        load(&mut self.b, &mut offset)
                    };
                    let var = self.var(slot, r);
                    self.b.def_var(var, value);
                }
            } else {
                let raw = load(&mut self.b, &mut offset);
                let v = self.bits_as(raw, *ty);
                self.set(slot, *ty, v);
            }
        }
        let mut blocks: HashMap<usize, Block> = HashMap::new();
        for (ip, leader) in self.plan.leaders.iter().enumerate() {
            if *leader && self.plan.before.get(ip).is_some_and(Option::is_some) {
                blocks.insert(ip, self.b.create_block());
            }
        }
        let entry = *blocks
            .get(&entry_ip)
            .ok_or("the loop header is not reachable")?;
        self.b.ins().jump(entry, &[]);
        self.emit_body(code, &blocks, config)
    }

    fn emit_body(
        mut self,
        code: &[Instr],
        blocks: &HashMap<usize, Block>,
        config: cranelift_codegen::isa::TargetFrontendConfig,
    ) -> Result<usize, String> {
        self.borrows = objects::borrowable(code, self.plan, &self.program.constants);
        // A block is sealed once every jump to it is emitted, so reading a variable there
        // looks it up in its predecessors instead of adding a block parameter to resolve when
        // the function is done. Code is emitted in order, so that is on entering any block
        // but a loop's header, which waits for its back edge.
        let loop_headers = super::analyze::loop_headers(code);
        self.bounds.single_entry = single_entry(code, |ip| {
            self.plan.before.get(ip).is_some_and(Option::is_some)
        });
        // On-stack replacement enters at the loop header too, with any values.
        if let Some((entry_ip, _)) = self.osr_entry {
            self.bounds.single_entry[entry_ip] = false;
        }
        let mut open = false;
        for (ip, instr) in code.iter().enumerate() {
            if let Some(block) = blocks.get(&ip) {
                if open {
                    self.bounds.pass_to(ip, None);
                    self.b.ins().jump(*block, &[]);
                }
                self.bounds.known = self.bounds.at_block.remove(&ip).unwrap_or_default();
                self.b.switch_to_block(*block);
                if !loop_headers[ip] {
                    self.b.seal_block(*block);
                }
                open = true;
            }
            if !open {
                continue;
            }
            let Some(frame) = self.plan.before[ip].clone() else {
                continue;
            };
            open = self.instruction(ip, *instr, &frame, blocks)?;
        }
        if open {
            return Err("control runs off the end of the function".into());
        }
        self.b.seal_all_blocks();
        self.b.finalize(config);
        Ok(self.prefix_returns)
    }

    /// Emits one instruction; returns whether the block goes on after it.
    fn instruction(
        &mut self,
        ip: usize,
        instr: Instr,
        frame: &Frame,
        blocks: &HashMap<usize, Block>,
    ) -> Result<bool, String> {
        if let Some(whole) = self.prefix_of {
            if !in_prefix(ip, instr, frame, self.program, self.globals) {
                self.hand_over(whole);
                return Ok(false);
            }
            if instr == Instr::Return {
                self.prefix_returns += 1;
            }
        }
        let base = self.local_count;
        let depth = frame.stack.len();
        // The slot of the stack entry `k` from the top (0 = top).
        let top = |k: usize| base + depth - 1 - k;
        let push_slot = base + depth;
        let unboxed;
        let frame = match self.object_instruction(ip, instr, frame, blocks)? {
            objects::ObjectStep::Done(open) => return Ok(open),
            objects::ObjectStep::Scalar => frame,
            objects::ObjectStep::ScalarWith(after) => {
                unboxed = after;
                &unboxed
            }
        };
        let ty_at = |k: usize| frame.stack[depth - 1 - k];
        match instr {
            Instr::PushNone => {
                let v = self.b.ins().iconst(types::I64, 0);
                self.set(push_slot, Ty::None, v);
            }
            Instr::PushBool(x) => {
                let v = self.b.ins().iconst(types::I64, i64::from(x));
                self.set(push_slot, Ty::Bool, v);
            }
            Instr::PushInt(n) => {
                let v = self.b.ins().iconst(types::I64, n);
                self.set(push_slot, Ty::Int, v);
            }
            Instr::Const(i) => match &self.program.constants[i as usize] {
                Constant::Int(n) => {
                    let v = self.b.ins().iconst(types::I64, *n);
                    self.set(push_slot, Ty::Int, v);
                }
                Constant::Float(x) => {
                    let v = self.b.ins().f64const(*x);
                    self.set(push_slot, Ty::Float, v);
                }
                Constant::Str(_) => return Err("a string constant outside the object code".into()),
            },
            Instr::LoadGlobal(g) => {
                let value = &self.globals[g as usize];
                let ty = Ty::of(value).ok_or("a constant that is not a number")?;
                let v = match value {
                    crate::value::Value::Int(n) => self.b.ins().iconst(types::I64, *n),
                    crate::value::Value::Bool(x) => self.b.ins().iconst(types::I64, i64::from(*x)),
                    crate::value::Value::Float(x) => self.b.ins().f64const(*x),
                    _ => self.b.ins().iconst(types::I64, 0),
                };
                self.set(push_slot, ty, v);
            }
            Instr::LoadLocal(slot) => {
                let Local::Known(ty) = frame.locals[slot as usize] else {
                    return Err("reads an unknown local".into());
                };
                let v = self.get(slot as usize, ty);
                self.set(push_slot, ty, v);
            }
            Instr::StoreLocal(slot) => {
                let ty = ty_at(0);
                let v = self.get(top(0), ty);
                self.set(slot as usize, ty, v);
            }
            Instr::Pop => {}
            Instr::Dup => {
                let ty = ty_at(0);
                let v = self.get(top(0), ty);
                self.set(push_slot, ty, v);
            }
            Instr::Add | Instr::Sub | Instr::Mul | Instr::AddAssign => {
                let (ta, tb) = (ty_at(1), ty_at(0));
                let a = self.get(top(1), ta);
                let b = self.get(top(0), tb);
                if ta == Ty::Int && tb == Ty::Int {
                    let v = match self.add_constant(instr, a, b) {
                        // A compare against the bound the constant leaves: one `cmp` and a
                        // conditional jump, where the overflow flag costs `seto` and a test.
                        Some((v, overflow)) => {
                            if let Some(overflow) = overflow {
                                self.deopt_if(overflow, frame, ip, depth);
                            }
                            v
                        }
                        None => {
                            let (v, overflow) = match instr {
                                Instr::Sub => self.b.ins().ssub_overflow(a, b),
                                Instr::Mul => self.b.ins().smul_overflow(a, b),
                                _ => self.b.ins().sadd_overflow(a, b),
                            };
                            self.deopt_if(overflow, frame, ip, depth);
                            v
                        }
                    };
                    self.set(top(1), Ty::Int, v);
                } else {
                    let (a, b) = (self.as_f64(a, ta), self.as_f64(b, tb));
                    let v = match instr {
                        Instr::Sub => self.b.ins().fsub(a, b),
                        Instr::Mul => self.b.ins().fmul(a, b),
                        _ => self.b.ins().fadd(a, b),
                    };
                    self.set(top(1), Ty::Float, v);
                }
            }
            Instr::Div => {
                let (ta, tb) = (ty_at(1), ty_at(0));
                let a = self.get(top(1), ta);
                let b = self.get(top(0), tb);
                let (a, b) = (self.as_f64(a, ta), self.as_f64(b, tb));
                self.deopt_if_float_zero(b, frame, ip, depth);
                let v = self.b.ins().fdiv(a, b);
                self.set(top(1), Ty::Float, v);
            }
            Instr::Mod => {
                let (ta, tb) = (ty_at(1), ty_at(0));
                let a = self.get(top(1), ta);
                let b = self.get(top(0), tb);
                if ta == Ty::Int && tb == Ty::Int {
                    // Zero divides by zero; -1 could trap on i64::MIN: both go to the interpreter
                    // (no check for a constant divisor that is neither).
                    if !self.constant_bits(b).is_some_and(|k| k != 0 && k != -1) {
                        let zero = self.b.ins().icmp_imm_s(IntCC::Equal, b, 0);
                        let minus_one = self.b.ins().icmp_imm_s(IntCC::Equal, b, -1);
                        let bad = self.b.ins().bor(zero, minus_one);
                        self.deopt_if(bad, frame, ip, depth);
                    }
                    // Both operands non-negative (the usual case, and a branch the CPU
                    // predicts): an unsigned remainder, shorter than the signed one and its
                    // sign fix-up, which matters when the result feeds the next iteration.
                    let either = self.b.ins().bor(a, b);
                    let non_negative =
                        self.b
                            .ins()
                            .icmp_imm_s(IntCC::SignedGreaterThanOrEqual, either, 0);
                    let v = self.usually(
                        non_negative,
                        |this| match this.constant_bits(b).and_then(magic_for_63_bits) {
                            Some(magic) => this.remainder_by_magic(a, magic),
                            None => this.b.ins().urem(a, b),
                        },
                        |this| {
                            let r = this.b.ins().srem(a, b);
                            // Floored like Python: a nonzero remainder takes the divisor's sign.
                            let fix = this.truncation_off_floor(r, b);
                            let adjusted = this.b.ins().iadd(r, b);
                            this.b.ins().select(fix, adjusted, r)
                        },
                    );
                    self.set(top(1), Ty::Int, v);
                } else {
                    let (x, y) = (self.as_f64(a, ta), self.as_f64(b, tb));
                    self.deopt_if_float_zero(y, frame, ip, depth);
                    let q = self.b.ins().fdiv(x, y);
                    let q = self.b.ins().floor(q);
                    let yq = self.b.ins().fmul(y, q);
                    let v = self.b.ins().fsub(x, yq);
                    self.set(top(1), Ty::Float, v);
                }
            }
            Instr::Neg => self.sign_op(ip, frame, Instr::Neg),
            Instr::Not => {
                let ty = ty_at(0);
                let a = self.get(top(0), ty);
                let t = self.truthy(a, ty);
                let f = self.b.ins().bxor_imm_s(t, 1);
                let v = self.b.ins().uextend(types::I64, f);
                self.set(top(0), Ty::Bool, v);
            }
            Instr::Eq | Instr::NotEq => {
                let (ta, tb) = (ty_at(1), ty_at(0));
                let a = self.get(top(1), ta);
                let b = self.get(top(0), tb);
                let equal = match (ta, tb) {
                    (Ty::Int, Ty::Int) | (Ty::Bool, Ty::Bool) => {
                        self.b.ins().icmp(IntCC::Equal, a, b)
                    }
                    (Ty::Int | Ty::Float, Ty::Int | Ty::Float) => {
                        let (x, y) = (self.as_f64(a, ta), self.as_f64(b, tb));
                        self.b.ins().fcmp(FloatCC::Equal, x, y)
                    }
                    (Ty::None, Ty::None) => self.b.ins().iconst(types::I8, 1),
                    _ => self.b.ins().iconst(types::I8, 0),
                };
                let v = if instr == Instr::NotEq {
                    self.b.ins().bxor_imm_s(equal, 1)
                } else {
                    equal
                };
                let v = self.b.ins().uextend(types::I64, v);
                self.set(top(1), Ty::Bool, v);
            }
            Instr::Lt | Instr::Le | Instr::Gt | Instr::Ge => {
                let (ta, tb) = (ty_at(1), ty_at(0));
                let a = self.get(top(1), ta);
                let b = self.get(top(0), tb);
                let mut compared = None;
                let v = if ta == Ty::Int && tb == Ty::Int {
                    let cc = match instr {
                        Instr::Lt => IntCC::SignedLessThan,
                        Instr::Le => IntCC::SignedLessThanOrEqual,
                        Instr::Gt => IntCC::SignedGreaterThan,
                        _ => IntCC::SignedGreaterThanOrEqual,
                    };
                    let a = self.b.func.dfg.resolve_aliases(a);
                    compared = self.constant_bits(b).map(|k| (a, cc, k));
                    self.b.ins().icmp(cc, a, b)
                } else {
                    let (x, y) = (self.as_f64(a, ta), self.as_f64(b, tb));
                    // NaN is unordered: the interpreter raises an error for it.
                    let unordered = self.b.ins().fcmp(FloatCC::Unordered, x, y);
                    self.deopt_if(unordered, frame, ip, depth);
                    let cc = match instr {
                        Instr::Lt => FloatCC::LessThan,
                        Instr::Le => FloatCC::LessThanOrEqual,
                        Instr::Gt => FloatCC::GreaterThan,
                        _ => FloatCC::GreaterThanOrEqual,
                    };
                    self.b.ins().fcmp(cc, x, y)
                };
                let v = self.b.ins().uextend(types::I64, v);
                if let Some(compared) = compared {
                    self.bounds.compared.insert(v, compared);
                }
                self.set(top(1), Ty::Bool, v);
            }
            Instr::Jump(target) => {
                if (target as usize) <= ip {
                    // A loop: spend fuel, and hand back to the interpreter when it is gone.
                    self.spend_loop_fuel(frame, ip, depth);
                }
                self.b.ins().jump(blocks[&(target as usize)], &[]);
                return Ok(false);
            }
            Instr::JumpIfFalse(target) => {
                let ty = ty_at(0);
                let a = self.get(top(0), ty);
                let [when_true, when_false] = self.bounds.of_branch(a);
                self.bounds.pass_to(ip + 1, when_true);
                self.bounds.pass_to(target as usize, when_false);
                let t = self.truthy(a, ty);
                self.b
                    .ins()
                    .brif(t, blocks[&(ip + 1)], &[], blocks[&(target as usize)], &[]);
                return Ok(false);
            }
            Instr::JumpIfFalseOrPop(target) | Instr::JumpIfTrueOrPop(target) => {
                let ty = ty_at(0);
                let a = self.get(top(0), ty);
                let t = self.truthy(a, ty);
                let (when_true, when_false) = if matches!(instr, Instr::JumpIfFalseOrPop(_)) {
                    (blocks[&(ip + 1)], blocks[&(target as usize)])
                } else {
                    (blocks[&(target as usize)], blocks[&(ip + 1)])
                };
                self.b.ins().brif(t, when_true, &[], when_false, &[]);
                return Ok(false);
            }
            Instr::CallNative { native, argc, .. } => {
                match self.program.natives[native as usize].as_str() {
                    "div" => {
                        let (a, b) = (self.get(top(1), Ty::Int), self.get(top(0), Ty::Int));
                        // Zero and -1 (i64::MIN / -1 overflows) go to the interpreter.
                        let zero = self.b.ins().icmp_imm_s(IntCC::Equal, b, 0);
                        let minus_one = self.b.ins().icmp_imm_s(IntCC::Equal, b, -1);
                        let bad = self.b.ins().bor(zero, minus_one);
                        self.deopt_if(bad, frame, ip, depth);
                        let q = self.b.ins().sdiv(a, b);
                        let r = self.b.ins().srem(a, b);
                        let floor = self.truncation_off_floor(r, b);
                        let lower = self.b.ins().iadd_imm_s(q, -1);
                        let v = self.b.ins().select(floor, lower, q);
                        self.set(top(1), Ty::Int, v);
                    }
                    "abs" => self.sign_op(ip, frame, instr),
                    _ => self.range(ip, frame, argc as usize),
                }
            }
            Instr::GetIter => {}
            Instr::ForIter { exit } => {
                let slot = top(0);
                let [start, step, index, count] = [
                    Rep::RangeStart,
                    Rep::RangeStep,
                    Rep::RangeIndex,
                    Rep::RangeCount,
                ]
                .map(|r| {
                    let v = self.var(slot, r);
                    self.b.use_var(v)
                });
                let more = self.b.ins().icmp(IntCC::SignedLessThan, index, count);
                // (Folded here for the baseline tier, which has no optimizer.)
                let offset = match self.constant_bits(step) {
                    Some(1) => index,
                    _ => self.b.ins().imul(index, step),
                };
                let item = match self.constant_bits(start) {
                    Some(0) => offset,
                    _ => self.b.ins().iadd(start, offset),
                };
                self.set(push_slot, Ty::Int, item);
                let next = self.b.ins().iadd_imm_s(index, 1);
                let index_var = self.var(slot, Rep::RangeIndex);
                self.b.def_var(index_var, next);
                self.b
                    .ins()
                    .brif(more, blocks[&(ip + 1)], &[], blocks[&(exit as usize)], &[]);
                return Ok(false);
            }
            Instr::Call { function, argc } => {
                let argc = argc as usize;
                // The interpreter refuses a call at the depth limit: let it, with its error
                // (tested at the entry of a whole function; here in a loop entered by OSR).
                let depth_now = self.depth.expect("the entry block defines depth");
                if !self.depth_checked_at_entry {
                    let too_deep = self.b.ins().icmp_imm_s(
                        IntCC::SignedGreaterThanOrEqual,
                        depth_now,
                        self.target.max_depth,
                    );
                    self.deopt_if(too_deep, frame, ip, depth);
                }
                let arg_types: Vec<Ty> = (0..argc).rev().map(ty_at).collect();
                let callee_depth = self.b.ins().iadd_imm_s(depth_now, 1);
                let mut args = vec![callee_depth];
                for (i, ty) in arg_types.iter().enumerate() {
                    let v = self.get(top(argc - 1 - i), *ty);
                    args.push(self.as_bits(v, *ty));
                }
                let callee = Spec {
                    function,
                    args: arg_types,
                };
                let fref = *self
                    .callees
                    .get(&callee)
                    .ok_or("a callee was not declared")?;
                let call = self.b.ins().call(fref, &args);
                let (result, status) = (self.b.inst_results(call)[0], self.b.inst_results(call)[1]);
                // The callee deopted and reported its frame: report this one, waiting for the
                // callee's result after the call.
                let result =
                    self.deopt_if_callee_deopted((result, status), frame, ip + 1, depth - argc);
                let result_ty = self
                    .plan
                    .before
                    .get(ip + 1)
                    .and_then(|f| f.as_ref())
                    .and_then(|f| f.stack.last().copied())
                    .ok_or("no type after a call")?;
                let v = self.bits_as(result, result_ty);
                self.set(base + depth - argc, result_ty, v);
            }
            Instr::Return => {
                let ty = ty_at(0);
                let v = self.get(top(0), ty);
                let bits = self.as_bits(v, ty);
                let returned = self.b.ins().iconst(types::I64, 0);
                self.b.ins().return_(&[bits, returned]);
                return Ok(false);
            }
            other => return Err(format!("cannot compile {other:?}")),
        }
        Ok(true)
    }

    /// Ends a prefix path: calls the whole function with the arguments it was entered with
    /// and returns what it returns. Nothing before this point had an effect (`in_prefix`), so
    /// running the function from its start is running it.
    fn hand_over(&mut self, whole: cranelift_codegen::ir::FuncRef) {
        let depth = self.depth.expect("the entry block defines depth");
        let mut args = vec![depth];
        args.extend(self.entry_args.iter().copied());
        let call = self.b.ins().call(whole, &args);
        let results = self.b.inst_results(call).to_vec();
        self.b.ins().return_(&results);
    }

    /// Negation (`Neg`) or `abs(...)` (any other instruction) of the top of the stack. On an
    /// int, `i64::MIN` overflows: the interpreter reports it.
    fn sign_op(&mut self, ip: usize, frame: &Frame, instr: Instr) {
        let depth = frame.stack.len();
        let slot = self.local_count + depth - 1;
        let ty = frame.stack[depth - 1];
        let a = self.get(slot, ty);
        let negate = instr == Instr::Neg;
        let v = if ty == Ty::Int {
            let min = self.b.ins().icmp_imm_s(IntCC::Equal, a, i64::MIN);
            self.deopt_if(min, frame, ip, depth);
            if negate {
                self.b.ins().ineg(a)
            } else {
                self.b.ins().iabs(a)
            }
        } else if negate {
            self.b.ins().fneg(a)
        } else {
            self.b.ins().fabs(a)
        };
        self.set(slot, ty, v);
    }

    /// `range(...)` followed by `GetIter`: the iterator as (start, step, index, count), with
    /// the interpreter's checks (step zero, too many items) as deopts.
    fn range(&mut self, ip: usize, frame: &Frame, argc: usize) {
        let base = self.local_count;
        let depth = frame.stack.len();
        let args: Vec<Value> = (0..argc)
            .map(|i| self.get(base + depth - argc + i, Ty::Int))
            .collect();
        let [zero, one] = self.range_constants();
        let (start, stop, step) = match args.as_slice() {
            [stop] => (zero, *stop, one),
            [start, stop] => (*start, *stop, one),
            [start, stop, step, ..] => (*start, *stop, *step),
            [] => (zero, zero, one),
        };
        if argc < 3 {
            // `range(n)`, `range(a, b)`: the step is 1, so the count is `max(0, stop - start)`.
            if self.constant_bits(start) == Some(0) {
                // `stop - 0` cannot overflow.
                let count = self.b.ins().smax(stop, zero);
                self.range_result(ip, frame, argc, [start, one, zero, count], None);
            } else {
                let (d, overflow) = self.b.ins().ssub_overflow(stop, start);
                let count = self.b.ins().smax(d, zero);
                self.range_result(ip, frame, argc, [start, one, zero, count], Some(overflow));
            }
            return;
        }
        let step_zero = self.b.ins().icmp_imm_s(IntCC::Equal, step, 0);
        self.deopt_if(step_zero, frame, ip, depth);
        // count = max(0, stop - start + step - 1) / step, or mirrored for a negative step.
        // Bounds near the ends of i64 overflow here: the interpreter (which counts in i128)
        // takes those, as it takes ranges longer than the collection limit.
        let minus_one = self.b.ins().iconst(types::I64, -1);
        let (up, up_overflow) = {
            let (d, o1) = self.b.ins().ssub_overflow(stop, start);
            let (d, o2) = self.b.ins().sadd_overflow(d, step);
            let (d, o3) = self.b.ins().sadd_overflow(d, minus_one);
            let d = self.b.ins().smax(d, zero);
            let o = self.b.ins().bor(o1, o2);
            let o = self.b.ins().bor(o, o3);
            (self.b.ins().sdiv(d, step), o)
        };
        let (down, down_overflow) = {
            let (d, o1) = self.b.ins().ssub_overflow(start, stop);
            let (d, o2) = self.b.ins().ssub_overflow(d, step);
            let (d, o3) = self.b.ins().sadd_overflow(d, minus_one);
            let d = self.b.ins().smax(d, zero);
            let step_min = self.b.ins().icmp_imm_s(IntCC::Equal, step, i64::MIN);
            let neg_step = self.b.ins().ineg(step);
            // A positive step takes the other branch; keep the divisor nonzero here.
            let safe = self.b.ins().select(step_zero, one, neg_step);
            let o = self.b.ins().bor(o1, o2);
            let o = self.b.ins().bor(o, o3);
            let o = self.b.ins().bor(o, step_min);
            (self.b.ins().sdiv(d, safe), o)
        };
        let positive = self.b.ins().icmp_imm_s(IntCC::SignedGreaterThan, step, 0);
        let overflow = self.b.ins().select(positive, up_overflow, down_overflow);
        let count = self.b.ins().select(positive, up, down);
        self.range_result(ip, frame, argc, [start, step, zero, count], Some(overflow));
    }

    /// Checks a range's length against the collection limit (a longer one is the
    /// interpreter's to refuse) and defines the range iterator's four variables. `overflow`:
    /// where counting the items overflowed, which deopts at the same point (one deopt block
    /// for both).
    fn range_result(
        &mut self,
        ip: usize,
        frame: &Frame,
        argc: usize,
        parts: [Value; 4],
        overflow: Option<Value>,
    ) {
        let depth = frame.stack.len();
        let mut refused =
            self.b
                .ins()
                .icmp_imm_s(IntCC::SignedGreaterThan, parts[3], self.target.max_range);
        if let Some(overflow) = overflow {
            refused = self.b.ins().bor(refused, overflow);
        }
        self.deopt_if(refused, frame, ip, depth);
        let slot = self.local_count + depth - argc;
        let reps = [
            Rep::RangeStart,
            Rep::RangeStep,
            Rep::RangeIndex,
            Rep::RangeCount,
        ];
        for (r, v) in reps.into_iter().zip(parts) {
            let var = self.var(slot, r);
            self.b.def_var(var, v);
        }
    }
}

/// The signature of compiled functions: `(depth, args as i64 bits...) -> (result bits,
/// deopted)`, where `depth` counts the call frames in use with this one and `deopted` is
/// nonzero when the function deopted instead of returning (`super::Returned`). The context
/// is not an argument: its address is a constant of the code (`FunctionCodegen::ctx`).
pub fn signature(module: &dyn Module, argc: usize) -> cranelift_codegen::ir::Signature {
    let mut sig = module.make_signature();
    for _ in 0..argc + 1 {
        sig.params.push(AbiParam::new(types::I64));
    }
    sig.returns.push(AbiParam::new(types::I64));
    sig.returns.push(AbiParam::new(types::I64));
    sig
}

/// Declares a compiled function's symbol.
pub fn declare(
    module: &mut cranelift_jit::JITModule,
    name: &str,
    argc: usize,
) -> Result<FuncId, String> {
    let sig = signature(module, argc);
    module
        .declare_function(name, cranelift_module::Linkage::Local, &sig)
        .map_err(|e| e.to_string())
}

/// How to divide dividends below 2^63 by a constant: `x / divisor` is
/// `umulhi(x, multiplier) >> shift`; and for a divisor below 2^32, how to take the remainder
/// of a dividend below 2^32 directly: `x % divisor` is
/// `umulhi(x * direct_multiplier mod 2^64, divisor)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DivisionMagic {
    divisor: u64,
    multiplier: u64,
    shift: u32,
    direct_multiplier: Option<u64>,
}

/// The magic for a divisor `d > 1` that is not a power of two (those are masks), for
/// dividends `0 <= x < 2^63`. Granlund and Montgomery (1994), theorem 4.2 with N = 63: for
/// `l = ceil(log2 d)` and `m = floor(2^(63+l) / d) + 1`, `2^(63+l) < m*d <= 2^(63+l) + 2^l`,
/// so `floor(x*m / 2^(63+l)) = floor(x / d)` for every such `x`; and as `d > 2^(l-1)`,
/// `m < 2^64` fits a register, where 64-bit dividends would need a 65-bit multiplier.
///
/// The direct remainder is Lemire, Kaser and Kurz (2019), "Faster remainder by direct
/// computation", theorem 1 with N = 32 and F = 64: for `c = ceil(2^64 / d)`, the low 64 bits
/// of `c*x` are the fraction of `x / d` to 64 bits, good enough for every `x < 2^32` when
/// `d < 2^32`, and that fraction times `d`, over 2^64, is `x % d`.
pub(crate) fn magic_for_63_bits(d: i64) -> Option<DivisionMagic> {
    let d = u64::try_from(d)
        .ok()
        .filter(|d| *d > 1 && !d.is_power_of_two())?;
    let l = 64 - (d - 1).leading_zeros();
    let m = (1u128 << (63 + l)) / u128::from(d) + 1;
    Some(DivisionMagic {
        divisor: d,
        multiplier: u64::try_from(m).ok()?,
        shift: l - 1,
        // `d` is not a power of two, so `2^64 / d` is not whole and its ceiling is this.
        direct_multiplier: (d < 1 << 32).then(|| u64::MAX / d + 1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dividends below `2^bits` to divide by `d`: the edges (around `d`, the largest, the
    /// largest multiple of `d`), then `walk` more from a fixed-seed linear congruential walk.
    fn dividends(d: u64, bits: u32, walk: usize, seed: &mut u64) -> Vec<u64> {
        let top = (1u64 << bits) - 1;
        let edges = [0, 1, d - 1, d, d + 1, top, top - (top + 1) % d];
        let mut all: Vec<u64> = edges.into_iter().filter(|n| *n <= top).collect();
        for _ in 0..walk {
            *seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            all.push(*seed >> (64 - bits));
        }
        all
    }

    #[test]
    fn division_magic_gives_the_quotient_of_every_dividend_below_2_pow_63() {
        let divisors = [
            3,
            5,
            6,
            7,
            10,
            641,
            1_000_003,
            12_345_678_901,
            (1 << 32) + 1,
            (1 << 62) + 1,
            i64::MAX - 1,
            i64::MAX,
        ];
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        for d in divisors {
            let magic = magic_for_63_bits(d).expect("a magic for a divisor that is not 2^k");
            let quotient = |x: u64| {
                ((u128::from(x) * u128::from(magic.multiplier)) >> 64) as u64 >> magic.shift
            };
            let d = d as u64;
            for n in dividends(d, 63, 20_000, &mut seed) {
                assert_eq!(quotient(n), n / d, "{n} / {d}");
            }
        }
        for no_magic in [0, 1, 2, 1024, 1 << 62, -3] {
            assert_eq!(magic_for_63_bits(no_magic), None, "{no_magic}");
        }
    }

    #[test]
    fn the_direct_remainder_is_right_for_every_dividend_below_2_pow_32() {
        let divisors = [
            3,
            5,
            7,
            10,
            641,
            65_537,
            1_000_003,
            1_000_000_007,
            (1 << 31) + 1,
            (1 << 32) - 5,
            (1 << 32) - 1,
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for d in divisors {
            let magic = magic_for_63_bits(d).expect("a magic for a divisor that is not 2^k");
            let c = magic
                .direct_multiplier
                .expect("a direct remainder below 2^32");
            let d = d as u64;
            let remainder = |n: u64| ((u128::from(c.wrapping_mul(n)) * u128::from(d)) >> 64) as u64;
            for n in dividends(d, 32, 50_000, &mut seed) {
                assert_eq!(remainder(n), n % d, "{n} % {d}");
            }
        }
        // Divisors from 2^32 take the general path only.
        for large in [(1 << 32) + 1, 12_345_678_901, i64::MAX] {
            let magic = magic_for_63_bits(large).expect("a magic for a divisor that is not 2^k");
            assert_eq!(magic.direct_multiplier, None, "{large}");
        }
    }
}
