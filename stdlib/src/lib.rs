//! The sglc standard library: builtin functions (`len`, `range`, `json_parse`, ...) and the
//! methods of strings, lists and maps, registered into a VM `Natives` table.
//!
//! None of these touch files, the network or the environment: scripts get those only through
//! functions the host registers.

use sglc_vm::native::{Keywords, NativeCtx, Natives};
use sglc_vm::value::{Dict, Items, Str, Value, range_count};
use std::rc::Rc;

type R = Result<Value, String>;

/// A `Natives` table holding the whole standard library.
pub fn natives() -> Natives {
    let mut n = Natives::new();
    install(&mut n);
    n
}

/// Adds the standard library to an existing table (host functions may already be in it).
pub fn install(n: &mut Natives) {
    install_functions(n);
    install_str_methods(n);
    install_list_methods(n);
    install_map_methods(n);
    mark_jit_safe(n);
}

/// What compiled code may call: everything here except `print` (output) and `sort` (it can
/// fail halfway through, with the list half sorted). See `Natives::mark_jit_safe`.
fn mark_jit_safe(n: &mut Natives) {
    n.mark_jit_safe(&[
        "len",
        "str",
        "int",
        "float",
        "bool",
        "abs",
        "round",
        "div",
        "range",
        "zip",
        "enumerate",
        "list",
        "min",
        "max",
        "sum",
        "sorted",
        "reversed",
        "json_parse",
        "json_dump",
        "type",
    ]);
    n.mark_jit_safe_methods(
        "str",
        &[
            "strip",
            "lstrip",
            "rstrip",
            "lower",
            "upper",
            "split",
            "splitlines",
            "join",
            "replace",
            "startswith",
            "endswith",
            "find",
            "count",
            "isdigit",
            "format",
        ],
    );
    n.mark_jit_safe_methods(
        "list",
        &[
            "append", "extend", "pop", "insert", "index", "count", "reverse", "copy",
        ],
    );
    n.mark_jit_safe_methods(
        "map",
        &["get", "keys", "values", "items", "pop", "update", "copy"],
    );
}

fn keyword<'a>(kwargs: Keywords<'a>, name: &str) -> Option<&'a Value> {
    kwargs.iter().find(|(k, _)| &**k == name).map(|(_, v)| v)
}

fn no_keywords(kwargs: Keywords) -> Result<(), String> {
    match kwargs.first() {
        Some((k, _)) => Err(format!("unexpected keyword argument `{k}`")),
        None => Ok(()),
    }
}

fn only_keywords(kwargs: Keywords, allowed: &[&str]) -> Result<(), String> {
    match kwargs.iter().find(|(k, _)| !allowed.contains(&&**k)) {
        Some((k, _)) => Err(format!(
            "unexpected keyword argument `{k}` (accepted: {})",
            allowed.join(", ")
        )),
        None => Ok(()),
    }
}

fn as_int(v: &Value, what: &str) -> Result<i64, String> {
    match v {
        Value::Int(n) => Ok(*n),
        Value::Bool(b) => Ok(i64::from(*b)),
        other => Err(format!("{what} must be an int, not {}", other.type_name())),
    }
}

fn as_str<'a>(v: &'a Value, what: &str) -> Result<&'a str, String> {
    v.as_str()
        .ok_or_else(|| format!("{what} must be a string, not {}", v.type_name()))
}

/// The items of anything iterable: a list, the chars of a string, the keys of a map.
fn items(v: &Value) -> Result<Vec<Value>, String> {
    match v {
        Value::List(l) => Ok(l.borrow().to_vec()),
        Value::Str(s) => Ok(s.chars().map(|c| Value::string(c.to_string())).collect()),
        Value::Map(m) => Ok(m.borrow().keys().map(|k| Value::Str(k.clone())).collect()),
        other => Err(format!("{} is not iterable", other.type_name())),
    }
}

fn sort_values(values: &mut [Value]) -> Result<(), String> {
    let mut error = None;
    values.sort_by(|a, b| {
        a.compare(b).unwrap_or_else(|| {
            error.get_or_insert_with(|| {
                format!("cannot order {} and {}", a.type_name(), b.type_name())
            });
            std::cmp::Ordering::Equal
        })
    });
    error.map_or(Ok(()), Err)
}

fn extremum(args: &[Value], kwargs: Keywords, want: std::cmp::Ordering, name: &str) -> R {
    no_keywords(kwargs)?;
    let candidates = if args.len() == 1 {
        items(&args[0])?
    } else {
        args.to_vec()
    };
    let mut best: Option<Value> = None;
    for v in candidates {
        best = Some(match best {
            None => v,
            Some(b) => match v.compare(&b) {
                Some(o) if o == want => v,
                Some(_) => b,
                None => {
                    return Err(format!(
                        "cannot compare {} and {}",
                        v.type_name(),
                        b.type_name()
                    ));
                }
            },
        });
    }
    best.ok_or_else(|| format!("{name}() of an empty sequence"))
}

fn install_functions(n: &mut Natives) {
    n.register("len", 1, Some(1), |_, args, kw| {
        no_keywords(kw)?;
        let len = match &args[0] {
            // Counted in characters; an ASCII string (checked a word at a time) has as many
            // as bytes.
            Value::Str(s) if s.is_ascii() => s.len(),
            Value::Str(s) => s.chars().count(),
            Value::List(l) => l.borrow().len(),
            Value::Map(m) => m.borrow().len(),
            other => return Err(format!("{} has no length", other.type_name())),
        };
        Ok(Value::Int(len as i64))
    });
    n.register("str", 1, Some(1), |_, args, _| {
        Ok(Value::Str(args[0].display_str()))
    });
    n.register("int", 1, Some(1), |_, args, _| match &args[0] {
        Value::Int(i) => Ok(Value::Int(*i)),
        Value::Bool(b) => Ok(Value::Int(i64::from(*b))),
        Value::Float(x) if x.is_finite() && x.abs() < 9.2e18 => Ok(Value::Int(x.trunc() as i64)),
        Value::Float(x) => Err(format!("cannot convert {x} to int")),
        Value::Str(s) => s
            .trim()
            .parse()
            .map(Value::Int)
            .map_err(|_| format!("invalid int literal {:?}", &**s)),
        other => Err(format!("cannot convert {} to int", other.type_name())),
    });
    n.register("float", 1, Some(1), |_, args, _| match &args[0] {
        Value::Str(s) => s
            .trim()
            .parse()
            .map(Value::Float)
            .map_err(|_| format!("invalid float literal {:?}", &**s)),
        v => v
            .as_float()
            .map(Value::Float)
            .ok_or_else(|| format!("cannot convert {} to float", v.type_name())),
    });
    n.register("bool", 1, Some(1), |_, args, _| {
        Ok(Value::Bool(args[0].is_truthy()))
    });
    n.register("abs", 1, Some(1), |_, args, _| match &args[0] {
        Value::Int(i) => i
            .checked_abs()
            .map(Value::Int)
            .ok_or_else(|| "integer overflow".to_string()),
        Value::Float(x) => Ok(Value::Float(x.abs())),
        other => Err(format!("abs() of {}", other.type_name())),
    });
    n.register("round", 1, Some(2), |_, args, _| {
        let x = args[0]
            .as_float()
            .ok_or_else(|| format!("round() of {}", args[0].type_name()))?;
        match args.get(1) {
            None => Ok(Value::Int(x.round() as i64)),
            Some(d) => {
                let scale = 10f64.powi(as_int(d, "digits")? as i32);
                Ok(Value::Float((x * scale).round() / scale))
            }
        }
    });
    n.register("div", 2, Some(2), |_, args, _| {
        let (a, b) = (as_int(&args[0], "dividend")?, as_int(&args[1], "divisor")?);
        if b == 0 {
            return Err("division by zero".to_string());
        }
        // Floored, as Python's `//`: the quotient rounds towards negative infinity.
        let q = a
            .checked_div(b)
            .ok_or_else(|| "integer overflow".to_string())?;
        Ok(Value::Int(if a % b != 0 && (a < 0) != (b < 0) {
            q - 1
        } else {
            q
        }))
    });
    n.register("range", 1, Some(3), |ctx, args, _| {
        let ints: Vec<i64> = args
            .iter()
            .map(|a| as_int(a, "range bound"))
            .collect::<Result<_, _>>()?;
        let (start, stop, step) = match ints.as_slice() {
            [stop] => (0, *stop, 1),
            [start, stop] => (*start, *stop, 1),
            [start, stop, step] => (*start, *stop, *step),
            _ => unreachable!("arity checked"),
        };
        if step == 0 {
            return Err("range() step must not be zero".to_string());
        }
        let count = range_count(start, stop, step);
        ctx.limits
            .fits_items(usize::try_from(count).unwrap_or(usize::MAX))?;
        // Every item lies between start and stop, so fits in i64.
        Ok(Value::list(
            (0..count)
                .map(|i| Value::Int((i128::from(start) + i * i128::from(step)) as i64))
                .collect(),
        ))
    });
    n.register("zip", 0, None, |_, args, _| {
        let lists: Vec<Vec<Value>> = args.iter().map(items).collect::<Result<_, _>>()?;
        let len = lists.iter().map(Vec::len).min().unwrap_or(0);
        Ok(Value::list(
            (0..len)
                .map(|i| Value::list(lists.iter().map(|l| l[i].clone()).collect()))
                .collect(),
        ))
    });
    n.register("enumerate", 1, Some(2), |_, args, _| {
        let start = args
            .get(1)
            .map(|s| as_int(s, "start"))
            .transpose()?
            .unwrap_or(0);
        Ok(Value::list(
            items(&args[0])?
                .into_iter()
                .enumerate()
                .map(|(i, v)| Value::list(vec![Value::Int(start + i as i64), v]))
                .collect(),
        ))
    });
    n.register("list", 0, Some(1), |_, args, _| {
        Ok(Value::list(
            args.first().map(items).transpose()?.unwrap_or_default(),
        ))
    });
    n.register("min", 1, None, |_, args, kw| {
        extremum(args, kw, std::cmp::Ordering::Less, "min")
    });
    n.register("max", 1, None, |_, args, kw| {
        extremum(args, kw, std::cmp::Ordering::Greater, "max")
    });
    n.register("sum", 1, Some(2), |_, args, _| {
        let mut total = args.get(1).cloned().unwrap_or(Value::Int(0));
        for v in items(&args[0])? {
            total = match (&total, &v) {
                (Value::Int(a), Value::Int(b)) => Value::Int(
                    a.checked_add(*b)
                        .ok_or_else(|| "integer overflow in sum".to_string())?,
                ),
                _ => match (total.as_float(), v.as_float()) {
                    (Some(a), Some(b)) => Value::Float(a + b),
                    _ => {
                        return Err(format!(
                            "cannot sum {} and {}",
                            total.type_name(),
                            v.type_name()
                        ));
                    }
                },
            };
        }
        Ok(total)
    });
    n.register("sorted", 1, Some(1), |_, args, kw| {
        only_keywords(kw, &["reverse"])?;
        let mut values = items(&args[0])?;
        sort_values(&mut values)?;
        if keyword(kw, "reverse").is_some_and(Value::is_truthy) {
            values.reverse();
        }
        Ok(Value::list(values))
    });
    n.register("reversed", 1, Some(1), |_, args, _| {
        let mut values = items(&args[0])?;
        values.reverse();
        Ok(Value::list(values))
    });
    n.register("print", 0, None, |ctx: &mut NativeCtx, args, kw| {
        only_keywords(kw, &["sep"])?;
        let sep = keyword(kw, "sep")
            .map(|s| as_str(s, "sep"))
            .transpose()?
            .unwrap_or(" ");
        let line = args
            .iter()
            .map(Value::to_display)
            .collect::<Vec<_>>()
            .join(sep);
        ctx.output.push(line);
        Ok(Value::None)
    });
    n.register("json_parse", 1, Some(1), |_, args, _| {
        let text = as_str(&args[0], "json_parse's argument")?;
        serde_json::from_str::<serde_json::Value>(text)
            .map(|j| Value::from_json(&j))
            .map_err(|e| format!("invalid JSON: {e}"))
    });
    n.register("json_dump", 1, Some(1), |_, args, kw| {
        only_keywords(kw, &["indent"])?;
        let json = args[0].to_json();
        let text = if keyword(kw, "indent").is_some_and(Value::is_truthy) {
            serde_json::to_string_pretty(&json)
        } else {
            serde_json::to_string(&json)
        };
        text.map(Value::string).map_err(|e| e.to_string())
    });
    n.register("type", 1, Some(1), |_, args, _| {
        Ok(Value::str(args[0].type_name()))
    });
}

fn install_str_methods(n: &mut Natives) {
    fn method(n: &mut Natives, name: &str, f: fn(&str, &[Value], Keywords) -> R) {
        n.register_method("str", name, move |_, recv, args, kw| {
            f(recv.as_str().unwrap_or_default(), args, kw)
        });
    }
    fn arg<'a>(args: &'a [Value], i: usize, name: &str) -> Result<&'a str, String> {
        as_str(
            args.get(i)
                .ok_or_else(|| format!("missing argument `{name}`"))?,
            name,
        )
    }
    fn strip_chars(args: &[Value]) -> Result<Option<Vec<char>>, String> {
        Ok(args
            .first()
            .map(|c| as_str(c, "chars"))
            .transpose()?
            .map(|c| c.chars().collect()))
    }
    method(n, "strip", |s, args, _| {
        Ok(Value::str(match strip_chars(args)? {
            Some(chars) => s.trim_matches(chars.as_slice()),
            None => s.trim(),
        }))
    });
    method(n, "lstrip", |s, args, _| {
        Ok(Value::str(match strip_chars(args)? {
            Some(chars) => s.trim_start_matches(chars.as_slice()),
            None => s.trim_start(),
        }))
    });
    method(n, "rstrip", |s, args, _| {
        Ok(Value::str(match strip_chars(args)? {
            Some(chars) => s.trim_end_matches(chars.as_slice()),
            None => s.trim_end(),
        }))
    });
    method(n, "lower", |s, _, _| Ok(Value::string(s.to_lowercase())));
    method(n, "upper", |s, _, _| Ok(Value::string(s.to_uppercase())));
    method(n, "split", |s, args, kw| {
        only_keywords(kw, &["sep", "maxsplit"])?;
        let sep = match args.first().or(keyword(kw, "sep")) {
            None | Some(Value::None) => None,
            Some(v) => Some(as_str(v, "sep")?),
        };
        let maxsplit = args
            .get(1)
            .or(keyword(kw, "maxsplit"))
            .map(|m| as_int(m, "maxsplit"))
            .transpose()?;
        let parts: Vec<Value> = match (sep, maxsplit) {
            (Some(""), _) => return Err("empty separator".to_string()),
            (Some(sep), Some(m)) if m >= 0 => {
                s.splitn(m as usize + 1, sep).map(Value::str).collect()
            }
            // One byte, the usual case (`" "`, `","`): an ASCII character, so a plain scan of
            // the bytes (no char decoding; for short strings, faster than `memchr`'s setup).
            (Some(sep), _) if sep.len() == 1 => {
                let byte = sep.as_bytes()[0];
                // One pass; a sentence's words fit the first allocation.
                let mut parts = Vec::with_capacity(8);
                let mut start = 0;
                for (at, &b) in s.as_bytes().iter().enumerate() {
                    if b == byte {
                        // SAFETY: `byte` is ASCII (a one-byte `&str`), so the positions on
                        // either side of it are character boundaries, as are 0 and the end.
                        parts.push(Value::str(unsafe { s.get_unchecked(start..at) }));
                        start = at + 1;
                    }
                }
                parts.push(Value::str(unsafe { s.get_unchecked(start..) }));
                // Strings: nothing to pack (see `Items`), so no scan for it.
                return Ok(Value::list_of(Items::Values(parts)));
            }
            (Some(sep), _) => s.split(sep).map(Value::str).collect(),
            (None, Some(m)) if m >= 0 => {
                let mut out = Vec::new();
                let mut rest = s.trim_start();
                while !rest.is_empty() {
                    if out.len() as i64 == m {
                        out.push(Value::str(rest));
                        break;
                    }
                    let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
                    out.push(Value::str(&rest[..end]));
                    rest = rest[end..].trim_start();
                }
                out
            }
            (None, _) => s.split_whitespace().map(Value::str).collect(),
        };
        Ok(Value::list(parts))
    });
    method(n, "splitlines", |s, _, _| {
        Ok(Value::list(s.lines().map(Value::str).collect()))
    });
    // `join` and `replace` can build a string far larger than their inputs: they check the
    // size limit before allocating it.
    n.register_method("str", "join", |ctx, recv, args, _| {
        let s = recv.as_str().unwrap_or_default();
        let list = args.first().ok_or("join needs a list")?;
        let parts: Vec<Value> = items(list)?;
        let mut total = s.len().saturating_mul(parts.len().saturating_sub(1));
        for part in &parts {
            match part {
                Value::Str(p) => total = total.saturating_add(p.len()),
                other => return Err(format!("join needs strings, found {}", other.type_name())),
            }
        }
        ctx.limits.fits_string(total)?;
        let mut out = String::with_capacity(total);
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                out.push_str(s);
            }
            out.push_str(part.as_str().unwrap_or_default());
        }
        Ok(Value::string(out))
    });
    n.register_method("str", "replace", |ctx, recv, args, _| {
        let s = recv.as_str().unwrap_or_default();
        let (old, new) = (arg(args, 0, "old")?, arg(args, 1, "new")?);
        if new.len() > old.len() {
            let count = if old.is_empty() {
                s.chars().count() + 1
            } else {
                s.matches(old).count()
            };
            ctx.limits.fits_string(
                s.len()
                    .saturating_add(count.saturating_mul(new.len() - old.len())),
            )?;
        }
        Ok(Value::string(s.replace(old, new)))
    });
    method(n, "startswith", |s, args, _| {
        Ok(Value::Bool(s.starts_with(arg(args, 0, "prefix")?)))
    });
    method(n, "endswith", |s, args, _| {
        Ok(Value::Bool(s.ends_with(arg(args, 0, "suffix")?)))
    });
    method(n, "find", |s, args, _| {
        let needle = arg(args, 0, "sub")?;
        Ok(Value::Int(match s.find(needle) {
            Some(byte) => s[..byte].chars().count() as i64,
            None => -1,
        }))
    });
    method(n, "count", |s, args, _| {
        Ok(Value::Int(s.matches(arg(args, 0, "sub")?).count() as i64))
    });
    method(n, "isdigit", |s, _, _| {
        Ok(Value::Bool(
            !s.is_empty() && s.chars().all(|c| c.is_ascii_digit()),
        ))
    });
    method(n, "format", |s, args, kw| {
        format_string(s, args, kw).map(Value::string)
    });
}

/// `"{} is {name}".format(a, name=b)`: positional `{}`/`{0}` and named `{key}` fields.
fn format_string(template: &str, args: &[Value], kwargs: Keywords) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut next_positional = 0;
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                out.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                out.push('}');
            }
            '{' => {
                let mut field = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(ch) => field.push(ch),
                        None => return Err("unclosed `{` in format string".to_string()),
                    }
                }
                let value = if field.is_empty() {
                    next_positional += 1;
                    args.get(next_positional - 1)
                        .ok_or_else(|| format!("format needs more than {} arguments", args.len()))?
                } else if let Ok(i) = field.parse::<usize>() {
                    args.get(i)
                        .ok_or_else(|| format!("no positional argument {i}"))?
                } else {
                    keyword(kwargs, &field).ok_or_else(|| format!("no argument named `{field}`"))?
                };
                out.push_str(&value.to_display());
            }
            '}' => return Err("single `}` in format string".to_string()),
            other => out.push(other),
        }
    }
    Ok(out)
}

fn install_list_methods(n: &mut Natives) {
    fn list_of(v: &Value) -> &sglc_vm::value::List {
        match v {
            Value::List(l) => l,
            _ => unreachable!("registered on lists"),
        }
    }
    n.register_method("list", "append", |_, recv, args, _| {
        let item = args.first().cloned().ok_or("append needs an item")?;
        list_of(recv).borrow_mut().push(item);
        Ok(Value::None)
    });
    n.register_method("list", "extend", |_, recv, args, _| {
        let more = items(args.first().ok_or("extend needs a list")?)?;
        list_of(recv).borrow_mut().extend_from(&Items::from(more));
        Ok(Value::None)
    });
    n.register_method("list", "pop", |_, recv, args, _| {
        let mut list = list_of(recv).borrow_mut();
        let len = list.len() as i64;
        let i = args
            .first()
            .map(|i| as_int(i, "index"))
            .transpose()?
            .unwrap_or(-1);
        let at = if i < 0 { len + i } else { i };
        if !(0..len).contains(&at) {
            return Err(if len == 0 {
                "pop from an empty list".to_string()
            } else {
                format!("pop index {i} out of range")
            });
        }
        Ok(list.remove(at as usize))
    });
    n.register_method("list", "insert", |_, recv, args, _| {
        let mut list = list_of(recv).borrow_mut();
        let i = as_int(args.first().ok_or("insert needs an index")?, "index")?;
        let item = args.get(1).cloned().ok_or("insert needs an item")?;
        let len = list.len() as i64;
        let at = if i < 0 { (len + i).max(0) } else { i.min(len) };
        list.insert(at as usize, item);
        Ok(Value::None)
    });
    n.register_method("list", "index", |_, recv, args, _| {
        let item = args.first().ok_or("index needs an item")?;
        list_of(recv)
            .borrow()
            .iter()
            .position(|v| v.equals(item))
            .map(|i| Value::Int(i as i64))
            .ok_or_else(|| format!("{} is not in the list", item.repr()))
    });
    n.register_method("list", "count", |_, recv, args, _| {
        let item = args.first().ok_or("count needs an item")?;
        Ok(Value::Int(
            list_of(recv)
                .borrow()
                .iter()
                .filter(|v| v.equals(item))
                .count() as i64,
        ))
    });
    n.register_method("list", "reverse", |_, recv, _, _| {
        list_of(recv).borrow_mut().reverse();
        Ok(Value::None)
    });
    n.register_method("list", "sort", |_, recv, _, kw| {
        only_keywords(kw, &["reverse"])?;
        let mut list = list_of(recv).borrow_mut();
        match &mut *list {
            Items::Values(values) => sort_values(values)?,
            Items::Bools(bools) => bools.sort_unstable(),
            Items::Ints(ints) => ints.sort_unstable(),
        }
        if keyword(kw, "reverse").is_some_and(Value::is_truthy) {
            list.reverse();
        }
        Ok(Value::None)
    });
    n.register_method("list", "copy", |_, recv, _, _| {
        Ok(Value::list_of(list_of(recv).borrow().clone()))
    });
}

fn install_map_methods(n: &mut Natives) {
    fn map_of(v: &Value) -> &sglc_vm::value::Map {
        match v {
            Value::Map(m) => m,
            _ => unreachable!("registered on maps"),
        }
    }
    fn key(args: &[Value]) -> Result<Str, String> {
        match args.first() {
            Some(Value::Str(s)) => Ok(s.clone()),
            Some(other) => Err(format!("map keys are strings, not {}", other.type_name())),
            None => Err("missing key".to_string()),
        }
    }
    n.register_method("map", "get", |_, recv, args, _| {
        let k = key(args)?;
        Ok(map_of(recv)
            .borrow()
            .get(k.as_str())
            .cloned()
            .unwrap_or_else(|| args.get(1).cloned().unwrap_or_default()))
    });
    n.register_method("map", "keys", |_, recv, _, _| {
        Ok(Value::list(
            map_of(recv)
                .borrow()
                .keys()
                .map(|k| Value::Str(k.clone()))
                .collect(),
        ))
    });
    n.register_method("map", "values", |_, recv, _, _| {
        Ok(Value::list(
            map_of(recv).borrow().values().cloned().collect(),
        ))
    });
    n.register_method("map", "items", |_, recv, _, _| {
        Ok(Value::list(
            map_of(recv)
                .borrow()
                .iter()
                .map(|(k, v)| Value::list(vec![Value::Str(k.clone()), v.clone()]))
                .collect(),
        ))
    });
    n.register_method("map", "pop", |_, recv, args, _| {
        let k = key(args)?;
        match map_of(recv).borrow_mut().shift_remove(k.as_str()) {
            Some(v) => Ok(v),
            None => args
                .get(1)
                .cloned()
                .ok_or_else(|| format!("map has no key {:?}", &*k)),
        }
    });
    n.register_method("map", "update", |_, recv, args, _| {
        let other = match args.first() {
            Some(Value::Map(m)) => m.borrow().clone(),
            _ => return Err("update needs a map".to_string()),
        };
        map_of(recv).borrow_mut().extend(other);
        Ok(Value::None)
    });
    n.register_method("map", "copy", |_, recv, _, _| {
        let copy: Dict = map_of(recv).borrow().clone();
        Ok(Value::Map(Rc::new(std::cell::RefCell::new(copy))))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_fills_positional_and_named_fields() {
        let args = [Value::Int(1), Value::str("x")];
        let kw = [(sglc_vm::value::Str::from("k"), Value::Bool(true))];
        assert_eq!(
            format_string("{} {1} {k} {{}}", &args, &kw).unwrap(),
            "1 x true {}"
        );
        assert!(format_string("{", &args, &kw).is_err());
    }
}
