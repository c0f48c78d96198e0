//! A streaming parser for the Prometheus text exposition format (0.0.4), as RabbitMQ's
//! `rabbitmq_prometheus` plugin writes it on `/metrics/detailed`.
//!
//! The body is fed in the chunks it arrives in; the parser keeps only the incomplete last line of the
//! previous chunk (at most [`MAX_LINE`] bytes), so a body of tens of MB is never held whole. Each
//! `# TYPE` line and each sample is handed to a callback, borrowed from the chunk: nothing is
//! allocated per line except a label value whose escapes must be decoded, and only when asked for.
//!
//! Parsed: `# TYPE name kind`, samples `name{label="value",…} value [timestamp]` with the escapes
//! `\\`, `\"` and `\n` in label values, `NaN`/`+Inf`/`-Inf`, blanks around tokens, a trailing comma in
//! the label set, `\r\n` line ends. Ignored: `# HELP` and every other comment (including `# EOF`),
//! blank lines, the timestamp's value. Everything else is an error with its line and column: this
//! module never guesses at a malformed line, since a mis-split label would sum a queue's figures
//! into another queue.

use std::borrow::Cow;

/// Longest line accepted, in bytes: a body without newlines must not grow the pending buffer
/// without bound.
pub const MAX_LINE: usize = 1 << 20;

/// One line that means something to a reader.
#[derive(Clone, Debug, PartialEq)]
pub enum Line<'a> {
    /// `# TYPE family kind`; `kind` is passed on as written (`counter`, `gauge`, …).
    Type {
        family: &'a str,
        kind: &'a str,
    },
    Sample(Sample<'a>),
}

/// One sample, its labels kept as validated spans of the line and decoded on request.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample<'a> {
    pub name: &'a str,
    pub value: f64,
    line: &'a str,
    labels: &'a [RawLabel],
}

/// Byte offsets into the line of one label's key and (still escaped) value.
#[derive(Clone, Copy, Debug, PartialEq)]
struct RawLabel {
    key: (u32, u32),
    value: (u32, u32),
    escaped: bool,
}

impl<'a> Sample<'a> {
    /// The label's value with escapes (`\\`, `\"`, `\n`) decoded; borrowed when it has none.
    pub fn label(&self, key: &str) -> Option<Cow<'a, str>> {
        self.labels
            .iter()
            .find(|raw| span(self.line, raw.key) == key)
            .map(|raw| self.value_of(raw))
    }

    /// Every label as (key, decoded value), in the order written.
    pub fn labels(&self) -> impl Iterator<Item = (&'a str, Cow<'a, str>)> + '_ {
        self.labels
            .iter()
            .map(|raw| (span(self.line, raw.key), self.value_of(raw)))
    }

    fn value_of(&self, raw: &RawLabel) -> Cow<'a, str> {
        let text = span(self.line, raw.value);
        if raw.escaped {
            Cow::Owned(unescape(text))
        } else {
            Cow::Borrowed(text)
        }
    }
}

fn span(line: &str, (start, end): (u32, u32)) -> &str {
    &line[start as usize..end as usize]
}

/// Decodes a label value the parser has already checked holds only known escapes.
fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some(other) => out.push(other),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct ParseError {
    /// 1-based, counted across chunks.
    pub line: usize,
    /// 1-based byte offset in the line.
    pub column: usize,
    pub message: String,
}

/// Parses a body fed chunk by chunk. After an error the parser's state is unspecified: drop it.
#[derive(Debug, Default)]
pub struct Parser {
    /// The incomplete last line of the previous chunk; reused from line to line.
    pending: Vec<u8>,
    /// Lines already parsed.
    lines: usize,
    /// The label spans of the current sample; reused from line to line.
    labels: Vec<RawLabel>,
}

impl Parser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses every complete line of `chunk` (plus what was pending), calling `f` for each TYPE line
    /// and sample.
    pub fn feed(&mut self, chunk: &[u8], mut f: impl FnMut(Line<'_>)) -> Result<(), ParseError> {
        let mut rest = chunk;
        if !self.pending.is_empty() {
            let Some(end) = find_newline(rest) else {
                return self.keep(rest);
            };
            if self.pending.len() + end > MAX_LINE {
                return Err(too_long(self.lines + 1));
            }
            self.pending.extend_from_slice(&rest[..end]);
            rest = &rest[end + 1..];
            self.lines += 1;
            parse_line(&self.pending, self.lines, &mut self.labels, &mut f)?;
            self.pending.clear();
        }
        while let Some(end) = find_newline(rest) {
            self.lines += 1;
            parse_line(&rest[..end], self.lines, &mut self.labels, &mut f)?;
            rest = &rest[end + 1..];
        }
        self.keep(rest)
    }

    /// Parses the last line, when the body does not end with a newline.
    pub fn finish(mut self, mut f: impl FnMut(Line<'_>)) -> Result<(), ParseError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        parse_line(&self.pending, self.lines + 1, &mut self.labels, &mut f)
    }

    /// Keeps the start of a line until its end arrives, refusing (before copying) to hold more than
    /// a line may have.
    fn keep(&mut self, start: &[u8]) -> Result<(), ParseError> {
        if self.pending.len() + start.len() > MAX_LINE {
            return Err(too_long(self.lines + 1));
        }
        self.pending.extend_from_slice(start);
        Ok(())
    }
}

/// Parses a whole body held in memory (`feed` once, then `finish`).
pub fn parse(body: &[u8], mut f: impl FnMut(Line<'_>)) -> Result<(), ParseError> {
    let mut parser = Parser::new();
    parser.feed(body, &mut f)?;
    parser.finish(f)
}

fn find_newline(bytes: &[u8]) -> Option<usize> {
    memchr::memchr(b'\n', bytes)
}

fn too_long(line: usize) -> ParseError {
    ParseError {
        line,
        column: MAX_LINE + 1,
        message: format!("line longer than {MAX_LINE} bytes"),
    }
}

// ---------------------------------------------------------------- one line

fn parse_line(
    bytes: &[u8],
    number: usize,
    labels: &mut Vec<RawLabel>,
    f: &mut impl FnMut(Line<'_>),
) -> Result<(), ParseError> {
    if bytes.len() > MAX_LINE {
        return Err(too_long(number));
    }
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    let text = std::str::from_utf8(bytes).map_err(|e| ParseError {
        line: number,
        column: e.valid_up_to() + 1,
        message: "invalid UTF-8".to_owned(),
    })?;
    let mut cursor = Cursor {
        text,
        bytes,
        at: 0,
        line: number,
    };
    cursor.skip_blanks();
    match cursor.peek() {
        None => Ok(()),
        Some(b'#') => {
            if let Some(line) = cursor.comment()? {
                f(line);
            }
            Ok(())
        }
        Some(_) => {
            let sample = cursor.sample(labels)?;
            f(Line::Sample(sample));
            Ok(())
        }
    }
}

struct Cursor<'a> {
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
    line: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn skip_blanks(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.at += 1;
        }
    }

    fn error_at<T>(&self, at: usize, message: impl Into<String>) -> Result<T, ParseError> {
        Err(ParseError {
            line: self.line,
            column: at + 1,
            message: message.into(),
        })
    }

    /// A run of non-blank bytes.
    fn token(&mut self) -> &'a str {
        let start = self.at;
        while !matches!(self.peek(), None | Some(b' ' | b'\t')) {
            self.at += 1;
        }
        &self.text[start..self.at]
    }

    /// `# TYPE name kind` becomes a line; `# HELP` and other comments are skipped.
    fn comment(&mut self) -> Result<Option<Line<'a>>, ParseError> {
        self.at += 1; // '#'
        self.skip_blanks();
        if self.token() != "TYPE" {
            return Ok(None);
        }
        self.skip_blanks();
        let family_at = self.at;
        let family = self.token();
        if family.is_empty() {
            return self.error_at(family_at, "TYPE without a metric name");
        }
        if !is_metric_name(family) {
            return self.error_at(family_at, format!("invalid metric name {family:?}"));
        }
        self.skip_blanks();
        let kind_at = self.at;
        let kind = self.token();
        if kind.is_empty() {
            return self.error_at(kind_at, "TYPE without a metric type");
        }
        self.skip_blanks();
        if self.peek().is_some() {
            return self.error_at(self.at, "unexpected text after the metric type");
        }
        Ok(Some(Line::Type { family, kind }))
    }

    fn sample(&mut self, labels: &'a mut Vec<RawLabel>) -> Result<Sample<'a>, ParseError> {
        let name_at = self.at;
        match self.peek() {
            Some(b) if b.is_ascii_alphabetic() || b == b'_' || b == b':' => self.at += 1,
            _ => return self.error_at(name_at, "expected a metric name"),
        }
        while matches!(self.peek(), Some(b) if b.is_ascii_alphanumeric() || b == b'_' || b == b':')
        {
            self.at += 1;
        }
        let name = &self.text[name_at..self.at];
        labels.clear();
        if !matches!(self.peek(), None | Some(b' ' | b'\t' | b'{')) {
            return self.error_at(self.at, "invalid character in the metric name");
        }
        self.skip_blanks();
        match self.peek() {
            Some(b'{') => {
                self.at += 1;
                self.labels(labels)?;
            }
            Some(_) => {}
            None => return self.error_at(self.at, "expected a value after the metric name"),
        }
        self.skip_blanks();
        let value_at = self.at;
        let token = self.token();
        if token.is_empty() {
            return self.error_at(value_at, "expected a value after the labels");
        }
        let Some(value) = parse_value(token) else {
            return self.error_at(value_at, format!("invalid sample value {token:?}"));
        };
        self.skip_blanks();
        let timestamp_at = self.at;
        let timestamp = self.token();
        if !timestamp.is_empty() && !is_timestamp(timestamp) {
            return self.error_at(timestamp_at, format!("invalid timestamp {timestamp:?}"));
        }
        self.skip_blanks();
        if self.peek().is_some() {
            return self.error_at(self.at, "unexpected text after the timestamp");
        }
        Ok(Sample {
            name,
            value,
            line: self.text,
            labels,
        })
    }

    /// `key="value",…}` with the `{` already consumed; leaves the cursor after the `}`.
    fn labels(&mut self, labels: &mut Vec<RawLabel>) -> Result<(), ParseError> {
        loop {
            self.skip_blanks();
            let key_at = self.at;
            match self.peek() {
                Some(b'}') => {
                    self.at += 1;
                    return Ok(());
                }
                Some(b) if b.is_ascii_alphabetic() || b == b'_' => self.at += 1,
                None => return self.error_at(key_at, "unterminated label set"),
                Some(_) => return self.error_at(key_at, "expected a label name or '}'"),
            }
            while matches!(self.peek(), Some(b) if b.is_ascii_alphanumeric() || b == b'_') {
                self.at += 1;
            }
            let key = (key_at as u32, self.at as u32);
            let key_text = span(self.text, key);
            if labels.iter().any(|l| span(self.text, l.key) == key_text) {
                return self.error_at(key_at, format!("label {key_text:?} appears twice"));
            }
            self.skip_blanks();
            if self.peek() != Some(b'=') {
                return self.error_at(self.at, format!("expected '=' after label {key_text:?}"));
            }
            self.at += 1;
            self.skip_blanks();
            if self.peek() != Some(b'"') {
                return self.error_at(
                    self.at,
                    format!("value of label {key_text:?} is not quoted"),
                );
            }
            self.at += 1;
            let value_start = self.at;
            let mut escaped = false;
            loop {
                match self.peek() {
                    None => {
                        return self.error_at(
                            value_start - 1,
                            format!("value of label {key_text:?} is unterminated"),
                        );
                    }
                    Some(b'"') => break,
                    Some(b'\\') => {
                        match self.bytes.get(self.at + 1) {
                            Some(b'\\' | b'"' | b'n') => {}
                            _ => {
                                return self.error_at(
                                    self.at,
                                    format!("unknown escape in the value of label {key_text:?}"),
                                );
                            }
                        }
                        escaped = true;
                        self.at += 2;
                    }
                    Some(_) => self.at += 1,
                }
            }
            labels.push(RawLabel {
                key,
                value: (value_start as u32, self.at as u32),
                escaped,
            });
            self.at += 1; // closing quote
            self.skip_blanks();
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b'}') => {}
                None => return self.error_at(self.at, "unterminated label set"),
                Some(_) => {
                    return self.error_at(
                        self.at,
                        format!("expected ',' or '}}' after label {key_text:?}"),
                    );
                }
            }
        }
    }
}

fn is_metric_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_' || b == b':')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

/// A sample value: Go float syntax as the exposition format defines it. Plain integers (most of
/// RabbitMQ's values) skip the general float parser.
fn parse_value(token: &str) -> Option<f64> {
    let bytes = token.as_bytes();
    // Up to 15 digits fit f64's 53-bit mantissa exactly.
    if !bytes.is_empty() && bytes.len() <= 15 && bytes.iter().all(u8::is_ascii_digit) {
        let n = bytes
            .iter()
            .fold(0u64, |n, &b| n * 10 + u64::from(b - b'0'));
        return Some(n as f64);
    }
    match token {
        "NaN" => Some(f64::NAN),
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => token.parse().ok(),
    }
}

/// Milliseconds since the epoch, an integer (possibly negative).
fn is_timestamp(token: &str) -> bool {
    let digits = token.strip_prefix('-').unwrap_or(token);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line as the tests compare it: owned, labels decoded, the value by its bits (so NaN == NaN).
    #[derive(Clone, Debug, PartialEq)]
    enum Owned {
        Type(String, String),
        Sample(String, Vec<(String, String)>, u64),
    }

    fn own(line: Line<'_>) -> Owned {
        match line {
            Line::Type { family, kind } => Owned::Type(family.to_owned(), kind.to_owned()),
            Line::Sample(s) => Owned::Sample(
                s.name.to_owned(),
                s.labels()
                    .map(|(k, v)| (k.to_owned(), v.into_owned()))
                    .collect(),
                s.value.to_bits(),
            ),
        }
    }

    fn whole(body: &[u8]) -> Result<Vec<Owned>, ParseError> {
        let mut out = Vec::new();
        parse(body, |line| out.push(own(line)))?;
        Ok(out)
    }

    fn chunked<'c>(chunks: impl IntoIterator<Item = &'c [u8]>) -> Result<Vec<Owned>, ParseError> {
        let mut out = Vec::new();
        let mut parser = Parser::new();
        for chunk in chunks {
            parser.feed(chunk, |line| out.push(own(line)))?;
        }
        parser.finish(|line| out.push(own(line)))?;
        Ok(out)
    }

    fn sample(name: &str, labels: &[(&str, &str)], value: f64) -> Owned {
        Owned::Sample(
            name.to_owned(),
            labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            value.to_bits(),
        )
    }

    fn family(name: &str, kind: &str) -> Owned {
        Owned::Type(name.to_owned(), kind.to_owned())
    }

    #[test]
    fn parses_every_accepted_form() {
        let q = |v| vec![("vhost", "/"), ("queue", v)];
        let cases: Vec<(&str, &str, Vec<Owned>)> = vec![
            ("nothing", "", vec![]),
            ("blank lines", "\n  \n\t\n\r\n", vec![]),
            (
                "help is ignored, type is passed on",
                "# HELP m Messages ready to be delivered\n# TYPE m gauge\n",
                vec![family("m", "gauge")],
            ),
            (
                "other comments and EOF are ignored",
                "# just a comment\n#\n# EOF\n#TYPEX m gauge\n",
                vec![],
            ),
            (
                "type with blanks around its tokens",
                "  #  TYPE \t m:x_total  counter \n",
                vec![family("m:x_total", "counter")],
            ),
            ("no labels", "m 1\n", vec![sample("m", &[], 1.0)]),
            ("empty label set", "m{} 2\n", vec![sample("m", &[], 2.0)]),
            (
                "labels in the order written",
                "rabbitmq_detailed_queue_messages{vhost=\"/\",queue=\"orders.q-1\"} 3\n",
                vec![sample(
                    "rabbitmq_detailed_queue_messages",
                    &q("orders.q-1"),
                    3.0,
                )],
            ),
            (
                "trailing comma",
                "m{vhost=\"/\",queue=\"a\",} 4\n",
                vec![sample("m", &q("a"), 4.0)],
            ),
            (
                "blanks around every token",
                "  m { vhost = \"/\" , queue = \"a b\" , }   5   \n",
                vec![sample("m", &q("a b"), 5.0)],
            ),
            (
                "escapes",
                r#"m{vhost="/",queue="say \"hi\"\nto C:\\dir"} 6"#,
                vec![sample("m", &q("say \"hi\"\nto C:\\dir"), 6.0)],
            ),
            (
                "label value with braces, commas and equals signs",
                "m{vhost=\"/\",queue=\"a,b=c}d{\"} 7\n",
                vec![sample("m", &q("a,b=c}d{"), 7.0)],
            ),
            (
                "non-ASCII label value",
                "m{vhost=\"/\",queue=\"очередь-ü\"} 8\n",
                vec![sample("m", &q("очередь-ü"), 8.0)],
            ),
            (
                "CRLF line ends",
                "# TYPE m gauge\r\nm 9\r\n\r\n",
                vec![family("m", "gauge"), sample("m", &[], 9.0)],
            ),
            (
                "no newline at the end",
                "m 1\nm 10",
                vec![sample("m", &[], 1.0), sample("m", &[], 10.0)],
            ),
            (
                "special and float values",
                "m NaN\nm +Inf\nm -Inf\nm Inf\nm 1.5\nm -0.25\nm 1e3\nm 2.5E-3\nm -7\nm 12345678901234567890\nm 0\n",
                [
                    f64::NAN,
                    f64::INFINITY,
                    f64::NEG_INFINITY,
                    f64::INFINITY,
                    1.5,
                    -0.25,
                    1000.0,
                    0.0025,
                    -7.0,
                    12_345_678_901_234_567_890.0,
                    0.0,
                ]
                .into_iter()
                .map(|v| sample("m", &[], v))
                .collect(),
            ),
            (
                "timestamps are ignored",
                "m 1 1700000000000\nm{a=\"x\"} 2 -5\n",
                vec![sample("m", &[], 1.0), sample("m", &[("a", "x")], 2.0)],
            ),
        ];
        for (name, body, expected) in cases {
            assert_eq!(whole(body.as_bytes()), Ok(expected), "{name}");
        }
    }

    #[test]
    fn label_is_borrowed_unless_it_has_escapes() {
        let body = br#"m{plain="a.b-c",escaped="a\\b",empty=""} 1"#;
        let mut seen = 0;
        parse(body, |line| {
            let Line::Sample(s) = line else { return };
            assert!(matches!(s.label("plain"), Some(Cow::Borrowed("a.b-c"))));
            assert!(matches!(s.label("escaped"), Some(Cow::Owned(v)) if v == "a\\b"));
            assert!(matches!(s.label("empty"), Some(Cow::Borrowed(""))));
            assert_eq!(s.label("missing"), None);
            seen += 1;
        })
        .unwrap();
        assert_eq!(seen, 1);
    }

    #[test]
    fn rejects_malformed_lines_with_their_position() {
        // (body, line, column, part of the message)
        let cases: &[(&[u8], usize, usize, &str)] = &[
            (b"m{a=\"a\\tb\"} 1\n", 1, 7, "unknown escape"),
            (b"m{a=\"a\\\"} 1\n", 1, 5, "unterminated"),
            (b"m{a=\"abc\n", 1, 5, "unterminated"),
            (b"ok 1\nm{queue=\"evil\n{x=\"1\"} 1\n", 2, 9, "unterminated"),
            (b"m{a=\"\xff\"} 1\n", 1, 6, "invalid UTF-8"),
            (b"# HELP m \xc3\n", 1, 10, "invalid UTF-8"),
            (b"m\n", 1, 2, "expected a value"),
            (b"m \n", 1, 3, "expected a value"),
            (b"m{a=\"x\"}\n", 1, 9, "expected a value"),
            (b"m 1.2.3\n", 1, 3, "invalid sample value"),
            (b"m one\n", 1, 3, "invalid sample value"),
            (b"m 1 12.5\n", 1, 5, "invalid timestamp"),
            (b"m 1 2 3\n", 1, 7, "unexpected text"),
            (b"1m 1\n", 1, 1, "expected a metric name"),
            (b"m-x 1\n", 1, 2, "invalid character"),
            (b"m{1a=\"x\"} 1\n", 1, 3, "expected a label name"),
            (b"m{a=\"x\",a=\"y\"} 1\n", 1, 9, "appears twice"),
            (b"m{a \"x\"} 1\n", 1, 5, "expected '='"),
            (b"m{a=x} 1\n", 1, 5, "not quoted"),
            (b"m{a=\"x\" b=\"y\"} 1\n", 1, 9, "expected ','"),
            (b"m{a=\"x\"\n", 1, 8, "unterminated label set"),
            (b"m{\n", 1, 3, "unterminated label set"),
            (b"# TYPE\n", 1, 7, "without a metric name"),
            (b"# TYPE m\n", 1, 9, "without a metric type"),
            (b"# TYPE 1m gauge\n", 1, 8, "invalid metric name"),
            (b"# TYPE m gauge extra\n", 1, 16, "unexpected text"),
            (b"m 1\r\nm 2\r\nm x\r\n", 3, 3, "invalid sample value"),
        ];
        for &(body, line, column, message) in cases {
            let error = whole(body).expect_err(&String::from_utf8_lossy(body));
            assert_eq!(
                (error.line, error.column),
                (line, column),
                "{:?}: {error}",
                String::from_utf8_lossy(body)
            );
            assert!(
                error.message.contains(message),
                "{:?}: {error}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn error_displays_its_position() {
        let error = whole(b"m 1\nm x\n").unwrap_err();
        assert_eq!(
            error.to_string(),
            "line 2, column 3: invalid sample value \"x\""
        );
    }

    const BODY: &str = "# TYPE rabbitmq_detailed_queue_messages gauge\n\
        # HELP rabbitmq_detailed_queue_messages Sum of ready and unacknowledged messages - total queue depth\n\
        rabbitmq_detailed_queue_messages{vhost=\"/\",queue=\"orders.api.q-1\"} 12\n\
        rabbitmq_detailed_queue_messages{vhost=\"/\",queue=\"say \\\"hi\\\"\"} 0\r\n\
        rabbitmq_detailed_queue_messages{vhost=\"prod\",queue=\"C:\\\\tmp\\n2\",} 1e3 1700000000000\n\
        \n\
        # TYPE rabbitmq_detailed_queue_exchange_messages_published_total counter\n\
        rabbitmq_detailed_queue_exchange_messages_published_total{vhost=\"/\",exchange=\"\",queue=\"очередь\"} NaN\n\
        rabbitmq_detailed_queue_exchange_messages_published_total{vhost=\"/\",exchange=\"amq.direct\",queue=\"b\"} +Inf\n\
        up 1\n\
        # EOF";

    #[test]
    fn the_same_body_gives_the_same_lines_however_it_is_split() {
        let body = BODY.as_bytes();
        let expected = whole(body).unwrap();
        assert_eq!(expected.len(), 8);
        assert_eq!(
            chunked(body.split_inclusive(|&b| b == b'\n')),
            Ok(expected.clone())
        );
        assert_eq!(chunked(body.chunks(1)), Ok(expected.clone()));
        for at in 0..=body.len() {
            let (a, b) = body.split_at(at);
            assert_eq!(chunked([a, b]), Ok(expected.clone()), "split at {at}");
        }
    }

    #[test]
    fn an_error_is_at_the_same_place_however_the_body_is_split() {
        let body = format!("{BODY}\nm{{a=\"x\\q\"}} 1\n");
        let body = body.as_bytes();
        let expected = whole(body).unwrap_err();
        assert_eq!((expected.line, expected.column), (12, 7));
        for at in 0..=body.len() {
            let (a, b) = body.split_at(at);
            assert_eq!(chunked([a, b]), Err(expected.clone()), "split at {at}");
        }
    }

    #[test]
    fn a_line_longer_than_the_limit_is_an_error_however_it_arrives() {
        let long = vec![b'm'; MAX_LINE + 1];
        let error = chunked([&b"m 1\n"[..], &long]).unwrap_err();
        assert_eq!((error.line, error.column), (2, MAX_LINE + 1));
        let mut parser = Parser::new();
        let chunk = vec![b'a'; 64 * 1024];
        let fed = (0..)
            .find_map(|_| parser.feed(&chunk, |_| {}).err())
            .unwrap();
        assert_eq!(fed.line, 1);
        assert!(parser.pending.len() <= MAX_LINE);
        let mut whole_line = long.clone();
        whole_line.extend_from_slice(b" 1\n");
        assert_eq!(whole(&whole_line).unwrap_err().line, 1);
        let ends_late = chunked([&long[..MAX_LINE - 10], &[b'm'; 20], b" 1\n"]).unwrap_err();
        assert_eq!((ends_late.line, ends_late.column), (1, MAX_LINE + 1));
        // Exactly MAX_LINE bytes before the newline, in three pieces: accepted.
        let in_pieces = chunked([&long[..MAX_LINE - 10], &[b'm'; 8], b" 1\n"]);
        assert_eq!(in_pieces.map(|lines| lines.len()), Ok(1));
        let mut at_limit = vec![b'm'; MAX_LINE - 2];
        at_limit.extend_from_slice(b" 1\n");
        assert_eq!(whole(&at_limit).unwrap().len(), 1);
        let (head, tail) = at_limit.split_at(MAX_LINE / 2);
        assert_eq!(chunked([head, tail]).unwrap().len(), 1);
    }
}
