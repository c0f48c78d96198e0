//! A reference autoscaler for rabbitwatch's scaling webhooks (docs/scaling.md): it keeps a number of
//! real AMQP consumer processes on one queue and changes that number only when rabbitwatch says so.
//!
//! ```text
//! cargo build --example autoscaler --example traffic
//! target/debug/examples/autoscaler --listen 127.0.0.1:8098 --amqp amqp://guest:guest@127.0.0.1:5672/%2f \
//!     --queue orders --rate 10 --min 1 --hmac-secret-file hmac.txt
//! ```
//!
//! What it does with `POST /scale` (what a real autoscaler should do too):
//! - refuses a body whose `X-Rabbitwatch-Signature` (HMAC-SHA256 of the exact body with the shared
//!   secret) does not verify: `401`, nothing applied;
//! - refuses a recommendation for another scaler's queue (`422`) or one it cannot read (`400`);
//! - does not apply a recommendation whose `sequence` is not above the last one it applied (a retried
//!   or late delivery overtaken by a newer one): `200` with `"applied": false`, so the sender stops
//!   retrying it;
//! - otherwise starts or stops consumer processes (the `traffic` example, consuming at `--rate`
//!   messages a second each) until `desired` run: `200` with `"applied": true`.
//!
//! `GET /status` answers with the consumers running and what it received. Workers die with it (they
//! get SIGKILL when this process ends, however it ends).

use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::process::{Child, Command};

const USAGE: &str = "usage: autoscaler --listen ADDR --amqp URL --queue NAME [--rate N] [--min N] \
                     [--hmac-secret-file FILE] [--worker PATH]";

struct Args {
    listen: String,
    amqp: String,
    queue: String,
    rate: u32,
    min: u32,
    secret: Option<Vec<u8>>,
    worker: std::path::PathBuf,
}

fn parse() -> Result<Args, String> {
    let mut listen = None;
    let mut amqp = None;
    let mut queue = None;
    let mut rate = 10;
    let mut min = 1;
    let mut secret = None;
    // The `traffic` example beside this one is the worker.
    let mut worker = std::env::current_exe()
        .map_err(|e| format!("cannot find this program's path: {e}"))?
        .with_file_name("traffic");
    let mut words = std::env::args().skip(1);
    while let Some(flag) = words.next() {
        let value = words
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let number = |v: &str| {
            v.parse::<u32>()
                .map_err(|_| format!("{flag} takes a whole number, not {v:?}"))
        };
        match flag.as_str() {
            "--listen" => listen = Some(value),
            "--amqp" => amqp = Some(value),
            "--queue" => queue = Some(value),
            "--rate" => rate = number(&value)?,
            "--min" => min = number(&value)?,
            "--hmac-secret-file" => {
                let text = std::fs::read_to_string(&value)
                    .map_err(|e| format!("cannot read {value}: {e}"))?;
                secret = Some(text.trim_end_matches(['\n', '\r']).as_bytes().to_vec());
            }
            "--worker" => worker = value.into(),
            _ => return Err(format!("unknown flag {flag}\n{USAGE}")),
        }
    }
    let need =
        |v: Option<String>, flag: &str| v.ok_or_else(|| format!("{flag} is required\n{USAGE}"));
    Ok(Args {
        listen: need(listen, "--listen")?,
        amqp: need(amqp, "--amqp")?,
        queue: need(queue, "--queue")?,
        rate,
        min,
        secret,
        worker,
    })
}

/// What the autoscaler holds: its workers and what it was told.
struct Scaler {
    args: Args,
    workers: Vec<Child>,
    last_sequence: Option<u64>,
    applied: u64,
    superseded: u64,
    refused: u64,
}

impl Scaler {
    /// Starts or stops workers until `n` run.
    fn scale_to(&mut self, n: u32) -> Result<(), String> {
        let n = n as usize;
        while self.workers.len() > n {
            if let Some(mut w) = self.workers.pop() {
                let _ = w.start_kill();
            }
        }
        while self.workers.len() < n {
            let mut command = Command::new(&self.args.worker);
            command
                .args(["--amqp", &self.args.amqp, "--queue", &self.args.queue])
                .args(["--publish-rate", "0", "--seconds", "0"])
                .args(["--consume-rate", &self.args.rate.to_string()])
                .stdout(std::process::Stdio::null())
                .kill_on_drop(true);
            // SAFETY: prctl is async-signal-safe; the child asks the kernel for SIGKILL when this
            // process dies, so no worker outlives its autoscaler (a crash or kill -9 included).
            unsafe {
                command.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let child = command
                .spawn()
                .map_err(|e| format!("cannot start {}: {e}", self.args.worker.display()))?;
            self.workers.push(child);
        }
        Ok(())
    }

    fn status(&self) -> Value {
        json!({
            "consumers": self.workers.len(),
            "last_sequence": self.last_sequence,
            "applied": self.applied,
            "superseded": self.superseded,
            "refused": self.refused,
        })
    }
}

type Shared = Arc<Mutex<Scaler>>;

fn signature_ok(secret: Option<&[u8]>, headers: &HeaderMap, body: &[u8]) -> bool {
    let Some(secret) = secret else {
        return true;
    };
    let Some(hex) = headers
        .get("x-rabbitwatch-signature")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("sha256="))
    else {
        return false;
    };
    let Ok(expected) = hex::decode(hex) else {
        return false;
    };
    let Ok(mut mac) = <Hmac<Sha256>>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

async fn scale(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let mut s = shared.lock().expect("scaler lock");
    let refuse = |s: &mut Scaler, code: StatusCode, why: &str| {
        s.refused += 1;
        eprintln!("autoscaler: refused ({code}): {why}");
        (code, Json(json!({ "applied": false, "error": why }))).into_response()
    };
    if !signature_ok(s.args.secret.as_deref(), &headers, &body) {
        return refuse(&mut s, StatusCode::UNAUTHORIZED, "bad or missing signature");
    }
    let Ok(r) = serde_json::from_slice::<Value>(&body) else {
        return refuse(&mut s, StatusCode::BAD_REQUEST, "not JSON");
    };
    let (Some(sequence), Some(desired)) = (r["sequence"].as_u64(), r["desired"].as_u64()) else {
        return refuse(&mut s, StatusCode::BAD_REQUEST, "no sequence or desired");
    };
    if r["queue"] != s.args.queue.as_str() {
        return refuse(
            &mut s,
            StatusCode::UNPROCESSABLE_ENTITY,
            "not this autoscaler's queue",
        );
    }
    if s.last_sequence.is_some_and(|last| sequence <= last) {
        s.superseded += 1;
        eprintln!(
            "autoscaler: sequence {sequence} is not newer than {:?}: not applied",
            s.last_sequence
        );
        return Json(json!({ "applied": false, "reason": "superseded" })).into_response();
    }
    let n = (desired as u32).max(s.args.min);
    if let Err(e) = s.scale_to(n) {
        // The sender retries a 5xx.
        return (StatusCode::SERVICE_UNAVAILABLE, e).into_response();
    }
    s.last_sequence = Some(sequence);
    s.applied += 1;
    eprintln!(
        "autoscaler: sequence {sequence}: {} to {n} consumers ({})",
        r["direction"].as_str().unwrap_or("?"),
        r["reason"].as_str().unwrap_or("")
    );
    Json(json!({ "applied": true, "consumers": n })).into_response()
}

async fn status(State(shared): State<Shared>) -> Json<Value> {
    Json(shared.lock().expect("scaler lock").status())
}

async fn run(args: Args) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let min = args.min;
    let mut scaler = Scaler {
        args,
        workers: Vec::new(),
        last_sequence: None,
        applied: 0,
        superseded: 0,
        refused: 0,
    };
    scaler.scale_to(min)?;
    let shared: Shared = Arc::new(Mutex::new(scaler));
    let app = Router::new()
        .route("/scale", post(scale))
        .route("/status", get(status))
        .with_state(shared);
    eprintln!("autoscaler: listening, {min} consumer(s) running");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| format!("server failed: {e}"))
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("autoscaler: {e}");
            ExitCode::FAILURE
        }
    }
}
