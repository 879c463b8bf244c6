//! Semantics of the language and the VM, checked with assertions: primitives, control flow,
//! the standard library, fork/join, batches and the scheduler's batching.

use serde_json::{Value as Json, json};
use sglc::backend::{BackendInfo, CallFuture, Request, RequestKind};
use sglc::{Backend, BackendError, Engine, RunConfig, TestBackend};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Runs `main` of `source` on the test backend and returns what it returned.
fn eval(source: &str) -> Json {
    let engine = Engine::new(TestBackend::new());
    let script = engine
        .compile("test.sgl", source)
        .unwrap_or_else(|e| panic!("{}", e.render(false)));
    engine
        .run(&script, "main", json!({}), &RunConfig::default())
        .unwrap_or_else(|e| panic!("{e}"))
        .return_value
}

/// Evaluates one expression.
fn expr(e: &str) -> Json {
    eval(&format!("fn main() {{ return {e} }}"))
}

fn run_error(source: &str) -> String {
    let engine = Engine::new(TestBackend::new());
    let script = engine
        .compile("test.sgl", source)
        .unwrap_or_else(|e| panic!("{}", e.render(false)));
    match engine.run(&script, "main", json!({}), &RunConfig::default()) {
        Ok(state) => panic!("expected an error, got {:?}", state.return_value),
        Err(e) => e.to_string(),
    }
}

/// A backend that records every request and answers from a TestBackend.
struct Recording {
    inner: TestBackend,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl Backend for Recording {
    fn info(&self) -> &BackendInfo {
        self.inner.info()
    }

    fn execute(&self, batch: Vec<Request>) -> Vec<CallFuture> {
        self.requests.lock().unwrap().extend(batch.iter().cloned());
        self.inner.execute(batch)
    }
}

fn recording(inner: TestBackend) -> (Engine, Arc<Mutex<Vec<Request>>>) {
    let requests = Arc::new(Mutex::new(Vec::new()));
    let engine = Engine::new(Recording {
        inner,
        requests: requests.clone(),
    });
    (engine, requests)
}

#[test]
fn arithmetic_and_comparison() {
    assert_eq!(expr("1 + 2 * 3 - 4"), json!(3));
    assert_eq!(expr("7 / 2"), json!(3.5));
    assert_eq!(expr("-7 % 3"), json!(2));
    assert_eq!(expr("7 % -3"), json!(-2));
    assert_eq!(expr("2.5 * 2"), json!(5.0));
    assert_eq!(
        expr("[1 < 2, 2 <= 1, 3 > 2, 3 >= 4, 1 == 1.0, 1 != 2]"),
        json!([true, false, true, false, true, true])
    );
    assert_eq!(
        expr("[not 0, 1 and 0, 0 or 5, none or false]"),
        json!([true, 0, 5, false])
    );
    assert_eq!(
        expr("[2 in [1, 2], \"b\" in \"abc\", \"k\" in {\"k\": 1}, 3 not in [3]]"),
        json!([true, true, true, false])
    );
    assert!(run_error("fn main() { return 1 / 0 }").contains("division by zero"));
    assert!(run_error("fn main() { return 9223372036854775807 + 1 }").contains("overflow"));
    assert!(run_error("fn main() { return \"a\" + 1 }").contains("cannot add str and int"));
    assert!(run_error("fn main() { return [1] < \"a\" }").contains("cannot compare"));
}

#[test]
fn control_flow() {
    let source = r#"
        fn main() {
            let out = []
            let i = 0
            while i < 10 {
                i += 1
                if i == 2 { continue } else if i == 6 { break }
                out.append(i)
            }
            for a, b in [[1, 2], [3, 4]] { out.append(a * b) }
            for ch in "xy" { out.append(ch) }
            for k in {"m": 1} { out.append(k) }
            if false { out.append("no") } else { out.append("else") }
            return out
        }
    "#;
    assert_eq!(
        eval(source),
        json!([1, 3, 4, 5, 2, 12, "x", "y", "m", "else"])
    );
    // break inside a for leaves the iterator stack balanced, also in nested loops.
    let nested = r#"
        fn main() {
            let hits = 0
            for i in range(5) {
                for j in range(5) { if j > i { break }; hits += 1 }
                if i == 3 { break }
            }
            return hits
        }
    "#;
    assert_eq!(eval(nested), json!(10));
}

#[test]
fn functions_recursion_and_values() {
    let source = r#"
        let K = 3
        fn fact(n) { if n <= 1 { return 1 }; return n * fact(n - 1) }
        fn add(a, b) { return a + b }
        fn call(f, x) { return f(x, K) }
        fn main() { return [fact(10), add(b=1, a=2), call(add, 4)] }
    "#;
    assert_eq!(eval(source), json!([3628800, 3, 7]));
}

#[test]
fn strings_and_fstrings() {
    assert_eq!(
        expr(r#"f"{1 + 1}-{"x"}-{{}}-{[1, "a"]}""#),
        json!("2-x-{}-[1, \"a\"]")
    );
    assert_eq!(expr(r#""héllo"[1:3]"#), json!("él"));
    assert_eq!(expr(r#""abc"[-1]"#), json!("c"));
    assert_eq!(expr(r#"" a b ".strip().split(" ")"#), json!(["a", "b"]));
    assert_eq!(expr(r#""a-b-c".split("-", 1)"#), json!(["a", "b-c"]));
    assert_eq!(
        expr(r#"[",a,,é,".split(","), "aé-é-b".split("é-")]"#),
        json!([["", "a", "", "é", ""], ["a", "", "b"]])
    );
    assert_eq!(expr(r#"", ".join(["x", "y"])"#), json!("x, y"));
    assert_eq!(
        expr(r#"["Ab".lower(), "Ab".upper(), "aXa".replace("a", "b")]"#),
        json!(["ab", "AB", "bXb"])
    );
    assert_eq!(
        expr(
            r#"["abc".startswith("ab"), "abc".endswith("bc"), "abc".find("c"), "abca".count("a")]"#
        ),
        json!([true, true, 2, 2])
    );
    assert_eq!(expr(r#""{}:{x}".format(1, x=2)"#), json!("1:2"));
    assert_eq!(
        expr(r#"["  x".lstrip(), "x  ".rstrip(), "12".isdigit(), "a\nb".splitlines()]"#),
        json!(["x", "x", true, ["a", "b"]])
    );
}

#[test]
fn standard_library_functions() {
    assert_eq!(
        expr("[len([1, 2]), len(\"abc\"), len({\"a\": 1})]"),
        json!([2, 3, 1])
    );
    assert_eq!(
        expr("[str(1), str(1.5), str(2.0), str(none), str(true)]"),
        json!(["1", "1.5", "2.0", "none", "true"])
    );
    assert_eq!(
        expr("[int(\"7\"), int(3.9), int(true), float(\"2.5\"), float(1)]"),
        json!([7, 3, 1, 2.5, 1.0])
    );
    assert_eq!(
        expr("[range(3), range(1, 4), range(6, 0, -2)]"),
        json!([[0, 1, 2], [1, 2, 3], [6, 4, 2]])
    );
    assert_eq!(
        expr("zip([1, 2], [\"a\", \"b\", \"c\"])"),
        json!([[1, "a"], [2, "b"]])
    );
    assert_eq!(
        expr("enumerate([\"a\", \"b\"], 1)"),
        json!([[1, "a"], [2, "b"]])
    );
    assert_eq!(
        expr("[min([3, 1, 2]), max(3, 7), sum([1, 2, 3]), sum([0.5, 1])]"),
        json!([1, 7, 6, 1.5])
    );
    assert_eq!(
        expr("[sorted([3, 1, 2]), sorted([\"b\", \"a\"], reverse=true)]"),
        json!([[1, 2, 3], ["b", "a"]])
    );
    assert_eq!(
        expr("json_parse(\"{\\\"a\\\": [1, 2.5, null, true]}\")"),
        json!({"a": [1, 2.5, null, true]})
    );
    assert_eq!(
        expr("json_dump({\"a\": [1, none]})"),
        json!("{\"a\":[1,null]}")
    );
    assert_eq!(
        expr("[abs(-2), round(2.5), round(1.234, 1), div(-7, 2), type([]), bool(\"\")]"),
        json!([2, 3, 1.2, -4, "list", false])
    );
    assert_eq!(
        expr("[list(\"ab\"), reversed([1, 2])]"),
        json!([["a", "b"], [2, 1]])
    );
    assert!(run_error("fn main() { return int(\"x\") }").contains("invalid int literal"));
    assert!(run_error("fn main() { return json_parse(\"{\") }").contains("invalid JSON"));
    assert!(run_error("fn main() { return min([]) }").contains("empty"));
}

#[test]
fn print_output_is_kept_with_the_result() {
    let engine = Engine::new(TestBackend::new());
    let script = engine
        .compile(
            "p.sgl",
            "fn main() { print(\"a\", 1, sep=\"-\"); print([none]) }",
        )
        .unwrap();
    let state = engine
        .run(&script, "main", json!({}), &RunConfig::default())
        .unwrap();
    assert_eq!(state.output, vec!["a-1", "[none]"]);
}

#[test]
fn lists_and_maps_have_reference_semantics() {
    let source = r#"
        fn grow(xs) { xs.append(len(xs)) }
        fn main() {
            let a = [0]
            let b = a
            grow(b)
            a += [9]
            let m = {"k": [1]}
            let inner = m["k"]
            inner.append(2)
            m.update({"z": 0})
            let popped = m.pop("z")
            return [a, b, m, popped, m.get("nope"), m.items(), [1, 2, 3].index(2)]
        }
    "#;
    assert_eq!(
        eval(source),
        json!([[0, 1, 9], [0, 1, 9], {"k": [1, 2]}, 0, null, [["k", [1, 2]]], 1])
    );
}

#[test]
fn comprehension_scopes_its_variables() {
    assert_eq!(
        expr("[x * y for x, y in [[1, 2], [3, 4]] if x > 1]"),
        json!([12])
    );
    let source = "fn main() { let x = \"outer\"; let ys = [x for x in [1, 2]]; return [x, ys] }";
    assert_eq!(eval(source), json!(["outer", [1, 2]]));
}

#[test]
fn gen_parameters_reach_the_backend() {
    let (engine, requests) = recording(TestBackend::new());
    let source = r#"
        fn main(s) {
            s += "Q: " + gen("a", max_tokens=7, min_tokens=2, stop=["\n", "END"], stop_token_ids=[2],
                temperature=0.2, top_p=0.9, top_k=40, min_p=0.05, frequency_penalty=0.1,
                presence_penalty=0.3, ignore_eos=true, regex="[a-z]+", seed=7)
            s += gen("b", json_schema={"type": "object"})
            s += gen("c")
        }
    "#;
    let script = engine.compile("g.sgl", source).unwrap();
    let config = RunConfig::default()
        .with_temperature(0.5)
        .with_max_new_tokens(11);
    engine.run(&script, "main", json!({}), &config).unwrap();
    let requests = requests.lock().unwrap();
    assert_eq!(requests.len(), 3);
    assert_eq!(&*requests[0].prompt, "Q: ");
    let RequestKind::Gen(a) = &requests[0].kind else {
        panic!("gen expected")
    };
    assert_eq!(
        (
            a.max_new_tokens,
            a.min_new_tokens,
            a.stop.clone(),
            a.stop_token_ids.clone()
        ),
        (7, 2, vec!["\n".to_string(), "END".to_string()], vec![2])
    );
    assert_eq!(
        (a.temperature, a.top_p, a.top_k, a.min_p),
        (0.2, 0.9, 40, 0.05)
    );
    assert_eq!(
        (a.frequency_penalty, a.presence_penalty, a.ignore_eos),
        (0.1, 0.3, true)
    );
    assert_eq!((a.regex.as_deref(), a.seed), (Some("[a-z]+"), Some(7)));
    let RequestKind::Gen(b) = &requests[1].kind else {
        panic!("gen expected")
    };
    assert_eq!(b.json_schema.as_deref(), Some(r#"{"type":"object"}"#));
    // Unset parameters take the run's defaults.
    let RequestKind::Gen(c) = &requests[2].kind else {
        panic!("gen expected")
    };
    assert_eq!((c.max_new_tokens, c.temperature), (11, 0.5));
    // Each gen sees the text generated before it.
    assert!(
        requests[2].prompt.starts_with("Q: ")
            && requests[2].prompt.len() > requests[1].prompt.len()
    );
}

#[test]
fn gen_respects_stop_and_max_tokens() {
    let backend = TestBackend::new().with_script(|r| {
        Some(format!(
            "one two{}three",
            if r.prompt.contains('x') { "|" } else { " " }
        ))
    });
    let engine = Engine::new(backend);
    let script = engine
        .compile(
            "s.sgl",
            "fn main(s) { s += \"x\" + gen(\"v\", stop=\"|\") }",
        )
        .unwrap();
    let state = engine
        .run(&script, "main", json!({}), &RunConfig::default())
        .unwrap();
    assert_eq!(state["v"], json!("one two"));
    assert_eq!(state.text, "xone two");
    let engine = Engine::new(TestBackend::new().with_words(20));
    let script = engine
        .compile("m.sgl", "fn main(s) { s += gen(\"v\", max_tokens=3) }")
        .unwrap();
    let state = engine
        .run(&script, "main", json!({}), &RunConfig::default())
        .unwrap();
    assert_eq!(state["v"].as_str().unwrap().split(' ').count(), 3);
    assert_eq!(state.meta["v"]["finish_reason"], json!("length"));
}

#[test]
fn select_chooses_a_choice_and_records_scores() {
    for method in [
        "token_length_normalized",
        "greedy",
        "unconditional_likelihood_normalized",
    ] {
        let backend = TestBackend::new().with_script(|_| Some("Paris".to_string()));
        let (engine, requests) = recording(backend);
        let source = format!(
            "fn main(s) {{ s += \"Capital: \" + select(\"city\", choices=[\"London\", \"Paris\", \"Rome\"], choices_method=\"{method}\", temperature=0.0) }}"
        );
        let script = engine.compile("sel.sgl", &source).unwrap();
        let state = engine
            .run(&script, "main", json!({}), &RunConfig::default())
            .unwrap();
        assert_eq!(state["city"], json!("Paris"));
        assert_eq!(state.text, "Capital: Paris");
        assert_eq!(state.meta["city"]["scores"].as_array().unwrap().len(), 3);
        assert_eq!(state.meta["city"]["method"], json!(method));
        let RequestKind::Select(params) = &requests.lock().unwrap()[0].kind else {
            panic!("select expected")
        };
        assert_eq!(params.choices, vec!["London", "Paris", "Rome"]);
    }
}

#[test]
fn roles_render_with_the_chat_template_and_build_messages() {
    let engine = Engine::new(TestBackend::new().with_script(|_| Some("Hi!".to_string())));
    let source = r#"
        fn main(s) {
            s += system("Be kind.")
            s += user("Hello")
            s += assistant(gen("reply"))
            return s.messages()
        }
    "#;
    let script = engine.compile("r.sgl", source).unwrap();
    let state = engine
        .run(&script, "main", json!({}), &RunConfig::default())
        .unwrap();
    assert_eq!(
        state.text,
        "<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\nHi!<|im_end|>\n"
    );
    assert_eq!(
        state.return_value,
        json!([{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi!"}])
    );
    assert_eq!(
        serde_json::to_value(&state.messages).unwrap(),
        state.return_value
    );
}

#[test]
fn gen_inside_a_role_sees_the_open_role() {
    let (engine, requests) = recording(TestBackend::new());
    let script = engine
        .compile(
            "o.sgl",
            "fn main(s) { s += user(\"q\"); s += assistant(gen(\"a\")) }",
        )
        .unwrap();
    engine
        .run(&script, "main", json!({}), &RunConfig::default())
        .unwrap();
    let requests = requests.lock().unwrap();
    assert_eq!(requests[0].open_role, Some(sglc::bytecode::Role::Assistant));
    assert_eq!(requests[0].messages.len(), 1);
    assert!(requests[0].prompt.ends_with("<|im_start|>assistant\n"));
}

#[test]
fn fragments_are_values() {
    let engine = Engine::new(TestBackend::new().with_script(|_| Some("42".to_string())));
    let source = r#"
        fn main(s) {
            let g = gen("n", dtype="int")
            let frag = user("Number?") + assistant("It is " + g)
            s += frag
            return [type(frag), s["n"] + 1]
        }
    "#;
    let script = engine.compile("f.sgl", source).unwrap();
    let state = engine
        .run(&script, "main", json!({}), &RunConfig::default())
        .unwrap();
    assert_eq!(state.return_value, json!(["fragment", 43]));
    assert!(
        state
            .text
            .ends_with("<|im_start|>assistant\nIt is 42<|im_end|>\n")
    );
}

#[test]
fn nested_programs_append_to_the_same_state() {
    let engine = Engine::new(TestBackend::new().with_script(|_| Some("ok".to_string())));
    let source = r#"
        fn step(s, n) { s += f"[{n}]" + gen(f"v{n}") }
        fn main(s) { for i in range(3) { step(s, i) }; return s.text() }
    "#;
    let script = engine.compile("n.sgl", source).unwrap();
    let state = engine
        .run(&script, "main", json!({}), &RunConfig::default())
        .unwrap();
    assert_eq!(state.return_value, json!("[0]ok[1]ok[2]ok"));
    assert_eq!(
        state.variables.keys().collect::<Vec<_>>(),
        vec!["v0", "v1", "v2"]
    );
}

#[test]
fn fork_branches_share_the_prefix_and_run_in_one_batch() {
    let backend = TestBackend::new().with_latency(Duration::from_millis(20));
    let sizes = backend.batch_sizes();
    let (engine, requests) = recording(backend);
    let source = r#"
        fn main(s) {
            s += "Prefix. "
            let forks = s.fork(4)
            for i, f in enumerate(forks) { f += f"Branch {i}: " + gen("out", max_tokens=2) }
            let first = forks[2]["out"]
            forks.join()
            return [first == s["out"][2], len(s["out"]), forks[3].text().startswith("Prefix. Branch 3: ")]
        }
    "#;
    let script = engine.compile("fork.sgl", source).unwrap();
    let state = engine
        .run(&script, "main", json!({}), &RunConfig::default())
        .unwrap();
    assert_eq!(state.return_value, json!([true, 4, true]));
    // The four branch gens were ready together and went to the backend as one batch.
    assert_eq!(*sizes.lock().unwrap(), vec![4]);
    for (i, r) in requests.lock().unwrap().iter().enumerate() {
        assert_eq!(&*r.prompt, format!("Prefix. Branch {i}: "));
    }
    // The parent's own text is unchanged by the branches.
    assert_eq!(state.text, "Prefix. ");
}

#[test]
fn reading_a_fork_variable_waits_for_its_gen() {
    // With latency, the read happens while the gen is still in flight; it must wait for it.
    let engine = Engine::new(
        TestBackend::new()
            .with_latency(Duration::from_millis(30))
            .with_script(|r| Some(format!("len{}", r.prompt.len()))),
    );
    let source = r#"
        fn main(s) {
            let f = s.fork(1)[0]
            f += "abc" + gen("x")
            f += "de" + gen("y")
            return [f["y"], f["x"]]
        }
    "#;
    let script = engine.compile("wait.sgl", source).unwrap();
    let state = engine
        .run(&script, "main", json!({}), &RunConfig::default())
        .unwrap();
    assert_eq!(state.return_value, json!(["len9", "len3"]));
}

#[test]
fn program_end_waits_for_pending_gens() {
    let engine = Engine::new(
        TestBackend::new()
            .with_latency(Duration::from_millis(10))
            .with_script(|_| Some("late".to_string())),
    );
    let script = engine
        .compile("end.sgl", "fn main(s) { s += gen(\"a\") + \"!\" }")
        .unwrap();
    let state = engine
        .run(&script, "main", json!({}), &RunConfig::default())
        .unwrap();
    assert_eq!(state.text, "late!");
}

#[test]
fn run_batch_keeps_input_order_and_isolates_failures() {
    let engine = Engine::new(TestBackend::new().with_latency(Duration::from_millis(2)));
    let source = r#"
        fn main(s, n) {
            if n == 3 { return [1][5] }
            s += f"n={n} " + gen("g", max_tokens=2)
            return n * 10
        }
    "#;
    let script = engine.compile("b.sgl", source).unwrap();
    let inputs: Vec<Json> = (0..50)
        .map(|n| json!({ "n": n }))
        .chain([json!({"m": 1}), json!([1])])
        .collect();
    let results = engine
        .run_batch(
            &script,
            "main",
            inputs,
            &RunConfig::default().with_concurrency(7),
        )
        .unwrap();
    assert_eq!(results.len(), 52);
    for (n, r) in results.iter().take(50).enumerate() {
        if n == 3 {
            assert!(r.as_ref().unwrap_err().message.contains("out of range"));
        } else {
            assert_eq!(r.as_ref().unwrap().return_value, json!(n * 10));
        }
    }
    assert!(
        results[50]
            .as_ref()
            .unwrap_err()
            .message
            .contains("missing argument `n`")
    );
    assert!(
        results[51]
            .as_ref()
            .unwrap_err()
            .message
            .contains("JSON object")
    );
}

#[test]
fn batch_results_equal_single_runs() {
    let engine = Engine::new(TestBackend::new());
    let script = engine
        .compile("e.sgl", include_str!("../examples/summarize.sgl"))
        .unwrap();
    let texts = ["one", "two", "three", "four"];
    let inputs: Vec<Json> = texts.iter().map(|t| json!({ "text": t })).collect();
    let batch = engine
        .run_batch(&script, "summarize", inputs.clone(), &RunConfig::default())
        .unwrap();
    for (input, result) in inputs.into_iter().zip(batch) {
        let single = engine
            .run(&script, "summarize", input, &RunConfig::default())
            .unwrap();
        assert_eq!(result.unwrap(), single);
    }
}

#[test]
fn ready_calls_reach_the_backend_in_full_batches() {
    let backend = TestBackend::new().with_max_batch(64);
    let sizes = backend.batch_sizes();
    let engine = Engine::new(backend);
    let script = engine
        .compile(
            "b.sgl",
            "fn main(s, i) { s += f\"{i}\" + gen(\"x\", max_tokens=1) }",
        )
        .unwrap();
    let inputs: Vec<Json> = (0..1000).map(|i| json!({ "i": i })).collect();
    let results = engine
        .run_batch(
            &script,
            "main",
            inputs,
            &RunConfig::default().with_concurrency(1000),
        )
        .unwrap();
    assert!(results.iter().all(Result::is_ok));
    let sizes = sizes.lock().unwrap();
    assert_eq!(sizes.iter().sum::<usize>(), 1000);
    assert_eq!(
        sizes.len(),
        16,
        "1000 ready calls in batches of 64: {sizes:?}"
    );
    assert!(sizes[..15].iter().all(|s| *s == 64));
}

#[test]
fn concurrency_bounds_programs_in_flight() {
    let backend = TestBackend::new().with_latency(Duration::from_millis(1));
    let sizes = backend.batch_sizes();
    let engine = Engine::new(backend);
    let script = engine
        .compile("c.sgl", "fn main(s, i) { s += gen(\"x\", max_tokens=1) }")
        .unwrap();
    let inputs: Vec<Json> = (0..40).map(|i| json!({ "i": i })).collect();
    engine
        .run_batch(
            &script,
            "main",
            inputs,
            &RunConfig::default().with_concurrency(5),
        )
        .unwrap();
    assert!(sizes.lock().unwrap().iter().all(|s| *s <= 5));
}

/// A backend that fails every call whose prompt contains "fail".
struct Flaky(TestBackend);

impl Backend for Flaky {
    fn info(&self) -> &BackendInfo {
        self.0.info()
    }

    fn execute(&self, batch: Vec<Request>) -> Vec<CallFuture> {
        let failing: Vec<bool> = batch.iter().map(|r| r.prompt.contains("fail")).collect();
        let answers = self.0.execute(batch);
        answers
            .into_iter()
            .zip(failing)
            .map(|(answer, fail)| -> CallFuture {
                if fail {
                    Box::pin(futures::future::ready(Err(BackendError {
                        backend: "flaky".to_string(),
                        message: "HTTP 500 from the server".to_string(),
                    })))
                } else {
                    answer
                }
            })
            .collect()
    }
}

#[test]
fn a_backend_error_fails_only_its_program_and_points_at_the_call() {
    let engine = Engine::new(Flaky(TestBackend::new()));
    let source = "fn main(s, word) {\n    s += word + gen(\"x\")\n    s += \"after\"\n}\n";
    let script = engine.compile("f.sgl", source).unwrap();
    let inputs = vec![
        json!({"word": "ok"}),
        json!({"word": "fail"}),
        json!({"word": "fine"}),
    ];
    let results = engine
        .run_batch(&script, "main", inputs, &RunConfig::default())
        .unwrap();
    assert!(results[0].is_ok() && results[2].is_ok());
    let error = results[1].as_ref().unwrap_err();
    assert_eq!(error.message, "backend flaky: HTTP 500 from the server");
    let span = error.span().unwrap();
    assert_eq!(&source[span.range()], "gen(\"x\")");
}

#[test]
fn host_functions_are_callable_and_checked() {
    let mut engine = Engine::new(TestBackend::new());
    engine.register_fn("lookup", 1, |args| match args[0].as_str() {
        Some("half") => Ok(json!(0.5)),
        _ => Err("unknown key".to_string()),
    });
    let script = engine
        .compile("h.sgl", "fn main() { return lookup(\"half\") * 3 }")
        .unwrap();
    assert_eq!(
        engine
            .run(&script, "main", json!({}), &RunConfig::default())
            .unwrap()
            .return_value,
        json!(1.5)
    );
    let script = engine
        .compile("h.sgl", "fn main() { return lookup(\"e\") }")
        .unwrap();
    let error = engine
        .run(&script, "main", json!({}), &RunConfig::default())
        .unwrap_err();
    assert!(error.to_string().contains("lookup: unknown key"), "{error}");
    let error = engine
        .compile("h.sgl", "fn main() { return lookup(1, 2) }")
        .unwrap_err();
    assert!(
        error
            .render(false)
            .contains("`lookup` takes 1 arguments but 2 were given")
    );
}

#[test]
fn a_long_loop_does_not_starve_other_programs() {
    // Instances run in slices: a busy program yields, so short ones finish first.
    let engine = Engine::new(TestBackend::new());
    let source = r#"
        fn main(s, n) {
            let i = 0
            while i < n { i += 1 }
            return n
        }
    "#;
    let script = engine.compile("l.sgl", source).unwrap();
    let order = Mutex::new(Vec::new());
    let inputs = vec![json!({"n": 300000}), json!({"n": 1}), json!({"n": 2})];
    engine
        .run_batch_with(&script, "main", inputs, &RunConfig::default(), |i, r| {
            assert!(r.is_ok());
            order.lock().unwrap().push(i);
        })
        .unwrap();
    assert_eq!(order.into_inner().unwrap(), vec![1, 2, 0]);
}

#[test]
fn unknown_function_lists_the_available_ones() {
    let engine = Engine::new(TestBackend::new());
    let script = engine.compile("u.sgl", "fn a(s) {}\nfn b(s) {}").unwrap();
    let error = engine
        .run(&script, "c", json!({}), &RunConfig::default())
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "no function `c` in this program (functions: a, b)"
    );
    assert_eq!(script.default_function(), None);
}

#[test]
fn bytecode_serialises_and_round_trips() {
    let engine = Engine::new(TestBackend::new());
    let script = engine
        .compile("j.sgl", include_str!("../examples/judge.sgl"))
        .unwrap();
    let json = serde_json::to_string(&*script.program).unwrap();
    let back: sglc::Program = serde_json::from_str(&json).unwrap();
    assert_eq!(back, *script.program);
}

#[test]
fn list_and_map_methods() {
    let source = r#"
        fn main() {
            let xs = [3, 1, 2]
            xs.extend([5])
            xs.insert(0, 9)
            let last = xs.pop()
            let first = xs.pop(0)
            xs.sort()
            let copy = xs.copy()
            xs.reverse()
            let m = {"a": 1, "b": 2}
            let mc = m.copy()
            mc["c"] = 3
            return [xs, copy, last, first, [1, 2, 1].count(1), m.keys(), m.values(), len(mc), len(m)]
        }
    "#;
    assert_eq!(
        eval(source),
        json!([[3, 2, 1], [1, 2, 3], 5, 9, 2, ["a", "b"], [1, 2], 3, 2])
    );
}

#[test]
fn nesting_is_bounded_and_parsing_stays_linear() {
    let engine = Engine::new(TestBackend::new());
    // 150 levels parse and run (this was exponential before the list parser was factored).
    let ok = format!(
        "fn main() {{ return {}1{} }}",
        "[".repeat(150),
        "]".repeat(150)
    );
    let script = engine.compile("deep.sgl", &ok).unwrap();
    assert!(
        engine
            .run(&script, "main", json!({}), &RunConfig::default())
            .is_ok()
    );
    // 10,000 levels are refused with a diagnostic instead of a stack overflow.
    let deep = format!(
        "fn main() {{ return {}{} }}",
        "(".repeat(10_000),
        ")".repeat(10_000)
    );
    let error = engine.compile("deep.sgl", &deep).unwrap_err();
    assert!(
        error
            .render(false)
            .contains("[E0011] Error: nesting deeper than 200 levels")
    );
}

fn collect_stream(engine: &Engine, script: &sglc::Script, args: Json) -> Vec<sglc::StreamEvent> {
    let stream = engine.run_stream(script, "main", args, &RunConfig::default());
    futures::executor::block_on_stream(Box::pin(stream)).collect()
}

#[test]
fn streamed_chunks_add_up_to_the_final_text() {
    use sglc::StreamEvent;
    let engine = Engine::new(TestBackend::new().with_latency(Duration::from_millis(2)));
    let source = r#"
        fn main(s, topic) {
            s += system("Be brief.")
            s += user(f"Tell me about {topic}.")
            s += assistant(gen("answer", max_tokens=5) + " / " + select("mood", choices=["good", "bad"]))
            let forks = s.fork(2)
            for f in forks { f += gen("side", max_tokens=2) }
            forks.join()
        }
    "#;
    let script = engine.compile("stream.sgl", source).unwrap();
    let events = collect_stream(&engine, &script, json!({"topic": "rivers"}));
    let streamed: String = events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Text { text } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    let state = engine
        .run(
            &script,
            "main",
            json!({"topic": "rivers"}),
            &RunConfig::default(),
        )
        .unwrap();
    assert_eq!(streamed, state.text);
    assert_eq!(events.last(), Some(&StreamEvent::Done));
    let started: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::VarStarted { name } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        started,
        vec!["answer", "mood"],
        "forks do not stream into the parent"
    );
    assert!(events.contains(&StreamEvent::VarFinished {
        name: "mood".to_string(),
        value: state["mood"].clone()
    }));
    assert!(events.contains(&StreamEvent::RoleBegin {
        role: "assistant".to_string()
    }));
}

#[test]
fn a_failing_stream_ends_with_an_error_event() {
    let engine = Engine::new(TestBackend::new());
    let script = engine
        .compile("e.sgl", "fn main(s) { s += \"x\"; return [][1] }")
        .unwrap();
    let events = collect_stream(&engine, &script, json!({}));
    assert!(
        matches!(events.last(), Some(sglc::StreamEvent::Error { message }) if message.contains("out of range"))
    );
    let events = collect_stream(&engine, &script, json!({"extra": 1}));
    assert!(
        matches!(events.last(), Some(sglc::StreamEvent::Error { message }) if message.contains("no parameter `extra`"))
    );
}

/// The interpreter fuses common sequences (`a < b` then branch, `x = a + k`, `list[i]`,
/// `list[i] = false`, `for i in range(...)`) for ints; every other case takes the original
/// instructions and gives the same results and errors.
#[test]
fn fused_sequences_fall_back_on_other_types() {
    let source = r#"fn main() {
    let a = "b"
    let b = "a"
    let out = []
    if a < b { out.append("lt") } else { out.append("ge") }
    if a < 1.5 { out.append("never") }
}
"#;
    assert!(run_error(source).contains("cannot compare str < float"));
    let source = r#"fn main() {
    let out = []
    let x = 1.5
    let y = 2
    if x < y { out.append("float lt") }
    let s = "ab"
    let t = "c"
    let u = s + t
    out.append(u)
    let w = x + 1
    out.append(w)
    let m = [10, 20, 30]
    let i = -1
    out.append(m[i])
    m[i] = false
    out.append(m)
    let total = 0
    for k in range(3, 12, 4) { total += k }
    for k in range(2.5) { total += 1 }
    out.append(total)
    return out
}
"#;
    let error = run_error(source);
    assert_eq!(error, "range: range bound must be an int, not float");
    let source = source.replace("    for k in range(2.5) { total += 1 }\n", "");
    assert_eq!(
        eval(&source),
        json!(["float lt", "abc", 2.5, 30, [10, 20, false], 21])
    );
    let overflow = "fn main() {\n    let big = 9223372036854775806\n    let one = 2\n    let r = big + one\n    return r\n}\n";
    assert!(run_error(overflow).contains("integer overflow"));
    let out_of_range = "fn main() {\n    let m = [1]\n    let i = 5\n    m[i] = false\n}\n";
    assert!(
        run_error(out_of_range).contains("out of range"),
        "{}",
        run_error(out_of_range)
    );
}
