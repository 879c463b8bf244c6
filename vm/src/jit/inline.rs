//! Inlining small compiled functions into their callers, at the optimizing tier.
//!
//! A call between compiled functions costs the call, the callee's prologue and epilogue
//! (which save and restore the registers it uses) and the status check after it: in a small
//! recursive function such as `fib`, most of its time. The optimizing tier hands cranelift's
//! inliner (`cranelift_codegen::inline`) the IR of small compiled functions.
//!
//! Whole functions are inlined two levels deep; then, where a call is left, the callee's
//! *prefix* (`codegen::in_prefix`: its code before the first call, which returns where the
//! function returns early and calls the whole function elsewhere), so a recursion's base case
//! costs no call.
//!
//! An inlined callee is the very IR of the called one, deopt blocks included. Where the called
//! code would report its frame and return its "deopted" flag, the inlined copy reports the
//! same frame and jumps to the caller's code after the call with that flag; that code finds
//! it set and reports the caller's frame, as after a real call. So inlining changes no result,
//! error or deopt, only the cost of a call. `thread_deopt_checks` then sends each inlined
//! return past that check, since the flag it passes is a constant.

use cranelift_codegen::cursor::{Cursor, FuncCursor};
use cranelift_codegen::entity::SecondaryMap;
use cranelift_codegen::inline::{Inline, InlineCommand};
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{
    Block, BlockArg, BlockCall, ExternalName, FuncRef, Function, Inst, InstructionData, Opcode,
    Value, ValueDef,
};
use cranelift_codegen::ir::{InstBuilder, types};
use foldhash::HashMap;
use std::borrow::Cow;
use std::sync::Arc;

/// IR to inline, by the id (`FuncId::as_u32`) of the code whose calls it replaces, as
/// emitted: calls in it are not inlined, so inlining one never grows by more than it.
pub type InlineBodies = HashMap<u32, Arc<Function>>;

/// What the optimizing tier may inline.
#[derive(Clone, Default)]
pub struct Inlinable {
    /// Whole functions small enough to inline.
    pub bodies: InlineBodies,
    /// Functions' prefixes (`codegen::in_prefix`): their early exits, calling the whole
    /// function everywhere else. Inlined where the whole function no longer is.
    pub prefixes: InlineBodies,
}

impl Inlinable {
    pub fn extend(&mut self, other: Inlinable) {
        self.bodies.extend(other.bodies);
        self.prefixes.extend(other.prefixes);
    }
}

/// Instructions outside cold blocks a function may have to be inlined: a few comparisons,
/// some arithmetic and a call or two, the size where a call's overhead is a large part of
/// the work. The deopt blocks are cold and not counted.
const MAX_HOT_INSTRUCTIONS: usize = 48;

/// Calls inlined into one function at most, so code grows at most this many times the size
/// of the largest small function.
const MAX_INLINED_CALLS: usize = 8;

/// Rounds of inlining whole functions: each inlines the calls the previous one brought in,
/// so a recursive function gets its calls' calls inlined too (levels, not a chain down its
/// first call). A last round inlines prefixes.
const INLINE_ROUNDS: usize = 2;

/// Calls a prefix is inlined into in one function at most: a prefix is a few instructions.
const MAX_INLINED_PREFIXES: usize = 16;

/// Whether `function` is worth inlining: small, and without a loop (a loop's iterations
/// dwarf the cost of the call, and its code would be compiled once more in every caller).
pub fn is_small(function: &Function) -> bool {
    let layout = &function.layout;
    let hot: usize = layout
        .blocks()
        .filter(|block| !layout.is_cold(*block))
        .map(|block| layout.block_insts(block).count())
        .sum();
    hot <= MAX_HOT_INSTRUCTIONS && !has_back_edge(function)
}

/// Whether a branch in `function` goes to a block at or before its own in the layout, which
/// every loop has (the code generator lays blocks out in bytecode order).
fn has_back_edge(function: &Function) -> bool {
    let layout = &function.layout;
    let order: HashMap<Block, usize> = layout.blocks().enumerate().map(|(i, b)| (b, i)).collect();
    layout.blocks().any(|block| {
        let Some(last) = layout.last_inst(block) else {
            return false;
        };
        let data = &function.dfg.insts[last];
        data.branch_destination(&function.dfg.jump_tables, &function.dfg.exception_tables)
            .iter()
            .any(|call| order[&call.block(&function.dfg.value_lists)] <= order[&block])
    })
}

/// Inlines into `ctx`'s function the calls of functions in `inlinable`, whole functions
/// first, then prefixes; returns how many calls.
pub fn inline_calls(
    ctx: &mut cranelift_codegen::Context,
    inlinable: &Inlinable,
) -> Result<usize, String> {
    let mut inlined = 0;
    for _ in 0..INLINE_ROUNDS {
        let (any, count) = inline_round(ctx, &inlinable.bodies, inlined, MAX_INLINED_CALLS)?;
        inlined = count;
        if !any {
            break;
        }
    }
    let (_, prefixes) = inline_round(ctx, &inlinable.prefixes, 0, MAX_INLINED_PREFIXES)?;
    if inlined > 0 {
        hoist_entry_checks(&mut ctx.func);
    }
    Ok(inlined + prefixes)
}

/// One pass of cranelift's inliner over the calls in `ctx` of functions in `bodies`, with
/// `inlined` of `budget` calls spent: whether it inlined any, and the calls spent after.
fn inline_round(
    ctx: &mut cranelift_codegen::Context,
    bodies: &InlineBodies,
    inlined: usize,
    budget: usize,
) -> Result<(bool, usize), String> {
    if bodies.is_empty() {
        return Ok((false, inlined));
    }
    let mut inliner = Inliner {
        bodies,
        inlined,
        budget,
    };
    let any = ctx
        .inline(&mut inliner)
        .map_err(|e| format!("cranelift could not inline a call: {e:?}"))?;
    Ok((any, inliner.inlined))
}

/// Folds the entry checks of inlined bodies into the function's own.
///
/// A function that calls checks on entry, at every fourth call depth, the call depth limit
/// and its fuel (`codegen`'s `emit_entry_checks`). Each inlined body brings its own check, at
/// its depth: the function's plus 1 or 2 (a test and a branch on every inlined call, and cold
/// blocks that were a quarter of fib's optimized compile). Those go; the function's own check
/// takes their place: it runs its slow path when any depth from its own to the deepest
/// inlined body's (`deepest`) is a multiple of 4, and there hands back to the interpreter if
/// the deepest body would be at the depth limit. So no code runs deeper than the limit (the
/// calls inlined bodies make are at most one deeper, and those callees check), fuel is still
/// spent on the way down a recursion, and near the limit the interpreter runs the frames
/// itself, raising its own error where it must.
pub fn hoist_entry_checks(function: &mut Function) {
    let Some(entry) = function.layout.entry_block() else {
        return;
    };
    let Some(&depth) = function.dfg.block_params(entry).first() else {
        return;
    };
    // (branch, depth offset) of every entry check.
    let mut checks: Vec<(Inst, i64)> = Vec::new();
    for block in function.layout.blocks() {
        let Some(last) = function.layout.last_inst(block) else {
            continue;
        };
        if let InstructionData::Brif { arg, .. } = function.dfg.insts[last]
            && let Some(offset) = entry_check_offset(function, depth, arg)
        {
            checks.push((last, offset));
        }
    }
    let deepest = checks.iter().map(|(_, offset)| *offset).max().unwrap_or(0);
    let own: Vec<Inst> = checks
        .iter()
        .filter(|(_, offset)| *offset == 0)
        .map(|(inst, _)| *inst)
        .collect();
    // Only under a check of the function's own (code entered by on-stack replacement tests
    // the depth at its calls instead), and only the few levels inlining makes.
    if own.len() != 1 || !(1..=3).contains(&deepest) {
        return;
    }
    for (inst, offset) in &checks {
        if *offset > 0
            && let InstructionData::Brif { blocks, .. } = function.dfg.insts[*inst]
        {
            // Nonzero (the depth is not a multiple of 4): straight on into the body.
            function.dfg.insts[*inst] = InstructionData::Jump {
                opcode: Opcode::Jump,
                destination: blocks[0],
            };
        }
    }
    // The depth limit, tested for the deepest body.
    let limit_tests: Vec<(Inst, i64)> = function
        .layout
        .blocks()
        .flat_map(|block| function.layout.block_insts(block))
        .filter_map(|inst| match function.dfg.insts[inst] {
            InstructionData::IntCompare {
                opcode: Opcode::Icmp,
                cond: IntCC::SignedGreaterThanOrEqual,
                args,
            } if depth_offset(function, depth, args[0]) == Some(0) => {
                Some((inst, constant(function, args[1])?))
            }
            _ => None,
        })
        .collect();
    for (inst, limit) in limit_tests {
        let mut pos = FuncCursor::new(function).at_inst(inst);
        let lowered = pos.ins().iconst(types::I64, limit - deepest);
        if let InstructionData::IntCompare { args, .. } = &mut function.dfg.insts[inst] {
            args[1] = lowered;
        }
    }
    // The slow path when a depth from the function's to `deepest` more is a multiple of 4:
    // `(depth + deepest) & 3 <= deepest`.
    let branch = own[0];
    let mut pos = FuncCursor::new(function).at_inst(branch);
    let shifted = pos.ins().iadd_imm_s(depth, deepest);
    let low = pos.ins().band_imm_u(shifted, 3);
    let clear = pos
        .ins()
        .icmp_imm_u(IntCC::UnsignedGreaterThan, low, deepest);
    if let InstructionData::Brif { arg, .. } = &mut function.dfg.insts[branch] {
        *arg = clear;
    }
}

/// The depth offset of the entry check `condition` branches on (`depth + offset & 3`), if it
/// is one.
fn entry_check_offset(function: &Function, depth: Value, condition: Value) -> Option<i64> {
    let [masked, mask] = operands(function, condition, Opcode::Band)?;
    if constant(function, mask) != Some(3) {
        return None;
    }
    depth_offset(function, depth, masked)
}

/// `value` as `depth` plus a constant, as calls pass their callees' depths (`depth + 1`).
fn depth_offset(function: &Function, depth: Value, value: Value) -> Option<i64> {
    let mut value = function.dfg.resolve_aliases(value);
    let mut offset = 0i64;
    while value != depth {
        let [base, added] = operands(function, value, Opcode::Iadd)?;
        offset = offset.checked_add(constant(function, added)?)?;
        value = function.dfg.resolve_aliases(base);
    }
    Some(offset)
}

/// The two operands of the `opcode` instruction that defines `value`, if one does.
fn operands(function: &Function, value: Value, opcode: Opcode) -> Option<[Value; 2]> {
    let dfg = &function.dfg;
    let ValueDef::Result(inst, 0) = dfg.value_def(dfg.resolve_aliases(value)) else {
        return None;
    };
    match dfg.insts[inst] {
        InstructionData::Binary {
            opcode: found,
            args,
        } if found == opcode => Some(args),
        _ => None,
    }
}

/// The value of an `iconst`.
fn constant(function: &Function, value: Value) -> Option<i64> {
    let dfg = &function.dfg;
    match dfg.value_def(dfg.resolve_aliases(value)) {
        ValueDef::Result(inst, 0) => match dfg.insts[inst] {
            InstructionData::UnaryImm {
                opcode: Opcode::Iconst,
                imm,
            } => Some(imm.bits()),
            _ => None,
        },
        _ => None,
    }
}

/// Makes the returns of inlined callees jump past the caller's deopt check.
///
/// After a call, compiled code branches on the callee's `deopted` result (`codegen`'s
/// `deopt_if_callee_deopted`); inlined, that result is a parameter of the block the
/// callee's returns jump to, and every return passes a constant: 0 where it returns, a deopt
/// site where it deopts. A jump that passes a constant to a block that only branches on it is
/// sent to the branch's target instead, with the arguments that target takes. Cranelift's
/// optimiser does not thread jumps; without this, every inlined call ends in materialising a
/// 0, a jump, a test and a branch.
pub fn thread_deopt_checks(function: &mut Function) {
    // Uses of every value, so a block whose parameters are read anywhere but in its own
    // branch (which a threaded jump would bypass) is left alone.
    // (A dense map: hashing every operand was a twentieth of an optimized compile.)
    let mut uses: SecondaryMap<Value, u32> = SecondaryMap::with_capacity(function.dfg.num_values());
    let mut jumps: Vec<(Inst, Block)> = Vec::new();
    for block in function.layout.blocks() {
        for inst in function.layout.block_insts(block) {
            for value in function.dfg.inst_values(inst) {
                uses[function.dfg.resolve_aliases(value)] += 1;
            }
            if let InstructionData::Jump { destination, .. } = function.dfg.insts[inst] {
                jumps.push((inst, destination.block(&function.dfg.value_lists)));
            }
        }
    }
    for (jump, target) in jumps {
        let Some(threaded) = thread_one(function, &uses, jump, target) else {
            continue;
        };
        function.dfg.insts[jump] = InstructionData::Jump {
            opcode: Opcode::Jump,
            destination: threaded,
        };
    }
}

/// The destination `jump` (to `block`) can take instead: the target of `block`'s branch for
/// the constant the jump passes it.
fn thread_one(
    function: &mut Function,
    uses: &SecondaryMap<Value, u32>,
    jump: Inst,
    block: Block,
) -> Option<BlockCall> {
    let layout = &function.layout;
    let dfg = &function.dfg;
    let branch = layout.first_inst(block)?;
    if layout.last_inst(block) != Some(branch) {
        return None;
    }
    let InstructionData::Brif {
        arg: condition,
        blocks: targets,
        ..
    } = dfg.insts[branch]
    else {
        return None;
    };
    let params = dfg.block_params(block);
    let condition = dfg.resolve_aliases(condition);
    let at = params.iter().position(|p| *p == condition)?;
    // Every use of a parameter must be in the branch: the block is bypassed.
    let uses_in_branch = |param: Value| {
        dfg.inst_values(branch)
            .filter(|v| dfg.resolve_aliases(*v) == param)
            .count() as u32
    };
    if params.iter().any(|p| uses[*p] != uses_in_branch(*p)) {
        return None;
    }
    let InstructionData::Jump { destination, .. } = dfg.insts[jump] else {
        return None;
    };
    let passed: Vec<Value> = destination
        .args(&dfg.value_lists)
        .map(|arg| arg.as_value())
        .collect::<Option<_>>()?;
    let flag = constant(function, *passed.get(at)?)?;
    let taken = if flag != 0 { targets[0] } else { targets[1] };
    let target = taken.block(&dfg.value_lists);
    if target == block {
        return None;
    }
    let args: Vec<BlockArg> = taken
        .args(&dfg.value_lists)
        .map(|arg| {
            let value = arg.as_value()?;
            let value = dfg.resolve_aliases(value);
            Some(BlockArg::Value(
                params
                    .iter()
                    .position(|p| *p == value)
                    .map_or(value, |i| passed[i]),
            ))
        })
        .collect::<Option<_>>()?;
    Some(BlockCall::new(target, args, &mut function.dfg.value_lists))
}

/// Tells cranelift which calls to inline, and with which body.
struct Inliner<'a> {
    bodies: &'a InlineBodies,
    inlined: usize,
    budget: usize,
}

impl Inline for Inliner<'_> {
    fn inline(
        &mut self,
        caller: &Function,
        _call: Inst,
        opcode: Opcode,
        callee: FuncRef,
        _args: &[Value],
    ) -> InlineCommand<'_> {
        if opcode != Opcode::Call || self.inlined >= self.budget {
            return InlineCommand::KeepCall;
        }
        let import = &caller.dfg.ext_funcs[callee];
        let ExternalName::User(name) = import.name else {
            return InlineCommand::KeepCall;
        };
        let name = &caller.params.user_named_funcs()[name];
        // Namespace 0 holds functions (cranelift-module's convention); runtime helpers are
        // functions too, but have no body here.
        if name.namespace != 0 {
            return InlineCommand::KeepCall;
        }
        let Some(body) = self.bodies.get(&name.index) else {
            return InlineCommand::KeepCall;
        };
        // Cranelift asserts that the signatures agree; compiled functions of one arity share
        // theirs, so this only guards against a mix-up.
        if caller.dfg.signatures[import.signature] != body.signature {
            return InlineCommand::KeepCall;
        }
        self.inlined += 1;
        InlineCommand::Inline {
            callee: Cow::Borrowed(body.as_ref()),
            visit_callee: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cranelift_codegen::ir::{AbiParam, InstBuilder, Signature, UserFuncName, types};
    use cranelift_codegen::isa::CallConv;
    use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};

    /// A function `(i64, i64) -> i64` whose body `build` makes (given the builder and the
    /// entry block, its parameters appended), sealed and finalized.
    fn function_of<R>(build: impl FnOnce(&mut FunctionBuilder, Block) -> R) -> (Function, R) {
        let mut signature = Signature::new(CallConv::SystemV);
        signature.params = vec![AbiParam::new(types::I64); 2];
        signature.returns = vec![AbiParam::new(types::I64)];
        let mut function = Function::with_name_signature(UserFuncName::user(0, 0), signature);
        let mut builder_ctx = FunctionBuilderContext::new();
        let mut b = FunctionBuilder::new(&mut function, &mut builder_ctx);
        let entry = b.create_block();
        b.append_block_params_for_function_params(entry);
        let made = build(&mut b, entry);
        b.seal_all_blocks();
        let flags = cranelift_codegen::settings::Flags::new(cranelift_codegen::settings::builder());
        let isa = cranelift_native::builder().unwrap().finish(flags).unwrap();
        b.finalize(isa.frontend_config());
        (function, made)
    }

    /// `f(x, c)`: where `c` is nonzero, a "callee" that deopts (passes 7) and one that
    /// returns `x + 1` (passes 0) both jump to `check(result, flag)`, which branches to
    /// `deopted` or `after(result)`.
    fn inlined_shape() -> (Function, [Block; 4]) {
        function_of(|b, entry| {
            let [returns, deopts, check, deopted, after] = [(); 5].map(|_| b.create_block());
            b.append_block_param(check, types::I64);
            b.append_block_param(check, types::I64);
            b.append_block_param(after, types::I64);
            b.switch_to_block(entry);
            let [x, c] = [b.block_params(entry)[0], b.block_params(entry)[1]];
            b.ins().brif(c, deopts, &[], returns, &[]);
            b.switch_to_block(returns);
            let sum = b.ins().iadd_imm_s(x, 1);
            let zero = b.ins().iconst(types::I64, 0);
            b.ins().jump(check, &[sum.into(), zero.into()]);
            b.switch_to_block(deopts);
            let site = b.ins().iconst(types::I64, 7);
            let nothing = b.ins().iconst(types::I64, 0);
            b.ins().jump(check, &[nothing.into(), site.into()]);
            b.switch_to_block(check);
            let [result, flag] = [b.block_params(check)[0], b.block_params(check)[1]];
            b.ins().brif(flag, deopted, &[], after, &[result.into()]);
            b.switch_to_block(deopted);
            let minus = b.ins().iconst(types::I64, -1);
            b.ins().return_(&[minus]);
            b.switch_to_block(after);
            let r = b.block_params(after)[0];
            b.ins().return_(&[r]);
            [returns, deopts, deopted, after]
        })
    }

    /// `f(depth, x)` with an entry check of its own at `depth` and an inlined body's at
    /// `depth + 1`, as `codegen` emits them (limit 512, a multiple of 4): each branches on
    /// `depth & 3` to its body or to a cold slow path that tests the limit.
    fn entry_checks_shape() -> (Function, [Block; 4]) {
        function_of(|b, entry| {
            let [slow, deopt, body, inner_slow, inner] = [(); 5].map(|_| b.create_block());
            for cold in [slow, deopt, inner_slow] {
                b.set_cold_block(cold);
            }
            b.switch_to_block(entry);
            let [depth, x] = [b.block_params(entry)[0], b.block_params(entry)[1]];
            let check = |b: &mut FunctionBuilder, at: Value, slow: Block, on: Block| {
                let low = b.ins().band_imm_u(at, 3);
                b.ins().brif(low, on, &[], slow, &[]);
                b.switch_to_block(slow);
                let too_deep = b.ins().icmp_imm_s(IntCC::SignedGreaterThanOrEqual, at, 512);
                b.ins().brif(too_deep, deopt, &[], on, &[]);
            };
            check(b, depth, slow, body);
            b.switch_to_block(deopt);
            let minus = b.ins().iconst(types::I64, -1);
            b.ins().return_(&[minus]);
            b.switch_to_block(body);
            let callee_depth = b.ins().iadd_imm_s(depth, 1);
            check(b, callee_depth, inner_slow, inner);
            b.switch_to_block(inner);
            b.ins().return_(&[x]);
            [entry, slow, body, inner]
        })
    }

    #[test]
    fn an_inlined_bodys_entry_check_is_folded_into_the_functions_own() {
        let (mut function, [entry, slow, body, inner]) = entry_checks_shape();
        hoist_entry_checks(&mut function);
        assert_eq!(
            jump_target(&function, body),
            (inner, 0),
            "the inlined body is entered without a check"
        );
        let depth = function.dfg.block_params(entry)[0];
        // The limit is tested for the body one deeper: 512 - 1.
        let Some(InstructionData::IntCompare { args, .. }) = function
            .layout
            .block_insts(slow)
            .map(|inst| function.dfg.insts[inst])
            .find(|data| data.opcode() == Opcode::Icmp)
        else {
            panic!("{}", function.display());
        };
        assert_eq!((args[0], constant(&function, args[1])), (depth, Some(511)));
        // The slow path is taken where depth or depth + 1 is a multiple of 4: the branch
        // goes on to the body only where `(depth + 1) & 3 > 1`.
        let branch = function.layout.last_inst(entry).unwrap();
        let InstructionData::Brif { arg, blocks, .. } = function.dfg.insts[branch] else {
            panic!("{}", function.display());
        };
        assert_eq!(blocks[0].block(&function.dfg.value_lists), body);
        let ValueDef::Result(compare, 0) = function.dfg.value_def(arg) else {
            panic!("{}", function.display());
        };
        let InstructionData::IntCompare { cond, args, .. } = function.dfg.insts[compare] else {
            panic!("{}", function.display());
        };
        assert_eq!(cond, IntCC::UnsignedGreaterThan);
        assert_eq!(constant(&function, args[1]), Some(1));
        assert_eq!(entry_check_offset(&function, depth, args[0]), Some(1));
    }

    #[test]
    fn a_function_whose_only_entry_check_is_its_own_is_left_alone() {
        let (mut function, _) = entry_checks_shape();
        hoist_entry_checks(&mut function);
        // The inlined body's check is gone: what is left is the function's own, which a
        // function without inlined calls has, and which must keep testing `depth & 3`.
        let once = function.display().to_string();
        hoist_entry_checks(&mut function);
        assert_eq!(function.display().to_string(), once);
    }

    fn jump_target(function: &Function, from: Block) -> (Block, usize) {
        let inst = function.layout.last_inst(from).unwrap();
        let InstructionData::Jump { destination, .. } = function.dfg.insts[inst] else {
            panic!("not a jump");
        };
        let pool = &function.dfg.value_lists;
        (destination.block(pool), destination.len(pool))
    }

    #[test]
    fn a_constant_flag_jumps_past_the_check() {
        let (mut function, [returns, deopts, deopted, after]) = inlined_shape();
        thread_deopt_checks(&mut function);
        assert_eq!(jump_target(&function, returns), (after, 1), "{function}");
        assert_eq!(jump_target(&function, deopts), (deopted, 0), "{function}");
        let flags = cranelift_codegen::settings::Flags::new(cranelift_codegen::settings::builder());
        cranelift_codegen::verify_function(&function, &flags).expect("still valid IR");
    }

    #[test]
    fn a_check_whose_parameters_are_read_elsewhere_stays() {
        let (mut function, [returns, _, _, after]) = inlined_shape();
        // `after` reads the check block's `result` directly: bypassing the check would
        // leave it undefined there.
        let check = jump_target(&function, returns).0;
        let result = function.dfg.block_params(check)[0];
        let ret = function.layout.last_inst(after).unwrap();
        function.dfg.inst_args_mut(ret)[0] = result;
        thread_deopt_checks(&mut function);
        assert_eq!(jump_target(&function, returns).0, check);
    }
}
