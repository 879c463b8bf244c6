//! Starting the embedded model from command-line options.

use super::BackendArgs;
use anyhow::{Result, anyhow};
use sglc_local::{EngineOptions, LocalBackend, resolve_model};

pub fn start(args: &BackendArgs) -> Result<LocalBackend> {
    let path = resolve_model(args.model.as_deref(), args.weights.into(), &|message| {
        eprintln!("sglc: {message}")
    })?;
    let mut options = EngineOptions::new(path);
    if let Some(parallel) = args.parallel {
        options.parallel = parallel.max(1);
    }
    if let Some(threads) = args.threads {
        options.threads = threads.max(1);
    }
    LocalBackend::start(options).map_err(|e| anyhow!(e))
}
