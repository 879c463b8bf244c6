//! The bytecode: the contract between the compiler, which produces it, and the VM, which runs it.
//!
//! A stack machine. Every instruction documents its stack effect as `[before] -> [after]`, top of
//! stack on the right. Instructions carry no spans: `Function::spans` is a side table with one
//! span per instruction. See docs/bytecode.md for the design.

use crate::span::{LineIndex, Span};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

pub type FunctionId = u32;

/// A compiled source file: every function, the literal pool and the tables instructions index.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Program {
    pub functions: Vec<Function>,
    pub constants: Vec<Constant>,
    /// Names of the top-level constants, by global slot.
    pub globals: Vec<String>,
    /// The function that computes the globals; run once before any program.
    pub init: FunctionId,
    /// Host and standard-library functions the program calls, by name; the VM links them at load.
    pub natives: Vec<String>,
    /// Parameter lists of `gen`/`select` call sites.
    pub call_specs: Vec<CallSpec>,
    /// Keyword-argument name lists of native and method calls.
    pub keyword_lists: Vec<Vec<String>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Function {
    pub name: String,
    pub params: Vec<String>,
    /// Slots for parameters, `let`s and loop variables; parameters come first.
    pub local_count: u32,
    /// The first parameter is used as the program state (`s += ...`, `s.fork()`, ...).
    pub is_program: bool,
    pub code: Vec<Instr>,
    /// `spans[i]` is the source span of `code[i]`.
    pub spans: Vec<Span>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Constant {
    Int(i64),
    Float(f64),
    Str(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }

    pub fn from_name(name: &str) -> Option<Role> {
        match name {
            "system" => Some(Role::System),
            "user" => Some(Role::User),
            "assistant" => Some(Role::Assistant),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PrimitiveKind {
    Gen,
    Select,
}

/// The arguments a `gen` or `select` call site passes, in stack order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CallSpec {
    pub kind: PrimitiveKind,
    pub params: Vec<GenParam>,
}

/// Every parameter `gen` and `select` accept (the SGLang set, plus `seed`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum GenParam {
    Name,
    MaxTokens,
    MinTokens,
    Stop,
    StopTokenIds,
    Temperature,
    TopP,
    TopK,
    MinP,
    FrequencyPenalty,
    PresencePenalty,
    IgnoreEos,
    Regex,
    JsonSchema,
    Choices,
    Dtype,
    Seed,
    ChoicesMethod,
}

impl GenParam {
    /// `gen`'s parameters in positional order.
    pub const GEN: &'static [GenParam] = &[
        GenParam::Name,
        GenParam::MaxTokens,
        GenParam::MinTokens,
        GenParam::Stop,
        GenParam::StopTokenIds,
        GenParam::Temperature,
        GenParam::TopP,
        GenParam::TopK,
        GenParam::MinP,
        GenParam::FrequencyPenalty,
        GenParam::PresencePenalty,
        GenParam::IgnoreEos,
        GenParam::Regex,
        GenParam::JsonSchema,
        GenParam::Choices,
        GenParam::Dtype,
        GenParam::Seed,
    ];
    /// `select`'s parameters in positional order.
    pub const SELECT: &'static [GenParam] = &[
        GenParam::Name,
        GenParam::Choices,
        GenParam::Temperature,
        GenParam::ChoicesMethod,
    ];

    pub fn name(self) -> &'static str {
        match self {
            GenParam::Name => "name",
            GenParam::MaxTokens => "max_tokens",
            GenParam::MinTokens => "min_tokens",
            GenParam::Stop => "stop",
            GenParam::StopTokenIds => "stop_token_ids",
            GenParam::Temperature => "temperature",
            GenParam::TopP => "top_p",
            GenParam::TopK => "top_k",
            GenParam::MinP => "min_p",
            GenParam::FrequencyPenalty => "frequency_penalty",
            GenParam::PresencePenalty => "presence_penalty",
            GenParam::IgnoreEos => "ignore_eos",
            GenParam::Regex => "regex",
            GenParam::JsonSchema => "json_schema",
            GenParam::Choices => "choices",
            GenParam::Dtype => "dtype",
            GenParam::Seed => "seed",
            GenParam::ChoicesMethod => "choices_method",
        }
    }
}

/// Marks "no keyword arguments" in `CallNative` and `CallMethod`.
pub const NO_KEYWORDS: u32 = u32::MAX;

/// The instruction set. Stack effects are written `[before] -> [after]`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Instr {
    /// `[] -> [none]`
    PushNone,
    /// `[] -> [bool]`
    PushBool(bool),
    /// `[] -> [int]`
    PushInt(i64),
    /// `[] -> [constants[i]]`
    Const(u32),
    /// `[] -> [locals[i]]`
    LoadLocal(u32),
    /// `[v] -> []`, sets `locals[i] = v`
    StoreLocal(u32),
    /// `[] -> [globals[i]]`
    LoadGlobal(u32),
    /// `[v] -> []`; only the init function stores globals.
    StoreGlobal(u32),
    /// `[] -> [function]`
    LoadFunction(FunctionId),
    /// `[v] -> []`
    Pop,
    /// `[v] -> [v, v]`
    Dup,

    /// `[a, b] -> [a + b]`: numbers add, strings and lists concatenate, prompt fragments join.
    Add,
    /// `[a, b] -> [a - b]`
    Sub,
    /// `[a, b] -> [a * b]`; also `str * int` and `list * int` repeat.
    Mul,
    /// `[a, b] -> [a / b]`: always a float, as in Python 3.
    Div,
    /// `[a, b] -> [a % b]`: floored, as in Python.
    Mod,
    /// `[a] -> [-a]`
    Neg,
    /// `[a] -> [not a]`
    Not,
    /// `[a, b] -> [a == b]`
    Eq,
    /// `[a, b] -> [a != b]`
    NotEq,
    /// `[a, b] -> [a < b]`
    Lt,
    /// `[a, b] -> [a <= b]`
    Le,
    /// `[a, b] -> [a > b]`
    Gt,
    /// `[a, b] -> [a >= b]`
    Ge,
    /// `[a, b] -> [a in b]`
    In,
    /// `[a, b] -> [a not in b]`
    NotIn,

    /// `[] -> []`, continues at instruction `target`.
    Jump(u32),
    /// `[c] -> []`, jumps when `c` is falsy.
    JumpIfFalse(u32),
    /// `[c] -> [c]` and jumps when `c` is falsy, else `[c] -> []` (for `and`).
    JumpIfFalseOrPop(u32),
    /// `[c] -> [c]` and jumps when `c` is truthy, else `[c] -> []` (for `or`).
    JumpIfTrueOrPop(u32),
    /// `[iterable] -> [iterator]`
    GetIter,
    /// `[iterator] -> [iterator, item]`, or when exhausted `[iterator] -> []` and jump to `exit`.
    ForIter { exit: u32 },
    /// `[sequence] -> [x_n, ..., x_1]`: unpacks exactly `n` items, the first on top.
    Unpack(u32),

    /// `[x_1, ..., x_n] -> [list]`
    BuildList(u32),
    /// `[k_1, v_1, ..., k_n, v_n] -> [map]`
    BuildMap(u32),
    /// `[list, ...depth values, item] -> [list, ...depth values]`: appends `item` to the list
    /// `depth` slots below it (comprehensions keep their iterator above the list).
    ListAppendUnder(u32),
    /// `[obj, key] -> [obj[key]]`. On a state, reading a variable waits until the state's
    /// pending calls are done.
    Index,
    /// `[obj, key, v] -> []`, sets `obj[key] = v`
    StoreIndex,
    /// `[obj, lo?, hi?] -> [obj[lo:hi]]`: the bounds present are on the stack.
    Slice { lo: bool, hi: bool },
    /// `[v] -> [str(v)]`: an f-string that is one `{expr}` and nothing else.
    FormatValue,
    /// `[v_1, ..., v_n] -> [str(v_1) + ... + str(v_n)]`: an f-string's text and values, each
    /// shown as `str()` shows it (formatted here, with no string made for each value).
    BuildString(u32),

    /// `[a_1, ..., a_argc] -> [result]`: calls a function of this program.
    Call { function: FunctionId, argc: u32 },
    /// `[callee, a_1, ..., a_argc] -> [result]`: calls a function value.
    CallValue { argc: u32 },
    /// `[a_1, ..., a_argc, k_1, ..., k_m] -> [result]`: calls `natives[native]`; the keyword
    /// values' names are `keyword_lists[keywords]`.
    CallNative {
        native: u32,
        argc: u32,
        keywords: u32,
    },
    /// `[receiver, a_1, ..., a_argc, k_1, ..., k_m] -> [result]`: calls the method named by
    /// string constant `name`.
    CallMethod { name: u32, argc: u32, keywords: u32 },
    /// `[v] -> ` returns `v` to the caller.
    Return,

    /// `[a_1, ..., a_n] -> [fragment]`: a `gen`/`select` call as a value, with its arguments
    /// in `call_specs[spec]` order.
    MakeCall(u32),
    /// `[v] -> [fragment]`: `role(v)` as a value.
    MakeRole(Role),
    /// `[state, v] -> [state]`: appends a string or fragment to the state's prompt.
    AppendState,
    /// `[state, a_1, ..., a_n] -> [state]`: queues a `gen`/`select` on the state.
    CallInto(u32),
    /// `[state] -> [state]`: opens a chat role on the state.
    RoleBegin(Role),
    /// `[state] -> [state]`: closes the chat role.
    RoleEnd(Role),
    /// `[target, v] -> [result]`: `target += v`. A state appends `v` and stays itself; a list
    /// extends in place; anything else adds.
    AddAssign,

    // Fused instructions. The compiler never emits these: the VM's quickening pass
    // (vm/src/quicken.rs) writes them over the first instruction of a common sequence in its own
    // copy of the code, leaving the rest of the sequence in place. When its fast case does not
    // apply (operands of other types, an overflow, an index out of range) a fused instruction
    // does just the instruction it replaced (`LoadLocal(a)` for most), and the original sequence
    // runs on.
    /// `LoadLocal a; LoadLocal b; <op>; JumpIfFalse target` on two ints: `[] -> []`.
    FusedCompareLocals {
        a: u16,
        b: u16,
        op: CompareOp,
        target: u32,
    },
    /// `LoadLocal a; PushInt k; <op>; JumpIfFalse target` on an int: `[] -> []`.
    FusedCompareLocalInt {
        a: u16,
        op: CompareOp,
        k: i32,
        target: u32,
    },
    /// `LoadLocal a; LoadLocal b; <op>` and, unless `store` is `NO_STORE`, `StoreLocal store`,
    /// on two numbers (ints, or floats): `[] -> [a op b]` or `[] -> []`.
    FusedArithLocals {
        a: u16,
        b: u16,
        op: ArithOp,
        store: u32,
    },
    /// `LoadLocal a; PushInt k; <op>` and, unless `store` is `NO_STORE`, `StoreLocal store`, on
    /// a number: `[] -> [a op k]` or `[] -> []`.
    FusedArithLocalInt {
        a: u16,
        op: ArithOp,
        k: i32,
        store: u32,
    },
    /// `LoadLocal item; LoadLocal container; In` (`NotIn` when `negated`); `JumpIfFalse
    /// target`, when the test can be made (a string in a string or a map, anything in a list):
    /// `[] -> []`.
    FusedContainsLocals {
        item: u16,
        container: u16,
        negated: bool,
        target: u32,
    },
    /// `LoadLocal list; LoadLocal index; Index` on a list and an int in range:
    /// `[] -> [list[index]]`.
    FusedIndexLocals { list: u16, index: u16 },
    /// `LoadLocal list; LoadLocal index; PushBool value; StoreIndex` on a list and an int in
    /// range: `[] -> []`.
    FusedStoreBoolLocals { list: u16, index: u16, value: bool },
    /// `LoadLocal slot; JumpIfFalse target` on a bool: `[] -> []`.
    FusedJumpIfFalseLocal { slot: u32, target: u32 },
    /// `CallNative range argc; GetIter` (no keywords): `[bounds...] -> [iterator]` without
    /// building the list. Unlike the others it starts with the call: when the fast case does not
    /// apply it makes the call, and the `GetIter` after it runs.
    FusedRangeIter { native: u32, argc: u32 },
    /// `ForIter { exit }; StoreLocal slot`: the next item goes straight into the loop
    /// variable, `[iterator] -> [iterator]`, or when exhausted `[iterator] -> []` and jump to
    /// `exit`.
    FusedForIterStore { exit: u32, slot: u32 },
    /// `Jump(header)`, the back edge of a loop whose header is `LoadLocal a; LoadLocal b;
    /// <op>; JumpIfFalse exit`: on two ints, the header's test too, `[] -> []`, going on into
    /// the body (`header + 4`) or to `exit`. Otherwise the jump alone.
    FusedLoopCompareLocals {
        a: u16,
        b: u16,
        op: CompareOp,
        header: u32,
        exit: u32,
    },
    /// `Jump(header)` to a header `LoadLocal a; PushInt k; <op>; JumpIfFalse exit`, as
    /// `FusedLoopCompareLocals` for an int and a constant.
    FusedLoopCompareLocalInt {
        a: u16,
        op: CompareOp,
        k: i32,
        header: u32,
        exit: u32,
    },
}

/// Marks a fused arithmetic instruction that leaves its result on the stack.
pub const NO_STORE: u32 = u32::MAX;

/// The comparison of a fused instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareOp {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    NotEq,
}

impl CompareOp {
    /// The comparison `instr` makes, if it is one.
    pub fn of(instr: &Instr) -> Option<CompareOp> {
        Some(match instr {
            Instr::Lt => CompareOp::Lt,
            Instr::Le => CompareOp::Le,
            Instr::Gt => CompareOp::Gt,
            Instr::Ge => CompareOp::Ge,
            Instr::Eq => CompareOp::Eq,
            Instr::NotEq => CompareOp::NotEq,
            _ => return None,
        })
    }

    /// Without a branch on the operator: each operator is the set of orderings it holds
    /// for (bit 0 less, bit 1 equal, bit 2 greater), and the ints' ordering picks a bit. The
    /// interpreter's fused compares ran a second indirect jump on the operator.
    #[inline(always)]
    pub fn ints(self, a: i64, b: i64) -> bool {
        let holds_for: u8 = match self {
            CompareOp::Lt => 0b001,
            CompareOp::Le => 0b011,
            CompareOp::Gt => 0b100,
            CompareOp::Ge => 0b110,
            CompareOp::Eq => 0b010,
            CompareOp::NotEq => 0b101,
        };
        let ordering = u8::from(a == b) | (u8::from(a > b) << 1);
        holds_for >> ordering & 1 != 0
    }
}

/// The arithmetic of a fused instruction, on ints or floats (`+=` on numbers is `Add`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ArithOp {
    Add,
    Sub,
    Mul,
    /// Floored, as in Python; on ints only (a float does the unfused sequence).
    Mod,
}

impl ArithOp {
    /// The arithmetic `instr` does, if it is one a fused instruction can do.
    pub fn of(instr: &Instr) -> Option<ArithOp> {
        Some(match instr {
            Instr::Add | Instr::AddAssign => ArithOp::Add,
            Instr::Sub => ArithOp::Sub,
            Instr::Mul => ArithOp::Mul,
            Instr::Mod => ArithOp::Mod,
            _ => return None,
        })
    }

    /// As on floats (and on an int with a float, converted); `None` for `%`, which the
    /// unfused instruction does.
    #[inline(always)]
    pub fn floats(self, a: f64, b: f64) -> Option<f64> {
        match self {
            ArithOp::Add => Some(a + b),
            ArithOp::Sub => Some(a - b),
            ArithOp::Mul => Some(a * b),
            ArithOp::Mod => None,
        }
    }

    /// `None` on overflow and for `%` by zero (or of the least int by -1), which the unfused
    /// instruction reports (or does).
    #[inline(always)]
    pub fn ints(self, a: i64, b: i64) -> Option<i64> {
        match self {
            ArithOp::Add => a.checked_add(b),
            ArithOp::Sub => a.checked_sub(b),
            ArithOp::Mul => a.checked_mul(b),
            ArithOp::Mod => {
                let r = a.checked_rem(b)?;
                // The remainder takes the divisor's sign, as in Python.
                Some(if r != 0 && (r < 0) != (b < 0) {
                    r + b
                } else {
                    r
                })
            }
        }
    }
}

// Fused instructions fit beside `PushInt(i64)`: every instruction stays two words.
const _: () = assert!(std::mem::size_of::<Instr>() == 16);

impl Program {
    /// Finds a function by name.
    pub fn function(&self, name: &str) -> Option<FunctionId> {
        self.functions
            .iter()
            .position(|f| f.name == name)
            .map(|i| i as FunctionId)
    }

    /// The functions a user can run: everything except the compiler's init function.
    pub fn entry_points(&self) -> impl Iterator<Item = &Function> {
        self.functions
            .iter()
            .enumerate()
            .filter(|(i, _)| *i as u32 != self.init)
            .map(|(_, f)| f)
    }

    /// A listing of every function with source locations, for `sglc disasm`.
    pub fn disassemble(&self, source: &str) -> String {
        let lines = LineIndex::new(source);
        let mut out = String::new();
        for (id, function) in self.functions.iter().enumerate() {
            let _ = writeln!(
                out,
                "fn {}({}) #{id}{} locals={}",
                function.name,
                function.params.join(", "),
                if function.is_program { " program" } else { "" },
                function.local_count
            );
            let mut last_line = 0;
            for (ip, (instr, span)) in function.code.iter().zip(&function.spans).enumerate() {
                let (line, col) = lines.line_col(source, span.start);
                let location = if line != last_line {
                    last_line = line;
                    format!("{line:>4}:{col:<3}")
                } else {
                    "        ".to_string()
                };
                let _ = writeln!(out, "  {location} {ip:>4}  {}", self.describe(instr));
            }
            out.push('\n');
        }
        out
    }

    fn describe(&self, instr: &Instr) -> String {
        let constant = |i: u32| match self.constants.get(i as usize) {
            Some(Constant::Int(n)) => n.to_string(),
            Some(Constant::Float(x)) => format!("{x:?}"),
            Some(Constant::Str(s)) => format!("{s:?}"),
            None => "?".to_string(),
        };
        let keywords = |k: u32| {
            if k == NO_KEYWORDS {
                String::new()
            } else {
                format!(" kw=[{}]", self.keyword_lists[k as usize].join(", "))
            }
        };
        match *instr {
            Instr::Const(i) => format!("Const {}", constant(i)),
            Instr::LoadGlobal(i) => format!("LoadGlobal {}", self.globals[i as usize]),
            Instr::StoreGlobal(i) => format!("StoreGlobal {}", self.globals[i as usize]),
            Instr::LoadFunction(f) => format!("LoadFunction {}", self.functions[f as usize].name),
            Instr::Call { function, argc } => {
                format!(
                    "Call {} argc={argc}",
                    self.functions[function as usize].name
                )
            }
            Instr::CallNative {
                native,
                argc,
                keywords: k,
            } => format!(
                "CallNative {} argc={argc}{}",
                self.natives[native as usize],
                keywords(k)
            ),
            Instr::CallMethod {
                name,
                argc,
                keywords: k,
            } => format!(
                "CallMethod .{} argc={argc}{}",
                constant(name).trim_matches('"'),
                keywords(k)
            ),
            Instr::MakeCall(spec) | Instr::CallInto(spec) => {
                let spec = &self.call_specs[spec as usize];
                let params: Vec<_> = spec.params.iter().map(|p| p.name()).collect();
                let op = if matches!(instr, Instr::MakeCall(_)) {
                    "MakeCall"
                } else {
                    "CallInto"
                };
                format!("{op} {:?}({})", spec.kind, params.join(", "))
            }
            other => format!("{other:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fused_remainders_are_floored_and_leave_the_hard_cases_alone() {
        // Python: 7 % 3 == 1, -7 % 3 == 2, 7 % -3 == -2, -7 % -3 == -1.
        let cases = [
            (7, 3, 1),
            (-7, 3, 2),
            (7, -3, -2),
            (-7, -3, -1),
            (6, 3, 0),
            (-6, 3, 0),
        ];
        for (a, b, r) in cases {
            assert_eq!(ArithOp::Mod.ints(a, b), Some(r), "{a} % {b}");
        }
        assert_eq!(
            ArithOp::Mod.ints(i64::MAX, 1_000_003),
            Some(i64::MAX % 1_000_003)
        );
        // By zero (an error) and the least int by -1 (no overflow in Python) go unfused.
        assert_eq!(ArithOp::Mod.ints(5, 0), None);
        assert_eq!(ArithOp::Mod.ints(i64::MIN, -1), None);
        assert_eq!(ArithOp::Mod.floats(5.5, 2.0), None);
        assert_eq!(ArithOp::of(&Instr::Mod), Some(ArithOp::Mod));
    }

    #[test]
    fn compare_ops_on_ints_agree_with_rusts_operators() {
        let values = [i64::MIN, -7, -1, 0, 1, 2, 7, i64::MAX];
        for a in values {
            for b in values {
                let expected = [
                    (CompareOp::Lt, a < b),
                    (CompareOp::Le, a <= b),
                    (CompareOp::Gt, a > b),
                    (CompareOp::Ge, a >= b),
                    (CompareOp::Eq, a == b),
                    (CompareOp::NotEq, a != b),
                ];
                for (op, holds) in expected {
                    assert_eq!(op.ints(a, b), holds, "{a} {op:?} {b}");
                }
            }
        }
    }
}
