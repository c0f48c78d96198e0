//! The HTTP server: `/metrics`, health endpoints, the read API, and the few calls that change the
//! daemon's own state (silences, dead-letter replays, reload; those need the bearer token when one is
//! set).
//!
//! Handlers read published views (`ArcSwap` loads); none of them talks to a broker.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};

use crate::alerts::Alert;
use crate::analysis::Status;
use crate::domain::Secret;
use crate::domain::Silence;
use crate::domain::Timestamp;
use crate::engine::{Engine, ReloadStatus, ScalerStatus, Scaling, SilenceError};
use crate::export;
use crate::liveness::{Liveness, Verdict};
use crate::outbox::Stats;
use crate::probe::Probe;
use crate::store::DeadLetter;
use crate::view::{ClusterHandle, ClusterView, LastError};

/// What the handlers can see: the published views, and the engine for silences, replays and reload.
#[derive(Clone)]
pub struct HttpState {
    pub clusters: Arc<Vec<Arc<ClusterHandle>>>,
    /// Every long-running loop's progress, for `/healthz`.
    pub liveness: Liveness,
    pub started_at: Timestamp,
    pub engine: Arc<Engine>,
    pub stats: Arc<Stats>,
    /// Mutating calls need `Authorization: Bearer <token>` when set.
    pub api_token: Option<Secret>,
    /// Re-reads the config file; `Err` keeps the running config and says why.
    pub reload: Arc<dyn Fn() -> Result<String, String> + Send + Sync>,
    pub reload_status: Arc<ReloadStatus>,
    pub scaling: Arc<Scaling>,
    /// The canaries (`probe:` entries) of every cluster.
    pub probes: Arc<Vec<Arc<Probe>>>,
    /// The per-queue families of the latest cycle, deflated once and sent to every gzip scrape.
    pub metrics_cache: Arc<export::QueueCache>,
}

impl HttpState {
    fn views(&self) -> Vec<Arc<ClusterView>> {
        self.clusters.iter().map(|c| c.view.load_full()).collect()
    }
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/v1/status", get(status))
        .route("/api/v1/queues", get(queues))
        .route("/api/v1/stream_consumers", get(stream_consumers))
        .route("/api/v1/alerts", get(alerts))
        .route("/api/v1/scalers", get(scalers))
        .route("/api/v1/deadletters", get(dead_letters))
        .route("/-/reload", axum::routing::post(reload))
        .route("/api/v1/silences", get(list_silences).post(add_silence))
        .route(
            "/api/v1/silences/{id}",
            axum::routing::delete(expire_silence),
        )
        .route(
            "/api/v1/deadletters/{id}/replay",
            axum::routing::post(replay),
        )
        // A slow or oversized client must not tie up the server: request bodies here are small JSON.
        .layer(tower_http::limit::RequestBodyLimitLayer::new(64 * 1024))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            std::time::Duration::from_secs(30),
        ))
        .with_state(state)
}

async fn metrics(State(st): State<HttpState>, headers: header::HeaderMap) -> Response {
    let gzip = headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(export::accepts_gzip);
    let views = st.views();
    let alerts = st.engine.alerts();
    let counts = crate::outbox::on_disk(st.engine.store(), |s| s.counts())
        .await
        .ok();
    let store_writable = st.engine.store().health().writable;
    let stats = st.stats.clone();
    let reload_status = st.reload_status.clone();
    let scalers = st.scaling.statuses();
    let probes = st.probes.clone();
    let metrics_cache = st.metrics_cache.clone();
    // Rendering 100k queues takes a while: it runs on a blocking thread and sends the text in pieces
    // while it goes, a few pieces ahead of the client at most, so memory stays at a few pieces.
    let (tx, rx) = tokio::sync::mpsc::channel::<Piece>(4);
    tokio::task::spawn_blocking(move || {
        let usage = crate::process::read();
        let extras = export::Extras {
            alerts: &alerts,
            receivers: &stats,
            outbox: counts,
            reload: Some(&reload_status),
            store_writable: Some(store_writable),
            process: Some(&usage),
            scalers: &scalers,
            probes: &probes,
        };
        let mut send = |piece: axum::body::Bytes| match tx.blocking_send(Piece::Data(piece)) {
            Ok(()) => std::ops::ControlFlow::Continue(()),
            Err(_) => std::ops::ControlFlow::Break(()),
        };
        // Prometheus asks for gzip: the per-queue part comes compressed from the cache (built by the
        // first scrape of a cycle). Other clients get the text rendered now, as it is written.
        let sent = if gzip {
            metrics_cache.serve(&views, &extras, Timestamp::now(), &mut send)
        } else {
            export::render_chunked(
                &views,
                &extras,
                Timestamp::now(),
                export::CHUNK_BYTES,
                &mut |text| send(text.into()),
            )
        };
        if sent.is_continue() {
            let _ = tx.blocking_send(Piece::End);
        }
    });
    let mut response = (
        [
            (header::CONTENT_TYPE, export::CONTENT_TYPE),
            (header::VARY, "accept-encoding"),
        ],
        axum::body::Body::new(Streamed { rx, ended: false }),
    )
        .into_response();
    if gzip {
        response.headers_mut().insert(
            header::CONTENT_ENCODING,
            header::HeaderValue::from_static("gzip"),
        );
    }
    response
}

enum Piece {
    Data(axum::body::Bytes),
    /// Rendering finished; without it a closed channel means the renderer died midway.
    End,
}

/// A response body fed by the renderer, piece by piece as it is written.
struct Streamed {
    rx: tokio::sync::mpsc::Receiver<Piece>,
    ended: bool,
}

/// The renderer stopped before the end: the connection is aborted so the scraper sees a failed scrape,
/// not a truncated exposition it would take as complete.
#[derive(Debug, thiserror::Error)]
#[error("/metrics rendering stopped before the end")]
struct RenderAborted;

impl http_body::Body for Streamed {
    type Data = axum::body::Bytes;
    type Error = RenderAborted;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        use std::task::Poll;
        if self.ended {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Piece::Data(data))) => {
                Poll::Ready(Some(Ok(http_body::Frame::data(data))))
            }
            Poll::Ready(Some(Piece::End)) => {
                self.ended = true;
                Poll::Ready(None)
            }
            Poll::Ready(None) => {
                self.ended = true;
                tracing::error!("/metrics rendering stopped before the end; aborting the response");
                Poll::Ready(Some(Err(RenderAborted)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}

#[derive(Serialize)]
struct Check {
    name: String,
    ok: bool,
    detail: String,
}

#[derive(Serialize)]
struct HealthBody {
    healthy: bool,
    checks: Vec<Check>,
}

/// Liveness: every loop (poll loops, dispatcher, outbox workers) made progress within three of its
/// intervals plus `watchdog.grace`; the watchdog exits the process a little later (`liveness`).
async fn healthz(State(st): State<HttpState>) -> Response {
    let checks: Vec<Check> = st
        .liveness
        .states(Timestamp::now())
        .into_iter()
        .map(|s| Check {
            ok: s.verdict == Verdict::Ok,
            detail: match s.verdict {
                Verdict::Ok => format!(
                    "last progress {:.1}s ago (limit {:.0}s)",
                    s.idle_s, s.unhealthy_after_s
                ),
                Verdict::Unhealthy | Verdict::Stuck => format!(
                    "no progress for {:.1}s (limit {:.0}s); the watchdog exits the process after {:.0}s",
                    s.idle_s, s.unhealthy_after_s, s.stuck_after_s
                ),
            },
            name: format!("loop:{}", s.name),
        })
        .collect();
    let healthy = checks.iter().all(|c| c.ok);
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(HealthBody { healthy, checks })).into_response()
}

#[derive(Serialize)]
struct ReadyBody {
    ready: bool,
    checks: Vec<Check>,
}

/// Readiness: the state store accepts writes (probed every few seconds in the background) and every
/// cluster was scraped recently.
async fn readyz(State(st): State<HttpState>) -> Response {
    let now = Timestamp::now();
    let store = st.engine.store();
    let health = store.health();
    let mut checks = vec![Check {
        name: "state".to_string(),
        ok: health.writable,
        detail: match &health.problem {
            None => format!("state store {} accepts writes", store.path().display()),
            Some(problem) => format!(
                "state store {} does not accept writes for {:.0}s: {problem}",
                store.path().display(),
                now.secs_since(Timestamp(health.since)).max(0.0)
            ),
        },
    }];
    for view in st.views() {
        let (ok, detail) = match (&view.last_success, &view.last_error) {
            _ if view.up && view.is_fresh(now) => (
                true,
                format!(
                    "scraped {:.1}s ago",
                    now.secs_since(view.last_success.unwrap_or(now))
                ),
            ),
            (_, Some(e)) => (false, format!("{}: {}", e.reason.as_str(), e.message)),
            (Some(t), None) => (
                false,
                format!("last scraped {:.0}s ago", now.secs_since(*t)),
            ),
            (None, None) => (false, "not scraped yet".to_string()),
        };
        checks.push(Check {
            name: format!("cluster:{}", view.name),
            ok,
            detail,
        });
    }
    let ready = checks.iter().all(|c| c.ok);
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(ReadyBody { ready, checks })).into_response()
}

#[derive(Serialize)]
struct ClusterStatus {
    name: String,
    up: bool,
    rabbitmq_version: String,
    stats_mode: &'static str,
    /// Where the queue figures come from: `management` or `prometheus`.
    source: &'static str,
    /// Why `source: auto` reads the management API rather than the Prometheus plugin.
    source_reason: Option<String>,
    last_success: Option<f64>,
    last_error: Option<LastError>,
    scrape_duration_seconds: Option<f64>,
    queues: usize,
    queues_truncated: usize,
    queues_stats_pending: usize,
    nodes: usize,
    scrape_errors: std::collections::BTreeMap<crate::scrape::ScrapeReason, u64>,
    probes: Vec<ProbeStatus>,
    /// Why the dead-letter topology could not be read on the last scrape; null when it could.
    dead_letter_topology_error: Option<String>,
    /// Rules reading fields this cluster cannot supply in its stats mode (rates in depth-only mode).
    unsupplied_fields: Vec<UnsuppliedStatus>,
    /// The deprecated features the cluster uses (a later RabbitMQ removes them); null when the
    /// broker cannot say (before 3.13).
    deprecated_features_used: Option<Vec<String>>,
}

#[derive(Serialize)]
struct UnsuppliedStatus {
    alertname: String,
    /// `file:line` of the rule.
    rule: String,
    fields: Vec<&'static str>,
}

/// One canary in `/api/v1/status`: what it proves, how its last round trip went, its totals.
#[derive(Serialize)]
struct ProbeStatus {
    name: String,
    vhost: String,
    /// `scheme://user@host:port` (never the password).
    endpoint: String,
    exchange: String,
    routing_key: String,
    queue: String,
    interval_seconds: f64,
    timeout_seconds: f64,
    /// Null until the first round trip ended.
    ok: Option<bool>,
    latency_seconds: Option<f64>,
    consecutive_failures: u64,
    error: Option<&'static str>,
    detail: String,
    last_round_trip: Option<f64>,
    last_success: Option<f64>,
    round_trips_ok: u64,
    failures_total: std::collections::BTreeMap<&'static str, u64>,
}

impl ProbeStatus {
    fn of(p: &Probe) -> Self {
        let (c, s) = (&p.config, p.sample());
        ProbeStatus {
            name: c.name.clone(),
            vhost: c.vhost.clone(),
            endpoint: c.endpoint.clone(),
            exchange: c.exchange.clone(),
            routing_key: c.routing_key.clone(),
            queue: c.queue.clone(),
            interval_seconds: c.interval.as_secs_f64(),
            timeout_seconds: c.timeout.as_secs_f64(),
            ok: s.ok,
            latency_seconds: s.latency,
            consecutive_failures: s.failures,
            error: s.error.map(|e| e.as_str()),
            detail: s.detail.clone(),
            last_round_trip: s.at.map(Timestamp::as_secs_f64),
            last_success: s.last_success.map(Timestamp::as_secs_f64),
            round_trips_ok: p.latency.count(),
            failures_total: p.failures_total().map(|(e, n)| (e.as_str(), n)).collect(),
        }
    }
}

#[derive(Serialize)]
struct StatusBody {
    version: &'static str,
    started_at: f64,
    /// The daemon's CPU time so far (nanosecond clock; `process_cpu_seconds_total` on `/metrics`),
    /// readable without rendering `/metrics`: scripts/bench takes CPU per poll cycle from it.
    process_cpu_seconds: Option<f64>,
    clusters: Vec<ClusterStatus>,
}

async fn status(State(st): State<HttpState>) -> Json<StatusBody> {
    let alerting = st.engine.alerting();
    let clusters = st
        .views()
        .iter()
        .map(|v| ClusterStatus {
            dead_letter_topology_error: v.topology_error.clone(),
            deprecated_features_used: v.deprecated_features.as_ref().map(|d| d.to_vec()),
            // The stats mode is known once the cluster has answered.
            unsupplied_fields: if v.last_success.is_some() {
                alerting
                    .rules
                    .unsupplied(&v.name, v.stats_mode)
                    .into_iter()
                    .map(|(r, fields)| UnsuppliedStatus {
                        alertname: r.alert.clone(),
                        rule: format!("{}:{}", r.file.display(), r.line),
                        fields,
                    })
                    .collect()
            } else {
                Vec::new()
            },
            name: v.name.clone(),
            up: v.up,
            rabbitmq_version: v.rabbitmq_version.clone(),
            stats_mode: v.stats_mode.as_str(),
            source: v.source.as_str(),
            source_reason: v.source_reason.clone(),
            last_success: v.last_success.map(Timestamp::as_secs_f64),
            last_error: v.last_error.clone(),
            scrape_duration_seconds: v.scrape_duration,
            queues: v.queues.len(),
            queues_truncated: v.truncated,
            queues_stats_pending: v.stats_pending,
            nodes: v.nodes.len(),
            scrape_errors: v.errors_total.clone(),
            probes: st
                .probes
                .iter()
                .filter(|p| p.config.cluster == v.name)
                .map(|p| ProbeStatus::of(p))
                .collect(),
        })
        .collect();
    Json(StatusBody {
        version: env!("CARGO_PKG_VERSION"),
        started_at: st.started_at.as_secs_f64(),
        process_cpu_seconds: crate::process::cpu_seconds(),
        clusters,
    })
}

#[derive(Deserialize)]
struct QueueFilter {
    cluster: Option<String>,
    vhost: Option<String>,
    status: Option<String>,
}

/// One queue in the API; `drain_eta_seconds` is null when the queue will not drain (or is unknown).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct QueueRow {
    pub cluster: String,
    pub vhost: String,
    pub queue: String,
    /// `classic`, `quorum` or `stream`: a stream's `messages` is its retained log, not a backlog.
    #[serde(rename = "type", default)]
    pub kind: String,
    pub messages: u64,
    pub messages_ready: u64,
    pub messages_unacked: u64,
    pub consumers: u64,
    pub publish_rate: Option<f64>,
    pub consume_rate: Option<f64>,
    pub deliver_rate: Option<f64>,
    pub redeliver_rate: Option<f64>,
    pub backlog_growth: Option<f64>,
    pub drain_eta_seconds: Option<f64>,
    pub oldest_message_age_seconds: Option<f64>,
    pub status: String,
    /// Seconds since the queue's counters last moved; null when unknown (docs/analysis.md).
    #[serde(default)]
    pub idle_for_seconds: Option<f64>,
    /// Some queue dead-letters into this one; null when the topology could not be read.
    #[serde(default)]
    pub dead_letter_target: Option<bool>,
    /// The wait queue of a delayed-retry loop (its messages expire back to where they came from);
    /// null when the topology could not be read.
    #[serde(default)]
    pub retry_queue: Option<bool>,
    /// The effective max-length and max-length-bytes (the lowest of argument, policy and operator
    /// policy); null when none applies.
    #[serde(default)]
    pub max_length: Option<u64>,
    #[serde(default)]
    pub max_length_bytes: Option<u64>,
    /// How full the queue is against the nearer of those limits; null without one.
    #[serde(default)]
    pub fill_ratio: Option<f64>,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct QueuesBody {
    pub queues: Vec<QueueRow>,
}

/// `?status=` read against the statuses `all` names: `None` when not given; a status none of them
/// is is a 400 naming the valid ones.
fn status_filter<T: Copy>(
    given: Option<&str>,
    all: &[T],
    name: fn(T) -> &'static str,
) -> Result<Option<T>, (StatusCode, String)> {
    let Some(given) = given else {
        return Ok(None);
    };
    match all.iter().copied().find(|s| name(*s) == given) {
        Some(s) => Ok(Some(s)),
        None => {
            let valid: Vec<&str> = all.iter().map(|s| name(*s)).collect();
            Err((
                StatusCode::BAD_REQUEST,
                format!(
                    "unknown status {given:?}; expected one of {}",
                    valid.join(", ")
                ),
            ))
        }
    }
}

async fn queues(State(st): State<HttpState>, Query(f): Query<QueueFilter>) -> Response {
    let want_status = match status_filter(f.status.as_deref(), &Status::ALL, Status::as_str) {
        Ok(s) => s,
        Err(refused) => return refused.into_response(),
    };
    let now = Timestamp::now();
    let mut rows = Vec::new();
    for v in st.views() {
        if f.cluster.as_ref().is_some_and(|c| *c != v.name) || !v.is_fresh(now) {
            continue;
        }
        for q in v.queues.iter() {
            if f.vhost
                .as_ref()
                .is_some_and(|vh| **vh != *q.sample.key.vhost)
                || want_status.is_some_and(|s| s != q.health.status)
            {
                continue;
            }
            let h = q.health.unpack();
            rows.push(QueueRow {
                cluster: v.name.clone(),
                vhost: q.sample.key.vhost.to_string(),
                queue: q.sample.key.name.to_string(),
                kind: q.sample.kind.to_string(),
                messages: q.sample.messages,
                messages_ready: q.sample.messages_ready,
                messages_unacked: q.sample.messages_unacked,
                consumers: q.sample.consumers,
                publish_rate: h.publish_rate,
                consume_rate: h.consume_rate,
                deliver_rate: h.deliver_rate,
                redeliver_rate: h.redeliver_rate,
                backlog_growth: h.backlog_growth,
                drain_eta_seconds: h.drain_eta.filter(|e| e.is_finite()),
                oldest_message_age_seconds: h.oldest_message_age,
                status: h.status.as_str().to_string(),
                idle_for_seconds: h.idle_for,
                dead_letter_target: q.dead_letter_target,
                retry_queue: q.retry_queue,
                max_length: q.sample.max_length(),
                max_length_bytes: q.sample.max_length_bytes(),
                fill_ratio: q.sample.fill_ratio(),
            });
        }
    }
    Json(QueuesBody { queues: rows }).into_response()
}

#[derive(Deserialize)]
struct StreamFilter {
    cluster: Option<String>,
    vhost: Option<String>,
    stream: Option<String>,
    status: Option<String>,
}

/// One stream reader in the API (docs/streams.md); figures null when unknown.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct StreamConsumerRow {
    pub cluster: String,
    pub vhost: String,
    /// The stream, or the super stream when `super_stream` is true.
    pub stream: String,
    pub consumer: String,
    pub named: bool,
    pub super_stream: bool,
    pub subscriptions: u32,
    pub online: bool,
    pub offset_lag: Option<f64>,
    pub lag_growth: Option<f64>,
    pub offset_rate: Option<f64>,
    pub status: String,
    /// Null when unknown or when retention does not close in (infinite).
    pub truncation_eta_seconds: Option<f64>,
}

/// Readers whose lag cannot be known, per stream, with why.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct UnknownReadersRow {
    pub cluster: String,
    pub vhost: String,
    pub stream: String,
    pub readers: u64,
    pub reason: String,
}

#[derive(Serialize, Deserialize, Debug, Default)]
pub struct StreamConsumersBody {
    pub consumers: Vec<StreamConsumerRow>,
    pub unknown: Vec<UnknownReadersRow>,
    /// Clusters whose stream consumers could not be read, with why (every reader's lag unknown).
    pub errors: Vec<ClusterProblem>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ClusterProblem {
    pub cluster: String,
    pub error: String,
}

/// Every stream reader of the fresh clusters, cluster by cluster, the subscribed ones by vhost,
/// stream and consumer, then those that left.
async fn stream_consumers(State(st): State<HttpState>, Query(f): Query<StreamFilter>) -> Response {
    use crate::analysis::stream::StreamStatus;
    let want_status = match status_filter(
        f.status.as_deref(),
        &StreamStatus::ALL,
        StreamStatus::as_str,
    ) {
        Ok(s) => s,
        Err(refused) => return refused.into_response(),
    };
    let now = Timestamp::now();
    let mut body = StreamConsumersBody::default();
    let keep = |vhost: &str, stream: &str| {
        f.vhost.as_ref().is_none_or(|v| v == vhost) && f.stream.as_ref().is_none_or(|s| s == stream)
    };
    for v in st.views() {
        if f.cluster.as_ref().is_some_and(|c| *c != v.name) || !v.is_fresh(now) {
            continue;
        }
        if let Some(error) = &v.streams_error {
            body.errors.push(ClusterProblem {
                cluster: v.name.clone(),
                error: error.clone(),
            });
        }
        for c in v.stream_consumers.iter() {
            if !keep(&c.vhost, &c.stream) || want_status.is_some_and(|s| s != c.health.status) {
                continue;
            }
            let h = &c.health;
            body.consumers.push(StreamConsumerRow {
                cluster: v.name.clone(),
                vhost: c.vhost.to_string(),
                stream: c.stream.to_string(),
                consumer: c.consumer.clone(),
                named: c.named,
                super_stream: c.super_stream,
                subscriptions: c.subscriptions,
                online: c.online,
                offset_lag: h.offset_lag,
                lag_growth: h.lag_growth,
                offset_rate: h.offset_rate,
                status: h.status.as_str().to_string(),
                truncation_eta_seconds: h.truncation_eta.filter(|e| e.is_finite()),
            });
        }
        for u in v.stream_unknown.iter() {
            if keep(&u.vhost, &u.stream) && want_status.is_none_or(|s| s == StreamStatus::Unknown) {
                body.unknown.push(UnknownReadersRow {
                    cluster: v.name.clone(),
                    vhost: u.vhost.to_string(),
                    stream: u.stream.to_string(),
                    readers: u.readers,
                    reason: u.reason.to_string(),
                });
            }
        }
    }
    Json(body).into_response()
}

#[derive(Serialize, Deserialize, Debug)]
pub struct AlertRow {
    #[serde(flatten)]
    pub alert: Alert,
    /// Silenced or inhibited: visible here, not notified.
    pub muted: bool,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct AlertsBody {
    pub alerts: Vec<AlertRow>,
}

#[derive(Serialize)]
struct ScalersBody {
    scalers: Vec<ScalerStatus>,
}

/// Every scaler: its inputs, this cycle's desired count, the last decision (a recommendation, or
/// a hold and why) and the last recommendation.
async fn scalers(State(st): State<HttpState>) -> Json<ScalersBody> {
    Json(ScalersBody {
        scalers: (*st.scaling.statuses()).clone(),
    })
}

/// Every alert the daemon holds: pending, firing, recently resolved; shadow-mode ones included.
/// `GET /api/v1/alerts?alertname=…&vhost=…`: every query parameter keeps only the alerts whose
/// label of that name has that value (the link a grouped notification gives to its full list).
async fn alerts(
    State(st): State<HttpState>,
    Query(filter): Query<std::collections::BTreeMap<String, String>>,
) -> Json<AlertsBody> {
    let published = st.engine.alerts();
    let mut alerts: Vec<AlertRow> = published
        .alerts
        .iter()
        .filter(|a| filter.iter().all(|(k, v)| a.labels.get(k) == Some(v)))
        .map(|a| AlertRow {
            muted: published.muted.contains(&a.fingerprint),
            alert: a.clone(),
        })
        .collect();
    alerts.sort_by(|a, b| {
        let key = |r: &AlertRow| {
            (
                r.alert.state as u8,
                r.alert.alertname.clone(),
                r.alert.fingerprint.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
    Json(AlertsBody { alerts })
}

#[derive(Serialize, Deserialize, Debug)]
pub struct SilencesBody {
    pub silences: Vec<Silence>,
}

async fn list_silences(State(st): State<HttpState>) -> Json<SilencesBody> {
    Json(SilencesBody {
        silences: st.engine.silences(),
    })
}

/// `{"matchers": ["queue=orders"], "duration": "2h", "comment": "…", "created_by": "…"}`
/// (or `ends_at` in ms since the epoch instead of `duration`).
#[derive(Serialize, Deserialize)]
pub struct NewSilence {
    pub matchers: Vec<String>,
    pub duration: Option<String>,
    pub ends_at: Option<i64>,
    #[serde(default)]
    pub comment: String,
    #[serde(default)]
    pub created_by: String,
}

async fn add_silence(
    State(st): State<HttpState>,
    headers: axum::http::HeaderMap,
    Json(req): Json<NewSilence>,
) -> Response {
    if !authorized(&st, &headers) {
        return unauthorized();
    }
    let now = Timestamp::now().0;
    let ends_at = match (
        req.ends_at,
        req.duration.as_deref().map(humantime::parse_duration),
    ) {
        (Some(t), None) => t,
        (None, Some(Ok(d))) => now + d.as_millis() as i64,
        (None, Some(Err(e))) => {
            return (StatusCode::BAD_REQUEST, format!("duration: {e}")).into_response();
        }
        _ => {
            return (
                StatusCode::BAD_REQUEST,
                "give exactly one of duration or ends_at",
            )
                .into_response();
        }
    };
    let silence = Silence {
        id: uuid::Uuid::now_v7().to_string(),
        matchers: req.matchers,
        starts_at: now,
        ends_at,
        created_by: req.created_by,
        comment: req.comment,
    };
    match st.engine.add_silence(silence).await {
        Ok(s) => (StatusCode::CREATED, Json(s)).into_response(),
        Err(e @ SilenceError::Invalid(_)) => {
            (StatusCode::BAD_REQUEST, e.to_string()).into_response()
        }
        Err(e @ SilenceError::Unavailable(_)) => {
            (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response()
        }
    }
}

async fn expire_silence(
    State(st): State<HttpState>,
    axum::extract::Path(id): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
) -> Response {
    if !authorized(&st, &headers) {
        return unauthorized();
    }
    match st.engine.expire_silence(&id, Timestamp::now()).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => (StatusCode::NOT_FOUND, format!("no silence {id}")).into_response(),
        Err(e) if e.is_unavailable() => {
            (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn reload(State(st): State<HttpState>, headers: axum::http::HeaderMap) -> Response {
    if !authorized(&st, &headers) {
        return unauthorized();
    }
    let f = st.reload.clone();
    match tokio::task::spawn_blocking(move || f()).await {
        Ok(Ok(msg)) => (StatusCode::OK, msg).into_response(),
        Ok(Err(why)) => (StatusCode::BAD_REQUEST, why).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        "missing or wrong bearer token (server.api_token_file)",
    )
        .into_response()
}

#[derive(Serialize, Deserialize, Debug)]
pub struct DeadLetterRow {
    pub id: u64,
    #[serde(flatten)]
    pub letter: DeadLetter,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct DeadLettersBody {
    pub dead_letters: Vec<DeadLetterRow>,
}

async fn dead_letters(State(st): State<HttpState>) -> Response {
    match crate::outbox::on_disk(st.engine.store(), |s| s.dead_letters()).await {
        Ok(list) => Json(DeadLettersBody {
            dead_letters: list
                .into_iter()
                .map(|(id, letter)| DeadLetterRow { id, letter })
                .collect(),
        })
        .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

fn authorized(st: &HttpState, headers: &axum::http::HeaderMap) -> bool {
    let Some(token) = &st.api_token else {
        return true;
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Constant-time comparison: the token must not leak through timing.
    given.is_some_and(|g| {
        let (a, b) = (g.as_bytes(), token.expose().as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    })
}

async fn replay(
    State(st): State<HttpState>,
    axum::extract::Path(id): axum::extract::Path<u64>,
    headers: axum::http::HeaderMap,
) -> Response {
    if !authorized(&st, &headers) {
        return unauthorized();
    }
    match crate::outbox::replay(st.engine.store(), id).await {
        Ok(new_id) => {
            st.engine.wake_all();
            (
                StatusCode::ACCEPTED,
                Json(serde_json::json!({ "replayed": id, "outbox_id": new_id })),
            )
                .into_response()
        }
        Err(crate::store::StoreError::NoSuchDeadLetter(_)) => (
            StatusCode::NOT_FOUND,
            format!("no dead letter with id {id}"),
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
