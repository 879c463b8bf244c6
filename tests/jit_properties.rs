//! Property test: random arithmetic and loop programs give the same result (value, or error
//! message and location) interpreted and compiled.

use proptest::prelude::*;
use sglc::{Engine, JitMode, JitTiers, RunConfig, TestBackend};

/// An expression over the variables in scope: integer-only, or with floats mixed in.
fn expr(vars: Vec<&'static str>, floats: bool) -> BoxedStrategy<String> {
    let literals: Vec<&str> = if floats {
        vec!["0.5", "2.0", "-1.5", "1e300", "3"]
    } else {
        vec!["3000000000", "7", "-3", "0", "1"]
    };
    let leaf = prop_oneof![
        (-20i64..20).prop_map(|n| n.to_string()),
        prop::sample::select(literals).prop_map(str::to_string),
        prop::sample::select(vars).prop_map(str::to_string),
    ];
    let ops: Vec<&str> = if floats {
        vec!["+", "-", "*", "%", "/"]
    } else {
        vec!["+", "-", "*", "%"]
    };
    leaf.prop_recursive(4, 24, 2, move |inner| {
        let ops = ops.clone();
        let mut choices = vec![
            (inner.clone(), prop::sample::select(ops), inner.clone())
                .prop_map(|(a, op, b)| format!("({a} {op} {b})"))
                .boxed(),
            inner.clone().prop_map(|a| format!("abs({a})")).boxed(),
            inner.clone().prop_map(|a| format!("(-{a})")).boxed(),
        ];
        if !floats {
            choices.push(
                (inner.clone(), inner.clone())
                    .prop_map(|(a, b)| format!("div({a}, {b})"))
                    .boxed(),
            );
        }
        proptest::strategy::Union::new(choices)
    })
    .boxed()
}

fn condition(floats: bool) -> impl Strategy<Value = String> {
    let side = || expr(vec!["a", "b", "x", "i"], floats);
    (
        side(),
        prop::sample::select(vec!["<", "<=", ">", ">=", "==", "!="]),
        side(),
    )
        .prop_map(|(l, op, r)| format!("{l} {op} {r}"))
}

/// `fn f(a, b)` with a loop, a branch and an accumulator; `main` calls it. In float programs
/// `x` is always a float (`* 1.0`), so the function has one type per variable.
fn program() -> impl Strategy<Value = String> {
    any::<bool>().prop_flat_map(|floats| {
        let to = if floats { " * 1.0" } else { "" };
        (
            expr(vec!["a", "b"], floats),
            1i64..12,
            condition(floats),
            expr(vec!["a", "b", "x", "i"], floats),
            expr(vec!["a", "b", "x", "i"], floats),
            expr(vec!["a", "x"], floats),
        )
            .prop_map(move |(init, n, cond, then, otherwise, result)| {
                format!(
                    "fn f(a, b) {{\n    let x = ({init}){to}\n    for i in range({n}) {{\n        if {cond} {{\n            x = ({then}){to}\n        }} else {{\n            x += ({otherwise}){to}\n        }}\n    }}\n    return ({result}){to}\n}}\n\nfn main(a, b) {{\n    return [f(a, b), f(b, a), f(a, 2)]\n}}\n"
                )
            })
    })
}

/// `main(args)` of `source` run with the JIT `mode`: its value, or its error (message and
/// location).
fn run(engine: &Engine, source: &str, mode: JitMode, args: serde_json::Value) -> String {
    run_tiers(engine, source, mode, JitTiers::Tiered, args)
}

/// `run` with the JIT's `tiers`.
fn run_tiers(
    engine: &Engine,
    source: &str,
    mode: JitMode,
    tiers: JitTiers,
    args: serde_json::Value,
) -> String {
    let script = match engine.compile("prop.sgl", source) {
        Ok(script) => script,
        Err(e) => return format!("compile: {}", e.render(false)),
    };
    let mut config = RunConfig::default();
    config.jit.mode = mode;
    config.jit.tiers = tiers;
    match engine.run(&script, "main", args, &config) {
        Ok(state) => state.return_value.to_string(),
        Err(e) => format!("error: {e:?}"),
    }
}

#[test]
fn compiled_and_interpreted_agree() {
    // PROPTEST_CASES=5000 for a longer search.
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(128);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(cases));
    let strategy = (
        program(),
        -1000i64..1000,
        prop_oneof![-5i64..5, Just(i64::MAX), Just(i64::MIN)],
    );
    let compiled_programs = std::cell::Cell::new(0);
    runner
        .run(&strategy, |(source, a, b)| {
            let engine = Engine::new(TestBackend::new());
            let args = serde_json::json!({"a": a, "b": b});
            let interpreted = run(&engine, &source, JitMode::Off, args.clone());
            for tiers in [JitTiers::Baseline, JitTiers::Optimized] {
                let compiled = run_tiers(&engine, &source, JitMode::Eager, tiers, args.clone());
                prop_assert_eq!(&interpreted, &compiled, "{} ({:?})", source, tiers);
            }
            if let Ok(script) = engine.compile("prop.sgl", &source) {
                let listing = engine.jit_listing(&script, Some("f"), &[]).unwrap();
                if !listing.contains("not compiled") {
                    compiled_programs.set(compiled_programs.get() + 1);
                }
            }
            Ok(())
        })
        .unwrap();
    // Most generated functions mix ints and floats in one variable and stay interpreted; the
    // rest must be a real share, or the comparison tests little.
    assert!(
        compiled_programs.get() * 6 >= cases,
        "only {} of {cases} programs compiled",
        compiled_programs.get()
    );
    eprintln!("{} of {cases} programs compiled", compiled_programs.get());
}

/// A string expression over `w` (the current word), `acc`, `items` and `k`.
fn string_expr() -> BoxedStrategy<String> {
    let leaf = prop::sample::select(vec![
        "w",
        "acc",
        "\"a\"",
        "\"b c\"",
        "\"\"",
        "str(k)",
        "w.upper()",
        "w.strip()",
        "w.replace(\"a\", \"xy\")",
        "\"-\".join(items)",
        "str(len(items))",
    ])
    .prop_map(str::to_string);
    leaf.prop_recursive(2, 6, 2, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} + {b})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("f\"{{{a}}}:{{{b}}}\"")),
            (inner.clone(), -3i64..4).prop_map(|(a, n)| format!("({a} * {n})")),
        ]
    })
    .boxed()
}

/// One statement of the loop body: string building, list and map updates, and operations that
/// fail on some inputs (an index out of range, `pop` on an empty list, `join` over ints).
fn string_statement() -> BoxedStrategy<String> {
    prop_oneof![
        string_expr().prop_map(|e| format!("acc = acc + {e}")),
        string_expr().prop_map(|e| format!("items.append({e})")),
        string_expr().prop_map(|e| format!(
            "let key = {e}\n        if key in counts {{ counts[key] += 1 }} else {{ counts[key] = 1 }}"
        )),
        Just("if len(items) > k { items.pop() }".to_string()),
        (string_expr(), string_expr()).prop_map(|(a, b)| format!(
            "if {a} < {b} {{ acc = acc.upper() }} else {{ acc = acc.lower() }}"
        )),
        (-4i64..4).prop_map(|i| format!("acc = acc + items[{i}]")),
        Just("items += [len(acc)]".to_string()),
        // An item taken for a number (an int, or a string: the guard's deopt and the error).
        (-3i64..3).prop_map(|i| format!("total += items[{i}]")),
        Just("total = total + len(w) * 0.5".to_string()),
        Just("if w == \"\" { acc = \"\" }".to_string()),
    ]
    .boxed()
}

fn string_program() -> impl Strategy<Value = String> {
    prop::collection::vec(string_statement(), 1..4).prop_map(|body| {
        format!(
            "fn g(words, k) {{\n    let acc = \"\"\n    let items = []\n    let counts = {{}}\n    let total = 0\n    for w in words {{\n        {}\n    }}\n    return [acc, items, counts, total]\n}}\n\nfn main(words, k) {{\n    return g(words, k)\n}}\n",
            body.join("\n        ")
        )
    })
}

/// The same for programs on strings, lists and maps, which compiled code runs through the
/// runtime helpers: same value, or same error message and location.
#[test]
fn compiled_and_interpreted_agree_on_strings_lists_and_maps() {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(128);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(cases));
    let words = prop::collection::vec(
        prop::sample::select(vec!["a", "b c", "", "hello", "A", " pad "]),
        0..6,
    );
    let strategy = (string_program(), words, -2i64..4);
    let compiled_programs = std::cell::Cell::new(0);
    // Programs whose run ends in an error: the error paths (a deopt, then the interpreter's
    // own error) must be exercised too.
    let failing_programs = std::cell::Cell::new(0);
    runner
        .run(&strategy, |(source, words, k)| {
            let engine = Engine::new(TestBackend::new());
            let args = serde_json::json!({"words": words, "k": k});
            let interpreted = run(&engine, &source, JitMode::Off, args.clone());
            for tiers in [JitTiers::Baseline, JitTiers::Optimized] {
                let compiled = run_tiers(&engine, &source, JitMode::Eager, tiers, args.clone());
                prop_assert_eq!(&interpreted, &compiled, "{} ({:?})", source, tiers);
            }
            if interpreted.starts_with("error") {
                failing_programs.set(failing_programs.get() + 1);
            }
            if let Ok(script) = engine.compile("prop.sgl", &source) {
                let types = ["obj".to_string(), "int".to_string()];
                let listing = engine.jit_listing(&script, Some("g"), &types).unwrap();
                if !listing.contains("not compiled") {
                    compiled_programs.set(compiled_programs.get() + 1);
                }
            }
            Ok(())
        })
        .unwrap();
    assert!(
        compiled_programs.get() * 2 >= cases,
        "only {} of {cases} programs compiled",
        compiled_programs.get()
    );
    assert!(
        failing_programs.get() * 20 >= cases && failing_programs.get() < cases,
        "{} of {cases} programs failed",
        failing_programs.get()
    );
    eprintln!(
        "{} of {cases} programs compiled, {} failed",
        compiled_programs.get(),
        failing_programs.get()
    );
}
