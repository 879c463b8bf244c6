//! Code for instructions on object slots (strings, lists, maps, ...): calls into the runtime
//! helpers (`jit::runtime`), with the ownership of each slot's box kept straight.
//!
//! Each object slot owns its box. A helper borrows its operands; its result is a new box. The
//! order after every helper call is fixed: free the temporary boxes made for scalar operands,
//! deopt if the helper failed (the operands are still in their slots, so the frame spilled is
//! the one before the instruction), and only then free the operands and define the result.

use super::FunctionCodegen;
use crate::jit::Ty;
use crate::jit::analyze::{Frame, Local, inline_native, native_result, speculate_number};
use crate::jit::runtime::{self, COMPARE_FAIL, DONE, FAIL, op};
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{
    AbiParam, Block, InstBuilder, Signature, StackSlotData, StackSlotKind, Value, types,
};
use foldhash::HashMap;
use sglc_compiler::bytecode::{Constant, Instr, NO_KEYWORDS};

/// What `object_instruction` did.
pub(super) enum ObjectStep {
    /// Emitted the instruction; whether the block goes on after it.
    Done(bool),
    /// Nothing to do with objects (or only frees done): the scalar code emits it.
    Scalar,
    /// Operands unboxed: the scalar code emits it, for this frame.
    ScalarWith(Frame),
}

fn is_object(ty: Ty) -> bool {
    matches!(ty, Ty::Obj | Ty::ObjIter | Ty::IntsIter | Ty::BoolsIter)
}

/// The `kind` argument of `runtime::box_scalar` and `runtime::unbox`.
fn scalar_kind(ty: Ty) -> i64 {
    match ty {
        Ty::Int => 1,
        Ty::Float => 2,
        Ty::Bool => 3,
        _ => 0,
    }
}

/// For each instruction, whether the object it pushes (a local's or a string constant's) may
/// be borrowed: in the same block, the instructions after it only push or work on what is above
/// it, and then one instruction reads it and lets it go (an operator, an index, a call of a
/// native or method, a branch, a pop), none of which keeps it. A local cannot change while
/// its box is borrowed: no instruction in between stores to a local or calls a function.
pub fn borrowable(
    code: &[Instr],
    plan: &crate::jit::analyze::Plan,
    constants: &[Constant],
) -> Vec<bool> {
    // (values popped, values pushed) of what may come between the push and its reader.
    let effect = |instr: &Instr| -> Option<(usize, usize)> {
        Some(match *instr {
            Instr::LoadLocal(_)
            | Instr::PushInt(_)
            | Instr::PushBool(_)
            | Instr::PushNone
            | Instr::Const(_)
            | Instr::LoadGlobal(_) => (0, 1),
            Instr::Add
            | Instr::Sub
            | Instr::Mul
            | Instr::Div
            | Instr::Mod
            | Instr::AddAssign
            | Instr::Eq
            | Instr::NotEq
            | Instr::Lt
            | Instr::Le
            | Instr::Gt
            | Instr::Ge
            | Instr::In
            | Instr::NotIn
            | Instr::Index => (2, 1),
            Instr::Not | Instr::Neg | Instr::FormatValue | Instr::GetIter => (1, 1),
            Instr::CallNative { argc, keywords, .. } if keywords == NO_KEYWORDS => {
                (argc as usize, 1)
            }
            Instr::CallMethod { argc, keywords, .. } if keywords == NO_KEYWORDS => {
                (argc as usize + 1, 1)
            }
            Instr::BuildString(n) | Instr::BuildList(n) => (n as usize, 1),
            Instr::BuildMap(n) => (2 * n as usize, 1),
            Instr::JumpIfFalse(_) | Instr::Pop | Instr::ListAppendUnder(_) => (1, 0),
            Instr::StoreIndex => (3, 0),
            _ => return None,
        })
    };
    let mut borrows = vec![false; code.len()];
    for (ip, instr) in code.iter().enumerate() {
        let Some(frame) = plan.before[ip].as_ref() else {
            continue;
        };
        let object = match *instr {
            Instr::LoadLocal(slot) => frame.locals[slot as usize] == Local::Known(Ty::Obj),
            Instr::Const(i) => matches!(constants[i as usize], Constant::Str(_)),
            _ => false,
        };
        if !object {
            continue;
        }
        // Values pushed above ours and not yet used.
        let mut above = 0usize;
        for (next, instr) in code.iter().enumerate().skip(ip + 1) {
            if plan.leaders[next] {
                break;
            }
            let Some((pops, pushes)) = effect(instr) else {
                break;
            };
            if pops > above {
                // This instruction reads ours; `JumpIfFalseOrPop` and the like keep it and
                // are not in the table.
                borrows[ip] = true;
                break;
            }
            above = above - pops + pushes;
        }
    }
    borrows
}

impl FunctionCodegen<'_, '_> {
    /// Calls a runtime helper by its address; its result when it has one.
    pub(super) fn helper(
        &mut self,
        address: *const (),
        args: &[Value],
        returns: bool,
    ) -> Option<Value> {
        let key = (args.len(), returns);
        let sig = match self.helper_sigs.get(&key) {
            Some(sig) => *sig,
            None => {
                let mut sig = Signature::new(self.b.func.signature.call_conv);
                sig.params
                    .extend(std::iter::repeat_n(AbiParam::new(types::I64), args.len()));
                if returns {
                    sig.returns.push(AbiParam::new(types::I64));
                }
                let sig = self.b.import_signature(sig);
                self.helper_sigs.insert(key, sig);
                sig
            }
        };
        let callee = self.b.ins().iconst(types::I64, address as i64);
        let call = self.b.ins().call_indirect(sig, callee, args);
        returns.then(|| self.b.inst_results(call)[0])
    }

    /// A box of `value` that lives as long as the compiled code, to clone from.
    fn pin(&mut self, value: crate::value::Value) -> Value {
        let boxed = Box::new(value);
        let address = &*boxed as *const crate::value::Value as i64;
        self.pinned.push(boxed);
        self.b.ins().iconst(types::I64, address)
    }

    /// The slot's value as an object: the slot itself for an object or `none`, else a
    /// temporary box (listed in `temps`) of the scalar.
    fn object_of(&mut self, slot: usize, ty: Ty, temps: &mut Vec<Value>) -> Value {
        let v = self.get(slot, ty);
        if is_object(ty) || ty == Ty::None {
            return v;
        }
        let bits = self.as_bits(v, ty);
        let kind = self.b.ins().iconst(types::I64, scalar_kind(ty));
        let boxed = self
            .helper(runtime::box_scalar as *const (), &[kind, bits], true)
            .expect("returns");
        temps.push(boxed);
        boxed
    }

    fn free(&mut self, object: Value) {
        self.helper(runtime::drop as *const (), &[object], false);
    }

    fn free_all(&mut self, objects: Vec<Value>) {
        for object in objects {
            self.free(object);
        }
    }

    /// A clone of an object, in a box of its own.
    pub(super) fn clone_object(&mut self, object: Value) -> Value {
        self.helper(runtime::clone as *const (), &[object], true)
            .expect("returns")
    }

    /// Frees the slot's box when it holds an object it owns (a borrowed one is let go).
    fn free_slot(&mut self, slot: usize, ty: Ty) {
        if self.borrowed.remove(&slot) {
            return;
        }
        if is_object(ty) {
            let v = self.get(slot, ty);
            self.free(v);
        }
    }

    /// Calls a helper that returns `fail` when it cannot do the instruction, then, in the
    /// fixed order (see the module's comment): frees `temps`, deopts on `fail`, and frees the
    /// top `consumed` stack operands. Its result.
    fn checked(
        &mut self,
        helper: *const (),
        args: &[Value],
        temps: Vec<Value>,
        fail: i64,
        consumed: usize,
        (frame, ip): (&Frame, usize),
    ) -> Value {
        let r = self.helper(helper, args, true).expect("returns");
        self.free_all(temps);
        self.deopt_when_equal(r, fail, frame, ip);
        self.free_top(frame, consumed);
        r
    }

    /// Calls `binary` or `compare` with operator `code` on the top two stack slots (as
    /// objects), which it then frees (`checked`).
    fn on_two(
        &mut self,
        helper: *const (),
        code: i64,
        fail: i64,
        (frame, ip): (&Frame, usize),
    ) -> Value {
        let depth = frame.stack.len();
        let (a_slot, b_slot) = (self.local_count + depth - 2, self.local_count + depth - 1);
        let mut temps = Vec::new();
        let a = self.object_of(a_slot, frame.stack[depth - 2], &mut temps);
        let b = self.object_of(b_slot, frame.stack[depth - 1], &mut temps);
        let ctx = self.ctx();
        let code = self.b.ins().iconst(types::I64, code);
        self.checked(helper, &[ctx, code, a, b], temps, fail, 2, (frame, ip))
    }

    /// Calls `call_native` or `call_method` on the top `count` stack slots (as objects, in a
    /// buffer) for native or method-name `id`; frees `consumed` of them after (`checked`).
    fn call_on_stack(
        &mut self,
        call: *const (),
        id: u32,
        count: usize,
        consumed: usize,
        (frame, ip): (&Frame, usize),
    ) -> Value {
        let mut temps = Vec::new();
        let buffer = self.object_buffer(frame, count, &mut temps);
        let ctx = self.ctx();
        let id = self.b.ins().iconst(types::I64, i64::from(id));
        let n = self.b.ins().iconst(types::I64, count as i64);
        self.checked(
            call,
            &[ctx, id, buffer, n],
            temps,
            FAIL,
            consumed,
            (frame, ip),
        )
    }

    /// The text of int, float or bool `v` (of type `ty`), as `str()` and an f-string's
    /// `{value}` show it: a new string's object slot.
    fn scalar_text(&mut self, v: Value, ty: Ty) -> Value {
        let bits = self.as_bits(v, ty);
        let kind = self.b.ins().iconst(types::I64, scalar_kind(ty));
        self.helper(runtime::format_scalar as *const (), &[kind, bits], true)
            .expect("returns")
    }

    fn deopt_when_equal(&mut self, value: Value, sentinel: i64, frame: &Frame, ip: usize) {
        let failed = self.b.ins().icmp_imm_s(IntCC::Equal, value, sentinel);
        self.deopt_if(failed, frame, ip, frame.stack.len());
    }

    /// The top `count` stack slots as objects in a buffer on the stack: its address.
    fn object_buffer(&mut self, frame: &Frame, count: usize, temps: &mut Vec<Value>) -> Value {
        let depth = frame.stack.len();
        let first = depth - count;
        let buffer = self.b.create_sized_stack_slot(StackSlotData::new(
            StackSlotKind::ExplicitSlot,
            (count.max(1) * 8) as u32,
            3,
        ));
        for k in 0..count {
            let ty = frame.stack[first + k];
            let v = self.object_of(self.local_count + first + k, ty, temps);
            self.b
                .ins()
                .stack_store(types::I64, v, buffer, (k * 8) as i32);
        }
        self.b.ins().stack_addr(types::I64, buffer, 0)
    }

    /// Frees the objects among the top `count` stack slots.
    fn free_top(&mut self, frame: &Frame, count: usize) {
        let depth = frame.stack.len();
        for k in depth - count..depth {
            self.free_slot(self.local_count + k, frame.stack[k]);
        }
    }

    /// Emits `instr` when objects are involved, or prepares the scalar code's part.
    pub(super) fn object_instruction(
        &mut self,
        ip: usize,
        instr: Instr,
        frame: &Frame,
        blocks: &HashMap<usize, Block>,
    ) -> Result<ObjectStep, String> {
        let base = self.local_count;
        let depth = frame.stack.len();
        let top = |k: usize| base + depth - 1 - k;
        let ty_at = |k: usize| frame.stack[depth - 1 - k];
        let push_slot = base + depth;
        match instr {
            Instr::Const(i) => {
                let Constant::Str(s) = &self.program.constants[i as usize] else {
                    return Ok(ObjectStep::Scalar);
                };
                let pinned = self.pin(crate::value::Value::str(s));
                let v = if self.borrows[ip] {
                    self.borrowed.insert(push_slot);
                    pinned
                } else {
                    self.clone_object(pinned)
                };
                self.set(push_slot, Ty::Obj, v);
            }
            Instr::LoadGlobal(g) => {
                let value = &self.globals[g as usize];
                if Ty::of(value) != Some(Ty::Obj) {
                    return Ok(ObjectStep::Scalar);
                }
                let pinned = self.pin(value.clone());
                let v = self
                    .helper(runtime::clone as *const (), &[pinned], true)
                    .expect("returns");
                self.set(push_slot, Ty::Obj, v);
            }
            Instr::LoadLocal(slot) => {
                if frame.locals[slot as usize] != Local::Known(Ty::Obj) {
                    return Ok(ObjectStep::Scalar);
                }
                let v = self.get(slot as usize, Ty::Obj);
                let v = if self.borrows[ip] {
                    self.borrowed.insert(push_slot);
                    v
                } else {
                    self.clone_object(v)
                };
                self.set(push_slot, Ty::Obj, v);
            }
            Instr::StoreLocal(slot) => {
                // The old value's box goes; the scalar code moves the new value in.
                if frame.locals[slot as usize] == Local::Known(Ty::Obj) {
                    self.free_slot(slot as usize, Ty::Obj);
                }
                return Ok(ObjectStep::Scalar);
            }
            Instr::Pop => {
                self.free_slot(top(0), ty_at(0));
            }
            Instr::Dup => {
                if !is_object(ty_at(0)) {
                    return Ok(ObjectStep::Scalar);
                }
                let v = self.get(top(0), ty_at(0));
                let copy = self
                    .helper(runtime::clone as *const (), &[v], true)
                    .expect("returns");
                self.set(push_slot, ty_at(0), copy);
            }
            Instr::Add | Instr::Sub | Instr::Mul | Instr::AddAssign | Instr::Div | Instr::Mod => {
                let (ta, tb) = (ty_at(1), ty_at(0));
                if !is_object(ta) && !is_object(tb) {
                    return Ok(ObjectStep::Scalar);
                }
                if let Some(types) = speculate_number(instr, ta, tb) {
                    return Ok(ObjectStep::ScalarWith(
                        self.unbox_operands(frame, ip, types),
                    ));
                }
                let code = match instr {
                    Instr::Add => op::ADD,
                    Instr::Sub => op::SUB,
                    Instr::Mul => op::MUL,
                    Instr::Div => op::DIV,
                    Instr::Mod => op::MOD,
                    _ => op::ADD_ASSIGN,
                };
                let r = self.on_two(runtime::binary as *const (), code, FAIL, (frame, ip));
                self.set(top(1), Ty::Obj, r);
            }
            Instr::Eq
            | Instr::NotEq
            | Instr::Lt
            | Instr::Le
            | Instr::Gt
            | Instr::Ge
            | Instr::In
            | Instr::NotIn => {
                let (ta, tb) = (ty_at(1), ty_at(0));
                let membership = matches!(instr, Instr::In | Instr::NotIn);
                if !membership && !is_object(ta) && !is_object(tb) {
                    return Ok(ObjectStep::Scalar);
                }
                let code = match instr {
                    Instr::Eq => op::EQ,
                    Instr::NotEq => op::NOT_EQ,
                    Instr::Lt => op::LT,
                    Instr::Le => op::LE,
                    Instr::Gt => op::GT,
                    Instr::Ge => op::GE,
                    Instr::In => op::IN,
                    _ => op::NOT_IN,
                };
                let compare = runtime::compare as *const ();
                let r = self.on_two(compare, code, COMPARE_FAIL, (frame, ip));
                self.set(top(1), Ty::Bool, r);
            }
            Instr::Not => {
                if !is_object(ty_at(0)) {
                    return Ok(ObjectStep::Scalar);
                }
                let v = self.get(top(0), ty_at(0));
                let t = self
                    .helper(runtime::truthy as *const (), &[v], true)
                    .expect("returns");
                self.free_slot(top(0), ty_at(0));
                let r = self.b.ins().bxor_imm_s(t, 1);
                self.set(top(0), Ty::Bool, r);
            }
            Instr::JumpIfFalse(target) => {
                if !is_object(ty_at(0)) {
                    return Ok(ObjectStep::Scalar);
                }
                let v = self.get(top(0), ty_at(0));
                let t = self
                    .helper(runtime::truthy as *const (), &[v], true)
                    .expect("returns");
                self.free_slot(top(0), ty_at(0));
                self.b
                    .ins()
                    .brif(t, blocks[&(ip + 1)], &[], blocks[&(target as usize)], &[]);
                return Ok(ObjectStep::Done(false));
            }
            Instr::JumpIfFalseOrPop(target) | Instr::JumpIfTrueOrPop(target) => {
                if !is_object(ty_at(0)) {
                    return Ok(ObjectStep::Scalar);
                }
                let v = self.get(top(0), ty_at(0));
                let t = self
                    .helper(runtime::truthy as *const (), &[v], true)
                    .expect("returns");
                // The value stays on the stack where the jump is taken and goes where it is not.
                let pop = self.b.create_block();
                let keep = blocks[&(target as usize)];
                if matches!(instr, Instr::JumpIfFalseOrPop(_)) {
                    self.b.ins().brif(t, pop, &[], keep, &[]);
                } else {
                    self.b.ins().brif(t, keep, &[], pop, &[]);
                }
                self.b.seal_block(pop);
                self.b.switch_to_block(pop);
                self.free(v);
                self.b.ins().jump(blocks[&(ip + 1)], &[]);
                return Ok(ObjectStep::Done(false));
            }
            Instr::CallNative { native, argc, .. } => {
                let argc = argc as usize;
                let name = self.program.natives[native as usize].as_str();
                let arg_types = &frame.stack[depth - argc..];
                let next_is_iter = matches!(
                    self.program.functions[self.plan.spec.function as usize]
                        .code
                        .get(ip + 1),
                    Some(Instr::GetIter)
                );
                if inline_native(name, arg_types, next_is_iter).is_some() {
                    return Ok(ObjectStep::Scalar);
                }
                if let ("str", [ty @ (Ty::Int | Ty::Float | Ty::Bool)]) = (name, arg_types) {
                    // `str()` of a number or a bool is its text as an f-string's `{value}`
                    // makes it (`display_str`, as the native), with no box for the scalar and
                    // no native call (the scoring benchmark, baseline tier: 107.3 M -> 103.1 M
                    // instructions, for 20,000 `str(i % 13)`).
                    let ty = *ty;
                    let v = self.get(top(0), ty);
                    let r = self.scalar_text(v, ty);
                    self.set(top(0), Ty::Obj, r);
                    return Ok(ObjectStep::Done(true));
                }
                let result_ty = native_result(name).unwrap_or(Ty::Obj);
                // The arguments are freed after the unboxing, which may deopt too.
                let call = runtime::call_native as *const ();
                let r = self.call_on_stack(call, native, argc, 0, (frame, ip));
                let result = if result_ty == Ty::Obj {
                    r
                } else {
                    self.unbox(r, result_ty, frame, ip)
                };
                self.free_top(frame, argc);
                self.set(push_slot - argc, result_ty, result);
            }
            Instr::GetIter => {
                if !matches!(ty_at(0), Ty::Obj | Ty::None) {
                    return Ok(ObjectStep::Scalar);
                }
                let v = self.get(top(0), ty_at(0));
                let r = self
                    .helper(runtime::get_iter as *const (), &[v], true)
                    .expect("returns");
                self.deopt_when_equal(r, FAIL, frame, ip);
                self.free_slot(top(0), ty_at(0));
                self.set(top(0), Ty::ObjIter, r);
            }
            Instr::ForIter { exit } if matches!(ty_at(0), Ty::IntsIter | Ty::BoolsIter) => {
                let iter_ty = ty_at(0);
                let item_ty = if iter_ty == Ty::IntsIter {
                    Ty::Int
                } else {
                    Ty::Bool
                };
                let iter = self.get(top(0), iter_ty);
                let (out, out_address) = self.scalar_out();
                let kind = self.b.ins().iconst(types::I64, scalar_kind(item_ty));
                let status = self
                    .helper(
                        runtime::next_scalar as *const (),
                        &[iter, kind, out_address],
                        true,
                    )
                    .expect("returns");
                // The next item is not of the type (the list changed): the interpreter takes
                // it, from the iterator as it was.
                self.deopt_when_equal(status, runtime::NOT_OF_KIND, frame, ip);
                let item = self.read_unboxed(out, item_ty);
                self.set(push_slot, item_ty, item);
                self.next_item_or_exit(status, iter, blocks[&(ip + 1)], blocks[&(exit as usize)]);
                return Ok(ObjectStep::Done(false));
            }
            Instr::ForIter { exit } => {
                if ty_at(0) != Ty::ObjIter {
                    return Ok(ObjectStep::Scalar);
                }
                let iter = self.get(top(0), Ty::ObjIter);
                let item = self
                    .helper(runtime::next as *const (), &[iter], true)
                    .expect("returns");
                self.set(push_slot, Ty::Obj, item);
                let more = self.b.ins().icmp_imm_s(IntCC::NotEqual, item, DONE);
                self.next_item_or_exit(more, iter, blocks[&(ip + 1)], blocks[&(exit as usize)]);
                return Ok(ObjectStep::Done(false));
            }
            Instr::Index => {
                let (ta, tb) = (ty_at(1), ty_at(0));
                let mut temps = Vec::new();
                let obj = self.object_of(top(1), ta, &mut temps);
                let (helper, key) = if tb == Ty::Int {
                    (runtime::index_int as *const (), self.get(top(0), Ty::Int))
                } else {
                    let key = self.object_of(top(0), tb, &mut temps);
                    (runtime::index as *const (), key)
                };
                let r = self.checked(helper, &[obj, key], temps, FAIL, 2, (frame, ip));
                self.set(top(1), Ty::Obj, r);
            }
            Instr::StoreIndex => {
                let (t_obj, t_key, t_item) = (ty_at(2), ty_at(1), ty_at(0));
                let mut temps = Vec::new();
                let obj = self.object_of(top(2), t_obj, &mut temps);
                let (helper, args) = if t_key == Ty::Int && !is_object(t_item) {
                    let i = self.get(top(1), Ty::Int);
                    let item = self.get(top(0), t_item);
                    let bits = self.as_bits(item, t_item);
                    let kind = self.b.ins().iconst(types::I64, scalar_kind(t_item));
                    (runtime::store_index_int as *const (), [obj, i, kind, bits])
                } else {
                    let key = self.object_of(top(1), t_key, &mut temps);
                    let item = self.object_of(top(0), t_item, &mut temps);
                    let ctx = self.ctx();
                    (runtime::store_index as *const (), [ctx, obj, key, item])
                };
                self.checked(helper, &args, temps, FAIL, 3, (frame, ip));
            }
            Instr::BuildList(n) | Instr::BuildString(n) | Instr::BuildMap(n) => {
                let (count, helper): (usize, *const ()) = match instr {
                    Instr::BuildList(_) => (n as usize, runtime::build_list as *const ()),
                    Instr::BuildString(_) => (n as usize, runtime::build_string as *const ()),
                    _ => (2 * n as usize, runtime::build_map as *const ()),
                };
                let mut temps = Vec::new();
                let buffer = self.object_buffer(frame, count, &mut temps);
                let n = self.b.ins().iconst(types::I64, i64::from(n));
                let ctx = self.ctx();
                let r = self.checked(helper, &[ctx, buffer, n], temps, FAIL, count, (frame, ip));
                self.set(push_slot - count, Ty::Obj, r);
            }
            Instr::FormatValue => {
                let ty = ty_at(0);
                let v = self.get(top(0), ty);
                let r = if is_object(ty) || ty == Ty::None {
                    self.helper(runtime::format as *const (), &[v], true)
                        .expect("returns")
                } else {
                    self.scalar_text(v, ty)
                };
                self.free_slot(top(0), ty);
                self.set(top(0), Ty::Obj, r);
            }
            Instr::ListAppendUnder(under) => {
                let list_slot = top(1 + under as usize);
                let list = self.get(list_slot, ty_at(1 + under as usize));
                let mut temps = Vec::new();
                let item = self.object_of(top(0), ty_at(0), &mut temps);
                let ctx = self.ctx();
                let args = [ctx, list, item];
                self.checked(
                    runtime::append_under as *const (),
                    &args,
                    temps,
                    FAIL,
                    1,
                    (frame, ip),
                );
            }
            Instr::CallMethod {
                name,
                argc: 1,
                keywords: NO_KEYWORDS,
            } if matches!(&self.program.constants[name as usize], Constant::Str(s) if s == "append") =>
            {
                // `xs.append(item)`, as a list comprehension appends (`append_under`): the
                // generic method call looked the method up by name and receiver type, caught
                // panics and boxed its `none`, about 190 instructions a call. A receiver that
                // is not a list, or is full, deopts, and the interpreter calls the method.
                let mut temps = Vec::new();
                let list = self.object_of(top(1), ty_at(1), &mut temps);
                let item = self.object_of(top(0), ty_at(0), &mut temps);
                let ctx = self.ctx();
                let args = [ctx, list, item];
                let append = runtime::append_under as *const ();
                self.checked(append, &args, temps, FAIL, 2, (frame, ip));
                // It returns none: the object slot 0.
                let none = self.b.ins().iconst(types::I64, 0);
                self.set(push_slot - 2, Ty::Obj, none);
            }
            Instr::CallMethod { name, argc, .. } => {
                let count = argc as usize + 1;
                let call = runtime::call_method as *const ();
                let r = self.call_on_stack(call, name, count, count, (frame, ip));
                self.set(push_slot - count, Ty::Obj, r);
            }
            Instr::Return => {
                // Everything but the returned value goes with the frame.
                for (slot, local) in frame.locals.iter().enumerate() {
                    if *local == Local::Known(Ty::Obj) {
                        self.free_slot(slot, Ty::Obj);
                    }
                }
                for k in 0..depth - 1 {
                    self.free_slot(base + k, frame.stack[k]);
                }
                return Ok(ObjectStep::Scalar);
            }
            _ => return Ok(ObjectStep::Scalar),
        }
        Ok(ObjectStep::Done(true))
    }

    /// The two operands of an arithmetic instruction as the numbers `speculate_number` takes
    /// them for: each object operand unboxed behind a guard (a deopt before the instruction
    /// when it is not such a number), then let go. The frame the scalar code continues with.
    fn unbox_operands(&mut self, frame: &Frame, ip: usize, (ta, tb): (Ty, Ty)) -> Frame {
        let depth = frame.stack.len();
        let slots = [
            (self.local_count + depth - 2, frame.stack[depth - 2], ta),
            (self.local_count + depth - 1, frame.stack[depth - 1], tb),
        ];
        let mut unboxed = Vec::new();
        for (slot, ty, want) in slots {
            if is_object(ty) {
                let boxed = self.get(slot, ty);
                let v = self.guarded_number(boxed, want, frame, ip);
                unboxed.push((slot, ty, want, v));
            }
        }
        let mut after = frame.clone();
        for (slot, ty, want, v) in unboxed {
            self.free_slot(slot, ty);
            self.set(slot, want, v);
            after.stack[slot - self.local_count] = want;
        }
        after
    }

    /// The number in a box as `ty` (an int; or a float, from an int or a float), or a deopt.
    fn guarded_number(&mut self, boxed: Value, ty: Ty, frame: &Frame, ip: usize) -> Value {
        let (ok, out) = self.unbox_into_slot(boxed, ty, true);
        self.deopt_when_equal(ok, 0, frame, ip);
        self.read_unboxed(out, ty)
    }

    /// Asks the runtime to write the scalar of type `ty` in a box (with `ints_as_floats`, an
    /// int converted when `ty` is float) into a stack slot: whether it is one (0 when not),
    /// and the slot, to read with `read_unboxed` once that is checked.
    fn unbox_into_slot(
        &mut self,
        boxed: Value,
        ty: Ty,
        ints_as_floats: bool,
    ) -> (Value, cranelift_codegen::ir::StackSlot) {
        let (out, out_address) = self.scalar_out();
        let ok = if ty == Ty::Float && ints_as_floats {
            self.helper(
                runtime::unbox_number as *const (),
                &[boxed, out_address],
                true,
            )
        } else {
            let kind = self.b.ins().iconst(types::I64, scalar_kind(ty));
            self.helper(
                runtime::unbox as *const (),
                &[boxed, kind, out_address],
                true,
            )
        }
        .expect("returns");
        (ok, out)
    }

    /// An 8-byte stack slot for a helper to write a scalar's bits into, and its address.
    fn scalar_out(&mut self) -> (cranelift_codegen::ir::StackSlot, Value) {
        let out =
            self.b
                .create_sized_stack_slot(StackSlotData::new(StackSlotKind::ExplicitSlot, 8, 3));
        let address = self.b.ins().stack_addr(types::I64, out, 0);
        (out, address)
    }

    /// `ForIter`'s branch: on to the loop body when `more` holds, else the iterator freed and
    /// out of the loop.
    fn next_item_or_exit(&mut self, more: Value, iter: Value, body: Block, exit: Block) {
        let finished = self.b.create_block();
        self.b.ins().brif(more, body, &[], finished, &[]);
        self.b.seal_block(finished);
        self.b.switch_to_block(finished);
        self.free(iter);
        self.b.ins().jump(exit, &[]);
    }

    fn read_unboxed(&mut self, out: cranelift_codegen::ir::StackSlot, ty: Ty) -> Value {
        let bits = self.b.ins().stack_load(types::I64, types::I64, out, 0);
        self.bits_as(bits, ty)
    }

    /// The scalar a native returned in a box (freed here), as `ty`; a deopt when it is not
    /// one (the native has no effects, so the interpreter may call it again).
    fn unbox(&mut self, boxed: Value, ty: Ty, frame: &Frame, ip: usize) -> Value {
        let (ok, out) = self.unbox_into_slot(boxed, ty, false);
        self.free(boxed);
        self.deopt_when_equal(ok, 0, frame, ip);
        self.read_unboxed(out, ty)
    }
}
