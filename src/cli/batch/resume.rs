//! `--resume`: which inputs an earlier, interrupted run already finished, read back from its
//! output file. A last line cut off by a crash is removed so that input runs again.

use anyhow::{Context, Result, bail};
use std::collections::HashSet;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// The line numbers of the inputs that have a result in `path` (empty when it does not exist).
/// Truncates a partial last line.
pub fn completed_lines(path: &Path) -> Result<HashSet<usize>> {
    let mut file = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashSet::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
    };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    if complete < bytes.len() {
        // A line without its newline was being written when the job died: redo that input.
        file.set_len(complete as u64)
            .and_then(|_| file.seek(SeekFrom::End(0)).map(|_| ()))
            .with_context(|| {
                format!(
                    "cannot truncate the partial last line of {}",
                    path.display()
                )
            })?;
    }
    let mut done = HashSet::new();
    for (i, line) in bytes[..complete].split(|b| *b == b'\n').enumerate() {
        if line.trim_ascii().is_empty() {
            continue;
        }
        let line_number = serde_json::from_slice::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v.get("line").and_then(|n| n.as_u64()));
        match line_number {
            Some(n) => {
                done.insert(n as usize);
            }
            None => bail!(
                "{} line {} is not a result line (a JSON object with \"line\"); \
                 is --out the output of an earlier run of this batch?",
                path.display(),
                i + 1
            ),
        }
    }
    Ok(done)
}
