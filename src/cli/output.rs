//! Everything the CLI writes: stdout, stderr and files.
//!
//! - stdout: a reader that stops early (`postshard check | head -1`) ends the
//!   command quietly with exit 0, like ripgrep and other Unix tools, through
//!   [`Failure::ClosedStdout`]. Never `print!`, which panics on a closed pipe.
//! - stderr: best effort; a closed stderr loses the message, never panics.
//! - files: [`write_files`] follows symlinks to their target, writes through
//!   FIFOs and devices, and replaces regular files all or nothing.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::Failure;

/// A stdout write error: [`Failure::ClosedStdout`] when the reader went away.
pub fn stdout_error(e: std::io::Error) -> Failure {
    if e.kind() == ErrorKind::BrokenPipe {
        Failure::ClosedStdout
    } else {
        Failure::Runtime(anyhow::Error::new(e).context("writing to stdout"))
    }
}

/// Writes `text` to stdout and flushes it.
pub fn print(text: impl AsRef<[u8]>) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_ref())
        .and_then(|()| out.flush())
        .map_err(stdout_error)
}

/// Writes `text` to stderr; a closed stderr is ignored.
pub fn eprint(text: impl AsRef<[u8]>) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(text.as_ref()).and_then(|()| err.flush());
}

/// Most symlinks followed to find where a path's content goes, like the
/// kernel's limit (`ELOOP`).
const MAX_LINKS: usize = 40;

/// Where writing to `path` really goes: `path` with every symlink along its
/// final component followed. A dangling link gives the missing target,
/// which will be created.
fn resolve(path: &Path) -> std::io::Result<PathBuf> {
    let mut current = path.to_path_buf();
    for _ in 0..MAX_LINKS {
        match std::fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let target = std::fs::read_link(&current)?;
                current = match current.parent() {
                    Some(dir) if target.is_relative() => dir.join(target),
                    _ => target,
                };
            }
            Ok(_) => return Ok(current),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(current),
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other(format!(
        "more than {MAX_LINKS} symbolic links"
    )))
}

/// How one file gets its content.
enum Target {
    /// A regular file (or none yet): written to `temp` in the same
    /// directory, then renamed over `path`.
    Replace { path: PathBuf, temp: PathBuf },
    /// A FIFO, device or socket: opened and written, never replaced.
    Through { path: PathBuf },
}

/// A failure writing `path` (exit 1).
fn file_error(path: &Path, what: &str, e: std::io::Error) -> Failure {
    Failure::Runtime(anyhow::Error::new(e).context(format!("{what} {}", path.display())))
}

/// Creates a temporary file next to `path` holding `contents`, with the
/// permissions (and, where allowed, the owner) of the file it will replace.
fn stage(path: &Path, contents: &[u8]) -> Result<PathBuf, Failure> {
    let existing = std::fs::metadata(path).ok();
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let mut attempt = 0u32;
    let (temp, mut file) = loop {
        let temp = path.with_file_name(format!(".{name}.{}.{attempt}.tmp", std::process::id()));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            // A new file gets what `open(O_CREAT, 0666)` gives under the umask.
            .mode(0o666)
            .open(&temp)
        {
            Ok(file) => break (temp, file),
            Err(e) if e.kind() == ErrorKind::AlreadyExists && attempt < 100 => attempt += 1,
            Err(e) => return Err(file_error(path, "writing", e)),
        }
    };
    let written = (|| {
        if let Some(meta) = &existing {
            // Best effort: only root may give a file to another owner.
            let _ = std::os::unix::fs::fchown(&file, Some(meta.uid()), Some(meta.gid()));
            file.set_permissions(meta.permissions())?;
        }
        file.write_all(contents)?;
        file.sync_all()
    })();
    match written {
        Ok(()) => Ok(temp),
        Err(e) => {
            let _ = std::fs::remove_file(&temp);
            Err(file_error(path, "writing", e))
        }
    }
}

/// Writes every `(path, contents)`:
///
/// - a symlink stays a symlink: its final target gets the content (a
///   dangling link's target is created);
/// - a FIFO, character or block device or socket is opened and written
///   through, never replaced (`--out /dev/null` discards);
/// - a regular file (or a new one) is replaced all or nothing: every file is
///   first written in full to a temporary file beside it, keeping the old
///   file's permissions, and renamed into place only once all are written,
///   so a failure leaves no regular file changed.
///
/// Errors name the path (exit 1); a directory is refused.
pub fn write_files(files: &[(&Path, &[u8])]) -> Result<(), Failure> {
    let mut targets = Vec::with_capacity(files.len());
    let result = (|| {
        for (path, contents) in files {
            let real = resolve(path).map_err(|e| file_error(path, "resolving", e))?;
            // Errors name the path given and, through a symlink, its target.
            let stage = |real: &Path| {
                stage(real, contents).map_err(|e| match e {
                    Failure::Runtime(e) if real != *path => {
                        Failure::Runtime(e.context(format!("through {}", path.display())))
                    }
                    e => e,
                })
            };
            let target = match std::fs::metadata(&real) {
                Ok(meta) if meta.is_dir() => {
                    return Err(file_error(
                        path,
                        "writing",
                        std::io::Error::other("it is a directory"),
                    ))
                }
                Ok(meta) if !meta.is_file() => Target::Through { path: real },
                Ok(_) => Target::Replace {
                    temp: stage(&real)?,
                    path: real,
                },
                Err(e) if e.kind() == ErrorKind::NotFound => Target::Replace {
                    temp: stage(&real)?,
                    path: real,
                },
                Err(e) => return Err(file_error(path, "writing", e)),
            };
            targets.push(target);
        }
        // Everything staged: now write through, then rename.
        for (target, (_, contents)) in targets.iter().zip(files) {
            if let Target::Through { path } = target {
                OpenOptions::new()
                    .write(true)
                    .open(path)
                    .and_then(|mut f: File| f.write_all(contents))
                    .map_err(|e| file_error(path, "writing", e))?;
            }
        }
        for target in &targets {
            if let Target::Replace { path, temp } = target {
                std::fs::rename(temp, path).map_err(|e| file_error(path, "replacing", e))?;
            }
        }
        Ok(())
    })();
    if result.is_err() {
        for target in &targets {
            if let Target::Replace { temp, .. } = target {
                let _ = std::fs::remove_file(temp);
            }
        }
    }
    result
}

/// [`write_files`] for one file.
pub fn write_file(path: &Path, contents: impl AsRef<[u8]>) -> Result<(), Failure> {
    write_files(&[(path, contents.as_ref())])
}

/// `x` (a fraction) as a percentage with `places` decimals and a `%`;
/// never `-0.0000%` for a value that rounds to zero.
pub fn percent(x: f64, places: usize) -> String {
    let text = format!("{:.*}", places, x * 100.0);
    match text.strip_prefix('-') {
        Some(magnitude) if magnitude.chars().all(|c| c == '0' || c == '.') => {
            format!("{magnitude}%")
        }
        _ => format!("{text}%"),
    }
}

#[cfg(test)]
mod tests {
    use super::percent;

    #[test]
    fn percent_never_shows_negative_zero() {
        for (x, places, want) in [
            (-0.0, 4, "0.0000%"),
            (-1e-12, 4, "0.0000%"),
            (-0.000_000_4, 4, "0.0000%"),
            (-0.000_006, 4, "-0.0006%"),
            (0.5, 2, "50.00%"),
            (-0.25, 1, "-25.0%"),
            (1e-12, 0, "0%"),
            (-1e-12, 0, "0%"),
        ] {
            assert_eq!(percent(x, places), want, "{x} to {places} places");
        }
    }
}
