//! Faults a real broker cannot produce on demand, injected at the HTTP level.
//!
//! `FaultyApi` is a small HTTP/1.1 server on a raw TCP listener in front of the real management API:
//! every request is forwarded with reqwest (asking upstream for an uncompressed body, so the body can
//! be mangled), unless a `Fault` is set for its path prefix (and, optionally, one query parameter),
//! in which case the answer is late, missing, cut short, garbled or an error status. Raw TCP rather
//! than a framework, because the interesting faults break HTTP itself: a reset with not one byte of
//! response, a chunked body whose connection closes before the last chunk. Every request is logged
//! with what it was answered, so a test can tell that the fault was actually exercised.
//!
//! `SlowHook` is a webhook receiver that records each request the moment it arrives and answers
//! `200 ok` only after a delay: a receiver that accepted the message while the sender does not know
//! it yet.

#![allow(dead_code)] // not every test uses every helper

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::util::management_url;

/// What the proxy does instead of forwarding an answer untouched.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fault {
    /// Forwards the answer, but only after this long.
    Delay(Duration),
    /// Reads the request, then resets the connection (TCP RST) without a byte of response.
    Reset,
    /// `200` with the upstream headers and a chunked body: the first half of the real body as one
    /// chunk, then the connection closes without the terminating chunk.
    Truncate,
    /// `200` with correct framing (`Content-Length`), the first half of the real body followed by
    /// bytes that are no JSON.
    Garble,
    /// This status with a RabbitMQ-like JSON error body; upstream is not asked.
    Status(u16),
    /// `200` with a chunked JSON array of queues that never ends, written until the client hangs
    /// up; upstream is not asked. The bytes written are counted (`endless_bytes`).
    Endless,
}

/// Which requests a fault applies to: a path prefix and optionally one exact `name=value` query pair.
#[derive(Clone, Debug)]
pub struct On {
    prefix: String,
    query: Option<String>,
}

impl On {
    /// Every request whose path starts with `prefix`.
    pub fn path(prefix: &str) -> On {
        On {
            prefix: prefix.to_owned(),
            query: None,
        }
    }

    /// ... and whose query string has the pair `name=value` (e.g. `page=2`).
    pub fn query(self, name: &str, value: &str) -> On {
        On {
            query: Some(format!("{name}={value}")),
            ..self
        }
    }

    pub fn matches(&self, target: &str) -> bool {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        path.starts_with(&self.prefix)
            && self
                .query
                .as_ref()
                .is_none_or(|want| query.split('&').any(|pair| pair == want))
    }
}

/// One request the proxy answered.
#[derive(Clone, Debug)]
pub struct Served {
    pub at: Instant,
    /// Path and query, as the client sent them.
    pub target: String,
    /// `None`: forwarded untouched.
    pub fault: Option<Fault>,
}

struct Rule {
    on: On,
    fault: Fault,
    /// Matching requests still to let through untouched before the fault applies again.
    pass: usize,
}

#[derive(Default)]
struct Shared {
    rules: Mutex<Vec<Rule>>,
    log: Mutex<Vec<Served>>,
    endless_bytes: std::sync::atomic::AtomicU64,
}

impl Shared {
    /// The fault for `target`, if any, consuming one pass of the first matching rule.
    fn fault_for(&self, target: &str) -> Option<Fault> {
        let mut rules = self.rules.lock().unwrap();
        let rule = rules.iter_mut().find(|r| r.on.matches(target))?;
        if rule.pass > 0 {
            rule.pass -= 1;
            return None;
        }
        Some(rule.fault)
    }
}

/// The fault-injecting proxy in front of `MANAGEMENT_URL`; stops when dropped.
pub struct FaultyApi {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl FaultyApi {
    pub async fn start() -> FaultyApi {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the fault proxy");
        let addr = listener.local_addr().expect("the fault proxy's address");
        let shared = Arc::new(Shared::default());
        let upstream = reqwest::Client::builder()
            .no_gzip()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("building the proxy's HTTP client");
        let state = Arc::clone(&shared);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (state, upstream) = (Arc::clone(&state), upstream.clone());
                tokio::spawn(async move {
                    // A client that gave up (a timeout) is the point of some faults, not an error.
                    let _ = serve(stream, &state, &upstream).await;
                });
            }
        });
        FaultyApi { addr, shared, task }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// From now on, answers requests matching `on` with `fault` (replacing any earlier fault).
    pub fn fail(&self, on: On, fault: Fault) {
        *self.shared.rules.lock().unwrap() = vec![Rule { on, fault, pass: 0 }];
    }

    /// Lets the next `n` requests matching the current fault through untouched; the fault applies
    /// again after them.
    pub fn let_through(&self, n: usize) {
        for rule in self.shared.rules.lock().unwrap().iter_mut() {
            rule.pass = n;
        }
    }

    /// No more faults: everything is forwarded untouched.
    pub fn heal(&self) {
        self.shared.rules.lock().unwrap().clear();
    }

    /// Every request answered so far, in order.
    pub fn served(&self) -> Vec<Served> {
        self.shared.log.lock().unwrap().clone()
    }

    /// Bytes of `Fault::Endless` bodies written so far (accepted by the kernel: what the client
    /// read, plus what socket buffers hold).
    pub fn endless_bytes(&self) -> u64 {
        self.shared
            .endless_bytes
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The requests matching `on` answered with `fault` (`None`: untouched) since `since`.
    pub fn count(&self, on: &On, fault: Option<Fault>, since: Instant) -> usize {
        self.served()
            .iter()
            .filter(|s| s.at >= since && s.fault == fault && on.matches(&s.target))
            .count()
    }
}

impl Drop for FaultyApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The request head: method, target and the `Authorization` header (the only one forwarded).
struct Head {
    method: String,
    target: String,
    authorization: Option<String>,
}

async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<Head>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > 64 * 1024 {
            return Ok(None);
        }
    }
    let text = String::from_utf8_lossy(&buf);
    let mut lines = text.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let method = request_line.next().unwrap_or_default().to_owned();
    let target = request_line.next().unwrap_or_default().to_owned();
    let authorization = lines.find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("authorization")
            .then(|| value.trim().to_owned())
    });
    Ok(Some(Head {
        method,
        target,
        authorization,
    }))
}

/// What upstream answered.
struct Upstream {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

async fn forward(client: &reqwest::Client, head: &Head) -> Upstream {
    let method =
        reqwest::Method::from_bytes(head.method.as_bytes()).unwrap_or(reqwest::Method::GET);
    let mut request = client
        .request(method, format!("{}{}", management_url(), head.target))
        .header("accept-encoding", "identity");
    if let Some(auth) = &head.authorization {
        request = request.header("authorization", auth);
    }
    let answer = async {
        let response = request.send().await?;
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json")
            .to_owned();
        let body = response.bytes().await?.to_vec();
        Ok::<_, reqwest::Error>(Upstream {
            status,
            content_type,
            body,
        })
    };
    answer.await.unwrap_or_else(|e| Upstream {
        status: 502,
        content_type: "text/plain".to_owned(),
        body: format!("fault proxy: upstream failed: {e}").into_bytes(),
    })
}

fn status_line(status: u16) -> String {
    let reason = match status {
        200 => "OK",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Whatever",
    };
    format!("HTTP/1.1 {status} {reason}\r\n")
}

async fn write_whole(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let head = format!(
        "{}Content-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        status_line(status),
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.flush().await
}

/// Answers one request per connection (`Connection: close`), so every request meets the fault anew.
async fn serve(
    mut stream: TcpStream,
    shared: &Shared,
    client: &reqwest::Client,
) -> std::io::Result<()> {
    let Some(head) = read_head(&mut stream).await? else {
        return Ok(());
    };
    let fault = shared.fault_for(&head.target);
    shared.log.lock().unwrap().push(Served {
        at: Instant::now(),
        target: head.target.clone(),
        fault,
    });
    match fault {
        None => {
            let up = forward(client, &head).await;
            write_whole(&mut stream, up.status, &up.content_type, &up.body).await?;
        }
        Some(Fault::Delay(delay)) => {
            tokio::time::sleep(delay).await;
            let up = forward(client, &head).await;
            write_whole(&mut stream, up.status, &up.content_type, &up.body).await?;
        }
        Some(Fault::Reset) => {
            // SO_LINGER 0: closing sends RST instead of FIN, as a crashed middlebox would.
            stream.set_zero_linger()?;
            drop(stream);
            return Ok(());
        }
        Some(Fault::Truncate) => {
            let up = forward(client, &head).await;
            let half = &up.body[..up.body.len() / 2];
            let head = format!(
                "{}Content-Type: {}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
                status_line(up.status),
                up.content_type
            );
            stream.write_all(head.as_bytes()).await?;
            stream
                .write_all(format!("{:x}\r\n", half.len()).as_bytes())
                .await?;
            stream.write_all(half).await?;
            stream.write_all(b"\r\n").await?;
            stream.flush().await?;
            // No `0\r\n\r\n`: the body never ends properly.
        }
        Some(Fault::Garble) => {
            let up = forward(client, &head).await;
            let mut body = up.body[..up.body.len() / 2].to_vec();
            body.extend_from_slice(b"\x00#<garbled by the fault proxy>#");
            write_whole(&mut stream, up.status, &up.content_type, &body).await?;
        }
        Some(Fault::Endless) => {
            let head = format!(
                "{}Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
                status_line(200)
            );
            stream.write_all(head.as_bytes()).await?;
            let item = br#"{"name":"endless","vhost":"endless","messages":1},"#;
            let mut chunk = Vec::with_capacity(64 * 1024 + item.len());
            while chunk.len() < 64 * 1024 {
                chunk.extend_from_slice(item);
            }
            let mut first = b"[".to_vec();
            first.extend_from_slice(&chunk);
            let mut body: &[u8] = &first;
            loop {
                let framed = [format!("{:x}\r\n", body.len()).as_bytes(), body, b"\r\n"].concat();
                if stream.write_all(&framed).await.is_err() {
                    // The client hung up: what it does with an endless answer is the point.
                    return Ok(());
                }
                shared
                    .endless_bytes
                    .fetch_add(body.len() as u64, std::sync::atomic::Ordering::Relaxed);
                body = &chunk;
            }
        }
        Some(Fault::Status(status)) => {
            let body =
                br#"{"error":"Internal Server Error","reason":"injected by the fault proxy"}"#;
            write_whole(&mut stream, status, "application/json", body).await?;
        }
    }
    stream.shutdown().await
}

// ---------------------------------------------------------------------------------------------------
// A webhook that is slow to say yes

/// One request as the hook received it.
#[derive(Clone, Debug)]
pub struct HookRequest {
    pub at: Instant,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl HookRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

#[derive(Default)]
struct HookState {
    received: Mutex<Vec<HookRequest>>,
    answered: Mutex<usize>,
}

/// A Slack-incoming-webhook lookalike that records each request on arrival and answers `200 ok`
/// only `delay` later; stops when dropped.
pub struct SlowHook {
    addr: SocketAddr,
    state: Arc<HookState>,
    task: JoinHandle<()>,
}

impl SlowHook {
    pub async fn start(delay: Duration) -> SlowHook {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the slow hook");
        let addr = listener.local_addr().expect("the slow hook's address");
        let state = Arc::new(HookState::default());
        let app = Router::new()
            .fallback(
                move |State(state): State<Arc<HookState>>,
                      uri: Uri,
                      headers: HeaderMap,
                      body: Bytes| async move {
                    state.received.lock().unwrap().push(HookRequest {
                        at: Instant::now(),
                        path: uri.path().to_owned(),
                        headers,
                        body,
                    });
                    tokio::time::sleep(delay).await;
                    *state.answered.lock().unwrap() += 1;
                    "ok"
                },
            )
            .with_state(Arc::clone(&state));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        SlowHook { addr, state, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every request received so far, answered or not, in order of arrival.
    pub fn received(&self) -> Vec<HookRequest> {
        self.state.received.lock().unwrap().clone()
    }

    /// How many requests got their `200` (the sender may have gone away before reading it).
    pub fn answered(&self) -> usize {
        *self.state.answered.lock().unwrap()
    }
}

impl Drop for SlowHook {
    fn drop(&mut self) {
        self.task.abort();
    }
}
