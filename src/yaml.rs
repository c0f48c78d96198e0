//! Files the user writes or points at: YAML (config, rules, rule tests) → serde types, with a syntax or
//! type error reported as one `Diagnostic` at its `file:line:col`; and bounded reads of those files and
//! of secret files, so a path to `/dev/zero` or a log file is an error, not a hang.

use std::io::Read;
use std::path::Path;

use serde::Deserialize;

use crate::domain::Diagnostic;

/// The most a config, rule or rule-test file may hold; generous, but a mistaken path cannot fill memory.
pub const MAX_YAML_BYTES: u64 = 16 << 20;

pub fn parse<T: for<'de> Deserialize<'de>>(file: &Path, text: &str) -> Result<T, Diagnostic> {
    let mut options = serde_saphyr::Options::default();
    options.with_snippet = false;
    serde_saphyr::from_str_with_options(text, options).map_err(|e| {
        let (line, col) = e.location().map_or((1, 1), |l| position(&l));
        // serde-saphyr appends " at line X column Y" to some messages; the location is printed once.
        let msg = e.to_string();
        let msg = msg.lines().next().unwrap_or_default();
        let msg = msg.find(" at line ").map_or(msg, |i| &msg[..i]);
        Diagnostic {
            file: file.to_path_buf(),
            line,
            col,
            message: msg.to_string(),
        }
    })
}

/// A location as a 1-based `(line, col)`. serde-saphyr says 0 for "unknown" (values it could not place,
/// such as some that come through merge keys); that becomes the start of the file, never a line 0.
pub fn position(l: &serde_saphyr::Location) -> (u64, u64) {
    (l.line().max(1), l.column().max(1))
}

/// Reads at most `limit` bytes of `path`; a longer file (or an endless one such as `/dev/zero`) is an
/// `InvalidData` error saying so, read no further than `limit + 1` bytes. A named pipe or a socket is
/// refused before it is opened: opening a pipe nobody writes to waits forever, and a daemon that hangs
/// while loading its config (or on reload) is worse than one that says what is wrong.
pub fn read_limited(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let kind = std::fs::metadata(path)?.file_type();
        let what = if kind.is_fifo() {
            Some("a named pipe (FIFO)")
        } else if kind.is_socket() {
            Some("a socket")
        } else {
            None
        };
        if let Some(what) = what {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("is {what}, not a file; point at a regular file"),
            ));
        }
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(limit + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {}", format_size(limit)),
        ));
    }
    Ok(bytes)
}

/// Like [`read_limited`], for text: invalid UTF-8 is an `InvalidData` error.
pub fn read_text_limited(path: &Path, limit: u64) -> std::io::Result<String> {
    String::from_utf8(read_limited(path, limit)?).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        )
    })
}

fn format_size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} bytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endless_files_are_refused_at_the_limit() {
        let e = read_limited(Path::new("/dev/zero"), 4096).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        assert_eq!(e.to_string(), "larger than 4 KiB");
    }

    #[test]
    fn files_up_to_the_limit_are_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, "12345").unwrap();
        assert_eq!(read_limited(&p, 5).unwrap(), b"12345");
        assert!(read_limited(&p, 4).is_err());
        assert_eq!(read_text_limited(&p, 5).unwrap(), "12345");
        std::fs::write(&p, [0xff, 0xfe]).unwrap();
        assert!(read_text_limited(&p, 5).is_err());
    }

    #[test]
    #[cfg(unix)]
    fn a_named_pipe_is_refused_instead_of_waited_on() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("password");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success(), "mkfifo failed");
        // Read on another thread: without the check, opening a pipe with no writer never returns.
        let (tx, rx) = std::sync::mpsc::channel();
        let path = fifo.clone();
        std::thread::spawn(move || tx.send(read_limited(&path, 4096)));
        let result = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("reading a named pipe hung instead of failing");
        let e = result.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("named pipe"), "{e}");
    }
}
