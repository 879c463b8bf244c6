//! Inlining small compiled functions into their callers, at the optimizing tier.
//!
//! A call between compiled functions costs the call, the callee's prologue and epilogue
//! (which save and restore the registers it uses) and the status check after it: in a small
//! recursive function such as `fib`, most of its time. The optimizing tier hands cranelift's
//! inliner (`cranelift_codegen::inline`) the IR of small compiled functions.
//!
//! An inlined callee is the very IR of the called one, deopt blocks included. Where the called
//! code would report its frame and return 0, the inlined copy reports the same frame and jumps
//! to the caller's code after the call with 0; that code reads the status, finds it set and
//! reports the caller's frame, as after a real call. So inlining changes no result, error or
//! deopt, only the cost of a call.

use cranelift_codegen::inline::{Inline, InlineCommand};
use cranelift_codegen::ir::{ExternalName, FuncRef, Function, Inst, Opcode, Value};
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

/// The IR of functions small enough to inline, by their code's id (`FuncId::as_u32`),
/// as emitted: calls in it are not inlined, so inlining one never grows by more than it.
pub type InlineBodies = HashMap<u32, Arc<Function>>;

/// Instructions outside cold blocks a function may have to be inlined: a few comparisons,
/// some arithmetic and a call or two, the size where a call's overhead is a large part of
/// the work. The deopt blocks are cold and not counted.
const MAX_HOT_INSTRUCTIONS: usize = 48;

/// Calls inlined into one function at most, so code grows at most this many times the size
/// of the largest small function.
const MAX_INLINED_CALLS: usize = 8;

/// Rounds of inlining: each inlines the calls the previous one brought in, so a recursive
/// function gets its calls' calls inlined too (levels, not a chain down its first call).
const INLINE_ROUNDS: usize = 1;

/// Whether `function` is small enough to be inlined.
pub fn is_small(function: &Function) -> bool {
    let layout = &function.layout;
    let hot: usize = layout
        .blocks()
        .filter(|block| !layout.is_cold(*block))
        .map(|block| layout.block_insts(block).count())
        .sum();
    hot <= MAX_HOT_INSTRUCTIONS
}

/// Inlines into `ctx`'s function the calls of functions in `bodies`; returns how many.
pub fn inline_calls(
    ctx: &mut cranelift_codegen::Context,
    bodies: &InlineBodies,
) -> Result<usize, String> {
    if bodies.is_empty() {
        return Ok(0);
    }
    let mut inlined = 0;
    for _ in 0..INLINE_ROUNDS {
        let mut inliner = Inliner { bodies, inlined };
        let any = ctx
            .inline(&mut inliner)
            .map_err(|e| format!("cranelift could not inline a call: {e:?}"))?;
        inlined = inliner.inlined;
        if !any {
            break;
        }
    }
    Ok(inlined)
}

/// Tells cranelift which calls to inline, and with which body.
struct Inliner<'a> {
    bodies: &'a InlineBodies,
    inlined: usize,
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
        if opcode != Opcode::Call || self.inlined >= MAX_INLINED_CALLS {
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
