//! The embedded model, for real: SmolLM2-135M through llama.cpp. Greedy decoding, short
//! generations. The model is fetched into the cache on first use (CI pulls it first).

#![cfg(feature = "local")]

use serde_json::json;
use sglc::local::{EngineOptions, LocalBackend, Weights, resolve_model};
use sglc::{Engine, RunConfig};
use std::sync::{Arc, OnceLock};

fn start_backend() -> LocalBackend {
    let path = resolve_model(None, Weights::Batched, &|m| eprintln!("{m}"))
        .expect("the default model is available");
    let mut options = EngineOptions::new(path);
    options.threads = 1;
    options.parallel = 8;
    options.context_tokens = 8192;
    LocalBackend::start(options).expect("the model loads")
}

/// One engine shared by the tests of this file (they run in parallel against it).
fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| Engine::with_backend(Arc::new(start_backend())))
}

fn greedy() -> RunConfig {
    RunConfig::default()
        .with_temperature(0.0)
        .with_max_new_tokens(24)
}

const QUESTION: &str = r#"
fn main(s) {
    s += system("You are a helpful assistant.")
    s += user("What is the capital of France?")
    s += assistant(gen("answer", max_tokens=16))
}
"#;

#[test]
fn greedy_answer_names_paris() {
    let engine = engine();
    let script = engine.compile("q.sgl", QUESTION).unwrap();
    let state = engine.run(&script, "main", json!({}), &greedy()).unwrap();
    let answer = state["answer"].as_str().unwrap();
    assert!(answer.contains("Paris"), "{answer}");
    // The prompt went through the model's own chat template (ChatML for SmolLM2).
    assert!(
        state
            .text
            .starts_with("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    );
    let meta = &state.meta["answer"];
    assert!(meta["prompt_tokens"].as_u64().unwrap() > 10);
    assert!(meta["completion_tokens"].as_u64().unwrap() > 0);
}

#[test]
fn select_picks_paris_with_scores() {
    let engine = engine();
    let source = r#"
        fn main(s) {
            s += user("What is the capital of France?")
            s += assistant("The capital of France is " + select("city", choices=["London", "Paris", "Berlin", "Madrid"]))
        }
    "#;
    let script = engine.compile("s.sgl", source).unwrap();
    let state = engine.run(&script, "main", json!({}), &greedy()).unwrap();
    assert_eq!(state["city"], json!("Paris"));
    let scores: Vec<f64> = state.meta["city"]["scores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_f64().unwrap())
        .collect();
    assert_eq!(scores.len(), 4);
    assert!(
        scores.iter().all(|s| s.is_finite() && *s < 0.0),
        "{scores:?}"
    );
    assert!(
        scores[1] > scores[0] && scores[1] > scores[2] && scores[1] > scores[3],
        "{scores:?}"
    );
}

#[test]
fn regex_constrained_gen_matches() {
    let engine = engine();
    let source = r#"
        fn main(s) {
            s += user("Write a product code.")
            s += assistant(gen("code", regex="[A-Z]{2}-[0-9]{3}"))
        }
    "#;
    let script = engine.compile("r.sgl", source).unwrap();
    let state = engine
        .run(
            &script,
            "main",
            json!({}),
            &RunConfig::default().with_max_new_tokens(16),
        )
        .unwrap();
    let code = state["code"].as_str().unwrap();
    assert!(
        regex::Regex::new("^[A-Z]{2}-[0-9]{3}$")
            .unwrap()
            .is_match(code),
        "{code:?}"
    );
}

#[test]
fn json_schema_gen_parses_and_validates() {
    let engine = engine();
    let source = r#"
        let SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}, "required": ["name", "age"]}
        fn main(s) {
            s += user("Describe a person as JSON.")
            s += assistant(gen("person", json_schema=SCHEMA, max_tokens=48))
            return json_parse(s["person"])
        }
    "#;
    let script = engine.compile("j.sgl", source).unwrap();
    let state = engine.run(&script, "main", json!({}), &greedy()).unwrap();
    let person = &state.return_value;
    assert!(person["name"].is_string(), "{person}");
    assert!(person["age"].is_i64(), "{person}");
}

#[test]
fn choices_and_dtype_constrain_gen() {
    let engine = engine();
    let source = r#"
        fn main(s) {
            s += user("Is the sky blue? Answer yes or no.")
            s += assistant(gen("yn", choices=["yes", "no"]))
            s += user("How many legs does a cat have?")
            s += assistant(gen("legs", dtype="int", max_tokens=4))
        }
    "#;
    let script = engine.compile("c.sgl", source).unwrap();
    let state = engine.run(&script, "main", json!({}), &greedy()).unwrap();
    assert!(["yes", "no"].contains(&state["yn"].as_str().unwrap()));
    assert!(state["legs"].is_i64(), "{}", state["legs"]);
}

const FORK: &str = r#"
fn main(s) {
    s += system("You are a helpful assistant. Answer every question with one short sentence.")
    s += user("Here are some facts. Paris is in France. Berlin is in Germany. Rome is in Italy. Madrid is in Spain. Lisbon is in Portugal. Vienna is in Austria.")
    s += assistant("Thank you, I will remember these facts.")
    let forks = s.fork(4)
    for i, f in enumerate(forks) {
        f += user(f"Name fact number {i + 1}.")
        f += assistant(gen("fact", max_tokens=8))
    }
    forks.join()
    return [f.text() for f in forks]
}
"#;

#[test]
fn fork_branches_see_the_prefix_and_share_its_evaluation() {
    // A backend of its own, so its counters see only this program.
    let backend = Arc::new(start_backend());
    let engine = Engine::with_backend(backend.clone());
    let script = engine.compile("f.sgl", FORK).unwrap();
    let state = engine.run(&script, "main", json!({}), &greedy()).unwrap();
    let texts = state.return_value.as_array().unwrap();
    let prefix = state.text.as_str();
    assert_eq!(texts.len(), 4);
    for text in texts {
        assert!(text.as_str().unwrap().starts_with(prefix));
    }
    assert_eq!(state["fact"].as_array().unwrap().len(), 4);
    let stats = backend.stats();
    // Without sharing, each branch would evaluate the whole ~80-token prefix: 4 x (prefix +
    // question). With it, the first branch evaluates the prefix and the other three copy it.
    let total_prompt = stats.prompt_tokens_evaluated + stats.prompt_tokens_cached;
    assert!(stats.prompt_tokens_cached >= 3 * 60, "{stats:?}");
    assert!(
        stats.prompt_tokens_evaluated * 2 < total_prompt,
        "{stats:?}"
    );
}

#[test]
fn a_batch_gives_the_results_of_one_by_one_runs() {
    let engine = engine();
    let source = r#"
        fn main(s, city) {
            s += user(f"In which country is {city}?")
            s += assistant(gen("country", max_tokens=10))
        }
    "#;
    let script = engine.compile("b.sgl", source).unwrap();
    let inputs: Vec<_> = ["Paris", "Berlin", "Rome", "Madrid"]
        .iter()
        .map(|c| json!({ "city": c }))
        .collect();
    let batch = engine
        .run_batch(&script, "main", inputs.clone(), &greedy())
        .unwrap();
    for (input, result) in inputs.into_iter().zip(batch) {
        let single = engine.run(&script, "main", input, &greedy()).unwrap();
        let batched = result.unwrap();
        assert_eq!(batched.text, single.text);
    }
}

#[test]
fn a_full_kv_cache_delays_calls_instead_of_failing_them() {
    // Six ~100-token prompts with 12 new tokens each need ~700 KV cells; give it 512.
    let path = resolve_model(None, Weights::Batched, &|_| {}).unwrap();
    let mut options = EngineOptions::new(path);
    options.threads = 1;
    options.parallel = 8;
    options.context_tokens = 512;
    options.cache_tokens = 0;
    let backend = Arc::new(LocalBackend::start(options).unwrap());
    let engine = Engine::with_backend(backend.clone());
    let source = r#"
        fn main(s, n) {
            s += user(f"Item {n}. " + "Tell me something about numbers and counting. " * 8)
            s += assistant(gen("a", max_tokens=12, ignore_eos=true))
        }
    "#;
    let script = engine.compile("kv.sgl", source).unwrap();
    let inputs: Vec<_> = (0..6).map(|n| json!({ "n": n })).collect();
    let results = engine
        .run_batch(&script, "main", inputs, &greedy())
        .unwrap();
    for result in results {
        let state = result.expect("every call eventually fits");
        assert_eq!(state.meta["a"]["completion_tokens"], json!(12));
    }
    assert!(backend.stats().preemptions > 0, "{:?}", backend.stats());
    // One call larger than the whole cache fails with a clear error.
    let huge = r#"fn main(s) { s += "word " * 1000; s += gen("a", max_tokens=4) }"#;
    let script = engine.compile("huge.sgl", huge).unwrap();
    let error = engine
        .run(&script, "main", json!({}), &greedy())
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("more than the context of 512 tokens"),
        "{error}"
    );
}

#[test]
fn generated_tokens_stream_one_by_one_and_add_up_to_the_text() {
    use sglc::StreamEvent;
    let engine = engine();
    let script = engine.compile("q.sgl", QUESTION).unwrap();
    let stream = engine.run_stream(&script, "main", json!({}), &greedy());
    let events: Vec<StreamEvent> = futures::executor::block_on_stream(Box::pin(stream)).collect();
    assert_eq!(events.last(), Some(&StreamEvent::Done));
    let text: String = events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Text { text } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    let started = events
        .iter()
        .position(|e| matches!(e, StreamEvent::VarStarted { .. }))
        .unwrap();
    let finished = events
        .iter()
        .position(|e| matches!(e, StreamEvent::VarFinished { .. }))
        .unwrap();
    let chunks = events[started..finished]
        .iter()
        .filter(|e| matches!(e, StreamEvent::Text { .. }))
        .count();
    assert!(
        chunks > 3,
        "the answer arrives token by token, got {chunks} chunks"
    );
    let StreamEvent::VarFinished { value, .. } = &events[finished] else {
        unreachable!()
    };
    assert!(
        text.contains(value.as_str().unwrap()) && text.ends_with("<|im_end|>\n"),
        "{text}"
    );
}

#[test]
fn stop_strings_and_seeds_are_honoured() {
    let engine = engine();
    let source = r#"
        fn main(s) {
            s += user("Count from one to ten in words, separated by commas.")
            s += assistant(gen("count", max_tokens=24, stop=[","]))
        }
    "#;
    let script = engine.compile("stop.sgl", source).unwrap();
    let state = engine.run(&script, "main", json!({}), &greedy()).unwrap();
    let count = state["count"].as_str().unwrap();
    assert!(!count.contains(','), "{count:?}");
    assert_eq!(state.meta["count"]["finish_reason"], json!("stop"));
    // Sampling with a seed repeats itself.
    let sampled = RunConfig::default()
        .with_temperature(1.0)
        .with_max_new_tokens(12);
    let mut seeded = sampled.clone();
    seeded.defaults.seed = Some(42);
    let a = engine.run(&script, "main", json!({}), &seeded).unwrap();
    let b = engine.run(&script, "main", json!({}), &seeded).unwrap();
    assert_eq!(a["count"], b["count"]);
}

#[test]
fn the_default_weights_are_the_shipped_ones_re_encoded_in_eight_bits() {
    let batched = resolve_model(None, Weights::Batched, &|_| {}).unwrap();
    let shipped = resolve_model(None, Weights::Shipped, &|_| {}).unwrap();
    assert_eq!(
        shipped.file_name().unwrap(),
        sglc::local::model_store::DEFAULT_FILE_NAME
    );
    assert_eq!(
        batched.file_name().unwrap(),
        sglc::local::model_store::DEFAULT_BATCHED_FILE_NAME
    );
    // Q8_0 stores 34 bytes per 32 weights where Q4_1 stores 20; embeddings and norms are
    // shared, so the file grows by about half rather than 1.7x.
    let size = |p: &std::path::Path| std::fs::metadata(p).unwrap().len() as f64;
    let growth = size(&batched) / size(&shipped);
    assert!((1.3..1.7).contains(&growth), "{growth}");
}
