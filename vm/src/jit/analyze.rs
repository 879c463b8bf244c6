//! Which functions the JIT can compile, and the type of every local and stack slot at every
//! instruction, for one specialization (a function and the types of its arguments).
//!
//! Abstract interpretation over the bytecode: a function is eligible when every instruction it
//! can reach is one the code generator knows, with one type per slot wherever control flow
//! meets. Ints, floats and bools are native; every other value is an object slot (`Ty::Obj`)
//! worked on by runtime helpers. gen, select, states, `print` and host functions make a
//! function ineligible, and it keeps running in the interpreter.

use super::runtime::Host;
use super::{Spec, Ty};
use foldhash::{HashMap, HashMapExt};
use sglc_compiler::bytecode::{Constant, Instr, NO_KEYWORDS, Program};

/// A local slot's type where control flow meets: one type, or unknown (uninitialised on some
/// path, or of different types on different paths). Reading an unknown slot is ineligible.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Local {
    Known(Ty),
    Unknown,
}

/// The types before one instruction runs.
#[derive(Clone, Debug, PartialEq)]
pub struct Frame {
    pub locals: Vec<Local>,
    pub stack: Vec<Ty>,
}

/// The result of analysing one specialization.
#[derive(Debug)]
pub struct Plan {
    pub spec: Spec,
    /// `before[ip]`: the types before instruction `ip`; `None` where it is unreachable.
    pub before: Vec<Option<Frame>>,
    /// Instructions where a block starts (jump targets and fall-throughs after branches).
    pub leaders: Vec<bool>,
    pub return_type: Ty,
    /// Specializations this one calls.
    pub callees: Vec<Spec>,
}

/// Why a function is not compiled (shown by `sglc disasm --jit`).
pub type Reject = String;

/// Analyses specializations, remembering results; recursion is resolved by guessing the
/// return type of a specialization still being analysed and checking the guess.
pub struct Analyzer<'a> {
    pub program: &'a Program,
    /// Values of the top-level constants (the JIT embeds numeric ones as constants).
    pub globals: &'a [crate::value::Value],
    /// Which natives and methods compiled code may call.
    pub host: std::rc::Rc<Host>,
    done: HashMap<Spec, Result<Ty, Reject>>,
    in_progress: HashMap<Spec, (Ty, bool)>,
}

const GUESSES: [Ty; 5] = [Ty::Int, Ty::Float, Ty::Bool, Ty::None, Ty::Obj];

impl<'a> Analyzer<'a> {
    pub fn new(
        program: &'a Program,
        globals: &'a [crate::value::Value],
        host: std::rc::Rc<Host>,
    ) -> Analyzer<'a> {
        Analyzer {
            program,
            globals,
            host,
            done: HashMap::new(),
            in_progress: HashMap::new(),
        }
    }

    /// The return type of a specialization, analysing it if needed.
    fn return_type(&mut self, spec: &Spec) -> Result<Ty, Reject> {
        if let Some(done) = self.done.get(spec) {
            return done.clone();
        }
        if let Some((guess, consulted)) = self.in_progress.get_mut(spec) {
            *consulted = true;
            return Ok(*guess);
        }
        let mut outcome = Err(format!(
            "no consistent return type for `{}`",
            self.name(spec)
        ));
        for guess in GUESSES {
            self.in_progress.insert(spec.clone(), (guess, false));
            let result = self.plan(spec).map(|plan| plan.return_type);
            let (_, consulted) = self.in_progress.remove(spec).unwrap_or((guess, false));
            match result {
                Ok(ty) if !consulted || ty == guess => {
                    outcome = Ok(ty);
                    break;
                }
                Err(reason) if !consulted => {
                    outcome = Err(reason);
                    break;
                }
                _ => {}
            }
        }
        self.done.insert(spec.clone(), outcome.clone());
        outcome
    }

    fn name(&self, spec: &Spec) -> &str {
        &self.program.functions[spec.function as usize].name
    }

    /// Analyses `spec`; its callees' return types are analysed (and checked) on the way.
    pub fn plan(&mut self, spec: &Spec) -> Result<Plan, Reject> {
        let function = &self.program.functions[spec.function as usize];
        if spec.args.len() != function.params.len() {
            return Err("argument count differs from the parameters".into());
        }
        let mut locals = vec![Local::Known(Ty::None); function.local_count as usize];
        for (slot, ty) in spec.args.iter().enumerate() {
            locals[slot] = Local::Known(*ty);
        }
        self.plan_from(
            spec,
            0,
            Frame {
                locals,
                stack: Vec::new(),
            },
        )
    }

    /// Analyses `spec` entered at instruction `entry` with the types `frame` (0 and the
    /// arguments for a call; a loop header and the interpreter's types for on-stack
    /// replacement). Only code reachable from `entry` counts.
    pub fn plan_from(&mut self, spec: &Spec, entry: usize, frame: Frame) -> Result<Plan, Reject> {
        let program = self.program;
        let function = &program.functions[spec.function as usize];
        let code = &function.code;
        let mut before: Vec<Option<Frame>> = vec![None; code.len()];
        let mut leaders = vec![false; code.len() + 1];
        leaders[0] = true;
        leaders[entry] = true;
        for (ip, instr) in code.iter().enumerate() {
            if let Some(target) = branch_target(*instr) {
                leaders[target] = true;
                leaders[ip + 1] = true;
            } else if matches!(instr, Instr::Return) {
                leaders[ip + 1] = true;
            }
        }
        let mut work = vec![(entry, frame)];
        let mut return_type: Option<Ty> = None;
        let mut callees = Vec::new();
        while let Some((ip, frame)) = work.pop() {
            // Merge into what is known at `ip`; stop when nothing changed.
            let merged = match &before[ip] {
                None => frame,
                Some(old) => {
                    let merged = merge(old, &frame).map_err(|why| {
                        format!("{why} where control flow meets (instruction {ip})")
                    })?;
                    if &merged == old {
                        continue;
                    }
                    merged
                }
            };
            before[ip] = Some(merged.clone());
            let mut state = merged;
            let mut at = ip;
            loop {
                if at > ip && leaders[at] {
                    work.push((at, state));
                    break;
                }
                if at > ip {
                    before[at] = Some(state.clone());
                }
                let instr = code
                    .get(at)
                    .ok_or_else(|| "control runs off the end of the function".to_string())?;
                let next = self.step(spec, at, *instr, &mut state, &mut callees)?;
                match next {
                    Next::Continue => at += 1,
                    Next::Branch(target, taken) => {
                        work.push((target as usize, taken));
                        at += 1;
                    }
                    Next::Goto(target) => {
                        work.push((target as usize, state));
                        break;
                    }
                    Next::Return(ty) => {
                        return_type = match return_type {
                            None => Some(ty),
                            Some(t) => Some(merge_slot(t, ty).map_err(|_| {
                                format!("returns both {} and {}", t.name(), ty.name())
                            })?),
                        };
                        break;
                    }
                }
            }
        }
        callees.sort();
        callees.dedup();
        Ok(Plan {
            spec: spec.clone(),
            before,
            leaders,
            return_type: return_type.unwrap_or(Ty::None),
            callees,
        })
    }

    /// The effect of one instruction on the types.
    fn step(
        &mut self,
        spec: &Spec,
        ip: usize,
        instr: Instr,
        state: &mut Frame,
        callees: &mut Vec<Spec>,
    ) -> Result<Next, Reject> {
        let program = self.program;
        let stack = &mut state.stack;
        let pop = |stack: &mut Vec<Ty>| {
            stack
                .pop()
                .ok_or_else(|| "the stack underflows".to_string())
        };
        // A value a slot can hold: a scalar or an object (not a range being iterated).
        let scalar = |ty: Ty| -> Result<Ty, Reject> {
            if ty.is_scalar() || ty == Ty::Obj {
                Ok(ty)
            } else {
                Err(format!("{} used as a value", ty.name()))
            }
        };
        let object = |ty: Ty| ty == Ty::Obj;
        match instr {
            Instr::PushNone => stack.push(Ty::None),
            Instr::PushBool(_) => stack.push(Ty::Bool),
            Instr::PushInt(_) => stack.push(Ty::Int),
            Instr::Const(i) => match &program.constants[i as usize] {
                Constant::Int(_) => stack.push(Ty::Int),
                Constant::Float(_) => stack.push(Ty::Float),
                Constant::Str(_) => stack.push(Ty::Obj),
            },
            Instr::LoadLocal(slot) => match state.locals[slot as usize] {
                Local::Known(ty) => stack.push(ty),
                Local::Unknown => {
                    return Err(format!("reads local {slot} where its type is not known"));
                }
            },
            Instr::StoreLocal(slot) => {
                let ty = scalar(pop(stack)?)?;
                state.locals[slot as usize] = Local::Known(ty);
            }
            Instr::LoadGlobal(slot) => {
                let ty = Ty::of(&self.globals[slot as usize])
                    .ok_or_else(|| "reads a constant it cannot hold".to_string())?;
                stack.push(ty);
            }
            Instr::Pop => {
                scalar(pop(stack)?)?;
            }
            Instr::Dup => {
                let ty = scalar(*stack.last().ok_or("the stack underflows")?)?;
                stack.push(ty);
            }
            Instr::Add | Instr::Sub | Instr::Mul | Instr::AddAssign | Instr::Mod => {
                let (b, a) = (scalar(pop(stack)?)?, scalar(pop(stack)?)?);
                let ty = match speculate_number(instr, a, b) {
                    Some((a, b)) => arithmetic(a, b)?,
                    None if object(a) || object(b) => Ty::Obj,
                    None => arithmetic(a, b)?,
                };
                stack.push(ty);
            }
            Instr::Div => {
                let (b, a) = (scalar(pop(stack)?)?, scalar(pop(stack)?)?);
                let ty = match speculate_number(instr, a, b) {
                    Some(_) => Ty::Float,
                    None if object(a) || object(b) => Ty::Obj,
                    None => {
                        arithmetic(a, b)?;
                        Ty::Float
                    }
                };
                stack.push(ty);
            }
            Instr::In | Instr::NotIn => {
                scalar(pop(stack)?)?;
                scalar(pop(stack)?)?;
                stack.push(Ty::Bool);
            }
            Instr::Neg => {
                let a = pop(stack)?;
                if !a.is_number() {
                    return Err(format!("negates {}", a.name()));
                }
                stack.push(a);
            }
            Instr::Not => {
                scalar(pop(stack)?)?;
                stack.push(Ty::Bool);
            }
            Instr::Eq | Instr::NotEq => {
                let (b, a) = (pop(stack)?, pop(stack)?);
                scalar(a)?;
                scalar(b)?;
                stack.push(Ty::Bool);
            }
            Instr::Lt | Instr::Le | Instr::Gt | Instr::Ge => {
                let (b, a) = (scalar(pop(stack)?)?, scalar(pop(stack)?)?);
                let comparable = |t: Ty| matches!(t, Ty::Int | Ty::Float | Ty::Bool);
                let objects = object(a) || object(b);
                if !(objects || comparable(a) && comparable(b)) {
                    return Err(format!("compares {} with {}", a.name(), b.name()));
                }
                stack.push(Ty::Bool);
            }
            Instr::Jump(target) => return Ok(Next::Goto(target)),
            Instr::JumpIfFalse(target) => {
                scalar(pop(stack)?)?;
                return Ok(Next::Branch(target, state.clone()));
            }
            Instr::JumpIfFalseOrPop(target) | Instr::JumpIfTrueOrPop(target) => {
                scalar(*stack.last().ok_or("the stack underflows")?)?;
                let taken = state.clone();
                state.stack.pop();
                return Ok(Next::Branch(target, taken));
            }
            Instr::CallNative {
                native,
                argc,
                keywords,
            } => {
                let name = program.natives[native as usize].as_str();
                if keywords != NO_KEYWORDS {
                    return Err(format!("calls `{name}` with keywords"));
                }
                let at = stack
                    .len()
                    .checked_sub(argc as usize)
                    .ok_or("the stack underflows")?;
                let args = stack.split_off(at);
                for arg in &args {
                    scalar(*arg)?;
                }
                let next_is_iter = matches!(
                    program.functions[spec.function as usize].code.get(ip + 1),
                    Some(Instr::GetIter)
                );
                let result = match inline_native(name, &args, next_is_iter) {
                    Some(ty) => ty,
                    None if self.host.natives[native as usize].is_some() => {
                        native_result(name).unwrap_or(Ty::Obj)
                    }
                    None => return Err(format!("calls `{name}`")),
                };
                stack.push(result);
            }
            Instr::CallMethod {
                name,
                argc,
                keywords,
            } => {
                let (method, _) = &self.host.methods[name as usize];
                if keywords != NO_KEYWORDS {
                    return Err(format!("calls `.{method}` with keywords"));
                }
                if self.host.methods[name as usize].1.is_empty() {
                    return Err(format!("calls `.{method}`"));
                }
                for _ in 0..=argc {
                    scalar(pop(stack)?)?;
                }
                stack.push(Ty::Obj);
            }
            Instr::Index => {
                scalar(pop(stack)?)?;
                scalar(pop(stack)?)?;
                stack.push(Ty::Obj);
            }
            Instr::StoreIndex => {
                for _ in 0..3 {
                    scalar(pop(stack)?)?;
                }
            }
            Instr::BuildList(n) | Instr::BuildString(n) => {
                for _ in 0..n {
                    scalar(pop(stack)?)?;
                }
                stack.push(Ty::Obj);
            }
            Instr::BuildMap(n) => {
                for _ in 0..2 * n {
                    scalar(pop(stack)?)?;
                }
                stack.push(Ty::Obj);
            }
            Instr::FormatValue => {
                scalar(pop(stack)?)?;
                stack.push(Ty::Obj);
            }
            Instr::ListAppendUnder(depth) => {
                scalar(pop(stack)?)?;
                let list = stack
                    .len()
                    .checked_sub(1 + depth as usize)
                    .ok_or("the stack underflows")?;
                if !matches!(stack[list], Ty::Obj | Ty::None) {
                    return Err("appends to something that is not a list".into());
                }
            }
            Instr::GetIter => {
                let iter = match pop(stack)? {
                    Ty::Range => Ty::RangeIter,
                    Ty::Obj | Ty::None => Ty::ObjIter,
                    other => return Err(format!("iterates over {}", other.name())),
                };
                stack.push(iter);
            }
            Instr::ForIter { exit } => {
                let item = match stack.last() {
                    Some(Ty::RangeIter | Ty::IntsIter) => Ty::Int,
                    Some(Ty::BoolsIter) => Ty::Bool,
                    Some(Ty::ObjIter) => Ty::Obj,
                    _ => return Err("iterates over something it cannot".into()),
                };
                let mut done = state.clone();
                done.stack.pop();
                state.stack.push(item);
                return Ok(Next::Branch(exit, done));
            }
            Instr::Call { function, argc } => {
                let at = stack
                    .len()
                    .checked_sub(argc as usize)
                    .ok_or("the stack underflows")?;
                let args: Vec<Ty> = stack.split_off(at);
                if let Some(bad) = args.iter().find(|t| !t.is_scalar() && **t != Ty::Obj) {
                    return Err(format!("passes {} to a function", bad.name()));
                }
                let callee = Spec { function, args };
                let ty = self.return_type(&callee).map_err(|reason| {
                    format!(
                        "calls `{}`, which is not compiled: {reason}",
                        program.functions[function as usize].name
                    )
                })?;
                callees.push(callee);
                state.stack.push(ty);
            }
            Instr::Return => {
                let ty = scalar(pop(stack)?)?;
                return Ok(Next::Return(ty));
            }
            other => return Err(format!("uses {}", instr_name(&other))),
        }
        Ok(Next::Continue)
    }
}

enum Next {
    Continue,
    /// A conditional jump: `Branch(target, state at target)`; the fall-through continues.
    Branch(u32, Frame),
    Goto(u32),
    Return(Ty),
}

/// The result type of `+ - * %` on numbers: int with int, float when either is a float.
fn arithmetic(a: Ty, b: Ty) -> Result<Ty, Reject> {
    match (a, b) {
        (Ty::Int, Ty::Int) => Ok(Ty::Int),
        (Ty::Int | Ty::Float, Ty::Int | Ty::Float) => Ok(Ty::Float),
        _ => Err(format!("does arithmetic on {} and {}", a.name(), b.name())),
    }
}

/// A native call compiled inline (no helper): `range()` iterated by a `for`, `div` and `abs` on
/// numbers. The code generator uses the same test.
pub fn inline_native(name: &str, args: &[Ty], next_is_iter: bool) -> Option<Ty> {
    match (name, args) {
        ("range", [Ty::Int] | [Ty::Int, Ty::Int] | [Ty::Int, Ty::Int, Ty::Int]) if next_is_iter => {
            Some(Ty::Range)
        }
        ("div", [Ty::Int, Ty::Int]) => Some(Ty::Int),
        ("abs", [ty @ (Ty::Int | Ty::Float)]) => Some(*ty),
        _ => None,
    }
}

/// Arithmetic between an object and an int or float: the object is taken to be a number of
/// the other operand's kind (an int exactly; for a float, an int or a float, converted), which
/// a guard checks, deopting when it is not. So `s += x` over a list's items keeps `s` a native
/// int. Only for `+ - % /` and `+=`, where a number and anything but a number is an error in
/// the interpreter anyway; `*` is not guessed (`"ab" * 3` and `[x] * n` repeat). Returns the
/// operand types once unboxed.
pub fn speculate_number(instr: Instr, a: Ty, b: Ty) -> Option<(Ty, Ty)> {
    if !matches!(
        instr,
        Instr::Add | Instr::Sub | Instr::AddAssign | Instr::Mod | Instr::Div
    ) {
        return None;
    }
    match (a, b) {
        (Ty::Obj, n @ (Ty::Int | Ty::Float)) | (n @ (Ty::Int | Ty::Float), Ty::Obj) => Some((n, n)),
        _ => None,
    }
}

/// The type a standard native always returns when it succeeds, where compiled code unboxes
/// it (so `len(xs)` stays an int); other natives give an object.
pub fn native_result(name: &str) -> Option<Ty> {
    match name {
        "len" | "int" => Some(Ty::Int),
        "float" => Some(Ty::Float),
        "bool" => Some(Ty::Bool),
        _ => None,
    }
}

/// One slot's type where two paths meet. `none` and an object merge into an object (both are
/// an object slot, `none` being 0); an object and anything else cannot merge, since compiled
/// code would no longer know whether the slot owns a box.
fn merge_slot(a: Ty, b: Ty) -> Result<Ty, &'static str> {
    match (a, b) {
        _ if a == b => Ok(a),
        (Ty::None, Ty::Obj) | (Ty::Obj, Ty::None) => Ok(Ty::Obj),
        // Every iterator is an object slot; where an iterator whose items are taken as scalars
        // meets another, the items are objects.
        (
            Ty::ObjIter | Ty::IntsIter | Ty::BoolsIter,
            Ty::ObjIter | Ty::IntsIter | Ty::BoolsIter,
        ) => Ok(Ty::ObjIter),
        _ => Err("a slot holds an object on one path and not on another"),
    }
}

fn merge(a: &Frame, b: &Frame) -> Result<Frame, String> {
    if a.stack.len() != b.stack.len() {
        return Err("has different stacks".into());
    }
    let stack = a
        .stack
        .iter()
        .zip(&b.stack)
        .map(|(x, y)| merge_slot(*x, *y))
        .collect::<Result<Vec<Ty>, _>>()
        .map_err(|_| "has an object on the stack on one path only".to_string())?;
    let locals = a
        .locals
        .iter()
        .zip(&b.locals)
        .map(|(x, y)| match (x, y) {
            (Local::Known(x), Local::Known(y)) if x == y => Ok(Local::Known(*x)),
            (Local::Known(x), Local::Known(y)) => match merge_slot(*x, *y) {
                Ok(ty) => Ok(Local::Known(ty)),
                Err(_) if *x == Ty::Obj || *y == Ty::Obj => Err(format!(
                    "keeps an object in a variable on one path and {} on another",
                    if *x == Ty::Obj { y.name() } else { x.name() }
                )),
                Err(_) => Ok(Local::Unknown),
            },
            (Local::Known(Ty::Obj), Local::Unknown) | (Local::Unknown, Local::Known(Ty::Obj)) => {
                Err("keeps an object in a variable on one path only".to_string())
            }
            _ => Ok(Local::Unknown),
        })
        .collect::<Result<Vec<Local>, String>>()?;
    Ok(Frame { locals, stack })
}

fn instr_name(instr: &Instr) -> String {
    let debug = format!("{instr:?}");
    let name = debug
        .split(['(', ' ', '{'])
        .next()
        .unwrap_or("")
        .to_string();
    match instr {
        Instr::MakeCall(_) | Instr::CallInto(_) => "gen or select".into(),
        Instr::AppendState | Instr::RoleBegin(_) | Instr::RoleEnd(_) | Instr::MakeRole(_) => {
            "the program state".into()
        }
        _ => format!("`{name}`"),
    }
}

/// Where a jump or branch of the unquickened bytecode may go, besides the next instruction.
pub fn branch_target(instr: Instr) -> Option<usize> {
    match instr {
        Instr::Jump(t)
        | Instr::JumpIfFalse(t)
        | Instr::JumpIfFalseOrPop(t)
        | Instr::JumpIfTrueOrPop(t)
        | Instr::ForIter { exit: t } => Some(t as usize),
        _ => None,
    }
}

/// Which locals each instruction may read before writing them: `live.at(ip, slot)` is true
/// when some path from `ip` runs `LoadLocal(slot)` before any `StoreLocal(slot)`. The
/// interpreter never reads another: a deopt may hand it any value for one that is not live.
pub struct Liveness {
    words: usize,
    bits: Vec<u64>,
}

impl Liveness {
    /// Liveness over the unquickened `code` (quickened code reads the same locals from the
    /// same instruction on).
    pub fn of(code: &[Instr], local_count: usize) -> Liveness {
        let words = local_count.div_ceil(64).max(1);
        let mut bits = vec![0u64; (code.len() + 1) * words];
        // Backwards to a fixed point: a loop's back edge takes a second pass or so.
        let mut changed = true;
        while changed {
            changed = false;
            for ip in (0..code.len()).rev() {
                let instr = code[ip];
                let mut live = vec![0u64; words];
                let falls_through = !matches!(instr, Instr::Jump(_) | Instr::Return);
                let successors = [falls_through.then_some(ip + 1), branch_target(instr)];
                for next in successors.into_iter().flatten() {
                    for (w, word) in live.iter_mut().enumerate() {
                        *word |= bits[next * words + w];
                    }
                }
                match instr {
                    Instr::StoreLocal(slot) => live[slot as usize / 64] &= !(1 << (slot % 64)),
                    Instr::LoadLocal(slot) => live[slot as usize / 64] |= 1 << (slot % 64),
                    _ => {}
                }
                if live[..] != bits[ip * words..(ip + 1) * words] {
                    bits[ip * words..(ip + 1) * words].copy_from_slice(&live);
                    changed = true;
                }
            }
        }
        Liveness { words, bits }
    }

    pub fn at(&self, ip: usize, slot: usize) -> bool {
        self.bits
            .get(ip * self.words + slot / 64)
            .is_some_and(|word| word & (1 << (slot % 64)) != 0)
    }
}

/// `headers[ip]`: a jump from `ip` or later goes to `ip` (a loop's header). Every other
/// instruction is reached only from before it.
pub fn loop_headers(code: &[Instr]) -> Vec<bool> {
    let mut headers = vec![false; code.len() + 1];
    for (ip, instr) in code.iter().enumerate() {
        if let Some(target) = branch_target(*instr)
            && target <= ip
        {
            headers[target] = true;
        }
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_is_live_until_its_last_read_and_again_around_a_loop() {
        // 0: let t = 0; while i < n { let sq = i * i; t = t + sq; i = i + 1 }; return t
        // (locals: 0 n, 1 i, 2 t, 3 sq)
        let code = vec![
            Instr::PushInt(0),    // 0
            Instr::StoreLocal(2), // 1
            Instr::LoadLocal(1),  // 2: the loop's header
            Instr::LoadLocal(0),  // 3
            Instr::Lt,            // 4
            Instr::JumpIfFalse(19),
            Instr::LoadLocal(1), // 6
            Instr::LoadLocal(1), // 7
            Instr::Mul,          // 8
            Instr::StoreLocal(3),
            Instr::LoadLocal(2), // 10
            Instr::LoadLocal(3), // 11
            Instr::Add,          // 12
            Instr::StoreLocal(2),
            Instr::LoadLocal(1), // 14
            Instr::PushInt(1),   // 15
            Instr::Add,          // 16
            Instr::StoreLocal(1),
            Instr::Jump(2),      // 18
            Instr::LoadLocal(2), // 19
            Instr::Return,       // 20
        ];
        let live = Liveness::of(&code, 4);
        let slots = |ip: usize| (0..4).filter(|&slot| live.at(ip, slot)).collect::<Vec<_>>();
        // `t` is written before it is read at the start; `sq` is written in the loop before
        // each read of it; `n` and `i` are read around the back edge.
        assert_eq!(slots(0), [0, 1]);
        assert_eq!(slots(2), [0, 1, 2]);
        assert_eq!(slots(10), [0, 1, 2, 3]);
        assert_eq!(slots(12), [0, 1]);
        // After the loop only `t` is read.
        assert_eq!(slots(19), [2]);
        assert_eq!(slots(20), Vec::<usize>::new());
    }

    #[test]
    fn locals_past_the_first_word_are_tracked() {
        let code = vec![
            Instr::LoadLocal(70),
            Instr::StoreLocal(3),
            Instr::LoadLocal(3),
            Instr::Return,
        ];
        let live = Liveness::of(&code, 80);
        assert!(live.at(0, 70) && !live.at(0, 3));
        assert!(!live.at(1, 70) && !live.at(1, 3));
        assert!(live.at(2, 3));
    }
}
