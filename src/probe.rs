//! The end-to-end canary (docs/canary.md): real messages through the broker, so a pipe that
//! accepts connections but does not deliver — publishers blocked by an alarm, an exchange that no
//! longer routes, a vhost refusing connections, AMQP down while the management API answers — is seen,
//! which management-API numbers cannot show.
//!
//! Each `probe:` entry is one task holding one AMQP connection (publisher confirms on). Every
//! `interval` it publishes one small message (`mandatory`, a correlation id, the send time, a
//! per-message TTL of `timeout`) and waits up to `timeout` for the confirm and then for the message on
//! `queue`. The outcome becomes the probe's `ProbeSample`, which `scope: probe` rules judge and
//! `/metrics` exports. A failed connection is retried with backoff ×3; a channel the broker closed
//! (a missing exchange, say) is reopened on the same connection.
//!
//! The only thing a probe declares is its own queue, and only when it publishes through the default
//! exchange and the queue does not exist; that queue expires (`x-expires`) once no canary uses it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use serde::Deserialize;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::domain::{Histogram, Secret, Timestamp};
use crate::liveness::Beat;
use crate::snapshot::{ProbeError, ProbeSample};
use crate::yaml::{S, Values};

/// `rabbitwatch_probe_latency_seconds` buckets: a local broker answers in about a millisecond, a
/// remote one in tens; seconds mean a backlog ahead of the canary, flow control or a slow network.
pub const LATENCY_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The routing key (and, through the default exchange, the queue) when none is given.
pub const DEFAULT_QUEUE: &str = "rabbitwatch.canary";

/// One `probe:` entry of a cluster, as written in the config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProbeConfig {
    pub name: Option<S>,
    pub vhost: S,
    pub amqp_url: Option<S>,
    pub amqp_url_file: Option<S>,
    pub exchange: Option<S>,
    pub routing_key: Option<S>,
    pub queue: Option<S>,
    pub interval: Option<S>,
    pub timeout: Option<S>,
}

/// What a probe takes from its cluster's entry when it has no `amqp_url` of its own.
pub struct ClusterDefaults<'a> {
    pub cluster: &'a str,
    /// The management API's URL: its host, and `https` meaning AMQP over TLS (port 5671).
    pub management_url: &'a reqwest::Url,
    pub username: &'a str,
    pub password: &'a Secret,
    /// The cluster's `tls.ca_file`, also trusted for `amqps://`.
    pub ca_pem: Option<&'a [u8]>,
}

#[derive(Clone, Debug)]
pub struct ProbeConfig {
    pub cluster: String,
    /// The `probe` label: `name`, or the queue's name.
    pub name: String,
    pub vhost: String,
    /// The AMQP URI with its credentials: never logged.
    pub url: Secret,
    /// `scheme://user@host:port`: what logs and errors show of the URI.
    pub endpoint: String,
    pub exchange: String,
    pub routing_key: String,
    pub queue: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// PEM certificates trusted for `amqps://` besides the system's.
    pub ca_pem: Option<String>,
}

impl RawProbeConfig {
    /// Reads the entry, each mistake at its key. The URI's password never appears in a message.
    pub fn validate(
        &self,
        v: &mut Values<'_>,
        cluster: &ClusterDefaults<'_>,
    ) -> Option<ProbeConfig> {
        let vhost = v.string(&self.vhost);
        let exchange = self
            .exchange
            .as_ref()
            .map(|e| v.string(e))
            .unwrap_or_default();
        let routing_key = self.routing_key.as_ref().map(|r| v.string(r));
        let queue = self.queue.as_ref().map(|q| v.string(q));
        let (routing_key, queue) = match (exchange.is_empty(), routing_key, queue) {
            // The default exchange routes by queue name: one names the other.
            (true, Some(r), Some(q)) if r != q => {
                v.error_at(
                    self.routing_key.as_ref().expect("given"),
                    format!("probe.routing_key {r:?} must equal queue {q:?} with the default exchange (exchange: \"\"), which routes by queue name"),
                );
                return None;
            }
            (true, r, q) => {
                let name = q.or(r).unwrap_or_else(|| DEFAULT_QUEUE.to_string());
                (name.clone(), name)
            }
            (false, r, Some(q)) => (r.unwrap_or_else(|| DEFAULT_QUEUE.to_string()), q),
            (false, _, None) => {
                v.error_at(
                    self.exchange.as_ref().expect("given"),
                    "probe.queue is required with an exchange: the queue the exchange routes the canary to (bound with routing_key)",
                );
                return None;
            }
        };
        let interval = v.duration(
            self.interval.as_ref(),
            Duration::from_secs(15),
            Duration::from_millis(100),
            "probe.interval",
        );
        let timeout = v.duration(
            self.timeout.as_ref(),
            Duration::from_secs(5).min(interval),
            Duration::from_millis(10),
            "probe.timeout",
        );
        if let Some(at) = &self.timeout
            && timeout > interval
        {
            v.error_at(
                at,
                format!(
                    "probe.timeout ({}) must not exceed probe.interval ({}): one round trip at a time",
                    humantime::format_duration(timeout),
                    humantime::format_duration(interval)
                ),
            );
        }
        let (url, at) = match (&self.amqp_url, &self.amqp_url_file) {
            (Some(u), None) => (Secret::new(v.string(u)), u),
            (None, Some(f)) => (v.secret_file(f, "probe.amqp_url_file")?, f),
            (Some(u), Some(_)) => {
                v.error_at(
                    u,
                    "set either probe.amqp_url or probe.amqp_url_file, not both",
                );
                return None;
            }
            (None, None) => (default_url(cluster, &vhost), &self.vhost),
        };
        let uri: lapin::uri::AMQPUri = match url.expose().parse() {
            Ok(u) => u,
            Err(_) => {
                // The parser's message can quote the URI, password and all.
                v.error_at(
                    at,
                    "probe.amqp_url is not an AMQP URI (amqp://user:password@host:5672/vhost, the vhost percent-encoded: %2F for /)",
                );
                return None;
            }
        };
        if uri.vhost != vhost {
            v.error_at(
                at,
                format!(
                    "the AMQP URI's vhost {:?} is not probe.vhost {vhost:?} (percent-encode it: %2F for /)",
                    uri.vhost
                ),
            );
            return None;
        }
        let name = self
            .name
            .as_ref()
            .map_or_else(|| queue.clone(), |n| v.string(n));
        if name.is_empty() {
            v.error_at(
                self.name.as_ref().unwrap_or(&self.vhost),
                "probe.name must not be empty",
            );
        }
        Some(ProbeConfig {
            cluster: cluster.cluster.to_string(),
            name,
            vhost,
            endpoint: format!(
                "{}://{}@{}:{}",
                uri.scheme, uri.authority.userinfo.username, uri.authority.host, uri.authority.port
            ),
            url,
            exchange,
            routing_key,
            queue,
            interval,
            timeout,
            ca_pem: cluster
                .ca_pem
                .map(|p| String::from_utf8_lossy(p).into_owned()),
        })
    }
}

/// `amqp://user:password@<management host>:5672/<vhost>` (`amqps` and 5671 when the management
/// API is served over https), with the cluster's credentials.
fn default_url(c: &ClusterDefaults<'_>, vhost: &str) -> Secret {
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode as enc};
    let (scheme, port) = match c.management_url.scheme() {
        "https" => ("amqps", 5671),
        _ => ("amqp", 5672),
    };
    let host = c.management_url.host_str().unwrap_or("localhost");
    Secret::new(format!(
        "{scheme}://{}:{}@{host}:{port}/{}",
        enc(c.username, NON_ALPHANUMERIC),
        enc(c.password.expose(), NON_ALPHANUMERIC),
        enc(vhost, NON_ALPHANUMERIC)
    ))
}

/// One canary's shared state: written by its task, read by the poll loop (rules), `/metrics` and
/// `/api/v1/status`.
#[derive(Debug)]
pub struct Probe {
    pub config: ProbeConfig,
    sample: ArcSwap<ProbeSample>,
    /// Publish → delivery of every successful round trip.
    pub latency: Histogram,
    /// Failed round trips, by `ProbeError::ALL` index.
    failures: [AtomicU64; 6],
}

impl Probe {
    pub fn new(config: ProbeConfig) -> Arc<Probe> {
        Arc::new(Probe {
            sample: ArcSwap::from_pointee(ProbeSample::new(&config.name, &config.vhost)),
            config,
            latency: Histogram::new(&LATENCY_BUCKETS),
            failures: Default::default(),
        })
    }

    pub fn sample(&self) -> Arc<ProbeSample> {
        self.sample.load_full()
    }

    /// Failed round trips so far, by error.
    pub fn failures_total(&self) -> impl Iterator<Item = (ProbeError, u64)> + '_ {
        ProbeError::ALL
            .into_iter()
            .zip(self.failures.iter().map(|n| n.load(Relaxed)))
    }

    fn record(&self, at: Timestamp, outcome: Result<f64, Failure>) {
        let prev = self.sample();
        match &outcome {
            Ok(latency) => self.latency.observe(*latency),
            Err((e, _)) => {
                let i = ProbeError::ALL.iter().position(|x| x == e).expect("listed");
                self.failures[i].fetch_add(1, Relaxed);
            }
        }
        let next = prev.after(at, outcome);
        let c = &self.config;
        match (prev.ok, next.ok, next.error) {
            (Some(false), Some(true), _) => info!(
                cluster = %c.cluster, vhost = %c.vhost, probe = %c.name,
                latency_ms = next.latency.unwrap_or_default() * 1e3,
                after_failures = prev.failures,
                "canary round trips again"
            ),
            (_, _, Some(e)) if prev.error != Some(e) || prev.detail != next.detail => warn!(
                cluster = %c.cluster, vhost = %c.vhost, probe = %c.name, endpoint = %c.endpoint,
                probe_error = e.as_str(), detail = %next.detail,
                "canary round trip failed"
            ),
            (None, Some(true), _) => info!(
                cluster = %c.cluster, vhost = %c.vhost, probe = %c.name,
                latency_ms = next.latency.unwrap_or_default() * 1e3,
                "canary round trips"
            ),
            _ => {}
        }
        self.sample.store(Arc::new(next));
    }
}

type Failure = (ProbeError, String);

/// Opening a connection and its channel may take this long even when `timeout` (the round trip's
/// limit) is shorter: a handshake is several round trips of its own.
const MIN_SETUP_TIMEOUT: Duration = Duration::from_secs(5);

fn setup_timeout(cfg: &ProbeConfig) -> Duration {
    cfg.timeout.max(MIN_SETUP_TIMEOUT)
}

/// First reconnect delay after a failed connection; each failure multiplies it by 3.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// The longest wait between reconnects: four intervals, and at least 10 s.
fn backoff_cap(interval: Duration) -> Duration {
    (interval * 4).max(Duration::from_secs(10))
}

/// `x-expires` of a queue the probe declared: three round trips' worth, at least 10 s — gone soon
/// after the canary stops, kept through a reconnect.
pub fn queue_expiry(cfg: &ProbeConfig) -> Duration {
    ((cfg.interval + cfg.timeout) * 3).max(Duration::from_secs(10))
}

/// Runs one canary until aborted: a round trip every `interval`, never two at once.
pub async fn run(probe: Arc<Probe>, beat: Arc<Beat>) {
    let cfg = probe.config.clone();
    let mut session: Option<Session> = None;
    let mut backoff = FIRST_BACKOFF;
    // After a failed connection: no attempt before this, the failure repeated meanwhile.
    let mut retry: Option<(Instant, Failure)> = None;
    let mut every = tokio::time::interval(cfg.interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        beat.mark(Timestamp::now());
        let outcome = match &retry {
            // Waiting to reconnect: the round trip fails as the last attempt did (the same detail,
            // so the failure is logged once, not every tick).
            Some((not_before, failure)) if Instant::now() < *not_before => Err(failure.clone()),
            _ => {
                let result = match session.as_mut() {
                    Some(s) if s.conn.status().connected() => Ok(()),
                    _ => match Session::open(&cfg).await {
                        Ok(s) => {
                            session = Some(s);
                            Ok(())
                        }
                        Err(f) => Err(f),
                    },
                };
                match result {
                    Ok(()) => {
                        retry = None;
                        backoff = FIRST_BACKOFF;
                        let s = session.as_mut().expect("opened");
                        let outcome = s.round_trip(&cfg).await;
                        if !s.conn.status().connected() {
                            session = None;
                        }
                        outcome
                    }
                    Err(f) => {
                        session = None;
                        // ±5%, so many daemons do not reconnect in step.
                        let wait = backoff.mul_f64(0.95 + 0.1 * fastrand::f64());
                        tracing::debug!(cluster = %cfg.cluster, probe = %cfg.name,
                            reconnect_in_ms = wait.as_millis() as u64, "canary reconnects after a backoff");
                        retry = Some((Instant::now() + wait, f.clone()));
                        backoff = (backoff * 3).min(backoff_cap(cfg.interval));
                        Err(f)
                    }
                }
            }
        };
        let outcome = outcome.map_err(|(e, d)| (e, scrub(&d, &cfg.url)));
        probe.record(Timestamp::now(), outcome);
        beat.mark(Timestamp::now());
    }
}

/// Start-up check: can the probe connect, open a channel and find what it publishes to?
pub async fn check(cfg: &ProbeConfig) -> Result<(), String> {
    match Session::open(cfg).await {
        Ok(s) => {
            s.close().await;
            Ok(())
        }
        Err((e, detail)) => Err(format!(
            "probe {} ({}, vhost {}): {}: {}",
            cfg.name,
            cfg.endpoint,
            cfg.vhost,
            e.as_str(),
            scrub(&detail, &cfg.url)
        )),
    }
}

/// A broker's or the network's message, with the URI's password masked should it ever appear.
fn scrub(detail: &str, url: &Secret) -> String {
    match url.expose().parse::<lapin::uri::AMQPUri>() {
        Ok(u) if u.authority.userinfo.password.len() >= 3 => {
            detail.replace(&u.authority.userinfo.password, "***")
        }
        _ => detail.to_string(),
    }
}

/// An open connection, its channel (confirms on) and the consumer's deliveries.
struct Session {
    conn: Connection,
    channel: Option<Open>,
}

struct Open {
    channel: Channel,
    deliveries: mpsc::UnboundedReceiver<Delivered>,
}

/// A delivery's correlation id, or the consumer's end.
enum Delivered {
    Message(Option<String>),
    Ended(String),
}

impl Session {
    async fn open(cfg: &ProbeConfig) -> Result<Session, Failure> {
        let props = ConnectionProperties::default().with_connection_name(
            format!("rabbitwatch canary {}/{}", cfg.cluster, cfg.name).into(),
        );
        let tls = lapin::tcp::OwnedTLSConfig {
            identity: None,
            cert_chain: cfg.ca_pem.clone(),
        };
        let connect = async {
            let runtime = lapin::runtime::default_runtime()?;
            Connection::connect_with_config(cfg.url.expose(), props, tls, runtime).await
        };
        let conn = match tokio::time::timeout(setup_timeout(cfg), connect).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(classify(&e, "connecting")),
            Err(_) => {
                return Err((
                    ProbeError::Connect,
                    format!("no connection within {}", fmt(setup_timeout(cfg))),
                ));
            }
        };
        let mut s = Session {
            conn,
            channel: None,
        };
        if let Err(f) = s.ensure_channel(cfg).await {
            s.close().await;
            return Err(f);
        }
        Ok(s)
    }

    async fn close(self) {
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            self.conn.close(200, "rabbitwatch canary closing".into()),
        )
        .await;
    }

    /// Opens the channel (confirms on), declares the probe's own queue if it is missing and the
    /// default exchange is used, and starts consuming. Within `setup_timeout`.
    async fn ensure_channel(&mut self, cfg: &ProbeConfig) -> Result<(), Failure> {
        if self
            .channel
            .as_ref()
            .is_some_and(|o| o.channel.status().connected())
        {
            return Ok(());
        }
        self.channel = None;
        let setup = async {
            let channel = self.conn.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            let passive = QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            };
            let found = channel
                .queue_declare(cfg.queue.as_str().into(), passive, FieldTable::default())
                .await;
            let channel = match found {
                Ok(_) => channel,
                Err(e) if is_not_found(&e) && cfg.exchange.is_empty() => {
                    // The passive declare closed that channel; declare ours on a new one.
                    let channel = self.conn.create_channel().await?;
                    channel
                        .confirm_select(ConfirmSelectOptions::default())
                        .await?;
                    let mut args = FieldTable::default();
                    args.insert(
                        "x-expires".into(),
                        AMQPValue::LongLongInt(queue_expiry(cfg).as_millis() as i64),
                    );
                    // Durable: RabbitMQ 4 deprecates (4.3 refuses) transient non-exclusive queues;
                    // `x-expires` removes it all the same once no canary uses it.
                    let durable = QueueDeclareOptions {
                        durable: true,
                        ..QueueDeclareOptions::default()
                    };
                    channel
                        .queue_declare(cfg.queue.as_str().into(), durable, args)
                        .await?;
                    info!(cluster = %cfg.cluster, vhost = %cfg.vhost, queue = %cfg.queue,
                        expires_s = queue_expiry(cfg).as_secs(), "declared the canary's queue");
                    channel
                }
                Err(e) => return Err(e),
            };
            let consumer = channel
                .basic_consume(
                    cfg.queue.as_str().into(),
                    "".into(),
                    BasicConsumeOptions {
                        no_ack: true,
                        ..BasicConsumeOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            let (tx, deliveries) = mpsc::unbounded_channel();
            consumer.set_delegate(move |d: lapin::message::DeliveryResult| {
                let _ = tx.send(match d {
                    Ok(Some(m)) => Delivered::Message(
                        m.properties
                            .correlation_id()
                            .as_ref()
                            .map(|c| c.to_string()),
                    ),
                    Ok(None) => Delivered::Ended(
                        "the broker cancelled the consumer (queue deleted?)".into(),
                    ),
                    Err(e) => Delivered::Ended(e.to_string()),
                });
                std::future::ready(())
            });
            Ok::<_, lapin::Error>(Open {
                channel,
                deliveries,
            })
        };
        match tokio::time::timeout(setup_timeout(cfg), setup).await {
            Ok(Ok(open)) => {
                self.channel = Some(open);
                Ok(())
            }
            Ok(Err(e)) => Err(classify(&e, "opening the channel")),
            Err(_) => Err((
                if self.conn.status().blocked() {
                    ProbeError::Blocked
                } else {
                    ProbeError::Timeout
                },
                format!("channel not ready within {}", fmt(setup_timeout(cfg))),
            )),
        }
    }

    /// One publish → confirm → delivery, within `timeout` from the publish. `Ok(latency seconds)`.
    async fn round_trip(&mut self, cfg: &ProbeConfig) -> Result<f64, Failure> {
        self.ensure_channel(cfg).await?;
        if self.conn.status().blocked() {
            return Err((
                ProbeError::Blocked,
                "the broker blocks publishing on this connection (a memory or disk alarm); nothing published".into(),
            ));
        }
        let open = self.channel.as_mut().expect("ensured");
        // What arrived since the last round trip is late (or its consumer's end): drop it.
        while let Ok(d) = open.deliveries.try_recv() {
            if let Delivered::Ended(why) = d {
                self.channel = None;
                return Err((ProbeError::Connect, why));
            }
        }
        let id = uuid::Uuid::now_v7().to_string();
        let sent_ms = Timestamp::now().0;
        let body = format!(
            r#"{{"cluster":{},"probe":{},"correlation_id":"{id}","sent_at_ms":{sent_ms}}}"#,
            serde_json::Value::from(cfg.cluster.as_str()),
            serde_json::Value::from(cfg.name.as_str())
        );
        let props = BasicProperties::default()
            .with_correlation_id(ShortString::from(id.as_str()))
            .with_timestamp((sent_ms / 1000) as u64)
            .with_expiration(ShortString::from(cfg.timeout.as_millis().to_string()))
            .with_delivery_mode(1)
            .with_app_id("rabbitwatch".into())
            .with_content_type("application/json".into());
        let started = Instant::now();
        let deadline = started + cfg.timeout;
        let blocked_or_timeout = |conn: &Connection, what: &str| {
            if conn.status().blocked() {
                (
                    ProbeError::Blocked,
                    format!("{what}: the broker blocked publishing (a memory or disk alarm)"),
                )
            } else {
                (
                    ProbeError::Timeout,
                    format!("{what} within {}", fmt(cfg.timeout)),
                )
            }
        };
        let publish = async {
            open.channel
                .basic_publish(
                    cfg.exchange.as_str().into(),
                    cfg.routing_key.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    body.as_bytes(),
                    props,
                )
                .await?
                .await
        };
        let confirmation = match tokio::time::timeout_at(deadline.into(), publish).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                self.channel = None;
                return Err(classify(&e, "publishing"));
            }
            Err(_) => return Err(blocked_or_timeout(&self.conn, "no publisher confirm")),
        };
        match confirmation {
            Confirmation::Ack(None) => {}
            Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned))
                if returned.reply_code == 312 =>
            {
                return Err((
                    ProbeError::Unroutable,
                    format!(
                        "returned {} by the broker: exchange {:?} routes routing key {:?} to no queue",
                        returned.reply_text, cfg.exchange, cfg.routing_key
                    ),
                ));
            }
            Confirmation::Ack(Some(returned)) => {
                return Err((
                    ProbeError::Unroutable,
                    format!(
                        "returned by the broker: {} {}",
                        returned.reply_code, returned.reply_text
                    ),
                ));
            }
            Confirmation::Nack(_) => {
                return Err((
                    ProbeError::Nack,
                    "the broker nacked the message (it could not take responsibility for it: e.g. a queue at max-length with overflow reject-publish, or an internal error)".into(),
                ));
            }
            Confirmation::NotRequested => {
                return Err((
                    ProbeError::Nack,
                    "publisher confirms are off on the channel".into(),
                ));
            }
        }
        let open = self.channel.as_mut().expect("still open");
        loop {
            match tokio::time::timeout_at(deadline.into(), open.deliveries.recv()).await {
                Ok(Some(Delivered::Message(Some(got)))) if got == id => {
                    return Ok(started.elapsed().as_secs_f64());
                }
                Ok(Some(Delivered::Message(_))) => continue, // an earlier canary, late
                Ok(Some(Delivered::Ended(why))) => {
                    self.channel = None;
                    return Err((ProbeError::Connect, why));
                }
                Ok(None) => {
                    self.channel = None;
                    return Err((ProbeError::Connect, "the consumer went away".into()));
                }
                Err(_) => {
                    return Err(blocked_or_timeout(
                        &self.conn,
                        &format!("confirmed but not delivered on queue {:?}", cfg.queue),
                    ));
                }
            }
        }
    }
}

fn is_not_found(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(p) if p.get_id() == 404)
}

/// A lapin error as a probe error: refused credentials or vhost access → `auth`; a missing exchange
/// or queue → `unroutable`; anything else about the connection (a connection limit too) → `connect`.
fn classify(e: &lapin::Error, doing: &str) -> Failure {
    let kind = match e.kind() {
        lapin::ErrorKind::ProtocolError(p) => match p.get_id() {
            403 => ProbeError::Auth,
            404 => ProbeError::Unroutable,
            // NOT_ALLOWED: a user without access to the vhost (permissions: `auth`), or the vhost's
            // or user's connection limit reached (the vhost refuses connections: `connect`).
            530 if !p.get_message().as_str().contains("limit") => ProbeError::Auth,
            _ => ProbeError::Connect,
        },
        _ => ProbeError::Connect,
    };
    (kind, format!("{doing}: {e}"))
}

fn fmt(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(yaml: &str) -> (Option<ProbeConfig>, Vec<String>) {
        let raw: RawProbeConfig =
            crate::yaml::parse(std::path::Path::new("c.yaml"), yaml).expect("parses");
        let env = |_: &str| None;
        let mut v = Values::new(std::path::Path::new("c.yaml"), &env);
        let url = reqwest::Url::parse("https://rabbit.example:15671").expect("url");
        let password = Secret::new("s3cret/pw".into());
        let cfg = raw.validate(
            &mut v,
            &ClusterDefaults {
                cluster: "main",
                management_url: &url,
                username: "watcher",
                password: &password,
                ca_pem: None,
            },
        );
        let errors = v
            .diags
            .finish(())
            .err()
            .unwrap_or_default()
            .iter()
            .map(|d| d.to_string())
            .collect();
        (cfg, errors)
    }

    #[test]
    fn defaults_use_the_default_exchange_and_the_clusters_host_and_credentials() {
        let (cfg, errors) = validate("vhost: /\n");
        assert!(errors.is_empty(), "{errors:?}");
        let cfg = cfg.expect("valid");
        assert_eq!(
            (
                cfg.exchange.as_str(),
                cfg.routing_key.as_str(),
                cfg.queue.as_str()
            ),
            ("", DEFAULT_QUEUE, DEFAULT_QUEUE)
        );
        assert_eq!(cfg.name, DEFAULT_QUEUE);
        assert_eq!(cfg.endpoint, "amqps://watcher@rabbit.example:5671");
        assert_eq!(
            cfg.url.expose(),
            "amqps://watcher:s3cret%2Fpw@rabbit.example:5671/%2F"
        );
        assert_eq!(
            (cfg.interval, cfg.timeout),
            (Duration::from_secs(15), Duration::from_secs(5))
        );
    }

    #[test]
    fn mistakes_are_located_and_never_echo_the_password() {
        let cases = [
            (
                "vhost: /\namqp_url: \"amqp://u:hunter22@h:5672/other\"\n",
                ":2:11:",
                "vhost \"other\" is not probe.vhost \"/\"",
            ),
            (
                "vhost: /\namqp_url: \"http://u:hunter22@h/\"\n",
                ":2:11:",
                "not an AMQP URI",
            ),
            (
                "vhost: /\nexchange: orders\n",
                ":2:11:",
                "probe.queue is required with an exchange",
            ),
            (
                "vhost: /\nrouting_key: a\nqueue: b\n",
                ":2:14:",
                "must equal queue \"b\"",
            ),
            (
                "vhost: /\ninterval: 1s\ntimeout: 2s\n",
                ":3:10:",
                "must not exceed probe.interval",
            ),
        ];
        for (yaml, at, message) in cases {
            let (cfg, errors) = validate(yaml);
            assert!(cfg.is_none() || !errors.is_empty(), "{yaml}");
            assert_eq!(errors.len(), 1, "{yaml}: {errors:?}");
            assert!(
                errors[0].contains(at) && errors[0].contains(message),
                "{yaml}: {errors:?}"
            );
            assert!(!errors[0].contains("hunter22"), "{errors:?}");
        }
    }

    #[test]
    fn an_exchange_probe_names_its_queue_and_the_name_labels_it() {
        let (cfg, errors) = validate(
            "vhost: shop\nname: orders-path\namqp_url: amqp://u:p@127.0.0.1:5672/shop\nexchange: orders\nrouting_key: order.created\nqueue: orders.canary\n",
        );
        assert!(errors.is_empty(), "{errors:?}");
        let cfg = cfg.expect("valid");
        assert_eq!(cfg.name, "orders-path");
        assert_eq!(
            (cfg.routing_key.as_str(), cfg.queue.as_str()),
            ("order.created", "orders.canary")
        );
        assert_eq!(cfg.endpoint, "amqp://u@127.0.0.1:5672");
    }

    #[test]
    fn a_password_in_a_broker_message_is_masked() {
        let url = Secret::new("amqp://u:hunter22@h:5672/%2F".into());
        assert_eq!(scrub("login hunter22 refused", &url), "login *** refused");
    }

    #[test]
    fn backoff_is_capped_at_four_intervals_and_at_least_ten_seconds() {
        assert_eq!(
            backoff_cap(Duration::from_secs(15)),
            Duration::from_secs(60)
        );
        assert_eq!(
            backoff_cap(Duration::from_millis(100)),
            Duration::from_secs(10)
        );
    }
}
