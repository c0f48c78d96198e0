//! Files the user writes or points at: YAML (config, rules, rule tests) → serde types, with every
//! unknown key and the first syntax or type error reported at its `file:line:col`; `Diagnostics`, the
//! one collector every loader (and each receiver's validation) reports through; `Values`, which reads
//! a config file's values (`${VAR}`, relative paths, secret files, URLs, durations, regexes) reporting
//! each mistake where it is; and bounded reads, so a path to `/dev/zero` or a log file is an error,
//! not a hang.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::Regex;
use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::domain::{Diagnostic, Secret};

/// A string value of a user's file with where it is.
pub type S = Spanned<String>;

/// Secret files (`password_file`, `api_token_file`, …) hold one value; anything larger is a wrong path.
pub const MAX_SECRET_BYTES: u64 = 64 << 10;

/// The most a config, rule or rule-test file may hold; generous, but a mistaken path cannot fill memory.
pub const MAX_YAML_BYTES: u64 = 16 << 20;

/// At most this many unknown keys are reported before giving up on a file.
const MAX_UNKNOWN_KEYS: usize = 50;

/// Parses `text` into `T`; every problem at its location (see `parse_lenient`).
pub fn parse<T: for<'de> Deserialize<'de>>(file: &Path, text: &str) -> Result<T, Vec<Diagnostic>> {
    match parse_lenient(file, text) {
        (Some(value), errors) if errors.is_empty() => Ok(value),
        (_, errors) => Err(errors),
    }
}

/// Parses `text` into `T`, reporting every unknown key (`deny_unknown_fields`) at its location: after
/// each one the key and its value are blanked out (line and column numbers kept) and the text parsed
/// again (a section the blanking leaves without keys becomes `{}`, so it does not read as null).
/// Returns what the text parses to without those keys, so the caller can go on to report the
/// mistakes in the values too. Any other error (syntax, a wrong type) ends the parse and is
/// reported after the unknown keys found before it.
pub fn parse_lenient<T: for<'de> Deserialize<'de>>(
    file: &Path,
    text: &str,
) -> (Option<T>, Vec<Diagnostic>) {
    let mut text = std::borrow::Cow::Borrowed(text);
    let mut errors: Vec<Diagnostic> = Vec::new();
    loop {
        match parse_once(file, &text) {
            Ok(value) => return (Some(value), errors),
            Err(d) if d.message.starts_with("unknown field") && errors.len() < MAX_UNKNOWN_KEYS => {
                let blanked = blank_key(&text, d.line, d.col);
                errors.push(d);
                match blanked {
                    Some(t) => text = std::borrow::Cow::Owned(t),
                    None => return (None, errors),
                }
            }
            Err(d) => {
                errors.push(d);
                return (None, errors);
            }
        }
    }
}

fn parse_once<T: for<'de> Deserialize<'de>>(file: &Path, text: &str) -> Result<T, Diagnostic> {
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

/// `text` with the key at 1-based (`line`, `col`) and its value replaced by spaces, so the rest keeps
/// its positions. In a flow mapping (`{ a: 1, typo: 2 }`) that is the entry with its `,`, or up to `}`,
/// outside brackets and quotes; in a block mapping the key's line and the lines indented below it.
/// `None` when the position is not where a key can be.
fn blank_key(text: &str, line: u64, col: u64) -> Option<String> {
    let mut lines: Vec<String> = text.split('\n').map(str::to_string).collect();
    let index = usize::try_from(line.checked_sub(1)?).ok()?;
    let start = usize::try_from(col.checked_sub(1)?).ok()?;
    let chars: Vec<char> = lines.get(index)?.chars().collect();
    if start >= chars.len() {
        return None;
    }
    let before = chars[..start].iter().collect::<String>();
    let before = before.trim_end();
    let blank = |chars: &mut [char]| chars.iter_mut().for_each(|c| *c = ' ');
    if before.ends_with('{') || before.ends_with(',') {
        let mut depth = 0i32;
        let mut quote: Option<char> = None;
        let mut end = chars.len();
        for (i, &c) in chars.iter().enumerate().skip(start) {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '"' | '\'') => quote = Some(c),
                (None, '{' | '[') => depth += 1,
                (None, '}' | ']') if depth == 0 => {
                    end = i;
                    break;
                }
                (None, '}' | ']') => depth -= 1,
                (None, ',') if depth == 0 => {
                    // The comma goes too: `{ a: 1, , b: 2 }` is not YAML, `{ a: 1, }` is.
                    end = i + 1;
                    break;
                }
                _ => {}
            }
        }
        let mut chars = chars;
        blank(&mut chars[start..end]);
        lines[index] = chars.into_iter().collect();
    } else {
        let mut chars = chars;
        blank(&mut chars[start..]);
        let mut end = index + 1;
        for next in lines.iter_mut().skip(index + 1) {
            if content_indent(next).is_some_and(|(indent, _)| indent <= start) {
                break;
            }
            *next = " ".repeat(next.chars().count());
            end += 1;
        }
        // A mapping left with no entry would read as null ("expected a mapping"): make it `{}`.
        // Below, a sibling is a key at the same column that does not start the next item; above,
        // the first line at or left of the column is a sibling if it is at the column.
        let sibling_below = lines[end..]
            .iter()
            .find_map(|l| content_indent(l))
            .is_some_and(|(indent, item)| indent == start && !item);
        let item = before.ends_with('-');
        let sibling_above = !item
            && lines[..index]
                .iter()
                .rev()
                .filter_map(|l| content_indent(l))
                .find(|(indent, _)| *indent <= start)
                .is_some_and(|(indent, _)| indent == start);
        if !sibling_below && !sibling_above {
            chars[start] = '{';
            if let Some(c) = chars.get_mut(start + 1) {
                *c = '}';
            } else {
                chars.push('}');
            }
        }
        lines[index] = chars.into_iter().collect();
    }
    let out = lines.join("\n");
    (out != text).then_some(out)
}

/// The column (0-based) where a line's content starts, `- ` item markers skipped, and whether the
/// line starts a sequence item; `None` for a blank or comment line.
fn content_indent(line: &str) -> Option<(usize, bool)> {
    let content = line.trim();
    if content.is_empty() || content.starts_with('#') {
        return None;
    }
    let mut col = line.chars().take_while(|c| *c == ' ').count();
    let mut rest = &line[col..];
    let item = rest.starts_with("- ");
    while let Some(after) = rest.strip_prefix("- ") {
        let spaces = after.chars().take_while(|c| *c == ' ').count();
        col += 2 + spaces;
        rest = &after[spaces..];
    }
    Some((col, item))
}

/// What is wrong with a regex, in one line: the last line of `regex`'s multi-line message.
pub fn regex_problem(e: &regex::Error) -> String {
    e.to_string()
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Every problem found in one file, each at its `file:line:col`: the one collector the config, rule
/// and rule-test loaders report through (and each receiver's validation, through `Values`).
#[derive(Debug)]
pub struct Diagnostics {
    pub file: PathBuf,
    errors: Vec<Diagnostic>,
}

impl Diagnostics {
    pub fn new(file: &Path) -> Self {
        Diagnostics {
            file: file.to_path_buf(),
            errors: Vec::new(),
        }
    }

    pub fn error_at<T>(&mut self, at: &Spanned<T>, message: impl Into<String>) {
        let (line, col) = position(&at.referenced);
        self.error(line, col, message);
    }

    pub fn error_at_location(&mut self, at: &serde_saphyr::Location, message: impl Into<String>) {
        let (line, col) = position(at);
        self.error(line, col, message);
    }

    pub fn error(&mut self, line: u64, col: u64, message: impl Into<String>) {
        self.errors.push(Diagnostic {
            file: self.file.clone(),
            line,
            col,
            message: message.into(),
        });
    }

    /// Problems found elsewhere (a file this one names, such as a rule file).
    pub fn extend(&mut self, found: impl IntoIterator<Item = Diagnostic>) {
        self.errors.extend(found);
    }

    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// How many problems so far (to tell whether a step found any).
    pub fn len(&self) -> usize {
        self.errors.len()
    }

    /// `value` when nothing was wrong, else every problem in file and position order.
    pub fn finish<T>(mut self, value: T) -> Result<T, Vec<Diagnostic>> {
        if self.errors.is_empty() {
            return Ok(value);
        }
        self.errors
            .sort_by(|a, b| (&a.file, a.line, a.col).cmp(&(&b.file, b.line, b.col)));
        Err(self.errors)
    }
}

/// Reads the values of one config file, reporting each mistake at its location.
pub struct Values<'a> {
    pub diags: Diagnostics,
    /// Relative paths are relative to the file's directory.
    pub dir: PathBuf,
    env: &'a dyn Fn(&str) -> Option<String>,
}

impl<'a> Values<'a> {
    /// `env` looks up `${VAR}` references (injected for tests).
    pub fn new(file: &Path, env: &'a dyn Fn(&str) -> Option<String>) -> Self {
        Values {
            diags: Diagnostics::new(file),
            dir: file.parent().map(Path::to_path_buf).unwrap_or_default(),
            env,
        }
    }

    pub fn error_at<T>(&mut self, at: &Spanned<T>, message: impl Into<String>) {
        self.diags.error_at(at, message);
    }

    /// Reports each problem a module's own rules found in a value, at the key `at` says it is about
    /// (`what: message`). True when there was none.
    pub fn report<'s, K, M: std::fmt::Display>(
        &mut self,
        what: &str,
        problems: Vec<(K, M)>,
        at: impl Fn(K) -> &'s S,
    ) -> bool {
        let clean = problems.is_empty();
        for (key, message) in problems {
            self.error_at(at(key), format!("{what}: {message}"));
        }
        clean
    }

    /// Expands `${VAR}` (and `$$` to `$`); an undefined variable is an error at the value.
    pub fn string(&mut self, s: &S) -> String {
        let raw = &s.value;
        let mut out = String::with_capacity(raw.len());
        let mut rest = raw.as_str();
        while let Some(i) = rest.find('$') {
            out.push_str(&rest[..i]);
            rest = &rest[i..];
            if let Some(tail) = rest.strip_prefix("$$") {
                out.push('$');
                rest = tail;
            } else if let Some(tail) = rest.strip_prefix("${") {
                let Some(end) = tail.find('}') else {
                    self.error_at(s, "unterminated ${…} reference");
                    return out;
                };
                let name = &tail[..end];
                match (self.env)(name) {
                    Some(val) => out.push_str(&val),
                    None => self.error_at(s, format!("environment variable {name} is not set")),
                }
                rest = &tail[end + 1..];
            } else {
                out.push('$');
                rest = &rest[1..];
            }
        }
        out.push_str(rest);
        out
    }

    pub fn path(&mut self, s: &S) -> PathBuf {
        let p = PathBuf::from(self.string(s));
        if p.is_relative() { self.dir.join(p) } else { p }
    }

    /// Reads a file the config points at, at most `limit` bytes: a path to `/dev/zero` or a log file
    /// is an error at the key, not a hang.
    pub fn read_file(&mut self, s: &S, what: &str, limit: u64) -> Option<Vec<u8>> {
        let p = self.path(s);
        match read_limited(&p, limit) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                self.error_at(s, format!("cannot read {what} {}: {e}", p.display()));
                None
            }
        }
    }

    /// A secret from a file: its text without the trailing newline.
    pub fn secret_file(&mut self, s: &S, what: &str) -> Option<Secret> {
        let bytes = self.read_file(s, what, MAX_SECRET_BYTES)?;
        match String::from_utf8(bytes) {
            Ok(text) => Some(Secret::new(text.trim_end_matches(['\n', '\r']).to_string())),
            Err(_) => {
                self.error_at(s, format!("{what} is not UTF-8 text"));
                None
            }
        }
    }

    pub fn duration(
        &mut self,
        s: Option<&S>,
        default: Duration,
        min: Duration,
        key: &str,
    ) -> Duration {
        let Some(s) = s else { return default };
        let text = self.string(s);
        match humantime::parse_duration(text.trim()) {
            Ok(d) if d >= min => d,
            Ok(_) => {
                self.error_at(
                    s,
                    format!("{key} must be at least {}", humantime::format_duration(min)),
                );
                default
            }
            Err(e) => {
                self.error_at(
                    s,
                    format!(
                        "{key}: invalid duration {text:?} ({e}); expected e.g. \"10s\", \"5m\""
                    ),
                );
                default
            }
        }
    }

    pub fn regex(&mut self, s: &S, key: &str) -> Option<Regex> {
        let text = self.string(s);
        match Regex::new(&text) {
            Ok(re) => Some(re),
            Err(e) => {
                let detail = regex_problem(&e);
                self.error_at(s, format!("{key}: invalid regex {text:?}: {detail}"));
                None
            }
        }
    }

    /// An http(s) URL with a host. The value may be a credential (a Slack webhook URL): the error
    /// describes it, never echoes it.
    pub fn url(&mut self, s: &S, key: &str) -> Option<reqwest::Url> {
        let text = self.string(s);
        match reqwest::Url::parse(&text) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => Some(u),
            _ => {
                self.error_at(s, format!("{key} is not an http(s) URL"));
                None
            }
        }
    }
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

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        a: Option<u32>,
        b: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        inner: Option<Inner>,
        list: Option<Vec<Inner>>,
        flow: Option<Inner>,
        c: Option<u32>,
    }

    fn problems(text: &str) -> Vec<String> {
        match parse::<Outer>(Path::new("f.yaml"), text) {
            Ok(_) => Vec::new(),
            Err(ds) => ds
                .iter()
                .map(|d| format!("{}:{} {}", d.line, d.col, d.message))
                .collect(),
        }
    }

    #[test]
    fn every_unknown_key_is_reported_at_its_place() {
        let text = "inner:\n  a: 1\n  bb: 2\n  deeper:\n    x: 1\n  b: ok\nlist:\n  - a: 1\n    zz: 3\nflow: { a: 1, typo: \"x, }\", b: y }\ncc: 4\nc: 5\n";
        let found = problems(text);
        assert_eq!(found.len(), 5, "{found:#?}");
        let places: Vec<&str> = found.iter().map(|p| p.split(' ').next().unwrap()).collect();
        assert_eq!(places, ["3:3", "4:3", "9:5", "10:15", "11:1"]);
        assert!(found[0].contains("unknown field `bb`"), "{}", found[0]);
    }

    #[test]
    fn a_section_left_without_keys_is_not_reported_as_wrong() {
        // `inner` and the list item would be null once their one key is blanked out.
        let found = problems("inner:\n  typo: 1\nlist:\n  - zz: 1\nc: 5\n");
        assert_eq!(found.len(), 2, "{found:#?}");
        assert!(
            found[0].starts_with("2:3 unknown field `typo`"),
            "{}",
            found[0]
        );
        assert!(
            found[1].starts_with("4:5 unknown field `zz`"),
            "{}",
            found[1]
        );
        let (value, _) = parse_lenient::<Outer>(Path::new("f.yaml"), "inner:\n  typo: 1\nc: 5\n");
        assert_eq!(value.and_then(|v| v.c), Some(5), "the rest still parses");
    }

    #[test]
    fn a_wrong_type_after_a_typo_is_reported_too() {
        let found = problems("typo: 1\nc: not-a-number\n");
        assert_eq!(found.len(), 2, "{found:#?}");
        assert!(
            found[0].starts_with("1:1 unknown field `typo`"),
            "{}",
            found[0]
        );
        assert!(found[1].starts_with("2:"), "{}", found[1]);
    }

    #[test]
    fn another_error_is_reported_when_it_comes_first() {
        let found = problems("c: not-a-number\ntypo: 1\n");
        assert_eq!(found.len(), 1, "{found:#?}");
        assert!(found[0].starts_with("1:"), "{}", found[0]);
        assert!(!found[0].contains("unknown field"), "{}", found[0]);
    }

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
