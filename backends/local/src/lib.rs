//! The embedded model backend: llama.cpp in-process (through `llama-cpp-2`), one engine thread
//! with continuous batching, a radix-tree prefix cache, select scoring and constrained gen.
//!
//! `LocalBackend::start` loads the model on the engine thread and returns a `Backend` the VM
//! hands its batches to; each call is answered as soon as its own sequence finishes.

pub mod direct;
pub mod engine;
pub mod grammar;
pub mod model_store;
pub mod prefix_cache;
pub mod template;
pub mod weights;

pub use engine::{EngineOptions, EngineStats};
pub use model_store::{ModelError, resolve_model};
pub use weights::Weights;

use futures::FutureExt;
use sglc_vm::backend::{Backend, BackendError, BackendInfo, CallFuture, Capabilities, Request};
use std::sync::{Arc, Mutex, mpsc};

pub struct LocalBackend {
    info: BackendInfo,
    jobs: Mutex<Option<mpsc::Sender<engine::Job>>>,
    thread: Option<std::thread::JoinHandle<()>>,
    stats: Arc<Mutex<EngineStats>>,
}

impl LocalBackend {
    /// Loads the model on a new engine thread; returns when it is ready to take calls.
    pub fn start(options: EngineOptions) -> Result<LocalBackend, String> {
        let (jobs_tx, jobs_rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let stats = Arc::new(Mutex::new(EngineStats::default()));
        let engine_stats = stats.clone();
        let parallel = options.parallel;
        let options_model = options.model.display().to_string();
        let thread = std::thread::Builder::new()
            .name("sglc-engine".to_string())
            .spawn(move || engine::run_engine(options, jobs_rx, ready_tx, engine_stats))
            .map_err(|e| format!("cannot start the engine thread: {e}"))?;
        tracing::info!(model = %options_model, "loading the model");
        let started = std::time::Instant::now();
        let ready = ready_rx
            .recv()
            .map_err(|_| "the engine thread stopped while loading the model".to_string())??;
        tracing::info!(
            "model {} ready in {:.2} s ({parallel} sequences in parallel)",
            ready.model_name,
            started.elapsed().as_secs_f64()
        );
        Ok(LocalBackend {
            info: BackendInfo {
                name: format!("local:{}", ready.model_name),
                chat_template: ready.chat_template,
                capabilities: Capabilities {
                    select: true,
                    regex: true,
                    json_schema: true,
                    streaming: true,
                },
                max_batch: 1024,
                default_concurrency: parallel.max(1) * 4,
            },
            jobs: Mutex::new(Some(jobs_tx)),
            thread: Some(thread),
            stats,
        })
    }

    /// What the engine has evaluated and generated so far.
    pub fn stats(&self) -> EngineStats {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn reset_stats(&self) {
        *self.stats.lock().unwrap_or_else(|p| p.into_inner()) = EngineStats::default();
    }
}

fn stopped() -> BackendError {
    BackendError {
        backend: "local".to_string(),
        message: "the engine thread has stopped".to_string(),
    }
}

impl Backend for LocalBackend {
    fn info(&self) -> &BackendInfo {
        &self.info
    }

    fn execute(&self, batch: Vec<Request>) -> Vec<CallFuture> {
        let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        batch
            .into_iter()
            .map(|request| -> CallFuture {
                let (reply, answer) = tokio::sync::oneshot::channel();
                let sent = jobs
                    .as_ref()
                    .is_some_and(|j| j.send(engine::Job::Call { request, reply }).is_ok());
                if !sent {
                    return futures::future::ready(Err(stopped())).boxed();
                }
                answer.map(|r| r.unwrap_or_else(|_| Err(stopped()))).boxed()
            })
            .collect()
    }
}

impl Drop for LocalBackend {
    fn drop(&mut self) {
        // Closing the channel ends the engine loop once its calls are done.
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
