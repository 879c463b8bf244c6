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

use cranelift_codegen::entity::SecondaryMap;
use cranelift_codegen::inline::{Inline, InlineCommand};
use cranelift_codegen::ir::{
    Block, BlockArg, BlockCall, ExternalName, FuncRef, Function, Inst, InstructionData, Opcode,
    Value, ValueDef,
};
use std::borrow::Cow;
use std::collections::HashMap;
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
    let flag = dfg.resolve_aliases(*passed.get(at)?);
    let ValueDef::Result(def, _) = dfg.value_def(flag) else {
        return None;
    };
    let InstructionData::UnaryImm {
        opcode: Opcode::Iconst,
        imm,
    } = dfg.insts[def]
    else {
        return None;
    };
    let taken = if imm.bits() != 0 {
        targets[0]
    } else {
        targets[1]
    };
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

    /// `f(x, c)`: where `c` is nonzero, a "callee" that deopts (passes 7) and one that
    /// returns `x + 1` (passes 0) both jump to `check(result, flag)`, which branches to
    /// `deopted` or `after(result)`.
    fn inlined_shape() -> (Function, [Block; 4]) {
        let mut signature = Signature::new(CallConv::SystemV);
        signature.params = vec![AbiParam::new(types::I64); 2];
        signature.returns = vec![AbiParam::new(types::I64)];
        let mut function = Function::with_name_signature(UserFuncName::user(0, 0), signature);
        let mut builder_ctx = FunctionBuilderContext::new();
        let mut b = FunctionBuilder::new(&mut function, &mut builder_ctx);
        let [entry, returns, deopts, check, deopted, after] = [(); 6].map(|_| b.create_block());
        b.append_block_params_for_function_params(entry);
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
        b.seal_all_blocks();
        let flags = cranelift_codegen::settings::Flags::new(cranelift_codegen::settings::builder());
        let isa = cranelift_native::builder().unwrap().finish(flags).unwrap();
        b.finalize(isa.frontend_config());
        (function, [returns, deopts, deopted, after])
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
