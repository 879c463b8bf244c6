//! The VM's cost per program shape, against the test backend answering instantly (divan).
//!
//! `cargo bench --bench vm`; under `cargo test` each benchmark runs once as a smoke test.
//! `sglc bench vm` measures the same shapes in separate processes and prints the table
//! (programs/s, CPU per program, peak RSS, programs in flight, batch sizes, start-up).

use serde_json::json;
use sglc::{Engine, RunConfig, Script, TestBackend};

#[global_allocator]
static ALLOCATOR: sglc::allocator::Allocator = sglc::allocator::Allocator;

/// Programs per benchmark iteration: enough for the scheduler to batch as it does in real runs.
const PROGRAMS: usize = 1_000;

fn compile(engine: &Engine, name: &str) -> Script {
    let path = format!(
        "{}/benches/programs/vm/{name}.sgl",
        env!("CARGO_MANIFEST_DIR")
    );
    let source = std::fs::read_to_string(&path).expect("benchmark program");
    engine
        .compile(name, &source)
        .unwrap_or_else(|e| panic!("{}", e.render(false)))
}

#[divan::bench(args = ["single_gen", "chat3", "select4", "fork4", "loop20"])]
fn batch_of_1000(bencher: divan::Bencher, shape: &str) {
    let engine = Engine::new(TestBackend::new());
    let script = compile(&engine, shape);
    let config = RunConfig::default();
    bencher
        .counter(divan::counter::ItemsCount::new(PROGRAMS))
        .bench_local(|| {
            let inputs = (0..PROGRAMS).map(|i| json!({ "q": format!("Question {i}?") }));
            let mut ok = 0usize;
            engine
                .run_batch_with(&script, "main", inputs, &config, |_, r| {
                    ok += usize::from(r.is_ok())
                })
                .unwrap();
            assert_eq!(ok, PROGRAMS);
        });
}

fn main() {
    divan::main();
}

/// The design question "a tokio task per program, or our own run queue?", measured on the
/// primitive itself: resuming 1,000 suspended programs once each.
mod scheduling {
    const PROGRAMS: usize = 1_000;

    /// A task per program: each awaits its answer on a oneshot channel, as a program would
    /// await its gen; the driver answers them all.
    #[divan::bench]
    fn task_per_program(bencher: divan::Bencher) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        bencher
            .counter(divan::counter::ItemsCount::new(PROGRAMS))
            .bench_local(|| {
                let local = tokio::task::LocalSet::new();
                local.block_on(&runtime, async {
                    let mut senders = Vec::with_capacity(PROGRAMS);
                    let mut tasks = Vec::with_capacity(PROGRAMS);
                    for _ in 0..PROGRAMS {
                        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
                        senders.push(tx);
                        tasks.push(tokio::task::spawn_local(
                            async move { rx.await.unwrap() + 1 },
                        ));
                    }
                    for (i, tx) in senders.into_iter().enumerate() {
                        tx.send(i as u32).unwrap();
                    }
                    let mut total = 0u64;
                    for task in tasks {
                        total += u64::from(task.await.unwrap());
                    }
                    divan::black_box(total)
                })
            });
    }

    /// The scheduler's design: programs are slots in a slab; an answer puts the slot's index on
    /// a run queue, and the loop resumes what is queued.
    #[divan::bench]
    fn run_queue(bencher: divan::Bencher) {
        bencher
            .counter(divan::counter::ItemsCount::new(PROGRAMS))
            .bench_local(|| {
                let mut slots: Vec<Option<u32>> = vec![None; PROGRAMS];
                let mut runnable = std::collections::VecDeque::with_capacity(PROGRAMS);
                for (i, slot) in slots.iter_mut().enumerate() {
                    *slot = Some(i as u32);
                    runnable.push_back(i);
                }
                let mut total = 0u64;
                while let Some(id) = runnable.pop_front() {
                    if let Some(answer) = slots[id].take() {
                        total += u64::from(answer + 1);
                    }
                }
                divan::black_box(total)
            });
    }
}
