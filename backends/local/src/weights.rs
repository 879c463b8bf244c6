//! Re-encoding the default model's weights for batched decoding.
//!
//! The default model ships as Q4_1. llama.cpp's x86 CPU backend multiplies Q4_1 matrices one
//! row-vector at a time, so a decode step of 32 sequences costs nearly 32 single steps; it has
//! batched matrix kernels for Q8_0. Re-encoding Q4_1 as Q8_0 loses next to nothing (each 4-bit
//! value is stored again with 8 bits; for weights centred on zero the rounding error is a few
//! hundredths of a Q4_1 step) and, measured with the direct driver on the project's 2-core
//! machine, decodes 32 sequences about 45% faster and one sequence about 15% slower (more
//! bytes to read per token). It takes about half a second, once. docs/backends.md has the
//! figures and the `--weights shipped` escape hatch.

use crate::model_store::{ModelError, cached_model_path};
use std::ffi::CString;
use std::path::{Path, PathBuf};

/// Which weights of the default model the engine loads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Weights {
    /// Q8_0, re-encoded once from the shipped file and cached beside it (the default).
    #[default]
    Batched,
    /// The Q4_1 file exactly as shipped.
    Shipped,
}

/// The cached Q8_0 re-encoding of `shipped` (the default model), made on first use.
pub fn ensure_batched(shipped: &Path, progress: &dyn Fn(&str)) -> Result<PathBuf, ModelError> {
    let target = cached_model_path(Weights::Batched);
    // Renamed into place only once written completely, so an existing file is a whole one.
    if std::fs::metadata(&target).is_ok_and(|m| m.len() > 0) {
        return Ok(target);
    }
    progress("re-encoding the model's Q4_1 weights as Q8_0 for batched decoding (once) ...");
    let started = std::time::Instant::now();
    reencode_q8_0(shipped, &target)?;
    progress(&format!(
        "weights ready in {:.1} s: {}",
        started.elapsed().as_secs_f64(),
        target.display()
    ));
    Ok(target)
}

/// Writes `source`'s weights as Q8_0 to `target` through llama.cpp's quantizer: into a file of
/// this process's own first, renamed into place when complete, so a failed or concurrent
/// conversion never leaves a partial file where a whole one is expected.
pub fn reencode_q8_0(source: &Path, target: &Path) -> Result<(), ModelError> {
    let failed = |reason: String| ModelError::Reencode {
        source_path: source.to_path_buf(),
        reason,
    };
    // Initialises ggml and routes llama.cpp's log (a line per tensor here) where sglc wants it.
    crate::engine::llama_backend().map_err(failed)?;
    let partial = target.with_extension(format!("gguf.partial-{}", std::process::id()));
    let path_text = |p: &Path| {
        CString::new(p.as_os_str().as_encoded_bytes())
            .map_err(|_| failed(format!("{} has a NUL byte in its path", p.display())))
    };
    let (input, output) = (path_text(source)?, path_text(&partial)?);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    // SAFETY: the parameters come from llama.cpp's own defaults with plain fields changed; both
    // paths are NUL-terminated strings that outlive the call, which returns an error code
    // (llama.cpp catches its exceptions at this boundary) rather than unwinding into Rust.
    let status = unsafe {
        let mut params = llama_cpp_sys_2::llama_model_quantize_default_params();
        params.ftype = llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q8_0;
        params.allow_requantize = true;
        params.nthread = threads as i32;
        llama_cpp_sys_2::llama_model_quantize(input.as_ptr(), output.as_ptr(), &params)
    };
    if status != 0 {
        let _ = std::fs::remove_file(&partial);
        return Err(failed(format!(
            "llama.cpp's quantizer failed (status {status}; SGLC_LLAMA_LOG=1 shows its log)"
        )));
    }
    std::fs::rename(&partial, target).map_err(|source| {
        let _ = std::fs::remove_file(&partial);
        ModelError::Io {
            context: format!("cannot move the re-encoded model to {}", target.display()),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_is_not_a_model_is_an_error_and_leaves_nothing_behind() {
        let dir = std::env::temp_dir().join(format!("sglc-weights-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let source = dir.join("garbage.gguf");
        std::fs::write(&source, b"GGUF but not really a model").unwrap();
        let target = dir.join("out.gguf");
        let error = reencode_q8_0(&source, &target).unwrap_err();
        assert!(
            error.to_string().contains("cannot re-encode")
                && error.to_string().contains("garbage.gguf"),
            "{error}"
        );
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("garbage.gguf")]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
