//! An in-test HTTP server that answers like Slack's Web API, like a Slack incoming webhook, and like a
//! webhook consumer, depending on the path. Each path can be switched to a failure mode, or given a
//! script of answers over time ("500 for 20 s, then 200"); every request is recorded with its
//! arrival time and what the fake answered, so tests can tell attempts from deliveries.

#![allow(dead_code)] // not every test uses every helper

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use reqwest::Url;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

/// The `ts` of the first message `chat.postMessage` creates; later ones count up from it.
pub const TS: &str = "1700000000.000100";
/// The channel id `chat.postMessage` answers with, whatever channel name it was given.
pub const CHANNEL_ID: &str = "C1";
/// What `Mode::RateLimited` puts in `Retry-After`.
pub const RETRY_AFTER_SECS: u64 = 2;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    Ok,
    /// Web API: `200 {"ok":false,"error":code}`; webhook paths: `400 code`, as Slack does
    /// (`SlackError("invalid_payload")` is a webhook's answer to a payload it cannot use).
    SlackError(&'static str),
    Status(u16, &'static str),
    /// `429` with `Retry-After: 2`.
    RateLimited,
    /// Never answers.
    Hang,
}

/// How long a step of a script lasts.
#[derive(Clone, Copy, Debug)]
pub enum Lasting {
    /// From the moment the step is reached (the first step: the first request the script answers).
    For(Duration),
    /// For this many requests.
    Times(usize),
}

/// A sequence of answers for one path, then a final mode for good.
#[derive(Clone, Debug)]
struct Script {
    steps: Vec<(Mode, Lasting)>,
    then: Mode,
    step: usize,
    /// When the current step was reached; `None` until the first request.
    entered_at: Option<Instant>,
    answered_in_step: usize,
}

impl Script {
    fn next_mode(&mut self, now: Instant) -> Mode {
        let mut entered_at = *self.entered_at.get_or_insert(now);
        while let Some((_, lasting)) = self.steps.get(self.step) {
            let over = match lasting {
                Lasting::For(d) => now >= entered_at + *d,
                Lasting::Times(n) => self.answered_in_step >= *n,
            };
            if !over {
                break;
            }
            entered_at = match lasting {
                Lasting::For(d) => entered_at + *d,
                Lasting::Times(_) => now,
            };
            self.step += 1;
            self.answered_in_step = 0;
        }
        self.entered_at = Some(entered_at);
        self.answered_in_step += 1;
        self.steps
            .get(self.step)
            .map_or(self.then, |(mode, _)| *mode)
    }
}

#[derive(Clone, Debug)]
pub struct Recorded {
    /// When the request arrived.
    pub at: Instant,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The status the fake answered with; `None` for a request left hanging.
    pub status: Option<u16>,
    /// The body the fake answered with.
    pub reply: String,
}

impl Recorded {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Whether the fake accepted it: a delivery, as opposed to a failed attempt.
    pub fn accepted(&self) -> bool {
        self.status == Some(200) && !self.reply.contains("\"ok\":false")
    }
}

#[derive(Default)]
struct FakeState {
    modes: Mutex<HashMap<String, Script>>,
    requests: Mutex<Vec<Recorded>>,
    posted: Mutex<u64>,
}

/// The server; stops when dropped.
pub struct FakeHttp {
    addr: SocketAddr,
    state: Arc<FakeState>,
    task: JoinHandle<()>,
}

impl FakeHttp {
    pub async fn start() -> FakeHttp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the fake HTTP server");
        let addr = listener.local_addr().expect("the fake's address");
        let state = Arc::new(FakeState::default());
        let app = Router::new()
            .fallback(answer)
            .with_state(Arc::clone(&state));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeHttp { addr, state, task }
    }

    pub fn url(&self, path: &str) -> Url {
        Url::parse(&format!("http://{}{path}", self.addr)).expect("a URL")
    }

    /// Answers every request to `path` in `mode` from now on.
    pub fn set(&self, path: &str, mode: Mode) {
        self.script(path, &[], mode);
    }

    /// Answers requests to `path` per `steps` in turn, then in `then` for good; e.g.
    /// `[(Status(500, ..), For(20 s))], Ok` answers 500 for 20 s from the first request, then 200.
    pub fn script(&self, path: &str, steps: &[(Mode, Lasting)], then: Mode) {
        let script = Script {
            steps: steps.to_vec(),
            then,
            step: 0,
            entered_at: None,
            answered_in_step: 0,
        };
        self.state
            .modes
            .lock()
            .unwrap()
            .insert(path.to_owned(), script);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    /// The requests to `path`, in order of arrival.
    pub fn requests_to(&self, path: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    pub fn only_request(&self) -> Recorded {
        let requests = self.requests();
        assert_eq!(requests.len(), 1, "expected one request, got {requests:?}");
        requests.into_iter().next().unwrap()
    }
}

impl Drop for FakeHttp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    State(state): State<Arc<FakeState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let at = Instant::now();
    let path = uri.path().to_owned();
    let mode = state
        .modes
        .lock()
        .unwrap()
        .get_mut(&path)
        .map_or(Mode::Ok, |script| script.next_mode(at));
    let reply = respond(&state, &path, mode, &body);
    state.requests.lock().unwrap().push(Recorded {
        at,
        path,
        headers,
        body,
        status: reply.status.map(|s| s.as_u16()),
        reply: reply.body.clone(),
    });
    let Some(status) = reply.status else {
        return std::future::pending().await;
    };
    let mut response = (status, reply.body).into_response();
    if status == StatusCode::TOO_MANY_REQUESTS {
        response
            .headers_mut()
            .insert("Retry-After", RETRY_AFTER_SECS.into());
    }
    if reply.json {
        response
            .headers_mut()
            .insert("Content-Type", HeaderValue::from_static("application/json"));
    }
    response
}

struct Reply {
    /// `None`: hang.
    status: Option<StatusCode>,
    body: String,
    json: bool,
}

/// What the fake answers in `mode` on `path`.
fn respond(state: &FakeState, path: &str, mode: Mode, body: &Bytes) -> Reply {
    let api = path.starts_with("/api/");
    let json = |status: StatusCode, value: Value| Reply {
        status: Some(status),
        body: value.to_string(),
        json: true,
    };
    let text = |status: StatusCode, text: &str| Reply {
        status: Some(status),
        body: text.to_owned(),
        json: false,
    };
    let ok = |value: Value| json(StatusCode::OK, value);
    match mode {
        Mode::Ok if path == "/api/chat.postMessage" => {
            let ts = {
                let mut posted = state.posted.lock().unwrap();
                *posted += 1;
                format!("1700000000.{:06}", 99 + *posted)
            };
            ok(json!({"ok": true, "channel": CHANNEL_ID, "ts": ts, "message": {"ts": ts}}))
        }
        Mode::Ok if path == "/api/chat.update" => {
            let request: Value = serde_json::from_slice(body).unwrap_or_default();
            ok(json!({"ok": true, "channel": request["channel"], "ts": request["ts"], "text": ""}))
        }
        Mode::Ok if path == "/api/auth.test" => ok(
            json!({"ok": true, "url": "https://test.slack.com/", "team": "test", "user": "rabbitwatch", "team_id": "T1", "user_id": "U1"}),
        ),
        Mode::Ok => text(StatusCode::OK, "ok"),
        Mode::SlackError(code) if api => ok(json!({"ok": false, "error": code})),
        Mode::SlackError(code) => text(StatusCode::BAD_REQUEST, code),
        Mode::Status(status, body) => {
            text(StatusCode::from_u16(status).expect("a valid status"), body)
        }
        Mode::RateLimited if api => json(
            StatusCode::TOO_MANY_REQUESTS,
            json!({"ok": false, "error": "ratelimited"}),
        ),
        Mode::RateLimited => text(StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
        Mode::Hang => Reply {
            status: None,
            body: String::new(),
            json: false,
        },
    }
}
