//! The sglc virtual machine: values, program states, the bytecode interpreter, the `Backend`
//! trait with a deterministic test backend, and the scheduler that runs many programs at once
//! and batches their calls to the backend.

pub mod backend;
pub mod error;
pub mod interp;
#[cfg(feature = "jit")]
pub mod jit;
pub mod jit_options;
mod list;
pub mod native;
mod quicken;
pub mod scheduler;
mod shared_str;
pub mod state;
pub mod stream;
pub mod value;

pub use backend::{Backend, BackendError, BackendInfo, TestBackend};
pub use error::RuntimeError;
pub use interp::{GenDefaults, Limits};
pub use jit_options::{JitMode, JitOptions, JitTiers};
pub use native::Natives;
pub use scheduler::{
    InputArgs, InputSource, NextInput, ProgramResult, ProgramState, RunConfig, run_batch,
};
pub use stream::{EventSink, StreamEvent};
pub use value::Value;
