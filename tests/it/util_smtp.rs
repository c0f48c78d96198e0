//! A real SMTP listener for the email tests: speaks enough SMTP over TCP (EHLO/HELO, MAIL FROM,
//! RCPT TO, DATA, RSET, NOOP, QUIT) for a real client, records every accepted message with its
//! envelope, and can be told to refuse recipients or data with a given reply code, so the tests see
//! how the receiver classifies each refusal.
//!
//! Each message is recorded before the final `250` is sent: once the client's `send` returns, the
//! message is in `messages()`.

#![allow(dead_code)] // not every test uses every helper

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// One accepted message: the envelope and the DATA as sent (dot-stuffing undone).
#[derive(Clone, Debug)]
pub struct ReceivedMail {
    pub from: String,
    pub to: Vec<String>,
    pub data: String,
}

impl ReceivedMail {
    /// The header block, unfolded (continuation lines joined), one header per line.
    pub fn header_lines(&self) -> Vec<String> {
        let head = self.data.split("\r\n\r\n").next().unwrap_or_default();
        head.replace("\r\n ", " ")
            .replace("\r\n\t", " ")
            .split("\r\n")
            .map(str::to_owned)
            .collect()
    }

    /// Every value of the header `name` (case-insensitive).
    pub fn headers(&self, name: &str) -> Vec<String> {
        self.header_lines()
            .iter()
            .filter_map(|line| {
                let (key, value) = line.split_once(':')?;
                key.eq_ignore_ascii_case(name)
                    .then(|| value.trim().to_owned())
            })
            .collect()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers(name).into_iter().next()
    }

    /// The body, with quoted-printable decoded when the message says it is encoded so.
    pub fn body(&self) -> String {
        let body = self
            .data
            .split_once("\r\n\r\n")
            .map_or("", |(_, body)| body);
        match self.header("Content-Transfer-Encoding").as_deref() {
            None | Some("7bit" | "8bit") => body.to_owned(),
            Some("quoted-printable") => decode_quoted_printable(body),
            Some(other) => panic!("the sink cannot decode a {other} body"),
        }
    }
}

fn decode_quoted_printable(text: &str) -> String {
    let text = text.replace("=\r\n", "");
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'='
            && let Some(hex) = text.get(i + 1..i + 3)
            && let Ok(byte) = u8::from_str_radix(hex, 16)
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[derive(Default)]
struct SinkState {
    messages: Mutex<Vec<ReceivedMail>>,
    /// The reply to every RCPT TO, instead of `250`.
    rcpt_reply: Mutex<Option<u16>>,
    /// The reply after the message data, instead of `250`.
    data_reply: Mutex<Option<u16>>,
}

/// The listener; stops accepting when dropped.
pub struct SmtpSink {
    addr: SocketAddr,
    state: Arc<SinkState>,
    task: JoinHandle<()>,
}

impl SmtpSink {
    pub async fn start() -> SmtpSink {
        SmtpSink::start_on(0).await
    }

    /// Like `start`, on a given port (0: any free one), e.g. one the daemon was told about before
    /// the sink came up.
    pub async fn start_on(port: u16) -> SmtpSink {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap_or_else(|e| panic!("binding the SMTP sink on port {port}: {e}"));
        let addr = listener.local_addr().expect("the SMTP sink's address");
        let state = Arc::new(SinkState::default());
        let shared = Arc::clone(&state);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = Arc::clone(&shared);
                tokio::spawn(async move {
                    // A client that hangs up mid-conversation is its own business.
                    let _ = converse(stream, &state).await;
                });
            }
        });
        SmtpSink { addr, state, task }
    }

    /// `smtp://127.0.0.1:PORT`: plain SMTP, no TLS.
    pub fn url(&self) -> String {
        format!("smtp://{}", self.addr)
    }

    /// Answer every RCPT TO with `code` (e.g. 550 or 451).
    pub fn reject_rcpt(&self, code: u16) {
        *self.state.rcpt_reply.lock().unwrap() = Some(code);
    }

    /// Answer the end of every message's data with `code`.
    pub fn reject_data(&self, code: u16) {
        *self.state.data_reply.lock().unwrap() = Some(code);
    }

    pub fn messages(&self) -> Vec<ReceivedMail> {
        self.state.messages.lock().unwrap().clone()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn refusal(code: u16) -> String {
    let text = if code >= 500 {
        "5.7.1 refused by the test sink"
    } else {
        "4.3.0 try again later"
    };
    format!("{code} {text}\r\n")
}

async fn converse(stream: TcpStream, state: &SinkState) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    write
        .write_all(b"220 sink.test ESMTP rabbitwatch test sink\r\n")
        .await?;
    let mut from: Option<String> = None;
    let mut to: Vec<String> = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        if read.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        let command = String::from_utf8_lossy(&line).trim_end().to_owned();
        let verb = command
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        let reply: String = match verb.as_str() {
            "EHLO" => "250-sink.test\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n".to_owned(),
            "HELO" => "250 sink.test\r\n".to_owned(),
            "MAIL" => {
                from = Some(address(&command));
                to.clear();
                "250 2.1.0 OK\r\n".to_owned()
            }
            "RCPT" => match *state.rcpt_reply.lock().unwrap() {
                Some(code) => refusal(code),
                None => {
                    to.push(address(&command));
                    "250 2.1.5 OK\r\n".to_owned()
                }
            },
            "DATA" if from.is_none() || to.is_empty() => {
                "503 5.5.1 MAIL and RCPT first\r\n".to_owned()
            }
            "DATA" => {
                write
                    .write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    .await?;
                let data = read_data(&mut read).await?;
                let reply = match *state.data_reply.lock().unwrap() {
                    Some(code) => refusal(code),
                    None => {
                        state.messages.lock().unwrap().push(ReceivedMail {
                            from: from.take().unwrap_or_default(),
                            to: std::mem::take(&mut to),
                            data,
                        });
                        "250 2.0.0 OK queued\r\n".to_owned()
                    }
                };
                from = None;
                to.clear();
                reply
            }
            "RSET" => {
                from = None;
                to.clear();
                "250 2.0.0 OK\r\n".to_owned()
            }
            "NOOP" => "250 2.0.0 OK\r\n".to_owned(),
            "QUIT" => {
                write.write_all(b"221 2.0.0 Bye\r\n").await?;
                return Ok(());
            }
            _ => "502 5.5.2 Command not implemented\r\n".to_owned(),
        };
        write.write_all(reply.as_bytes()).await?;
    }
}

/// The address inside `<…>` of a MAIL FROM / RCPT TO command.
fn address(command: &str) -> String {
    command
        .split_once('<')
        .and_then(|(_, rest)| rest.split_once('>'))
        .map_or_else(String::new, |(address, _)| address.to_owned())
}

/// Reads message data up to the lone `.` line, undoing dot-stuffing; lines keep their CRLF.
async fn read_data(
    read: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
) -> std::io::Result<String> {
    let mut data = String::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        if read.read_until(b'\n', &mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let text = String::from_utf8_lossy(&line);
        if text == ".\r\n" || text == ".\n" {
            return Ok(data);
        }
        data.push_str(text.strip_prefix('.').unwrap_or(&text));
    }
}
