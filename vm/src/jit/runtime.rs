//! The runtime helpers compiled code calls for strings, lists, maps and every other value that
//! is not an int, float, bool or `none`.
//!
//! Compiled code holds such a value as an *object slot* (`Ty::Obj`): an owned `Box<Value>`
//! turned into a raw pointer, or 0 for `none` (so a slot that is `none` on one path and an
//! object on another needs no conversion). Each slot owns its box: the code generator clones
//! on a load, drops on a pop or an overwrite, and hands the boxes over on a return or a deopt.
//!
//! The helpers are `unsafe`: compiled code passes them live slots it owns (or borrows) and
//! the context it was entered with.
//!
//! **Architecture Invariant:** a helper never raises an error and never has an effect when it
//! fails. It borrows its operands, and where the interpreter would raise an error (or must
//! wait, or the value is one compiled code does not handle) it returns `FAIL` having changed
//! nothing; compiled code then deopts *before* the instruction, and the interpreter runs it
//! again and raises the error itself, with its message and span.

use super::JitCtx;
use crate::interp::{self, Limits};
use crate::native::{MethodFn, NativeCtx, NativeFn};
use crate::value::{Value, dict_index_of};

/// Arguments cloned out of their slots; most calls have few, kept off the heap.
type Args = smallvec::SmallVec<[Value; 4]>;

/// A helper could not do what the instruction asks: deopt before it. Never a box's address
/// (boxes are aligned).
pub const FAIL: i64 = 1;
/// `next` on an iterator that has no more items.
pub const DONE: i64 = 1;
/// A comparison helper could not compare (its result is otherwise 0 or 1).
pub const COMPARE_FAIL: i64 = -1;

/// What helpers need from the program's host: the natives and methods compiled code may call
/// (`Natives::mark_jit_safe`) and the run's limits.
pub struct Host {
    /// By the program's native index; `None` where compiled code may not call it.
    pub natives: Vec<Option<NativeFn>>,
    /// By string constant (a method name): the name and the method for each receiver type,
    /// empty where compiled code may not call it.
    pub methods: Vec<(String, Vec<(&'static str, MethodFn)>)>,
    pub limits: Limits,
}

/// The slot for `value`: its box, or 0 for `none`.
#[inline]
pub fn into_slot(value: Value) -> i64 {
    if matches!(value, Value::None) {
        return 0;
    }
    #[cfg(debug_assertions)]
    LIVE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // (`try_with`: no spare boxes while the thread's are being freed, at its exit.)
    let spare = SPARE_BOXES.try_with(SpareBoxes::take).ok().flatten();
    match spare {
        Some(spare) => {
            // SAFETY: a spare box is an allocation for a `Value` that holds none.
            unsafe { spare.as_ptr().write(value) };
            spare.as_ptr() as i64
        }
        None => Box::into_raw(Box::new(value)) as i64,
    }
}

/// Takes the value out of an object slot.
///
/// # Safety
/// `slot` is 0 or a box made by `into_slot` that nothing else will use again.
#[inline]
pub unsafe fn from_slot(slot: i64) -> Value {
    if slot == 0 {
        return Value::None;
    }
    #[cfg(debug_assertions)]
    LIVE.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    let slot = slot as *mut Value;
    // SAFETY: the caller hands over a box `into_slot` made; its value is moved out once and
    // the emptied box is kept for the next `into_slot` (or freed).
    unsafe {
        let value = slot.read();
        let emptied = std::ptr::NonNull::new_unchecked(slot);
        if SPARE_BOXES.try_with(|spare| spare.keep(emptied)).is_err() {
            free_emptied(emptied);
        }
        value
    }
}

/// Emptied boxes of object slots, for reuse: compiled code makes and drops a box for nearly
/// every string or list it handles (an item taken from a list, a helper's result), where the
/// interpreter only counts a reference; allocating and freeing each took a fifth of the
/// instructions of a loop scoring strings. A list through the boxes themselves, per thread
/// (values are not `Send`, so a box is made and dropped on one thread).
struct SpareBoxes {
    /// The first spare box; each holds the address of the next in its first word.
    head: std::cell::Cell<*mut Value>,
    count: std::cell::Cell<usize>,
}

/// Spare boxes kept at most per thread (16 KiB of them).
const MAX_SPARE_BOXES: usize = 1024;

thread_local! {
    static SPARE_BOXES: SpareBoxes = const {
        SpareBoxes {
            head: std::cell::Cell::new(std::ptr::null_mut()),
            count: std::cell::Cell::new(0),
        }
    };
}

impl SpareBoxes {
    fn take(&self) -> Option<std::ptr::NonNull<Value>> {
        let head = std::ptr::NonNull::new(self.head.get())?;
        // SAFETY: a spare box's first word holds the next spare's address (`keep`).
        self.head
            .set(unsafe { head.as_ptr().cast::<*mut Value>().read() });
        self.count.set(self.count.get() - 1);
        Some(head)
    }

    /// Keeps an emptied box (its value moved out), or frees it when enough are kept.
    ///
    /// # Safety
    /// `emptied` was allocated as a `Box<Value>` and holds no value.
    unsafe fn keep(&self, emptied: std::ptr::NonNull<Value>) {
        if self.count.get() >= MAX_SPARE_BOXES {
            // SAFETY: as the caller guarantees.
            unsafe { free_emptied(emptied) };
            return;
        }
        // SAFETY: the box is ours and large enough for a pointer.
        unsafe { emptied.as_ptr().cast::<*mut Value>().write(self.head.get()) };
        self.head.set(emptied.as_ptr());
        self.count.set(self.count.get() + 1);
    }
}

impl Drop for SpareBoxes {
    fn drop(&mut self) {
        while let Some(spare) = self.take() {
            // SAFETY: spare boxes hold no value; each is freed once.
            unsafe { free_emptied(spare) };
        }
    }
}

/// Frees a box of an object slot whose value was moved out.
///
/// # Safety
/// `emptied` was allocated as a `Box<Value>`, holds no value, and is not used again.
unsafe fn free_emptied(emptied: std::ptr::NonNull<Value>) {
    // SAFETY: freed with the layout it was allocated with, without dropping a value.
    std::mem::drop(unsafe {
        Box::from_raw(emptied.as_ptr().cast::<std::mem::MaybeUninit<Value>>())
    });
}

#[cfg(debug_assertions)]
static LIVE: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// Boxes made for compiled code and not freed yet, in the whole process (counted in debug
/// builds, for the tests; 0 in release builds).
pub fn live_boxes() -> i64 {
    #[cfg(debug_assertions)]
    return LIVE.load(std::sync::atomic::Ordering::Relaxed);
    #[cfg(not(debug_assertions))]
    0
}

/// `none`, borrowed for as long as needed: a promoted constant. (A `none` made in each helper
/// was dropped at its end: a call to `Value`'s drop glue in every helper call.)
const NONE: &Value = &Value::None;

/// The value an object slot holds, borrowed; `none` for 0.
///
/// # Safety
/// `slot` is 0 or a box made by `into_slot` that stays alive and unchanged for `'a`.
unsafe fn value<'a>(slot: i64) -> &'a Value {
    if slot == 0 {
        NONE
    } else {
        // SAFETY: the caller guarantees a live box.
        unsafe { &*(slot as *const Value) }
    }
}

/// The values of `count` object slots stored at `slots`, cloned.
///
/// # Safety
/// `slots` points at `count` live object slots.
unsafe fn values(slots: *const i64, count: i64) -> Args {
    // SAFETY: the caller guarantees `count` slots.
    let slots = unsafe { std::slice::from_raw_parts(slots, count as usize) };
    slots.iter().map(|s| unsafe { value(*s) }.clone()).collect()
}

/// Most arguments `with_values` lays out without cloning.
const SIDE_BY_SIDE: usize = 8;

/// Runs `f` on the values of `count` object slots laid side by side, as natives and methods
/// take them, without cloning them: the values are copied bit for bit and the copies never
/// dropped, so no reference count changes (a clone and a drop per argument were a third of a
/// method call's cost). More than `SIDE_BY_SIDE` are cloned.
///
/// # Safety
/// `slots` points at `count` live object slots, which stay alive and unchanged during `f`.
unsafe fn with_values<R>(slots: *const i64, count: i64, f: impl FnOnce(&[Value]) -> R) -> R {
    let count = count as usize;
    if count > SIDE_BY_SIDE {
        // SAFETY: as the caller guarantees.
        return f(&unsafe { values(slots, count as i64) });
    }
    let mut copies = [const { std::mem::MaybeUninit::<Value>::uninit() }; SIDE_BY_SIDE];
    for (at, copy) in copies.iter_mut().enumerate().take(count) {
        // SAFETY: slot `at` is live (the caller); its value is read, not moved: the copy is
        // never dropped (`MaybeUninit`), and shared references to it, all `f` gets, can only
        // reach what the original reaches (a list's items through its `RefCell` are the same
        // items), so the original stays the owner.
        copy.write(unsafe { std::ptr::read(value(*slots.add(at))) });
    }
    // SAFETY: the first `count` copies were written; `MaybeUninit<Value>` has `Value`'s
    // layout.
    let args = unsafe { std::slice::from_raw_parts(copies.as_ptr().cast::<Value>(), count) };
    f(args)
}

fn host<'a>(ctx: *mut JitCtx) -> &'a Host {
    // SAFETY: compiled code passes the context it was given, alive for the whole call.
    unsafe { &(*ctx).host }
}

fn result(outcome: Result<Value, impl Sized>, limits: &Limits) -> i64 {
    match outcome {
        // A value past its limit is the interpreter's error to raise.
        Ok(v) if limits.oversized(&v).is_none() => into_slot(v),
        _ => FAIL,
    }
}

pub(crate) unsafe extern "C" fn clone(slot: i64) -> i64 {
    // SAFETY: compiled code passes live slots.
    into_slot(unsafe { value(slot) }.clone())
}

pub(crate) unsafe extern "C" fn drop(slot: i64) {
    // SAFETY: compiled code passes a slot it owns and never uses again.
    std::mem::drop(unsafe { from_slot(slot) });
}

/// Boxes a scalar: `kind` 0 none, 1 int, 2 float (bits), 3 bool.
pub(crate) unsafe extern "C" fn box_scalar(kind: i64, bits: i64) -> i64 {
    into_slot(match kind {
        1 => Value::Int(bits),
        2 => Value::Float(f64::from_bits(bits as u64)),
        3 => Value::Bool(bits != 0),
        _ => Value::None,
    })
}

/// The scalar an object holds, as bits into `out`, when it is of `kind` (as `box_scalar`);
/// 1 when it is, 0 when not.
pub(crate) unsafe extern "C" fn unbox(slot: i64, kind: i64, out: *mut i64) -> i64 {
    // SAFETY: compiled code passes a live slot and an 8-byte stack slot.
    let bits = match (kind, unsafe { value(slot) }) {
        (1, Value::Int(n)) => *n,
        (2, Value::Float(x)) => x.to_bits() as i64,
        (3, Value::Bool(b)) => i64::from(*b),
        _ => return 0,
    };
    unsafe { *out = bits };
    1
}

/// The number an object holds as a float's bits into `out` (an int converted, as the
/// interpreter converts it for float arithmetic): 1, or 0 when it is not a number.
pub(crate) unsafe extern "C" fn unbox_number(slot: i64, out: *mut i64) -> i64 {
    // SAFETY: compiled code passes a live slot and an 8-byte stack slot.
    let x = match unsafe { value(slot) } {
        Value::Int(n) => *n as f64,
        Value::Float(x) => *x,
        _ => return 0,
    };
    unsafe { *out = x.to_bits() as i64 };
    1
}

pub(crate) unsafe extern "C" fn truthy(slot: i64) -> i64 {
    // SAFETY: compiled code passes a live slot.
    i64::from(unsafe { value(slot) }.is_truthy())
}

/// Binary operator codes shared with the code generator.
pub mod op {
    pub const ADD: i64 = 0;
    pub const SUB: i64 = 1;
    pub const MUL: i64 = 2;
    pub const DIV: i64 = 3;
    pub const MOD: i64 = 4;
    pub const ADD_ASSIGN: i64 = 5;
    pub const EQ: i64 = 10;
    pub const NOT_EQ: i64 = 11;
    pub const LT: i64 = 12;
    pub const LE: i64 = 13;
    pub const GT: i64 = 14;
    pub const GE: i64 = 15;
    pub const IN: i64 = 16;
    pub const NOT_IN: i64 = 17;
}

/// `a op b` for the arithmetic operators; `FAIL` where the interpreter raises an error.
pub(crate) unsafe extern "C" fn binary(ctx: *mut JitCtx, code: i64, a: i64, b: i64) -> i64 {
    let limits = &host(ctx).limits;
    // SAFETY: compiled code passes live slots.
    let (a, b) = unsafe { (value(a), value(b)) };
    let outcome = match code {
        op::ADD => interp::binary_add(a, b, limits),
        op::SUB => interp::arith(a, b, "-", i64::checked_sub, |x, y| x - y),
        op::MUL => interp::binary_mul(a, b, limits),
        op::DIV => interp::binary_div(a, b),
        op::MOD => interp::binary_mod(a, b),
        op::ADD_ASSIGN => match (a, b) {
            // `xs += ys` extends `xs` in place, checked before anything changes.
            (Value::List(list), Value::List(more)) => {
                let grown = list.borrow().len() + more.borrow().len();
                if grown > limits.max_collection_len {
                    return FAIL;
                }
                let items = more.borrow().clone();
                list.borrow_mut().extend_from(&items);
                Ok(a.clone())
            }
            (Value::List(_) | Value::State(_), _) => return FAIL,
            _ => interp::binary_add(a, b, limits),
        },
        _ => return FAIL,
    };
    result(outcome, limits)
}

/// `a op b` for the comparisons and `in`: 0 or 1, or `COMPARE_FAIL`.
/// (`ctx` is unused: it keeps the signature of `binary`, so compiled code calls both alike.)
pub(crate) unsafe extern "C" fn compare(_ctx: *mut JitCtx, code: i64, a: i64, b: i64) -> i64 {
    // SAFETY: compiled code passes live slots.
    let (a, b) = unsafe { (value(a), value(b)) };
    let truth = match code {
        op::EQ => a.equals(b),
        op::NOT_EQ => !a.equals(b),
        op::IN | op::NOT_IN => {
            let found = match (b, a) {
                // A word in a vocabulary, the usual case, without the general test's `Result`.
                (Value::Map(map), Value::Str(key)) => dict_index_of(&map.borrow(), key).is_some(),
                _ => match interp::contains(b, a) {
                    Ok(found) => found,
                    Err(_) => return COMPARE_FAIL,
                },
            };
            found == (code == op::IN)
        }
        _ => match a.compare(b) {
            Some(ordering) => match code {
                op::LT => ordering.is_lt(),
                op::LE => ordering.is_le(),
                op::GT => ordering.is_gt(),
                _ => ordering.is_ge(),
            },
            None => return COMPARE_FAIL,
        },
    };
    i64::from(truth)
}

/// `obj[key]`; a state's variables are left to the interpreter, which may have to wait.
pub(crate) unsafe extern "C" fn index(obj: i64, key: i64) -> i64 {
    // SAFETY: compiled code passes live slots.
    let (obj, key) = unsafe { (value(obj), value(key)) };
    if matches!(obj, Value::State(_)) {
        return FAIL;
    }
    match interp::index(obj, key) {
        Ok(v) => into_slot(v),
        Err(_) => FAIL,
    }
}

/// `list[i]` with an int index, the common case, without boxing the index.
pub(crate) unsafe extern "C" fn index_int(obj: i64, i: i64) -> i64 {
    // SAFETY: compiled code passes a live slot.
    match unsafe { value(obj) } {
        Value::List(list) => {
            let list = list.borrow();
            match interp::normalize_index(i, list.len()) {
                Some(at) => into_slot(list.get(at).unwrap_or_default()),
                None => FAIL,
            }
        }
        other => match interp::index(other, &Value::Int(i)) {
            Ok(v) if !matches!(other, Value::State(_)) => into_slot(v),
            _ => FAIL,
        },
    }
}

/// `obj[key] = item`: 0 when done, `FAIL` (nothing changed) otherwise.
pub(crate) unsafe extern "C" fn store_index(
    ctx: *mut JitCtx,
    obj: i64,
    key: i64,
    item: i64,
) -> i64 {
    let limits = &host(ctx).limits;
    // SAFETY: compiled code passes live slots.
    let (obj, key, item) = unsafe { (value(obj), value(key), value(item)) };
    match (obj, key) {
        (Value::List(list), Value::Int(i)) => {
            let mut list = list.borrow_mut();
            match interp::normalize_index(*i, list.len()) {
                Some(at) => {
                    list.set(at, item.clone());
                    0
                }
                None => FAIL,
            }
        }
        (Value::Map(map), Value::Str(k)) => {
            let mut map = map.borrow_mut();
            if !map.contains_key(k.as_str()) && map.len() >= limits.max_collection_len {
                return FAIL;
            }
            map.insert(k.clone(), item.clone());
            0
        }
        _ => FAIL,
    }
}

/// `list[i] = scalar` with an int index, without boxing either: `kind` as `box_scalar`.
pub(crate) unsafe extern "C" fn store_index_int(obj: i64, i: i64, kind: i64, bits: i64) -> i64 {
    // SAFETY: compiled code passes a live slot.
    let Value::List(list) = (unsafe { value(obj) }) else {
        return FAIL;
    };
    let mut list = list.borrow_mut();
    let Some(at) = interp::normalize_index(i, list.len()) else {
        return FAIL;
    };
    let item = match kind {
        1 => Value::Int(bits),
        2 => Value::Float(f64::from_bits(bits as u64)),
        3 => Value::Bool(bits != 0),
        _ => Value::None,
    };
    list.set(at, item);
    0
}

/// `[a, b, ...]` from `count` slots.
pub(crate) unsafe extern "C" fn build_list(ctx: *mut JitCtx, slots: *const i64, count: i64) -> i64 {
    let limits = &host(ctx).limits;
    if count as usize > limits.max_collection_len {
        return FAIL;
    }
    // SAFETY: compiled code passes `count` live slots.
    into_slot(Value::list(unsafe { values(slots, count) }.into_vec()))
}

/// `{k: v, ...}` from `2 * count` slots, keys and values alternating.
pub(crate) unsafe extern "C" fn build_map(ctx: *mut JitCtx, slots: *const i64, count: i64) -> i64 {
    let limits = &host(ctx).limits;
    // SAFETY: compiled code passes `2 * count` live slots.
    let flat = unsafe { values(slots, count * 2) };
    let mut map = crate::value::Dict::with_capacity_and_hasher(count as usize, Default::default());
    let mut it = flat.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        let Value::Str(k) = k else {
            return FAIL;
        };
        map.insert(k, v);
    }
    result(Ok::<_, ()>(Value::map(map)), limits)
}

/// An f-string's `{value}`: the value as a string.
pub(crate) unsafe extern "C" fn format(slot: i64) -> i64 {
    // SAFETY: compiled code passes a live slot.
    match unsafe { value(slot) } {
        s @ Value::Str(_) => into_slot(s.clone()),
        other => into_slot(Value::Str(other.display_str())),
    }
}

/// An f-string's `{value}` for a scalar (`kind` as `box_scalar`), without boxing it first.
pub(crate) unsafe extern "C" fn format_scalar(kind: i64, bits: i64) -> i64 {
    let value = match kind {
        1 => Value::Int(bits),
        2 => Value::Float(f64::from_bits(bits as u64)),
        3 => Value::Bool(bits != 0),
        _ => Value::None,
    };
    into_slot(Value::Str(value.display_str()))
}

/// An f-string from `count` slots (`BuildString`: each shown as `str()` shows it).
pub(crate) unsafe extern "C" fn build_string(
    ctx: *mut JitCtx,
    slots: *const i64,
    count: i64,
) -> i64 {
    let limits = &host(ctx).limits;
    // SAFETY: compiled code passes `count` live slots.
    let slots = unsafe { std::slice::from_raw_parts(slots, count as usize) };
    // The usual f-string's parts in an array on the stack: collecting them into a `SmallVec`
    // took a third of this call's instructions.
    const ON_STACK: usize = 8;
    let mut on_stack = [NONE; ON_STACK];
    let on_heap: Vec<&Value>;
    let parts: &[&Value] = if slots.len() <= ON_STACK {
        for (part, slot) in on_stack.iter_mut().zip(slots) {
            // SAFETY: as above.
            *part = unsafe { value(*slot) };
        }
        &on_stack[..slots.len()]
    } else {
        on_heap = slots.iter().map(|s| unsafe { value(*s) }).collect();
        &on_heap
    };
    match Value::concat_display(parts, limits.max_string_bytes) {
        Ok(s) => into_slot(Value::Str(s)),
        Err(_) => FAIL,
    }
}

/// `for`'s iterator over a value.
pub(crate) unsafe extern "C" fn get_iter(slot: i64) -> i64 {
    // SAFETY: compiled code passes a live slot.
    match interp::iterate(unsafe { value(slot) }.clone()) {
        Ok(iter) => into_slot(iter),
        Err(_) => FAIL,
    }
}

/// The next item of an iterator, or `DONE`.
pub(crate) unsafe extern "C" fn next(iter: i64) -> i64 {
    // SAFETY: compiled code passes a live slot holding an iterator.
    let item = match unsafe { value(iter) } {
        Value::Iterator(it) => it.borrow_mut().next_item(),
        _ => None,
    };
    match item {
        Some(v) => into_slot(v),
        None => DONE,
    }
}

/// `next_scalar`: the next item is not of the kind asked for; the iterator has not moved.
pub const NOT_OF_KIND: i64 = 2;

/// The next item of an iterator over a list, when it is a scalar of `kind` (as `box_scalar`),
/// as bits into `out`: 1, or 0 when no items are left, or `NOT_OF_KIND`.
pub(crate) unsafe extern "C" fn next_scalar(iter: i64, kind: i64, out: *mut i64) -> i64 {
    // SAFETY: compiled code passes a live slot holding an iterator.
    let Value::Iterator(iter) = (unsafe { value(iter) }) else {
        return NOT_OF_KIND;
    };
    let mut iter = iter.borrow_mut();
    let crate::value::Iter::List { list, next } = &mut *iter else {
        return NOT_OF_KIND;
    };
    let bits = match (kind, list.borrow().get(*next)) {
        (_, None) => return 0,
        (1, Some(Value::Int(n))) => n,
        (3, Some(Value::Bool(b))) => i64::from(b),
        _ => return NOT_OF_KIND,
    };
    *next += 1;
    // SAFETY: compiled code passes an 8-byte stack slot.
    unsafe { *out = bits };
    1
}

/// A native function (one marked safe for compiled code) on `count` slots.
pub(crate) unsafe extern "C" fn call_native(
    ctx: *mut JitCtx,
    native: i64,
    slots: *const i64,
    count: i64,
) -> i64 {
    let host = host(ctx);
    let Some(Some(f)) = host.natives.get(native as usize) else {
        return FAIL;
    };
    let mut output = Vec::new();
    let mut native_ctx = NativeCtx {
        output: &mut output,
        limits: &host.limits,
    };
    // A panic must not unwind into compiled code: the interpreter runs the call again instead.
    // SAFETY: compiled code passes `count` live slots, which it keeps during the call.
    let outcome = unsafe {
        with_values(slots, count, |args| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                f(&mut native_ctx, args, &[])
            }))
        })
    };
    result(outcome.unwrap_or(Err(String::new())), &host.limits)
}

/// A method on the receiver in the first of `count` slots (the arguments follow). Methods
/// that grow their receiver are checked against the limits before they run.
pub(crate) unsafe extern "C" fn call_method(
    ctx: *mut JitCtx,
    name: i64,
    slots: *const i64,
    count: i64,
) -> i64 {
    let host = host(ctx);
    let limits = &host.limits;
    let Some((name, methods)) = host.methods.get(name as usize) else {
        return FAIL;
    };
    // SAFETY: compiled code passes `count` (at least 1) live slots.
    let receiver = unsafe { value(*slots) };
    let type_name = receiver.type_name();
    // The interpreter's own methods (on states, `join` on a list of forks) come first there.
    if matches!(receiver, Value::State(_)) || (type_name == "list" && name == "join") {
        return FAIL;
    }
    let Some((_, method)) = methods.iter().find(|(t, _)| *t == type_name) else {
        return FAIL;
    };
    let size = |v: Option<&Value>| match v {
        Some(Value::List(l)) => l.borrow().len(),
        Some(Value::Map(m)) => m.borrow().len(),
        _ => 0,
    };
    // SAFETY: compiled code passes `count` live slots, which it keeps during the call.
    let outcome = unsafe {
        with_values(slots.add(1), count - 1, |args| {
            let grows_by = match (type_name, name.as_str()) {
                ("list", "append" | "insert") => 1,
                ("list", "extend") | ("map", "update") => size(args.first()),
                _ => 0,
            };
            if grows_by > 0 && size(Some(receiver)) + grows_by > limits.max_collection_len {
                return None;
            }
            let mut output = Vec::new();
            let mut native_ctx = NativeCtx {
                output: &mut output,
                limits,
            };
            Some(std::panic::catch_unwind(std::panic::AssertUnwindSafe(
                || method(&mut native_ctx, receiver, args, &[]),
            )))
        })
    };
    let Some(outcome) = outcome else {
        return FAIL;
    };
    result(outcome.unwrap_or(Err(String::new())), limits)
}

/// `list.append(item)` as a list comprehension does it (`ListAppendUnder`): 0, or `FAIL`
/// when the list would grow past its limit.
pub(crate) unsafe extern "C" fn append_under(ctx: *mut JitCtx, list: i64, item: i64) -> i64 {
    let limits = &host(ctx).limits;
    // SAFETY: compiled code passes live slots.
    let (list, item) = unsafe { (value(list), value(item)) };
    let Value::List(list) = list else {
        return FAIL;
    };
    let mut list = list.borrow_mut();
    if list.len() >= limits.max_collection_len {
        return FAIL;
    }
    list.push(item.clone());
    0
}
