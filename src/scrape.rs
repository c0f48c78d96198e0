//! One scrape of one cluster → `Snapshot`, from the configured source: the management API
//! (`/api/queues?columns=…`, in one request or pages with `page_size`) or every node's Prometheus
//! plugin (`prometheus`, the queue list and policies from the API), `source: auto` choosing between
//! them; then the readers of the listed streams (`streams`) and the deprecated features in use
//! (`deprecated`). Asks only for what the analysis needs and classifies every failure by a short
//! `reason`. A scrape either returns a complete snapshot or an error: a failed page fails the whole
//! cycle, so a partial listing can never look like queues vanishing.

use std::sync::Arc;
use std::time::Duration;

use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use regex::Regex;
use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

pub mod deprecated;
pub mod prometheus;
pub mod promtext;
pub mod streams;

use crate::domain::{QueueKey, StatsMode, Timestamp};
use crate::snapshot::{
    Binding, Counters, DeadLettering, Destination, Exchange, ExchangeKind, Exchanges, Limits,
    NodeSample, QueueSample, Snapshot,
};

// ---------------------------------------------------------------- what a cluster's scrape is told

#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub name: String,
    pub url: reqwest::Url,
    pub username: String,
    pub password: crate::domain::Secret,
    pub tls: TlsConfig,
    pub poll_interval: Duration,
    pub timeout: Duration,
    /// Queues per `/api/queues` page; 0 lists them in one request (cheapest for RabbitMQ 3.x).
    pub page_size: u32,
    pub vhosts: NameFilter,
    pub queues: NameFilter,
    pub max_queues: usize,
    /// Largest management-API response body accepted, in bytes (after decompression); enforced
    /// while the body streams in, so a runaway answer is cut off instead of buffered.
    pub max_response_size: u64,
    /// A poll cycle (every request of one scrape) that takes longer is cut off and counts as a failed
    /// scrape (`timeout`): a hung request must not stall the loop. Default: 3 × `poll_interval` +
    /// `watchdog.grace` (what `/healthz` tolerates), at least `timeout`.
    pub cycle_timeout: Duration,
    /// Where queue figures are read (docs/sources.md).
    pub source: SourceChoice,
    /// Each node's `rabbitmq_prometheus` listener; empty: every listed node's host, port 15692
    /// (15691 when `url` is https).
    pub prometheus_urls: Vec<reqwest::Url>,
}

/// The `source` setting of a cluster.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SourceChoice {
    /// The Prometheus plugin on RabbitMQ 4.0+ when every node's endpoint answers, else the
    /// management API; re-tried every `AUTO_RETRY_CYCLES` cycles while on the management API.
    #[default]
    Auto,
    Management,
    Prometheus,
}

/// `max_response_size` default: a columns-limited `/api/queues` of 100k+ queues fits with room.
pub const DEFAULT_MAX_RESPONSE_SIZE: u64 = 256 * 1024 * 1024;

#[derive(Clone, Debug, Default)]
pub struct TlsConfig {
    /// PEM bytes of extra trusted CA certificates.
    pub ca_pem: Option<Vec<u8>>,
    pub insecure_skip_verify: bool,
}

/// Include/exclude regexes over names; a name is watched when it matches `include` and not `exclude`.
#[derive(Clone, Debug)]
pub struct NameFilter {
    pub include: Regex,
    pub exclude: Option<Regex>,
}

impl NameFilter {
    pub fn matches(&self, name: &str) -> bool {
        self.include.is_match(name) && !self.exclude.as_ref().is_some_and(|re| re.is_match(name))
    }

    /// True when every name passes, so a scrape can ask for everything at once.
    pub fn is_match_all(&self) -> bool {
        self.exclude.is_none() && matches!(self.include.as_str(), ".*" | "" | "^.*$")
    }
}

/// Columns of `/api/queues` the analysis reads; asking for these alone cuts broker work and bytes.
/// The dead-letter settings and limits add about 33 bytes per queue before compression for a queue
/// without any (an empty `"effective_policy_definition":{}`), `message_bytes` about 20 more: the
/// listing stays well under a tenth of a full `/api/queues` one.
pub const QUEUE_COLUMNS: &str = "name,vhost,type,durable,messages,messages_ready,messages_unacknowledged,\
consumers,consumer_utilisation,head_message_timestamp,message_bytes,arguments.x-max-length,\
arguments.x-max-length-bytes,effective_policy_definition.max-length,\
effective_policy_definition.max-length-bytes,delivery_limit,arguments.x-delivery-limit,\
effective_policy_definition.delivery-limit,\
arguments.x-dead-letter-exchange,arguments.x-dead-letter-routing-key,arguments.x-message-ttl,\
effective_policy_definition.dead-letter-exchange,effective_policy_definition.dead-letter-routing-key,\
effective_policy_definition.message-ttl,\
message_stats.publish,message_stats.deliver_get,message_stats.ack,message_stats.redeliver,\
message_stats.deliver_no_ack,message_stats.get_no_ack";

/// The dead-letter topology (the bindings of the exchanges queues dead-letter into) is read again
/// after this many cycles even when no queue's dead-letter settings changed, so a binding added or
/// removed shows within this many polls. A change of settings is read at once.
pub const TOPOLOGY_REFRESH_CYCLES: u64 = 6;

/// At most this many exchanges are read for one topology (the dead-letter exchanges and the
/// exchanges their bindings lead to); past it the topology is unknown rather than partly read.
pub const MAX_TOPOLOGY_EXCHANGES: usize = 1_000;

const NODE_COLUMNS: &str = "name,running,mem_used,mem_limit,mem_alarm,disk_free,disk_free_limit,\
disk_free_alarm,fd_used,fd_total,partitions";

#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    #[error("cannot connect to {url}: {detail}")]
    Connect { url: String, detail: String },
    #[error("request to {url} failed after connecting: {detail}")]
    Transport { url: String, detail: String },
    #[error("timed out after {timeout:?} waiting for {url}")]
    Timeout { url: String, timeout: Duration },
    #[error(
        "{url} rejected the credentials (HTTP {status}); check username/password and that the user has the monitoring tag"
    )]
    Auth { url: String, status: u16 },
    #[error("{url} answered HTTP {status}: {body}")]
    Http {
        url: String,
        status: u16,
        body: String,
    },
    #[error("cannot decode {url}: {detail}")]
    Decode { url: String, detail: String },
    #[error(
        "{url} sent more than max_response_size ({limit} bytes); stopped reading it. Raise max_response_size, or narrow the vhosts/queues filters"
    )]
    TooLarge { url: String, limit: u64 },
    #[error("cannot build an HTTP client: {0}")]
    Client(String),
    #[error(
        "the poll cycle did not finish within cycle_timeout ({limit:?}); cut off (raise cycle_timeout if the broker is only slow)"
    )]
    CycleDeadline { limit: Duration },
    /// The Prometheus plugin's endpoints do not add up to the cluster: a node unread, read twice,
    /// or an endpoint of another cluster.
    #[error("prometheus source: {detail}")]
    Source { detail: String },
}

/// Why a start-up access check failed.
#[derive(Debug, thiserror::Error)]
pub enum AccessProblem {
    #[error(transparent)]
    Scrape(ScrapeError),
    #[error(
        "the user has tags {tags:?}, without monitoring or administrator it sees only the vhosts it has permissions on and no node data; run: rabbitmqctl set_user_tags <user> monitoring"
    )]
    NotMonitoring { tags: Vec<String> },
}

/// Why a scrape failed, in a word: the label of `rabbitwatch_scrape_errors_total{reason}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScrapeReason {
    /// The connection failed, whether before or after it was made.
    Connect,
    Timeout,
    Auth,
    #[serde(rename = "http_5xx")]
    Http5xx,
    #[serde(rename = "http_4xx")]
    Http4xx,
    Decode,
    TooLarge,
    Client,
    /// The prometheus source's endpoints do not cover the cluster's nodes one to one.
    Source,
}

impl ScrapeReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ScrapeReason::Connect => "connect",
            ScrapeReason::Timeout => "timeout",
            ScrapeReason::Auth => "auth",
            ScrapeReason::Http5xx => "http_5xx",
            ScrapeReason::Http4xx => "http_4xx",
            ScrapeReason::Decode => "decode",
            ScrapeReason::TooLarge => "too_large",
            ScrapeReason::Client => "client",
            ScrapeReason::Source => "source",
        }
    }
}

impl ScrapeError {
    pub fn reason(&self) -> ScrapeReason {
        match self {
            ScrapeError::Connect { .. } | ScrapeError::Transport { .. } => ScrapeReason::Connect,
            ScrapeError::Timeout { .. } | ScrapeError::CycleDeadline { .. } => {
                ScrapeReason::Timeout
            }
            ScrapeError::Auth { .. } => ScrapeReason::Auth,
            ScrapeError::Http { status, .. } if *status >= 500 => ScrapeReason::Http5xx,
            ScrapeError::Http { .. } => ScrapeReason::Http4xx,
            ScrapeError::Decode { .. } => ScrapeReason::Decode,
            ScrapeError::TooLarge { .. } => ScrapeReason::TooLarge,
            ScrapeError::Client(_) => ScrapeReason::Client,
            ScrapeError::Source { .. } => ScrapeReason::Source,
        }
    }
}

// ---------------------------------------------------------------- DTOs (only what we read)

#[derive(Debug, Deserialize)]
struct OverviewDto {
    #[serde(default)]
    rabbitmq_version: String,
    #[serde(default)]
    rates_mode: Option<String>,
    #[serde(default)]
    disable_stats: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct NodeDto {
    name: String,
    #[serde(default)]
    running: bool,
    #[serde(default)]
    mem_used: Option<u64>,
    #[serde(default)]
    mem_limit: Option<u64>,
    #[serde(default)]
    mem_alarm: Option<bool>,
    #[serde(default)]
    disk_free: Option<u64>,
    #[serde(default)]
    disk_free_limit: Option<u64>,
    #[serde(default)]
    disk_free_alarm: Option<bool>,
    #[serde(default)]
    fd_used: Option<u64>,
    #[serde(default)]
    fd_total: Option<u64>,
    #[serde(default)]
    partitions: Option<Vec<serde::de::IgnoredAny>>,
}

#[derive(Debug, Deserialize)]
struct VhostDto {
    name: String,
}

/// One entry of `/api/vhosts?columns=name`: a vhost deleted while the broker builds the list comes
/// back as an empty entry (`[]`), which names nothing and is skipped. Anything else is a broken
/// listing (an error, never "no vhosts").
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum VhostEntry {
    Named(VhostDto),
    Gone(Vec<serde::de::IgnoredAny>),
}

/// The vhosts a listing names; an entry that is neither a vhost nor empty is a broken listing.
fn named_vhosts(entries: &[VhostEntry]) -> Result<Vec<&str>, String> {
    entries
        .iter()
        .filter_map(|e| match e {
            VhostEntry::Named(v) => Some(Ok(v.name.as_str())),
            VhostEntry::Gone(rest) if rest.is_empty() => None,
            VhostEntry::Gone(_) => Some(Err("a vhost entry without a name".to_string())),
        })
        .collect()
}

#[derive(Debug, Deserialize)]
struct PageDto<'a> {
    #[serde(borrow)]
    items: Vec<QueueDto<'a>>,
    #[serde(default)]
    page_count: u32,
}

#[derive(Debug, Deserialize)]
pub struct QueueDto<'a> {
    #[serde(borrow)]
    pub name: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    pub vhost: std::borrow::Cow<'a, str>,
    #[serde(default, rename = "type")]
    pub kind: Option<&'a str>,
    #[serde(default)]
    pub durable: bool,
    #[serde(default)]
    pub messages: Option<u64>,
    #[serde(default)]
    pub messages_ready: Option<u64>,
    #[serde(default)]
    pub messages_unacknowledged: Option<u64>,
    #[serde(default)]
    pub consumers: Option<u64>,
    #[serde(default)]
    pub consumer_utilisation: Option<f64>,
    #[serde(default)]
    pub head_message_timestamp: Option<f64>,
    #[serde(default)]
    pub message_bytes: Option<u64>,
    #[serde(default)]
    pub delivery_limit: Option<ListedLimit>,
    #[serde(default)]
    pub arguments: Option<ArgumentsDto>,
    #[serde(default)]
    pub effective_policy_definition: Option<PolicyDefinitionDto>,
    #[serde(default)]
    pub message_stats: Option<MessageStatsDto>,
}

#[derive(Debug, Default, Deserialize)]
pub struct ArgumentsDto {
    #[serde(default, rename = "x-max-length")]
    pub max_length: Option<u64>,
    #[serde(default, rename = "x-max-length-bytes")]
    pub max_length_bytes: Option<u64>,
    #[serde(default, rename = "x-delivery-limit")]
    pub delivery_limit: Option<i64>,
    #[serde(default, rename = "x-dead-letter-exchange")]
    pub dead_letter_exchange: Option<String>,
    #[serde(default, rename = "x-dead-letter-routing-key")]
    pub dead_letter_routing_key: Option<String>,
    #[serde(default, rename = "x-message-ttl")]
    pub message_ttl: Option<u64>,
}

/// The queue's effective policy definition (its policy and operator policy merged, as the broker
/// lists it), as far as dead-lettering and limits go. RabbitMQ 3.x lists an empty definition as
/// `[]` on some versions, `{}` on others; both mean none.
#[derive(Debug, Default, Clone)]
pub struct PolicyDefinitionDto {
    pub dead_letter_exchange: Option<String>,
    pub dead_letter_routing_key: Option<String>,
    pub message_ttl: Option<u64>,
    pub max_length: Option<u64>,
    pub max_length_bytes: Option<u64>,
    pub delivery_limit: Option<i64>,
}

impl PolicyDefinitionDto {
    /// A policy's definition with an operator policy's over it: the operator policy holds no
    /// dead-lettering, and of two limits the lower applies (RabbitMQ's `merge_policy_value`).
    fn with_operator(mut self, op: &PolicyDefinitionDto) -> Self {
        self.message_ttl = lower(self.message_ttl, op.message_ttl);
        self.max_length = lower(self.max_length, op.max_length);
        self.max_length_bytes = lower(self.max_length_bytes, op.max_length_bytes);
        self.delivery_limit = delivery_limit(self.delivery_limit, op.delivery_limit);
        self
    }
}

/// Two delivery limits as RabbitMQ combines them (`resolve_delivery_limit`): the lower, unless
/// either is negative (unlimited), then the higher.
fn delivery_limit(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(x), Some(y)) if x < 0 || y < 0 => Some(x.max(y)),
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    }
}

/// `delivery_limit` as RabbitMQ 4.x lists it: a number, or `"unlimited"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ListedLimit {
    Number(i64),
    Text(String),
}

impl ListedLimit {
    fn value(&self) -> Option<i64> {
        match self {
            ListedLimit::Number(n) => Some(*n),
            ListedLimit::Text(t) if t == "unlimited" => Some(-1),
            ListedLimit::Text(_) => None,
        }
    }
}

/// The lower of two limits, either of which may be unset.
fn lower(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    }
}

impl<'de> Deserialize<'de> for PolicyDefinitionDto {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A visitor rather than an untagged enum: this runs for every queue of a 100k listing, and
        // an untagged enum buffers each value before trying its shapes.
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = PolicyDefinitionDto;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a policy definition")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = PolicyDefinitionDto::default();
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    match &*key {
                        "dead-letter-exchange" => out.dead_letter_exchange = map.next_value()?,
                        "dead-letter-routing-key" => {
                            out.dead_letter_routing_key = map.next_value()?
                        }
                        "message-ttl" => out.message_ttl = map.next_value()?,
                        "max-length" => out.max_length = map.next_value()?,
                        "max-length-bytes" => out.max_length_bytes = map.next_value()?,
                        "delivery-limit" => out.delivery_limit = map.next_value()?,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(out)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(PolicyDefinitionDto::default())
            }

            fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(PolicyDefinitionDto::default())
            }
        }
        d.deserialize_any(V)
    }
}

/// `/api/policies` (and `/api/operator-policies`), as far as dead-lettering and limits go, for
/// listings that do not say which policy applies to a queue (`disable_stats=true`, as the
/// prometheus source lists queues). RabbitMQ applies one policy and one operator policy to a
/// queue: of those of its vhost whose `pattern` matches its name and whose `apply-to` covers it
/// (`all`, `queues`, or its type's), the one of highest priority; of their limits the lower.
#[derive(Debug, Default)]
pub struct Policies {
    /// Highest priority first (ties keep the broker's listing order).
    rules: Vec<PolicyRule>,
    /// The operator policies, likewise.
    operator: Vec<PolicyRule>,
    /// Policies whose pattern this reader cannot compile (an Erlang regex beyond Rust's): queues
    /// they may apply to could be missing a dead-letter exchange.
    pub unreadable: Vec<String>,
}

#[derive(Debug)]
struct PolicyRule {
    vhost: String,
    pattern: Regex,
    apply_to: String,
    priority: i64,
    definition: PolicyDefinitionDto,
}

#[derive(Debug, Deserialize)]
struct PolicyDto {
    vhost: String,
    name: String,
    pattern: String,
    #[serde(rename = "apply-to", default)]
    apply_to: String,
    #[serde(default)]
    priority: i64,
    #[serde(default)]
    definition: PolicyDefinitionDto,
}

impl Policies {
    pub fn decode(bytes: &[u8]) -> Result<Policies, serde_json::Error> {
        let mut out = Policies::default();
        out.rules = out.read(bytes)?;
        Ok(out)
    }

    /// Adds `/api/operator-policies`.
    pub fn with_operator_policies(mut self, bytes: &[u8]) -> Result<Policies, serde_json::Error> {
        self.operator = self.read(bytes)?;
        Ok(self)
    }

    fn read(&mut self, bytes: &[u8]) -> Result<Vec<PolicyRule>, serde_json::Error> {
        let dtos: Vec<PolicyDto> = serde_json::from_slice(bytes)?;
        let mut rules = Vec::new();
        for p in dtos {
            match Regex::new(&p.pattern) {
                Ok(pattern) => rules.push(PolicyRule {
                    vhost: p.vhost,
                    pattern,
                    apply_to: p.apply_to,
                    priority: p.priority,
                    definition: p.definition,
                }),
                Err(_) => self
                    .unreadable
                    .push(format!("{} (vhost {})", p.name, p.vhost)),
            }
        }
        rules.sort_by_key(|r| std::cmp::Reverse(r.priority));
        Ok(rules)
    }

    /// The policy and operator policy RabbitMQ applies to the queue, merged.
    pub fn effective(&self, vhost: &str, name: &str, kind: &str) -> PolicyDefinitionDto {
        let applies = |r: &&PolicyRule| {
            let to = match r.apply_to.as_str() {
                "all" | "queues" => true,
                "classic_queues" => kind == "classic",
                "quorum_queues" => kind == "quorum",
                "streams" => kind == "stream",
                _ => false,
            };
            to && r.vhost == vhost && r.pattern.is_match(name)
        };
        let policy = self
            .rules
            .iter()
            .find(applies)
            .map(|r| r.definition.clone())
            .unwrap_or_default();
        match self.operator.iter().find(applies) {
            Some(op) => policy.with_operator(&op.definition),
            None => policy,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct MessageStatsDto {
    #[serde(default)]
    pub publish: u64,
    #[serde(default)]
    pub deliver_get: u64,
    #[serde(default)]
    pub ack: u64,
    #[serde(default)]
    pub redeliver: u64,
    #[serde(default)]
    pub deliver_no_ack: u64,
    #[serde(default)]
    pub get_no_ack: u64,
}

/// Decodes one `/api/queues` response: a page (`{"items": [...], "page_count": N}`) or, unpaged, a
/// plain array. Returns the items and the page count (1 for an unpaged listing).
pub fn decode_queue_page(bytes: &[u8]) -> Result<(Vec<QueueDto<'_>>, u32), serde_json::Error> {
    if first_byte(bytes) == Some(b'[') {
        let items: Vec<QueueDto<'_>> = serde_json::from_slice(bytes)?;
        return Ok((items, 1));
    }
    let page: PageDto<'_> = serde_json::from_slice(bytes)?;
    Ok((page.items, page.page_count))
}

/// Decodes `/api/overview`: the broker's version, and whether it keeps message statistics.
pub fn decode_overview(bytes: &[u8]) -> Result<(String, StatsMode), serde_json::Error> {
    let overview: OverviewDto = serde_json::from_slice(bytes)?;
    let stats_mode =
        if overview.disable_stats == Some(true) || overview.rates_mode.as_deref() == Some("none") {
            StatsMode::DepthOnly
        } else {
            StatsMode::Full
        };
    Ok((overview.rabbitmq_version, stats_mode))
}

/// Decodes `/api/overview` for the prometheus source: the version, and whether channels count
/// per-queue statistics at all. With `management.rates_mode = none` they do not, and RabbitMQ 4.0's
/// plugin then lists the counter families with no rows: read as zero, every queue would look idle.
/// (`disable_stats`, from `management_agent.disable_metrics_collector`, stops only the management
/// API's copy: the plugin still lists the counters.)
pub fn decode_overview_for_plugin(bytes: &[u8]) -> Result<(String, bool), serde_json::Error> {
    let overview: OverviewDto = serde_json::from_slice(bytes)?;
    let counted = overview.rates_mode.as_deref() != Some("none");
    Ok((overview.rabbitmq_version, counted))
}

/// Decodes `/api/nodes?columns=…`.
pub fn decode_nodes(bytes: &[u8]) -> Result<Vec<NodeSample>, serde_json::Error> {
    let nodes: Vec<NodeDto> = serde_json::from_slice(bytes)?;
    Ok(nodes.into_iter().map(node_sample).collect())
}

/// Decodes `/api/whoami` into the user's tags. RabbitMQ 3.x sends them as a comma-separated string in
/// older releases, a list in newer.
pub fn decode_whoami_tags(bytes: &[u8]) -> Result<Vec<String>, serde_json::Error> {
    #[derive(Deserialize)]
    struct WhoAmI {
        #[serde(default)]
        tags: TagList,
    }
    #[derive(Deserialize, Default)]
    #[serde(untagged)]
    enum TagList {
        List(Vec<String>),
        Text(String),
        #[default]
        None,
    }
    let who: WhoAmI = serde_json::from_slice(bytes)?;
    Ok(match who.tags {
        TagList::List(l) => l,
        TagList::Text(t) => t
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        TagList::None => Vec::new(),
    })
}

fn first_byte(bytes: &[u8]) -> Option<u8> {
    bytes.iter().copied().find(|b| !b.is_ascii_whitespace())
}

/// Turns `/api/queues` responses into samples as they are decoded, item by item: no intermediate list
/// of decoded items, vhost and queue-type strings shared across queues, name filters applied on the way.
/// Public so benchmarks and fuzzing exercise exactly what the daemon does.
pub struct QueueCollector<'f> {
    vhost_filter: Option<&'f NameFilter>,
    queue_filter: Option<&'f NameFilter>,
    mode: StatsMode,
    vhosts: Vec<Arc<str>>,
    kinds: Vec<Arc<str>>,
    samples: Vec<QueueSample>,
    pending: usize,
    dead_letterings: Vec<DeadLettering>,
    /// For listings without `effective_policy_definition`: the policies to work it out from.
    policies: Option<&'f Policies>,
    /// With `indexing_every_queue`: every listed queue's `prometheus::queue_key`, with the index
    /// of its sample when it is watched.
    index: Option<foldhash::HashMap<Box<str>, Option<usize>>>,
}

impl<'f> QueueCollector<'f> {
    pub fn new(vhosts: &'f NameFilter, queues: &'f NameFilter, mode: StatsMode) -> Self {
        QueueCollector {
            vhost_filter: (!vhosts.is_match_all()).then_some(vhosts),
            queue_filter: (!queues.is_match_all()).then_some(queues),
            mode,
            vhosts: Vec::new(),
            kinds: Vec::new(),
            samples: Vec::new(),
            pending: 0,
            dead_letterings: Vec::new(),
            policies: None,
            index: None,
        }
    }

    /// Fills `buf` (emptied) instead of a new `Vec`: the last cycle's, whose pages are mapped already
    /// (`view::Tracker::take_spare_samples`).
    pub fn reusing(mut self, mut buf: Vec<QueueSample>) -> Self {
        buf.clear();
        self.samples = buf;
        self
    }

    /// Keeps an index of every listed queue, watched or not (`finish_indexed`).
    pub fn indexing_every_queue(mut self) -> Self {
        self.index = Some(Default::default());
        self
    }

    /// Works out each queue's policy from `policies` when the listing does not say it.
    pub fn with_policies(mut self, policies: &'f Policies) -> Self {
        self.policies = Some(policies);
        self
    }

    /// Decodes one response body (a page or an unpaged array) into samples; returns the page count
    /// the broker reported (1 for an unpaged listing, 0 when a page says nothing).
    pub fn add_listing(&mut self, body: &[u8]) -> Result<u32, serde_json::Error> {
        let mut de = serde_json::Deserializer::from_slice(body);
        let pages = ListingSeed(self).deserialize(&mut de)?;
        de.end()?;
        Ok(pages)
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Queues collected so far that the broker listed with their statistics pending.
    pub fn stats_pending(&self) -> usize {
        self.pending
    }

    pub fn finish(self) -> Vec<QueueSample> {
        self.samples
    }

    /// The samples, and every listed queue's dead-letter settings (watched or not).
    pub fn finish_with_dead_letterings(self) -> (Vec<QueueSample>, Vec<DeadLettering>) {
        (self.samples, self.dead_letterings)
    }

    /// With `indexing_every_queue`: also the index of every listed queue (else empty).
    #[allow(clippy::type_complexity)]
    pub fn finish_indexed(
        self,
    ) -> (
        Vec<QueueSample>,
        Vec<DeadLettering>,
        foldhash::HashMap<Box<str>, Option<usize>>,
    ) {
        (
            self.samples,
            self.dead_letterings,
            self.index.unwrap_or_default(),
        )
    }

    fn push(&mut self, mut q: QueueDto<'_>) {
        // Before the filters: a queue nobody watches can dead-letter into one that is watched.
        if q.effective_policy_definition.is_none()
            && let Some(p) = self.policies
        {
            let kind = q.kind.unwrap_or("classic");
            q.effective_policy_definition = Some(p.effective(&q.vhost, &q.name, kind));
        }
        let (args, policy) = (q.arguments.as_mut(), q.effective_policy_definition.as_mut());
        // RabbitMQ lets a queue's argument win over its policy, the exchange and the key separately.
        let exchange = args
            .as_ref()
            .and_then(|a| a.dead_letter_exchange.clone())
            .or_else(|| policy.as_ref().and_then(|p| p.dead_letter_exchange.clone()));
        if let Some(exchange) = exchange {
            let expires = args.as_ref().is_some_and(|a| a.message_ttl.is_some())
                || policy.as_ref().is_some_and(|p| p.message_ttl.is_some());
            let routing_key = args
                .and_then(|a| a.dead_letter_routing_key.take())
                .or_else(|| policy.and_then(|p| p.dead_letter_routing_key.take()));
            let vhost = intern(&mut self.vhosts, &q.vhost);
            self.dead_letterings.push(DeadLettering {
                queue: QueueKey {
                    vhost,
                    name: (*q.name).into(),
                },
                exchange: exchange.into(),
                routing_key: routing_key.map(Into::into),
                expires,
            });
        }
        let watched = !(self.vhost_filter.is_some_and(|f| !f.matches(&q.vhost))
            || self.queue_filter.is_some_and(|f| !f.matches(&q.name)));
        if let Some(index) = &mut self.index {
            let mut key = String::new();
            prometheus::queue_key(&mut key, &q.vhost, &q.name);
            index.insert(key.into(), watched.then_some(self.samples.len()));
        }
        if !watched {
            return;
        }
        let vhost = intern(&mut self.vhosts, &q.vhost);
        let kind = intern(&mut self.kinds, q.kind.unwrap_or("classic"));
        let sample = q.into_sample(vhost, kind, self.mode);
        self.pending += usize::from(sample.stats_pending);
        self.samples.push(sample);
    }
}

/// Shares one allocation per distinct string; listings are sorted by vhost, so the last one usually hits.
fn intern(pool: &mut Vec<Arc<str>>, s: &str) -> Arc<str> {
    if let Some(v) = pool.iter().rev().find(|v| ***v == *s) {
        return v.clone();
    }
    let v: Arc<str> = Arc::from(s);
    pool.push(v.clone());
    v
}

/// Decodes an unpaged listing (a JSON array of queues) as its body arrives, chunk by chunk, so the
/// whole body (32 MB at 100k queues) is never held: each queue is decoded straight from the chunk it
/// arrived in, and only a queue split across two chunks is copied, into a small buffer of its own.
/// A queue found incomplete at the end of a chunk is decoded again once the rest of it arrives (a few
/// hundred bytes per chunk). A body that turns out to be something else (a page object) is kept whole
/// and decoded at the end by `QueueCollector::add_listing`, errors included.
pub struct ListingStream<'c, 'f> {
    collector: &'c mut QueueCollector<'f>,
    /// Bytes not decoded yet: the start of a queue split across chunks (never more), or a whole
    /// body that does not start with `[`.
    carry: Vec<u8>,
    at: Expect,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Expect {
    /// `[`, or anything else (then the body is buffered whole).
    Start,
    /// A queue or `]` (after `[`).
    FirstItem,
    /// A queue (after `,`).
    Item,
    /// `,` or `]` (after a queue).
    Separator,
    /// Only whitespace (after `]`).
    End,
    /// Not an array: buffered whole for `add_listing`.
    Whole,
}

impl<'c, 'f> ListingStream<'c, 'f> {
    pub fn new(collector: &'c mut QueueCollector<'f>) -> Self {
        ListingStream {
            collector,
            carry: Vec::new(),
            at: Expect::Start,
        }
    }

    /// Decodes what `chunk` completes.
    pub fn feed(&mut self, mut chunk: &[u8]) -> Result<(), serde_json::Error> {
        if self.at == Expect::Whole {
            self.carry.extend_from_slice(chunk);
            return Ok(());
        }
        // First finish the queue the last chunk left incomplete: move this chunk's head over, a
        // growing slice at a time, until it decodes; what follows it is read from the chunk itself.
        let mut step = 256;
        while !self.carry.is_empty() && !chunk.is_empty() {
            let take = chunk.len().min(step);
            let before = self.carry.len();
            self.carry.extend_from_slice(&chunk[..take]);
            let carry = std::mem::take(&mut self.carry);
            let used = self.decode(&carry)?;
            if used > before {
                // The incomplete queue is done; the rest of what was moved over is read again
                // from the chunk.
                chunk = &chunk[used - before..];
                self.carry = carry;
                self.carry.clear();
                break;
            }
            self.carry = carry;
            self.carry.drain(..used);
            chunk = &chunk[take..];
            step *= 2;
        }
        if chunk.is_empty() {
            return Ok(());
        }
        let used = self.decode(chunk)?;
        if self.at == Expect::Whole {
            self.carry.extend_from_slice(chunk);
        } else {
            self.carry.extend_from_slice(&chunk[used..]);
        }
        Ok(())
    }

    /// Ends the body: an error unless it was one whole listing.
    pub fn finish(self) -> Result<(), serde_json::Error> {
        match self.at {
            Expect::End => Ok(()),
            // Not an array, or cut short: `add_listing` decodes it and says what is wrong.
            _ => self.collector.add_listing(&self.carry).map(|_| ()),
        }
    }

    /// Decodes the complete tokens and queues at the start of `buf`; returns how many bytes they
    /// took. Stops before a queue that `buf` holds only the start of.
    fn decode(&mut self, buf: &[u8]) -> Result<usize, serde_json::Error> {
        let mut pos = 0;
        loop {
            while buf.get(pos).is_some_and(u8::is_ascii_whitespace) {
                pos += 1;
            }
            let Some(&b) = buf.get(pos) else {
                return Ok(pos);
            };
            self.at = match (self.at, b) {
                (Expect::Start, b'[') => Expect::FirstItem,
                (Expect::Start, _) => {
                    self.at = Expect::Whole;
                    return Ok(0);
                }
                (Expect::FirstItem | Expect::Separator, b']') => Expect::End,
                (Expect::Separator, b',') => Expect::Item,
                (Expect::FirstItem | Expect::Item, _) => {
                    let mut items =
                        serde_json::Deserializer::from_slice(&buf[pos..]).into_iter::<QueueDto>();
                    match items.next() {
                        Some(Ok(q)) => {
                            self.collector.push(q);
                            pos += items.byte_offset();
                            self.at = Expect::Separator;
                            continue;
                        }
                        Some(Err(e)) if e.is_eof() => return Ok(pos),
                        Some(Err(e)) => return Err(e),
                        None => return Ok(pos),
                    }
                }
                (at, b) => {
                    return Err(serde::de::Error::custom(format_args!(
                        "unexpected {:?} in a list of queues (expected {})",
                        char::from(b),
                        match at {
                            Expect::Separator => "`,` or `]`",
                            Expect::End => "nothing after `]`",
                            _ => "a queue",
                        }
                    )));
                }
            };
            pos += 1;
        }
    }
}

struct ListingSeed<'c, 'f>(&'c mut QueueCollector<'f>);

impl<'de> DeserializeSeed<'de> for ListingSeed<'_, '_> {
    type Value = u32;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<u32, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ListingSeed<'_, '_> {
    type Value = u32;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a list of queues, or a page of them")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u32, A::Error> {
        while let Some(q) = seq.next_element::<QueueDto<'de>>()? {
            self.0.push(q);
        }
        Ok(1)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<u32, A::Error> {
        let mut page_count = 0;
        let mut items = false;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match &*key {
                "items" => {
                    map.next_value_seed(ItemsSeed(&mut *self.0))?;
                    items = true;
                }
                "page_count" => page_count = map.next_value()?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        if !items {
            return Err(serde::de::Error::missing_field("items"));
        }
        Ok(page_count)
    }
}

struct ItemsSeed<'c, 'f>(&'c mut QueueCollector<'f>);

impl<'de> DeserializeSeed<'de> for ItemsSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(ListingSeed(self.0)).map(|_| ())
    }
}

impl QueueDto<'_> {
    /// `vhost` is shared across all queues of one vhost to keep 100k keys small.
    pub fn into_sample(self, vhost: Arc<str>, kind: Arc<str>, mode: StatsMode) -> QueueSample {
        // Right after a node starts, it lists its queues with no counts at all for a few seconds.
        // That means "not known yet", not "empty": read as zero it would resolve every backlog alert
        // and spike the rates. Other absent fields keep their defaults. (RabbitMQ 3.10 with
        // `management_agent.disable_metrics_collector` lists no counts at all unless asked for
        // `enable_queue_totals`; its queues stay pending rather than being exported as empty.)
        let stats_pending = self.messages.is_none()
            && self.messages_ready.is_none()
            && self.messages_unacknowledged.is_none();
        let ready = self.messages_ready.unwrap_or(0);
        let unacked = self.messages_unacknowledged.unwrap_or(0);
        // The lower of argument and policy applies (classic and quorum queues alike). A stream's
        // max-length-bytes is retention, not a limit it overflows: none for streams.
        let (args, policy) = (
            self.arguments.as_ref(),
            self.effective_policy_definition.as_ref(),
        );
        let delivery_limit = match self.delivery_limit.as_ref().and_then(ListedLimit::value) {
            Some(listed) => Some(listed),
            None if &*kind == "quorum" => delivery_limit(
                args.and_then(|a| a.delivery_limit),
                policy.and_then(|p| p.delivery_limit),
            ),
            None => None,
        };
        let (max_length, max_length_bytes) = if &*kind == "stream" {
            (None, None)
        } else {
            (
                lower(
                    args.and_then(|a| a.max_length),
                    policy.and_then(|p| p.max_length),
                ),
                lower(
                    args.and_then(|a| a.max_length_bytes),
                    policy.and_then(|p| p.max_length_bytes),
                ),
            )
        };
        let counters = match mode {
            StatsMode::DepthOnly => None,
            // No `message_stats` means no activity yet, not unknown.
            StatsMode::Full => {
                Some(
                    self.message_stats
                        .map_or_else(Counters::default, |m| Counters {
                            publish: m.publish,
                            delivered: m.deliver_get,
                            ack: m.ack,
                            no_ack: m.deliver_no_ack.saturating_add(m.get_no_ack),
                            redeliver: m.redeliver,
                        }),
                )
            }
        };
        QueueSample {
            key: QueueKey {
                vhost,
                name: self.name.into(),
            },
            kind,
            durable: self.durable,
            // Saturating: the two come from the broker, and a garbled answer must not overflow.
            messages: self.messages.unwrap_or(ready.saturating_add(unacked)),
            messages_ready: ready,
            messages_unacked: unacked,
            consumers: self.consumers.unwrap_or(0),
            consumer_utilisation: self.consumer_utilisation,
            counters,
            head_message_timestamp: self.head_message_timestamp,
            limits: Limits::new(
                max_length,
                max_length_bytes,
                // Only a byte limit needs the byte count: without one it is not kept.
                max_length_bytes.and(self.message_bytes),
                delivery_limit,
            ),
            stats_pending,
        }
    }
}

// ---------------------------------------------------------------- client

pub struct Scraper {
    http: reqwest::Client,
    cfg: ClusterConfig,
    /// The last dead-letter topology read, reused while the queues' dead-letter settings stay the
    /// same, for up to `TOPOLOGY_REFRESH_CYCLES` cycles.
    topology: std::sync::Mutex<Option<TopologyCache>>,
    /// `source: auto`: what it decided, and why.
    auto: std::sync::Mutex<AutoState>,
    /// The prometheus source's queue list (names, types, dead-letter settings), read again when the
    /// queues the nodes list differ from it, or after `TOPOLOGY_REFRESH_CYCLES` cycles.
    /// With the cycles it has been reused.
    listing: std::sync::Mutex<Option<(Arc<ListingCache>, u64)>>,
    /// An emptied samples buffer of an earlier cycle for the next listing to fill (`recycle_samples`).
    spare_samples: std::sync::Mutex<Vec<QueueSample>>,
    /// The deprecated features in use, as last read (`scrape::deprecated`).
    deprecated: std::sync::Mutex<deprecated::Cached>,
}

/// While `source: auto` reads the management API, the Prometheus plugin is tried again after this
/// many cycles (5 minutes at the default 10 s poll), so enabling the plugin needs no restart.
pub const AUTO_RETRY_CYCLES: u64 = 30;

#[derive(Debug, Default)]
struct AutoState {
    /// `None` until the first cycle that could decide.
    active: Option<crate::snapshot::Source>,
    reason: Option<String>,
    /// Cycles on the management API since the plugin was last tried.
    since_try: u64,
}

/// Why a prometheus-source cycle failed, as far as `source: auto` cares.
enum PromError {
    /// The management API (overview, nodes, queue list) failed: the cycle fails, whatever the source.
    Management(ScrapeError),
    /// A node's endpoint failed, or the endpoints do not cover the cluster.
    Endpoint(ScrapeError),
    /// The broker's plugin lists no per-queue counters (RabbitMQ 3.x): `auto` prefers the API.
    NoCounters(String),
}

impl PromError {
    fn into_scrape(self) -> ScrapeError {
        match self {
            PromError::Management(e) | PromError::Endpoint(e) => e,
            PromError::NoCounters(detail) => ScrapeError::Source { detail },
        }
    }
}

/// The queues as `/api/queues?disable_stats=true` lists them, with their figures pending: what
/// the prometheus source fills in from the nodes' figures.
struct ListingCache {
    samples: Vec<QueueSample>,
    /// Every listed queue's `prometheus::queue_key`, watched or not; `Some(i)`: `samples[i]`.
    index: foldhash::HashMap<Box<str>, Option<usize>>,
    dead_letterings: Vec<DeadLettering>,
    /// Policies whose patterns could not be read, when there are some.
    policy_problem: Option<String>,
}

/// The prometheus source names at most this many watched vhosts in its query to the nodes.
const MAX_VHOSTS_IN_QUERY: usize = 100;

/// The queue list the prometheus source reads: no statistics, so the broker only lists names.
const LISTING_QUERY: &str = "disable_stats=true&columns=name,vhost,type,durable,arguments";

struct TopologyCache {
    /// The (vhost, exchange) pairs queues dead-lettered into when it was read.
    declared: std::collections::BTreeSet<(Arc<str>, Box<str>)>,
    /// Cycles it has been reused since.
    reused: u64,
    exchanges: Arc<Exchanges>,
}

#[derive(Debug, Deserialize)]
struct ExchangeTypeDto {
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Debug, Deserialize)]
struct BindingDto {
    destination: String,
    destination_type: String,
    #[serde(default)]
    routing_key: String,
}

impl Scraper {
    pub fn new(cfg: ClusterConfig) -> Result<Self, ScrapeError> {
        let mut builder = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout)
            .user_agent(concat!("rabbitwatch/", env!("CARGO_PKG_VERSION")))
            .danger_accept_invalid_certs(cfg.tls.insecure_skip_verify);
        if let Some(pem) = &cfg.tls.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| {
                ScrapeError::Client(format!("tls.ca_file is not a PEM certificate bundle: {e}"))
            })?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .build()
            .map_err(|e| ScrapeError::Client(e.to_string()))?;
        Ok(Scraper {
            http,
            cfg,
            topology: std::sync::Mutex::new(None),
            auto: std::sync::Mutex::new(AutoState::default()),
            listing: std::sync::Mutex::new(None),
            spare_samples: std::sync::Mutex::default(),
            deprecated: std::sync::Mutex::default(),
        })
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.cfg
    }

    /// Hands back an emptied samples buffer (`view::Tracker::take_spare_samples`) for the next
    /// cycle's samples, from either source: its pages are mapped already.
    pub fn recycle_samples(&self, buf: Vec<QueueSample>) {
        *self.spare_samples.lock().unwrap_or_else(|e| e.into_inner()) = buf;
    }

    fn take_spare_samples(&self) -> Vec<QueueSample> {
        std::mem::take(&mut *self.spare_samples.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.cfg.url.as_str().trim_end_matches('/'), path)
    }

    async fn get(&self, path: &str) -> Result<Vec<u8>, ScrapeError> {
        let mut body = Vec::new();
        self.fetch(self.url(path), &mut |chunk| {
            body.extend_from_slice(chunk);
            Ok(())
        })
        .await?;
        Ok(body)
    }

    /// GETs `url`, handing the body to `sink` chunk by chunk as it arrives (decompressed); a
    /// `sink` error is a decode error. Bodies of error answers are read (200 bytes of them
    /// reported), never given to `sink`.
    async fn fetch(
        &self,
        url: String,
        sink: &mut (dyn FnMut(&[u8]) -> Result<(), String> + Send),
    ) -> Result<(), ScrapeError> {
        let classify = |e: reqwest::Error| {
            if timed_out(&e) {
                ScrapeError::Timeout {
                    url: url.clone(),
                    timeout: self.cfg.timeout,
                }
            } else if e.is_connect() {
                ScrapeError::Connect {
                    url: url.clone(),
                    detail: error_chain(&e),
                }
            } else if e.is_decode() || e.is_body() {
                ScrapeError::Decode {
                    url: url.clone(),
                    detail: error_chain(&e),
                }
            } else {
                // Connected, then the exchange broke (reset, closed early): same remedy, own words.
                ScrapeError::Transport {
                    url: url.clone(),
                    detail: error_chain(&e),
                }
            }
        };
        let resp = self
            .http
            .get(&url)
            .basic_auth(&self.cfg.username, Some(self.cfg.password.expose()))
            .send()
            .await
            .map_err(classify)?;
        let status = resp.status().as_u16();
        // Responses above the limit are refused, not buffered: a misbehaving broker or proxy must not
        // exhaust memory. Chunks arrive decompressed, so the limit is on what would be held.
        let limit = self.cfg.max_response_size;
        if resp.content_length().is_some_and(|n| n > limit) {
            return Err(ScrapeError::TooLarge { url, limit });
        }
        let mut resp = resp;
        let mut read = 0u64;
        let mut error_body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(classify)? {
            read += chunk.len() as u64;
            if read > limit {
                return Err(ScrapeError::TooLarge { url, limit });
            }
            if (200..=299).contains(&status) {
                sink(&chunk).map_err(|detail| ScrapeError::Decode {
                    url: url.clone(),
                    detail,
                })?;
            } else if error_body.len() < 200 {
                error_body.extend_from_slice(&chunk[..chunk.len().min(200 - error_body.len())]);
            }
        }
        match status {
            200..=299 => Ok(()),
            401 | 403 => Err(ScrapeError::Auth { url, status }),
            _ => Err(ScrapeError::Http {
                url,
                status,
                body: String::from_utf8_lossy(&error_body).into_owned(),
            }),
        }
    }

    async fn get_json<T: for<'de> Deserialize<'de>>(&self, path: &str) -> Result<T, ScrapeError> {
        self.get_decoded(path, |body| serde_json::from_slice(body))
            .await
    }

    async fn get_decoded<T>(
        &self,
        path: &str,
        decode: impl FnOnce(&[u8]) -> Result<T, serde_json::Error>,
    ) -> Result<T, ScrapeError> {
        let body = self.get(path).await?;
        decode(&body).map_err(|e| ScrapeError::Decode {
            url: self.url(path),
            detail: e.to_string(),
        })
    }

    /// Start-up check: reachable, credentials accepted, and a user allowed to read every vhost's
    /// statistics (`monitoring` or `administrator` tag). Returns the user's tags.
    pub async fn check_access(&self) -> Result<Vec<String>, AccessProblem> {
        let tags = self
            .get_decoded("/api/whoami", decode_whoami_tags)
            .await
            .map_err(AccessProblem::Scrape)?;
        if !tags
            .iter()
            .any(|t| t == "monitoring" || t == "administrator")
        {
            return Err(AccessProblem::NotMonitoring { tags });
        }
        Ok(tags)
    }

    /// One full scrape from the configured `source`, with the readers of its streams when it lists
    /// any; either a whole snapshot or an error.
    pub async fn scrape(
        &self,
        now: impl Fn() -> Timestamp,
        progress: &(dyn Fn() + Sync),
    ) -> Result<Snapshot, ScrapeError> {
        let mut snap = self.scrape_source(now, progress).await?;
        snap.streams = self.read_streams(&snap.queues).await;
        if snap.streams.is_some() {
            progress();
        }
        snap.deprecated_features = self.deprecated_features().await;
        Ok(snap)
    }

    async fn scrape_source(
        &self,
        now: impl Fn() -> Timestamp,
        progress: &(dyn Fn() + Sync),
    ) -> Result<Snapshot, ScrapeError> {
        use crate::snapshot::Source;
        match self.cfg.source {
            SourceChoice::Management => self.scrape_management(&now, progress, None).await,
            SourceChoice::Prometheus => self
                .scrape_prometheus(&now, progress, false)
                .await
                .map_err(PromError::into_scrape),
            SourceChoice::Auto => {
                let (try_plugin, chosen, reason) = {
                    let mut st = self.auto.lock().unwrap_or_else(|p| p.into_inner());
                    let try_plugin = st.active != Some(Source::Management)
                        || st.since_try + 1 >= AUTO_RETRY_CYCLES;
                    if !try_plugin {
                        st.since_try += 1;
                    }
                    (try_plugin, st.active, st.reason.clone())
                };
                if !try_plugin {
                    return self.scrape_management(&now, progress, reason).await;
                }
                let reason = match self.scrape_prometheus(&now, progress, true).await {
                    Ok(snap) => {
                        *self.auto.lock().unwrap_or_else(|p| p.into_inner()) = AutoState {
                            active: Some(Source::Prometheus),
                            reason: None,
                            since_try: 0,
                        };
                        return Ok(snap);
                    }
                    Err(PromError::Management(e)) => return Err(e),
                    // Once chosen, a node that fails fails the cycle, as a failed page does: its
                    // queues must not look gone, nor its counters reset, by reading another source.
                    Err(PromError::Endpoint(e)) if chosen == Some(Source::Prometheus) => {
                        return Err(e);
                    }
                    Err(PromError::Endpoint(e)) => e.to_string(),
                    Err(PromError::NoCounters(why)) => why,
                };
                *self.auto.lock().unwrap_or_else(|p| p.into_inner()) = AutoState {
                    active: Some(Source::Management),
                    reason: Some(reason.clone()),
                    since_try: 0,
                };
                self.scrape_management(&now, progress, Some(reason)).await
            }
        }
    }

    /// The management source: overview (stats mode), nodes, then every watched queue, page by page.
    async fn scrape_management(
        &self,
        now: &impl Fn() -> Timestamp,
        progress: &(dyn Fn() + Sync),
        source_reason: Option<String>,
    ) -> Result<Snapshot, ScrapeError> {
        let (rabbitmq_version, stats_mode) =
            self.get_decoded("/api/overview", decode_overview).await?;
        progress();
        let nodes = self
            .get_decoded(&format!("/api/nodes?columns={NODE_COLUMNS}"), decode_nodes)
            .await?;
        progress();
        let mut collector = QueueCollector::new(&self.cfg.vhosts, &self.cfg.queues, stats_mode)
            .reusing(self.take_spare_samples());
        let query = format!("columns={QUEUE_COLUMNS}");
        self.list_queues(&query, None, &mut collector, progress)
            .await?;
        let stats_pending = collector.stats_pending();
        let (mut queues, dead_letterings) = collector.finish_with_dead_letterings();
        let truncated = keep_largest(&mut queues, self.cfg.max_queues);
        let (exchanges, topology_error) =
            match self.dead_letter_exchanges(&dead_letterings, progress).await {
                Ok(x) => (Some(x), None),
                Err(e) => (None, Some(e.to_string())),
            };
        Ok(Snapshot {
            taken_at: now(),
            stats_mode,
            source: crate::snapshot::Source::Management,
            source_reason,
            rabbitmq_version,
            nodes,
            queues,
            truncated,
            stats_pending,
            dead_letterings,
            exchanges,
            topology_error,
            streams: None,
            deprecated_features: None,
        })
    }

    /// Every watched vhost's queues with `query` (`columns=…` and the like): in one request when
    /// every vhost is watched, else vhost by vhost (`watched`: the list this cycle already read,
    /// else it is read here).
    async fn list_queues(
        &self,
        query: &str,
        watched: Option<&[String]>,
        collector: &mut QueueCollector<'_>,
        progress: &(dyn Fn() + Sync),
    ) -> Result<(), ScrapeError> {
        if self.cfg.vhosts.is_match_all() {
            return self
                .scrape_queues("/api/queues", query, collector, progress)
                .await;
        }
        let read;
        let vhosts = match watched {
            Some(v) => v,
            None => {
                read = self.watched_vhosts().await?;
                &read
            }
        };
        for vhost in vhosts {
            let path = format!(
                "/api/queues/{}",
                utf8_percent_encode(vhost, NON_ALPHANUMERIC)
            );
            match self.scrape_queues(&path, query, collector, progress).await {
                // Deleted since the list was made: it has no queues, which is the truth.
                Err(ScrapeError::Http { status: 404, .. }) => {}
                result => result?,
            }
        }
        Ok(())
    }

    /// The vhosts the `vhosts` filter selects, as the broker lists them now.
    async fn watched_vhosts(&self) -> Result<Vec<String>, ScrapeError> {
        let entries: Vec<VhostEntry> = self.get_json("/api/vhosts?columns=name").await?;
        let vhosts = named_vhosts(&entries).map_err(|detail| ScrapeError::Decode {
            url: self.url("/api/vhosts?columns=name"),
            detail,
        })?;
        Ok(vhosts
            .into_iter()
            .filter(|v| self.cfg.vhosts.matches(v))
            .map(String::from)
            .collect())
    }

    /// The prometheus source: overview and nodes from the management API, every node's
    /// `/metrics/detailed` at once, summed per queue (`prometheus::NodeReading`), laid over the
    /// queue list (`ListingCache`). `auto`: a plugin without per-queue counters is refused
    /// (`NoCounters`) rather than read depth-only.
    async fn scrape_prometheus(
        &self,
        now: &impl Fn() -> Timestamp,
        progress: &(dyn Fn() + Sync),
        auto: bool,
    ) -> Result<Snapshot, PromError> {
        use prometheus::{NodeReading, Sums, queue_key};
        let (rabbitmq_version, counted) = self
            .get_decoded("/api/overview", decode_overview_for_plugin)
            .await
            .map_err(PromError::Management)?;
        progress();
        let major: u32 = rabbitmq_version
            .split('.')
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        if auto && major < 4 {
            return Err(PromError::NoCounters(format!(
                "RabbitMQ {rabbitmq_version}: its Prometheus plugin lists no per-queue message counters (RabbitMQ 4.0 and later do), so the management API gives rates"
            )));
        }
        let nodes = self
            .get_decoded(&format!("/api/nodes?columns={NODE_COLUMNS}"), decode_nodes)
            .await
            .map_err(PromError::Management)?;
        progress();
        let source_error = |detail: String| PromError::Endpoint(ScrapeError::Source { detail });
        let urls: Vec<reqwest::Url> = if self.cfg.prometheus_urls.is_empty() {
            nodes
                .iter()
                .map(|n| {
                    prometheus::default_url(&self.cfg.url, &n.name).ok_or_else(|| {
                        source_error(format!(
                            "node {:?} has no host in its name; set prometheus.urls",
                            n.name
                        ))
                    })
                })
                .collect::<Result<_, _>>()?
        } else {
            self.cfg.prometheus_urls.clone()
        };
        // With a vhost filter, the nodes list only the watched vhosts' queues (up to 100 named in
        // the query; past that, everything, filtered here).
        let watched = if self.cfg.vhosts.is_match_all() {
            None
        } else {
            Some(self.watched_vhosts().await.map_err(PromError::Management)?)
        };
        let mut only = String::new();
        if let Some(vhosts) = &watched
            && (1..=MAX_VHOSTS_IN_QUERY).contains(&vhosts.len())
        {
            for v in vhosts {
                only.push_str("&vhost=");
                only.extend(utf8_percent_encode(v, NON_ALPHANUMERIC));
            }
        }
        let readings =
            futures_util::future::join_all(urls.iter().map(|u| self.read_node(u, &only))).await;
        progress();
        let mut merged = NodeReading::default();
        let mut read_nodes: Vec<(String, &reqwest::Url)> = Vec::new();
        for (url, reading) in urls.iter().zip(readings) {
            let reading = reading.map_err(PromError::Endpoint)?;
            let Some(node) = reading.node.clone() else {
                return Err(source_error(format!(
                    "{url} does not say which node it is (no rabbitmq_identity_info): is it a rabbitmq_prometheus listener?"
                )));
            };
            if !nodes.iter().any(|n| n.name == node) {
                return Err(source_error(format!(
                    "{url} is node {node}, not a node of this cluster ({})",
                    nodes
                        .iter()
                        .map(|n| n.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            if let Some((_, other)) = read_nodes.iter().find(|(n, _)| *n == node) {
                return Err(source_error(format!(
                    "{other} and {url} are both node {node}"
                )));
            }
            read_nodes.push((node, url));
            if read_nodes.len() == 1 {
                merged = reading;
            } else {
                merged.merge(reading);
            }
        }
        if let Some(n) = nodes
            .iter()
            .find(|n| n.running && !read_nodes.iter().any(|(r, _)| *r == n.name))
        {
            return Err(source_error(format!(
                "running node {} is not read: add its listener to prometheus.urls",
                n.name
            )));
        }
        if auto && !merged.lists_counters() {
            return Err(PromError::NoCounters(format!(
                "the Prometheus plugin of RabbitMQ {rabbitmq_version} lists no per-queue message counters"
            )));
        }
        // With rates_mode none the management API has no rates either: the plugin stays, depth-only.
        let stats_mode = if !read_nodes.is_empty() && merged.lists_counters() && counted {
            StatsMode::Full
        } else {
            StatsMode::DepthOnly
        };
        let listing = self
            .queue_listing(&merged.queues, watched.as_deref(), progress)
            .await
            .map_err(PromError::Management)?;
        let mut key = String::new();
        let mut queues = self.take_spare_samples();
        queues.clear();
        queues.reserve(listing.samples.len());
        let mut stats_pending = 0;
        for template in &listing.samples {
            queue_key(&mut key, &template.key.vhost, &template.key.name);
            let sums = merged.queues.get(&key);
            let mut q = template.clone();
            match sums {
                Some(s) if s.has_depth() => {
                    q.messages_ready = s.ready.unwrap_or(0);
                    q.messages_unacked = s.unacked.unwrap_or(0);
                    q.messages = s
                        .messages
                        .unwrap_or(q.messages_ready.saturating_add(q.messages_unacked));
                    q.consumers = s.consumers.unwrap_or(0);
                    q.stats_pending = false;
                }
                // Listed, and no node has its figures yet (a node starting): not known, not empty.
                _ => {
                    q.stats_pending = true;
                    stats_pending += 1;
                }
            }
            q.counters = match stats_mode {
                // No counter rows on any node: no traffic through any node yet.
                StatsMode::Full => Some(sums.map_or_else(Default::default, |s: &Sums| s.counters)),
                StatsMode::DepthOnly => None,
            };
            queues.push(q);
        }
        let truncated = keep_largest(&mut queues, self.cfg.max_queues);
        let (exchanges, topology_error) = match self
            .dead_letter_exchanges(&listing.dead_letterings, progress)
            .await
        {
            Ok(x) => (Some(x), listing.policy_problem.clone()),
            Err(e) => (None, Some(e.to_string())),
        };
        Ok(Snapshot {
            taken_at: now(),
            stats_mode,
            source: crate::snapshot::Source::Prometheus,
            source_reason: None,
            rabbitmq_version,
            nodes,
            queues,
            truncated,
            stats_pending,
            dead_letterings: listing.dead_letterings.clone(),
            exchanges,
            topology_error,
            streams: None,
            deprecated_features: None,
        })
    }

    /// One node's queue figures, parsed as they stream in.
    async fn read_node(
        &self,
        base: &reqwest::Url,
        query: &str,
    ) -> Result<prometheus::NodeReading, ScrapeError> {
        let url = format!(
            "{}{}{query}",
            base.as_str().trim_end_matches('/'),
            prometheus::DETAILED_PATH
        );
        let mut parser = promtext::Parser::new();
        let mut reading = prometheus::NodeReading::default();
        self.fetch(url.clone(), &mut |chunk| {
            parser
                .feed(chunk, |line| reading.add(line))
                .map_err(|e| e.to_string())
        })
        .await?;
        parser
            .finish(|line| reading.add(line))
            .map_err(|e| ScrapeError::Decode {
                url,
                detail: e.to_string(),
            })?;
        Ok(reading)
    }

    /// The prometheus source's queue list: the cached one while it agrees with the queues the
    /// nodes list, else read again (`/api/queues?disable_stats=true`, and `/api/policies` for
    /// the dead-letter settings a policy gives). Also read again every `TOPOLOGY_REFRESH_CYCLES`
    /// cycles, so a changed policy shows.
    async fn queue_listing(
        &self,
        listed: &prometheus::QueueSums,
        watched: Option<&[String]>,
        progress: &(dyn Fn() + Sync),
    ) -> Result<Arc<ListingCache>, ScrapeError> {
        let cached = self
            .listing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some((c, reused)) = cached
            && reused + 1 < TOPOLOGY_REFRESH_CYCLES
            && self.listing_agrees(&c, listed)
        {
            *self.listing.lock().unwrap_or_else(|p| p.into_inner()) = Some((c.clone(), reused + 1));
            return Ok(c);
        }
        let policies = self.get_decoded("/api/policies", Policies::decode).await?;
        progress();
        // Operator policies cap max-length and the like. A user that may not list them (they need
        // the policymaker or administrator tag on some versions) leaves them out, and says so.
        let mut operator_problem = None;
        let policies = match self.get("/api/operator-policies").await {
            Ok(body) => {
                policies
                    .with_operator_policies(&body)
                    .map_err(|e| ScrapeError::Decode {
                        url: self.url("/api/operator-policies"),
                        detail: e.to_string(),
                    })?
            }
            Err(e @ (ScrapeError::Auth { .. } | ScrapeError::Http { .. })) => {
                operator_problem = Some(format!(
                    "operator policies not read ({e}): a lower max-length they set is not seen"
                ));
                policies
            }
            Err(e) => return Err(e),
        };
        progress();
        let mut collector =
            QueueCollector::new(&self.cfg.vhosts, &self.cfg.queues, StatsMode::Full)
                .with_policies(&policies)
                .indexing_every_queue();
        self.list_queues(LISTING_QUERY, watched, &mut collector, progress)
            .await?;
        let (samples, dead_letterings, index) = collector.finish_indexed();
        let c = Arc::new(ListingCache {
            samples,
            index,
            dead_letterings,
            policy_problem: (!policies.unreadable.is_empty())
                .then(|| {
                    format!(
                        "policies with patterns this reader cannot compile, whose dead-letter settings and limits are not known: {}",
                        policies.unreadable.join(", ")
                    )
                })
                .or(operator_problem),
        });
        *self.listing.lock().unwrap_or_else(|p| p.into_inner()) = Some((c.clone(), 0));
        Ok(c)
    }

    /// True when every watched queue of `c` has figures in `listed` and every queue in `listed`
    /// is in `c`: nothing created, deleted or pending since `c` was read.
    fn listing_agrees(&self, c: &ListingCache, listed: &prometheus::QueueSums) -> bool {
        // Queues of vhosts not watched are not listed (the listing goes vhost by vhost then).
        let watched_vhost = |k: &str| {
            self.cfg.vhosts.is_match_all()
                || self
                    .cfg
                    .vhosts
                    .matches(k.split_once('\0').map_or(k, |(v, _)| v))
        };
        let all_known = listed
            .keys()
            .all(|k| c.index.contains_key(k) || !watched_vhost(k));
        all_known
            && c.index
                .iter()
                .all(|(k, i)| i.is_none() || listed.get(k).is_some_and(prometheus::Sums::has_depth))
    }

    /// The exchanges the listed queues dead-letter into, with their bindings, following
    /// exchange-to-exchange bindings. Costs nothing when no queue dead-letters (or only into the
    /// default exchange), two small requests per exchange when the topology is read, and nothing
    /// on the cycles it is reused. A failure leaves the topology unknown; the scrape goes on.
    async fn dead_letter_exchanges(
        &self,
        dead_letterings: &[DeadLettering],
        progress: &(dyn Fn() + Sync),
    ) -> Result<Arc<Exchanges>, ScrapeError> {
        let declared: std::collections::BTreeSet<(Arc<str>, Box<str>)> = dead_letterings
            .iter()
            .filter(|d| !d.exchange.is_empty())
            .map(|d| (d.queue.vhost.clone(), d.exchange.clone()))
            .collect();
        {
            let mut cache = self.topology.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(c) = cache.as_mut()
                && c.declared == declared
                && (declared.is_empty() || c.reused + 1 < TOPOLOGY_REFRESH_CYCLES)
            {
                c.reused += 1;
                return Ok(c.exchanges.clone());
            }
            // Whatever happens next, the old reading is not reused past this point.
            *cache = None;
        }
        let mut exchanges = Exchanges::new();
        let mut todo: Vec<(Arc<str>, Box<str>)> = declared.iter().cloned().collect();
        while let Some((vhost, name)) = todo.pop() {
            let key = (vhost, name);
            if exchanges.contains_key(&key) {
                continue;
            }
            if exchanges.len() >= MAX_TOPOLOGY_EXCHANGES {
                return Err(ScrapeError::Decode {
                    url: self.url("/api/exchanges"),
                    detail: format!(
                        "dead-lettering reaches more than {MAX_TOPOLOGY_EXCHANGES} exchanges; not read"
                    ),
                });
            }
            let exchange = self.read_exchange(&key.0, &key.1).await?;
            progress();
            for b in &exchange.bindings {
                if let Destination::Exchange(x) = &b.destination {
                    todo.push((key.0.clone(), x.clone()));
                }
            }
            exchanges.insert(key, exchange);
        }
        let exchanges = Arc::new(exchanges);
        *self.topology.lock().unwrap_or_else(|p| p.into_inner()) = Some(TopologyCache {
            declared,
            reused: 0,
            exchanges: exchanges.clone(),
        });
        Ok(exchanges)
    }

    /// One exchange's type and the bindings it is the source of; a missing exchange has no type.
    async fn read_exchange(&self, vhost: &str, name: &str) -> Result<Exchange, ScrapeError> {
        let base = format!(
            "/api/exchanges/{}/{}",
            utf8_percent_encode(vhost, NON_ALPHANUMERIC),
            utf8_percent_encode(name, NON_ALPHANUMERIC)
        );
        let kind = match self
            .get_json::<ExchangeTypeDto>(&format!("{base}?columns=type"))
            .await
        {
            Ok(t) => ExchangeKind::parse(&t.kind),
            Err(ScrapeError::Http { status: 404, .. }) => {
                return Ok(Exchange {
                    kind: None,
                    bindings: Vec::new(),
                });
            }
            Err(e) => return Err(e),
        };
        let bindings: Vec<BindingDto> = self
            .get_json(&format!(
                "{base}/bindings/source?columns=destination,destination_type,routing_key"
            ))
            .await?;
        Ok(Exchange {
            kind: Some(kind),
            bindings: bindings.into_iter().filter_map(binding).collect(),
        })
    }

    /// Lists one path's queues: in one request when `page_size` is 0 (RabbitMQ 3.x builds the whole
    /// list for every page, so one request costs the broker least), else page by page. Pages rely on
    /// the broker's default order (vhost, then name): an explicit `sort` makes RabbitMQ 3.10 compute
    /// statistics for every queue on every page. A queue that shifts across a page boundary while we
    /// page shows up twice; the tracker keeps the first (see `view::Tracker::observe`).
    async fn scrape_queues(
        &self,
        base: &str,
        query: &str,
        collector: &mut QueueCollector<'_>,
        progress: &(dyn Fn() + Sync),
    ) -> Result<(), ScrapeError> {
        if self.cfg.page_size == 0 {
            // Decoded as it arrives: the body of an unpaged listing is never held whole.
            let url = self.url(&format!("{base}?{query}"));
            let mut listing = ListingStream::new(collector);
            self.fetch(url.clone(), &mut |chunk| {
                listing.feed(chunk).map_err(|e| e.to_string())
            })
            .await?;
            progress();
            return listing.finish().map_err(|e| ScrapeError::Decode {
                url,
                detail: e.to_string(),
            });
        }
        let mut page = 1u32;
        loop {
            let path = format!(
                "{base}?page={page}&page_size={}&{query}",
                self.cfg.page_size
            );
            let body = self.get(&path).await?;
            progress();
            let page_count = collector
                .add_listing(&body)
                .map_err(|e| ScrapeError::Decode {
                    url: self.url(&path),
                    detail: e.to_string(),
                })?;
            if page >= page_count {
                return Ok(());
            }
            page += 1;
        }
    }
}

/// The cardinality guard: keep the `max` queues with the largest backlog rather than dropping everything.
/// A queue listed with its statistics pending has an unknown backlog, not an empty one: it ranks above
/// every known backlog, so a node restart does not swap its queues (shown with their last known
/// figures) out of the watched set for a cycle, which would resolve their alerts and re-fire them.
pub fn keep_largest(queues: &mut Vec<QueueSample>, max: usize) -> usize {
    if queues.len() <= max {
        return 0;
    }
    let dropped = queues.len() - max;
    let rank = |q: &QueueSample| (q.stats_pending, q.messages);
    queues.select_nth_unstable_by(max - 1, |a, b| rank(b).cmp(&rank(a)));
    queues.truncate(max);
    dropped
}

fn binding(b: BindingDto) -> Option<Binding> {
    let destination = match b.destination_type.as_str() {
        "queue" => Destination::Queue(b.destination.into()),
        "exchange" => Destination::Exchange(b.destination.into()),
        _ => return None,
    };
    Some(Binding {
        destination,
        routing_key: b.routing_key.into(),
    })
}

fn node_sample(n: NodeDto) -> NodeSample {
    NodeSample {
        name: n.name,
        running: n.running,
        mem_used: n.mem_used,
        mem_limit: n.mem_limit,
        mem_alarm: n.mem_alarm,
        disk_free: n.disk_free,
        disk_free_limit: n.disk_free_limit,
        disk_alarm: n.disk_free_alarm,
        fd_used: n.fd_used,
        fd_total: n.fd_total,
        partitions: n.partitions.map(|p| p.len() as u64),
    }
}

/// Whether the request ran out of time, wherever in the chain that is said: a timeout while the body
/// streams in arrives wrapped (gzip decoding reports it as a decode error whose source is the timeout).
fn timed_out(e: &reqwest::Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err
            .downcast_ref::<reqwest::Error>()
            .is_some_and(reqwest::Error::is_timeout)
            || err
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        cur = err.source();
    }
    false
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plugins_counters_are_counted_unless_rates_mode_is_none() {
        let read = |json: &str| decode_overview_for_plugin(json.as_bytes()).unwrap();
        assert_eq!(
            read(r#"{"rabbitmq_version":"4.0.5","rates_mode":"basic"}"#),
            ("4.0.5".into(), true)
        );
        assert_eq!(
            read(r#"{"rabbitmq_version":"4.0.5","rates_mode":"none"}"#),
            ("4.0.5".into(), false)
        );
        // disable_stats stops the management API's copy only; the plugin still counts.
        assert_eq!(
            read(r#"{"rabbitmq_version":"4.0.5","rates_mode":"basic","disable_stats":true}"#),
            ("4.0.5".into(), true)
        );
    }

    #[test]
    fn the_policy_rabbitmq_applies_is_the_matching_one_of_highest_priority() {
        let policies = Policies::decode(
            br#"[
              {"vhost":"shop","name":"low","pattern":"^orders","apply-to":"queues","priority":0,
               "definition":{"dead-letter-exchange":"low.dlx"}},
              {"vhost":"shop","name":"high","pattern":"^orders\\.eu","apply-to":"all","priority":5,
               "definition":{"message-ttl":1000}},
              {"vhost":"shop","name":"quorum-only","pattern":".*","apply-to":"quorum_queues","priority":9,
               "definition":{"dead-letter-exchange":"qq.dlx","dead-letter-routing-key":"dead"}},
              {"vhost":"shop","name":"exchanges","pattern":".*","apply-to":"exchanges","priority":99,
               "definition":{"dead-letter-exchange":"never"}},
              {"vhost":"other","name":"elsewhere","pattern":".*","apply-to":"queues","priority":50,
               "definition":{"dead-letter-exchange":"other.dlx"}},
              {"vhost":"shop","name":"erlang-only","pattern":"(?<=x)y","apply-to":"queues","priority":1,
               "definition":{}}
            ]"#,
        )
        .unwrap();
        let dlx = |vhost, name, kind| {
            let d = policies.effective(vhost, name, kind);
            (d.dead_letter_exchange, d.dead_letter_routing_key)
        };
        assert_eq!(
            dlx("shop", "orders.us", "classic"),
            (Some("low.dlx".into()), None)
        );
        // One policy applies: the higher one has no dead-letter exchange, so the queue has none.
        assert_eq!(dlx("shop", "orders.eu", "classic"), (None, None));
        assert_eq!(
            dlx("shop", "orders.us", "quorum"),
            (Some("qq.dlx".into()), Some("dead".into()))
        );
        assert_eq!(dlx("shop", "payments", "classic"), (None, None));
        assert_eq!(
            dlx("other", "x", "stream"),
            (Some("other.dlx".into()), None)
        );
        assert_eq!(policies.unreadable, ["erlang-only (vhost shop)"]);
    }

    #[test]
    fn an_operator_policy_lowers_the_policys_limits_and_sets_no_dead_lettering() {
        let policies = Policies::decode(
            br#"[{"vhost":"/","name":"caps","pattern":"^jobs","apply-to":"queues","priority":0,
                  "definition":{"max-length":100,"max-length-bytes":100000,"dead-letter-exchange":"dlx"}}]"#,
        )
        .unwrap()
        .with_operator_policies(
            br#"[{"vhost":"/","name":"ops","pattern":".*","apply-to":"queues","priority":0,
                  "definition":{"max-length":50,"max-length-bytes":500000,"message-ttl":60000}}]"#,
        )
        .unwrap();
        let d = policies.effective("/", "jobs.a", "quorum");
        assert_eq!(
            (d.max_length, d.max_length_bytes, d.message_ttl),
            (Some(50), Some(100_000), Some(60_000))
        );
        assert_eq!(d.dead_letter_exchange.as_deref(), Some("dlx"));
        // The operator policy alone where no policy matches.
        assert_eq!(
            policies.effective("/", "other", "classic").max_length,
            Some(50)
        );
    }

    #[test]
    fn max_length_is_the_lower_of_argument_and_policy_and_no_limit_for_streams() {
        let listing = br#"[
          {"name":"arg","vhost":"/","arguments":{"x-max-length":10},
           "effective_policy_definition":{"max-length":50},"messages":1,"message_bytes":900},
          {"name":"policy","vhost":"/","type":"quorum","effective_policy_definition":{"max-length":50,"max-length-bytes":2000},
           "arguments":{"x-max-length-bytes":5000},"messages":1,"message_bytes":1500},
          {"name":"log","vhost":"/","type":"stream","arguments":{"x-max-length-bytes":5000},
           "effective_policy_definition":{"max-length-bytes":3000},"messages":1}
        ]"#;
        let got = collect(listing, StatsMode::Full);
        let limits: Vec<_> = got
            .iter()
            .map(|q| (q.max_length(), q.max_length_bytes(), q.message_bytes()))
            .collect();
        assert_eq!(
            limits,
            [
                // The byte count is kept only where a byte limit needs it.
                (Some(10), None, None),
                (Some(50), Some(2000), Some(1500)),
                (None, None, None)
            ]
        );
    }

    #[test]
    fn a_vhost_deleted_while_listed_is_skipped_not_a_failed_cycle() {
        // RabbitMQ renders a vhost gone mid-listing as an empty entry.
        let parse = |json: &[u8]| {
            serde_json::from_slice::<Vec<VhostEntry>>(json)
                .map_err(|e| e.to_string())
                .and_then(|v| {
                    named_vhosts(&v).map(|n| n.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                })
        };
        assert_eq!(
            parse(br#"[[],{"name":"shop"}]"#),
            Ok(vec!["shop".to_string()])
        );
        for broken in [&br#"[{}]"#[..], br#"[1]"#, br#"[null]"#] {
            assert!(
                parse(broken).is_err(),
                "{}",
                String::from_utf8_lossy(broken)
            );
        }
    }

    #[test]
    fn scrape_reasons_read_the_same_in_metrics_and_the_api() {
        for r in [
            ScrapeReason::Connect,
            ScrapeReason::Timeout,
            ScrapeReason::Auth,
            ScrapeReason::Http5xx,
            ScrapeReason::Http4xx,
            ScrapeReason::Decode,
            ScrapeReason::TooLarge,
            ScrapeReason::Client,
        ] {
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(json, format!("\"{}\"", r.as_str()));
        }
    }

    fn all() -> NameFilter {
        NameFilter {
            include: regex::Regex::new(".*").unwrap(),
            exclude: None,
        }
    }

    fn collect(body: &[u8], mode: StatsMode) -> Vec<QueueSample> {
        let (v, q) = (all(), all());
        let mut c = QueueCollector::new(&v, &q, mode);
        c.add_listing(body).unwrap();
        c.finish()
    }

    fn sample(name: &str, messages: u64) -> QueueSample {
        let page = format!(
            r#"{{"items":[{{"name":"{name}","vhost":"/","messages":{messages}}}],"page_count":1}}"#
        );
        collect(page.as_bytes(), StatsMode::Full).remove(0)
    }

    #[test]
    fn missing_message_stats_means_no_activity() {
        let s = sample("q", 3);
        assert_eq!(s.counters, Some(Counters::default()));
        assert_eq!(s.messages, 3);
    }

    #[test]
    fn depth_only_mode_has_no_counters() {
        let page = br#"{"items":[{"name":"q","vhost":"/","messages":1,"message_stats":{"publish":5}}],"page_count":1}"#;
        assert_eq!(collect(page, StatsMode::DepthOnly)[0].counters, None);
    }

    #[test]
    fn consumed_counts_acks_and_no_ack_deliveries() {
        let page = br#"{"items":[{"name":"q","vhost":"v","messages":0,"consumers":2,
            "message_stats":{"publish":10,"deliver_get":9,"ack":4,"deliver_no_ack":3,"get_no_ack":2,"redeliver":1}}],"page_count":1}"#;
        let s = collect(page, StatsMode::Full).remove(0);
        assert_eq!(s.counters.unwrap().consumed(), 9);
        assert_eq!(s.consumers, 2);
    }

    #[test]
    fn escaped_queue_names_decode() {
        let page = br#"{"items":[{"name":"a\"b\\c\n","vhost":"/"}],"page_count":1}"#;
        let (items, _) = decode_queue_page(page).unwrap();
        assert_eq!(items[0].name, "a\"b\\c\n");
        assert_eq!(&*collect(page, StatsMode::Full)[0].key.name, "a\"b\\c\n");
    }

    #[test]
    fn unpaged_listings_and_pages_give_the_same_samples() {
        let items = r#"[{"name":"a","vhost":"v1","type":"quorum","messages":2},
            {"name":"b","vhost":"v1","messages":1},{"name":"c","vhost":"v2","messages":0}]"#;
        let page = format!(r#"{{"filtered_count":3,"items":{items},"page":1,"page_count":1}}"#);
        let unpaged = collect(items.as_bytes(), StatsMode::Full);
        assert_eq!(unpaged, collect(page.as_bytes(), StatsMode::Full));
        assert_eq!(unpaged.len(), 3);
        assert_eq!(&*unpaged[0].kind, "quorum");
        assert_eq!(&*unpaged[1].kind, "classic");
        // One allocation per distinct vhost, shared by its queues.
        assert!(Arc::ptr_eq(&unpaged[0].key.vhost, &unpaged[1].key.vhost));
        assert_eq!(&*unpaged[2].key.vhost, "v2");
    }

    #[test]
    fn the_collector_applies_the_name_filters() {
        let vhosts = NameFilter {
            include: regex::Regex::new("^prod").unwrap(),
            exclude: None,
        };
        let queues = NameFilter {
            include: regex::Regex::new(".*").unwrap(),
            exclude: Some(regex::Regex::new(r"^amq\.").unwrap()),
        };
        let mut c = QueueCollector::new(&vhosts, &queues, StatsMode::Full);
        let pages = c
            .add_listing(
                br#"[{"name":"a","vhost":"prod"},{"name":"amq.gen-1","vhost":"prod"},{"name":"b","vhost":"test"}]"#,
            )
            .unwrap();
        assert_eq!(pages, 1);
        let names: Vec<_> = c.finish().iter().map(|q| q.key.name.clone()).collect();
        assert_eq!(names, vec!["a".into()] as Vec<Box<str>>);
    }

    #[test]
    fn a_queue_listed_without_counts_is_stats_pending_not_empty() {
        // RabbitMQ 3.10.8 for ~5 s after `rabbitmqctl start_app`, asked for `QUEUE_COLUMNS`.
        let page = br#"[{"arguments":{},"durable":true,"name":"q1","type":"classic","vhost":"/"},
            {"arguments":{},"consumer_utilisation":0,"consumers":0,"durable":true,"head_message_timestamp":null,
             "messages":0,"messages_ready":0,"messages_unacknowledged":0,"name":"q2","type":"classic","vhost":"/"}]"#;
        let samples = collect(page, StatsMode::Full);
        assert!(samples[0].stats_pending);
        assert!(
            !samples[1].stats_pending,
            "an empty queue is a fact, not pending"
        );
        assert!(!sample("q", 3).stats_pending);

        // Counted for `rabbitwatch_cluster_queues_stats_pending`, across listings.
        let (v, q) = (all(), all());
        let mut c = QueueCollector::new(&v, &q, StatsMode::Full);
        c.add_listing(page).unwrap();
        c.add_listing(br#"[{"name":"q3","vhost":"/"}]"#).unwrap();
        assert_eq!((c.stats_pending(), c.len()), (2, 3));
    }

    #[test]
    fn broken_listings_are_errors_not_empty_lists() {
        let (v, q) = (all(), all());
        for body in [
            &b"{}"[..],
            br#"{"page_count":3}"#,
            br#"{"items":{"items":[]}}"#,
            br#"[{"vhost":"/"}]"#,
            br#"[{"name":"a","vhost":"/"}"#,
            br#"[] trailing"#,
            b"",
            b"null",
        ] {
            let mut c = QueueCollector::new(&v, &q, StatsMode::Full);
            assert!(
                c.add_listing(body).is_err(),
                "{} was accepted",
                String::from_utf8_lossy(body)
            );
        }
    }

    /// Every way of cutting `body` into chunks: the listing as it arrives.
    fn stream(body: &[u8], cuts: &[usize]) -> Result<(Vec<QueueSample>, usize), serde_json::Error> {
        let (v, q) = (all(), all());
        let mut c = QueueCollector::new(&v, &q, StatsMode::Full);
        let mut s = ListingStream::new(&mut c);
        let mut carried = 0;
        let mut from = 0;
        for &to in cuts.iter().chain([&body.len()]) {
            s.feed(&body[from..to.max(from)])?;
            carried = carried.max(s.carry.capacity());
            from = to.max(from);
        }
        s.finish()?;
        Ok((c.finish(), carried))
    }

    fn cuts_every(n: usize, len: usize) -> Vec<usize> {
        (n..len).step_by(n).collect()
    }

    #[test]
    fn a_listing_decoded_as_it_streams_in_is_the_listing_decoded_whole() {
        let queue = |i: usize| {
            format!(
                concat!(
                    r#"{{"name":"q-{i} \"é\" \\ }}","vhost":"v{v}","type":"quorum","durable":true,"#,
                    r#""messages":{i},"messages_ready":{i},"messages_unacknowledged":0,"consumers":2,"#,
                    r#""arguments":{{"x-dead-letter-exchange":"dlx","x-max-length":7,"x-custom":[1,{{"a":"]"}}]}},"#,
                    r#""message_stats":{{"publish":{p},"deliver_get":3,"ack":3}}}}"#
                ),
                i = i,
                v = i % 3,
                p = i * 10
            )
        };
        let items: Vec<String> = (0..200).map(queue).collect();
        let body = format!(" [\n{}\n] \n", items.join(" ,\n "));
        let body = body.as_bytes();
        let whole = collect(body, StatsMode::Full);
        assert_eq!(whole.len(), 200);
        let mut cutting: Vec<Vec<usize>> = [1, 2, 3, 7, 64, 333, 4096, body.len()]
            .iter()
            .map(|&n| cuts_every(n, body.len()))
            .collect();
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..50 {
            let mut cuts: Vec<usize> = (0..rng.usize(1..40))
                .map(|_| rng.usize(0..body.len()))
                .collect();
            cuts.sort_unstable();
            cutting.push(cuts);
        }
        for cuts in &cutting {
            let (streamed, carried) = stream(body, cuts).unwrap();
            assert_eq!(streamed, whole, "cut at {cuts:?}");
            // Only a queue split across chunks is ever copied, never the listing.
            assert!(carried < 2048, "carried {carried} bytes, cut at {cuts:?}");
        }
        // A page (an object, not an array) is decoded whole at the end, and the same.
        let page = format!(r#"{{"items":[{}],"page_count":1}}"#, items.join(","));
        let (streamed, _) = stream(page.as_bytes(), &cuts_every(100, page.len())).unwrap();
        assert_eq!(streamed, whole);
        assert!(stream(b"[]", &[1]).unwrap().0.is_empty());
    }

    #[test]
    fn a_broken_listing_is_an_error_however_it_is_cut() {
        for body in [
            &b"{}"[..],
            br#"{"page_count":3}"#,
            br#"[{"vhost":"/"}]"#,
            br#"[{"name":"a","vhost":"/"}"#,
            br#"[{"name":"a","vhost":"/"},]"#,
            br#"[{"name":"a","vhost":"/"} {"name":"b","vhost":"/"}]"#,
            br#"[{"name":"a","vhost":"/"}"#,
            br#"[{"name":"a","vhost":"/"}]]"#,
            br#"[] trailing"#,
            br#"[1]"#,
            br#"[{"name":"a","vhost":"/""#,
            b"",
            b"[",
            b"null",
        ] {
            for n in [1, 2, 5, body.len().max(1)] {
                assert!(
                    stream(body, &cuts_every(n, body.len())).is_err(),
                    "{} was accepted in chunks of {n}",
                    String::from_utf8_lossy(body)
                );
            }
        }
    }

    #[test]
    fn page_count_is_read_from_pages() {
        let (v, q) = (all(), all());
        let mut c = QueueCollector::new(&v, &q, StatsMode::Full);
        let page =
            br#"{"items":[{"name":"a","vhost":"/"}],"page":1,"page_count":4,"total_count":1600}"#;
        assert_eq!(c.add_listing(page).unwrap(), 4);
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn depth_sums_saturate_instead_of_overflowing() {
        let page = br#"[{"name":"q","vhost":"/","messages_ready":18446744073709551615,"messages_unacknowledged":1}]"#;
        let s = collect(page, StatsMode::Full).remove(0);
        assert_eq!(s.messages, u64::MAX);
    }

    #[test]
    fn overview_decides_the_stats_mode() {
        let full = br#"{"rabbitmq_version":"3.10.8","rates_mode":"basic","disable_stats":false}"#;
        assert_eq!(
            decode_overview(full).unwrap(),
            ("3.10.8".to_string(), StatsMode::Full)
        );
        for depth_only in [
            &br#"{"disable_stats":true}"#[..],
            br#"{"rates_mode":"none"}"#,
        ] {
            assert_eq!(decode_overview(depth_only).unwrap().1, StatsMode::DepthOnly);
        }
        assert!(decode_overview(b"42").is_err());
    }

    #[test]
    fn nodes_decode_into_samples() {
        let nodes = decode_nodes(
            br#"[{"name":"rabbit@a","running":true,"mem_used":5,"mem_limit":10,"partitions":["rabbit@b"]},{"name":"rabbit@b"}]"#,
        )
        .unwrap();
        assert_eq!(nodes.len(), 2);
        assert!(nodes[0].running && !nodes[1].running);
        assert_eq!((nodes[0].mem_used, nodes[0].partitions), (Some(5), Some(1)));
        assert!(decode_nodes(br#"[{"running":true}]"#).is_err());
    }

    #[test]
    fn a_node_listed_without_figures_has_them_unknown_not_zero() {
        // RabbitMQ 4.0.5 with `deprecated_features.permit.management_metrics_collection = false`
        // (seen here): /api/nodes lists name, type, running and being_drained, nothing else.
        let nodes = decode_nodes(
            br#"[{"name":"rabbit4a@localhost","type":"disc","running":true,"being_drained":false}]"#,
        )
        .unwrap();
        let n = &nodes[0];
        assert!(n.running);
        assert_eq!(
            (n.mem_used, n.mem_limit, n.disk_free, n.disk_free_limit),
            (None, None, None, None)
        );
        assert_eq!((n.mem_alarm, n.disk_alarm), (None, None));
        assert_eq!((n.fd_used, n.fd_total, n.partitions), (None, None, None));
    }

    #[test]
    fn whoami_tags_come_as_a_list_or_a_comma_separated_string() {
        let want = vec!["monitoring".to_string(), "management".to_string()];
        assert_eq!(
            decode_whoami_tags(br#"{"name":"u","tags":["monitoring","management"]}"#).unwrap(),
            want
        );
        assert_eq!(
            decode_whoami_tags(br#"{"name":"u","tags":"monitoring, management,"}"#).unwrap(),
            want
        );
        assert!(decode_whoami_tags(br#"{"name":"u"}"#).unwrap().is_empty());
    }

    #[test]
    fn max_queues_keeps_the_largest_backlogs() {
        let mut qs: Vec<QueueSample> = (0..10).map(|i| sample(&format!("q{i}"), i)).collect();
        assert_eq!(keep_largest(&mut qs, 3), 7);
        let mut kept: Vec<u64> = qs.iter().map(|q| q.messages).collect();
        kept.sort();
        assert_eq!(kept, vec![7, 8, 9]);
    }

    #[test]
    fn max_queues_keeps_queues_whose_backlog_is_not_known_yet() {
        let mut qs: Vec<QueueSample> = (0..10).map(|i| sample(&format!("q{i}"), i)).collect();
        qs[0].stats_pending = true;
        assert_eq!(keep_largest(&mut qs, 3), 7);
        let mut kept: Vec<&str> = qs.iter().map(|q| &*q.key.name).collect();
        kept.sort();
        assert_eq!(kept, vec!["q0", "q8", "q9"]);
    }

    #[test]
    fn dead_letter_settings_are_collected_before_the_filters_argument_over_policy() {
        let vhosts = all();
        let queues = NameFilter {
            include: regex::Regex::new("^watched").unwrap(),
            exclude: None,
        };
        let mut c = QueueCollector::new(&vhosts, &queues, StatsMode::Full);
        c.add_listing(
            br#"[{"name":"unwatched","vhost":"v","arguments":{"x-dead-letter-exchange":"dlx","x-dead-letter-routing-key":"k"},
                  "effective_policy_definition":{"dead-letter-exchange":"policy.dlx","dead-letter-routing-key":"pk"}},
                 {"name":"watched.a","vhost":"v","arguments":{},"effective_policy_definition":{"dead-letter-exchange":"policy.dlx","max-length":5}},
                 {"name":"watched.b","vhost":"v","arguments":{"x-dead-letter-exchange":""},"effective_policy_definition":{"dead-letter-routing-key":"pk"}},
                 {"name":"watched.c","vhost":"v","arguments":{},"effective_policy_definition":[]},
                 {"name":"watched.d","vhost":"v","effective_policy_definition":null}]"#,
        )
        .unwrap();
        let (samples, dls) = c.finish_with_dead_letterings();
        assert_eq!(samples.len(), 4);
        let got: Vec<(&str, &str, Option<&str>)> = dls
            .iter()
            .map(|d| (&*d.queue.name, &*d.exchange, d.routing_key.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                ("unwatched", "dlx", Some("k")),
                ("watched.a", "policy.dlx", None),
                // The default exchange from the argument, the key from the policy.
                ("watched.b", "", Some("pk")),
            ]
        );
    }
}
