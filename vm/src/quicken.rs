//! Quickening: the interpreter's own copy of each function's code, with common sequences of
//! instructions fused into one (compare two locals and branch, test a local's membership in
//! another, add to a local, index a list by a local, a `while` loop's back edge and its test...),
//! so a loop body takes a third as many dispatches.
//!
//! A fused instruction replaces only the first instruction of its sequence, and the rest stays
//! in place. So instruction indices, the span table, jump
//! targets and the JIT's entry and resume points are unchanged; a fused instruction whose fast
//! case does not apply does just its first instruction and lets the original sequence run on;
//! and a
//! jump into the middle of a sequence runs the original instructions from there.
//!
//! **Architecture Invariant:** fused instructions exist only in `Linked::code`; the compiler
//! never emits them, and the JIT and the disassembler read the program's own code.

use sglc_compiler::bytecode::{ArithOp, CompareOp, Instr, NO_KEYWORDS, NO_STORE};

/// A function's code with its common sequences fused; `range` is the native id of `range()`
/// in this program, if it calls it.
pub fn quicken(code: &[Instr], range: Option<u32>) -> Vec<Instr> {
    (0..code.len())
        .map(|ip| {
            fuse_range_loop(code, ip, range)
                .or_else(|| fuse_for_item(code, ip))
                .or_else(|| fuse_loop_test(code, ip))
                .or_else(|| thread_jump(code, ip))
                .or_else(|| fuse_at(code, ip))
                .unwrap_or(code[ip])
        })
        .collect()
}

/// `CallNative range; GetIter`: a `for` loop over `range()`.
fn fuse_range_loop(code: &[Instr], ip: usize, range: Option<u32>) -> Option<Instr> {
    match (code[ip], code.get(ip + 1)) {
        (
            Instr::CallNative {
                native,
                argc,
                keywords: NO_KEYWORDS,
            },
            Some(Instr::GetIter),
        ) if Some(native) == range => Some(Instr::FusedRangeIter { native, argc }),
        _ => None,
    }
}

/// `ForIter; StoreLocal`: the item of a `for` loop with one loop variable.
fn fuse_for_item(code: &[Instr], ip: usize) -> Option<Instr> {
    match (code[ip], code.get(ip + 1)) {
        (Instr::ForIter { exit }, Some(Instr::StoreLocal(slot))) => {
            Some(Instr::FusedForIterStore { exit, slot: *slot })
        }
        _ => None,
    }
}

/// `Jump(header)` back to a loop header that compares a local with a local or a small int
/// and branches: the back edge runs the header's test as well, so a `while` loop's iteration
/// takes one dispatch fewer. (The header itself is fused as well, for the loop's entry.)
fn fuse_loop_test(code: &[Instr], ip: usize) -> Option<Instr> {
    let Instr::Jump(header) = code[ip] else {
        return None;
    };
    match fuse_at(code, header as usize)? {
        Instr::FusedCompareLocals { a, b, op, target } => Some(Instr::FusedLoopCompareLocals {
            a,
            b,
            op,
            header,
            exit: target,
        }),
        Instr::FusedCompareLocalInt { a, op, k, target } => Some(Instr::FusedLoopCompareLocalInt {
            a,
            op,
            k,
            header,
            exit: target,
        }),
        _ => None,
    }
}

/// A jump to a jump goes straight to the second one's target (the end of an `if` at the end of
/// a loop body jumps to the loop's back edge). Once only: chains are short, and a cycle of
/// jumps must stay one.
fn thread_jump(code: &[Instr], ip: usize) -> Option<Instr> {
    match code[ip] {
        Instr::Jump(target) => match code.get(target as usize) {
            Some(Instr::Jump(next)) if *next != target => Some(Instr::Jump(*next)),
            _ => None,
        },
        _ => None,
    }
}

/// The fused instruction for the sequence starting at `ip`, if there is one.
fn fuse_at(code: &[Instr], ip: usize) -> Option<Instr> {
    let Instr::LoadLocal(a) = code[ip] else {
        return None;
    };
    let a = u16::try_from(a).ok()?;
    let at = |k: usize| code.get(ip + k).copied();
    let second = at(1)?;
    let local = |instr: Instr| match instr {
        Instr::LoadLocal(b) => u16::try_from(b).ok(),
        _ => None,
    };
    let small_int = |instr: Instr| match instr {
        Instr::PushInt(k) => i32::try_from(k).ok(),
        _ => None,
    };
    if let Instr::JumpIfFalse(target) = second {
        return Some(Instr::FusedJumpIfFalseLocal {
            slot: u32::from(a),
            target,
        });
    }
    let third = at(2)?;
    let fourth = at(3);
    let negated = match third {
        Instr::In => Some(false),
        Instr::NotIn => Some(true),
        _ => None,
    };
    if let (Some(negated), Some(Instr::JumpIfFalse(target)), Some(container)) =
        (negated, fourth, local(second))
    {
        return Some(Instr::FusedContainsLocals {
            item: a,
            container,
            negated,
            target,
        });
    }
    if let (Some(op), Some(Instr::JumpIfFalse(target))) = (CompareOp::of(&third), fourth) {
        if let Some(b) = local(second) {
            return Some(Instr::FusedCompareLocals { a, b, op, target });
        }
        if let Some(k) = small_int(second) {
            return Some(Instr::FusedCompareLocalInt { a, op, k, target });
        }
    }
    if let Some(op) = ArithOp::of(&third) {
        let store = match fourth {
            Some(Instr::StoreLocal(slot)) => slot,
            _ => NO_STORE,
        };
        if let Some(b) = local(second) {
            return Some(Instr::FusedArithLocals { a, b, op, store });
        }
        if let Some(k) = small_int(second) {
            return Some(Instr::FusedArithLocalInt { a, op, k, store });
        }
    }
    let index = local(second)?;
    match (third, fourth) {
        (Instr::Index, _) => Some(Instr::FusedIndexLocals { list: a, index }),
        (Instr::PushBool(value), Some(Instr::StoreIndex)) => Some(Instr::FusedStoreBoolLocals {
            list: a,
            index,
            value,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `while x0 < x1 { x0 += 1 }`, leaving at 9.
    fn counting_loop() -> Vec<Instr> {
        vec![
            Instr::LoadLocal(0),
            Instr::LoadLocal(1),
            Instr::Lt,
            Instr::JumpIfFalse(9),
            Instr::LoadLocal(0),
            Instr::PushInt(1),
            Instr::AddAssign,
            Instr::StoreLocal(0),
            Instr::Jump(0),
        ]
    }

    #[test]
    fn fuses_only_the_first_instruction_of_a_sequence() {
        let mut code = counting_loop();
        code.extend([
            Instr::LoadLocal(2),
            Instr::LoadLocal(0),
            Instr::Index,
            Instr::Return,
        ]);
        let quick = quicken(&code, None);
        assert_eq!(quick.len(), code.len());
        assert_eq!(
            quick[0],
            Instr::FusedCompareLocals {
                a: 0,
                b: 1,
                op: CompareOp::Lt,
                target: 9
            }
        );
        assert_eq!(
            quick[4],
            Instr::FusedArithLocalInt {
                a: 0,
                op: ArithOp::Add,
                k: 1,
                store: 0
            }
        );
        assert_eq!(quick[9], Instr::FusedIndexLocals { list: 2, index: 0 });
        // Everything after a fused instruction's first is the original code. (The back edge
        // at 8 is fused with the loop's test: `fuses_a_loop_back_edge_with_its_header_test`.)
        for ip in [1, 2, 3, 5, 6, 7, 11, 12] {
            assert_eq!(quick[ip], code[ip], "instruction {ip}");
        }
    }

    #[test]
    fn fuses_membership_tests_that_branch() {
        let code = vec![
            Instr::LoadLocal(0),
            Instr::LoadLocal(1),
            Instr::NotIn,
            Instr::JumpIfFalse(7),
            Instr::LoadLocal(0),
            Instr::LoadLocal(1),
            Instr::In,
            Instr::Return,
        ];
        let quick = quicken(&code, None);
        assert_eq!(
            quick[0],
            Instr::FusedContainsLocals {
                item: 0,
                container: 1,
                negated: true,
                target: 7
            }
        );
        // A test whose result is kept rather than branched on stays as it is.
        assert_eq!(quick[4], code[4]);
    }

    #[test]
    fn fuses_a_branch_on_a_local() {
        let code = vec![
            Instr::LoadLocal(3),
            Instr::JumpIfFalse(4),
            Instr::LoadLocal(3),
            Instr::Return,
            Instr::PushNone,
            Instr::Return,
        ];
        let quick = quicken(&code, None);
        assert_eq!(
            quick[0],
            Instr::FusedJumpIfFalseLocal { slot: 3, target: 4 }
        );
        assert_eq!(quick[1..], code[1..]);
    }

    #[test]
    fn threads_jumps_and_fuses_loop_items() {
        let code = vec![
            Instr::ForIter { exit: 5 },
            Instr::StoreLocal(1),
            Instr::Jump(3),
            Instr::Jump(0),
            Instr::Jump(4),
            Instr::Return,
        ];
        let quick = quicken(&code, None);
        assert_eq!(quick[0], Instr::FusedForIterStore { exit: 5, slot: 1 });
        assert_eq!(quick[1], code[1]);
        assert_eq!(quick[2], Instr::Jump(0));
        // A jump to itself is left alone.
        assert_eq!(quick[4], Instr::Jump(4));
    }

    #[test]
    fn fuses_a_loop_back_edge_with_its_header_test() {
        let mut code = counting_loop();
        code.extend([
            Instr::LoadLocal(0),
            Instr::PushInt(7),
            Instr::NotEq,
            Instr::JumpIfFalse(14),
            Instr::Jump(9),
            Instr::Jump(4),
            Instr::Return,
        ]);
        let quick = quicken(&code, None);
        assert_eq!(
            quick[8],
            Instr::FusedLoopCompareLocals {
                a: 0,
                b: 1,
                op: CompareOp::Lt,
                header: 0,
                exit: 9
            }
        );
        assert_eq!(
            quick[13],
            Instr::FusedLoopCompareLocalInt {
                a: 0,
                op: CompareOp::NotEq,
                k: 7,
                header: 9,
                exit: 14
            }
        );
        // A jump to anything else is a jump (threaded, where it lands on one).
        assert_eq!(quick[14], Instr::Jump(4));
        // The headers are fused too, for the loops' entries.
        assert!(matches!(quick[0], Instr::FusedCompareLocals { .. }));
        assert!(matches!(quick[9], Instr::FusedCompareLocalInt { .. }));
    }

    #[test]
    fn leaves_operands_that_do_not_fit_alone() {
        let code = vec![
            Instr::LoadLocal(70_000),
            Instr::PushInt(1),
            Instr::Add,
            Instr::LoadLocal(0),
            Instr::PushInt(1 << 40),
            Instr::Add,
            Instr::Return,
        ];
        assert_eq!(quicken(&code, None), code);
    }
}
