//! The readers of a cluster's streams: `/api/stream/consumers` of the `rabbitmq_stream_management`
//! plugin, read once per cycle and only when the cycle's listing has a stream in it, so a cluster
//! without streams pays nothing.
//!
//! The broker lists each stream-protocol subscription with the offset of the last message it
//! dispatched to it and its lag behind the stream's committed offset (RabbitMQ computes
//! `offset_lag = committed offset − consumer offset`, 0 for an empty stream or a reader waiting at
//! its end). AMQP 0.9.1 and 1.0 readers of a stream are not in that list: their lag is unknown.
//! A failed read is not a failed cycle: the queues' figures stand, and every reader's lag is
//! unknown with the reason (`StreamsReading::error`).

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;

use super::{ScrapeError, Scraper};
use crate::snapshot::{QueueSample, StreamConsumerSample, StreamsReading};

#[derive(Debug, Deserialize)]
struct ConsumerDto {
    queue: ResourceDto,
    #[serde(default)]
    subscription_id: u64,
    #[serde(default)]
    offset: Option<u64>,
    #[serde(default)]
    offset_lag: Option<u64>,
    #[serde(default = "yes")]
    active: bool,
    #[serde(default)]
    properties: HashMap<String, serde_json::Value>,
    /// An object, or `[]` (RabbitMQ 3.10) until the broker has the connection's details.
    #[serde(default)]
    connection_details: serde_json::Value,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
struct ResourceDto {
    name: String,
    vhost: String,
}

/// The watched streams by (vhost, name), each with the names the snapshot shares.
pub type WatchedStreams<'a> = HashMap<(&'a str, &'a str), (Arc<str>, Arc<str>)>;

/// Decodes a `/api/stream/consumers` body into the consumers of `streams` (the watched ones, by
/// vhost and name). A consumer without an offset (a broker that has not sampled it yet) is left out
/// this cycle rather than read as offset 0.
pub fn decode_consumers(
    body: &[u8],
    streams: &WatchedStreams<'_>,
) -> Result<Vec<StreamConsumerSample>, serde_json::Error> {
    let listed: Vec<ConsumerDto> = serde_json::from_slice(body)?;
    let text = |v: Option<&serde_json::Value>| {
        v.and_then(serde_json::Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    Ok(listed
        .into_iter()
        .filter_map(|c| {
            let (vhost, stream) = streams.get(&(c.queue.vhost.as_str(), c.queue.name.as_str()))?;
            Some(StreamConsumerSample {
                vhost: vhost.clone(),
                stream: stream.clone(),
                name: text(c.properties.get("name")),
                connection: text(c.connection_details.get("name")).unwrap_or_default(),
                subscription_id: c.subscription_id,
                offset: c.offset?,
                offset_lag: c.offset_lag?,
                super_stream: text(c.properties.get("super-stream")),
                active: c.active,
            })
        })
        .collect())
}

impl Scraper {
    /// The consumers of the streams among `queues`; `None` when there is no stream.
    pub(super) async fn read_streams(&self, queues: &[QueueSample]) -> Option<StreamsReading> {
        let streams: WatchedStreams<'_> = queues
            .iter()
            .filter(|q| &*q.kind == "stream")
            .map(|q| {
                (
                    (&*q.key.vhost, &*q.key.name),
                    (q.key.vhost.clone(), Arc::from(&*q.key.name)),
                )
            })
            .collect();
        if streams.is_empty() {
            return None;
        }
        let path = "/api/stream/consumers";
        let reading = match self.get(path).await {
            Ok(body) => match decode_consumers(&body, &streams) {
                Ok(consumers) => StreamsReading {
                    consumers,
                    error: None,
                },
                Err(e) => StreamsReading {
                    consumers: Vec::new(),
                    error: Some(format!("cannot decode {path}: {e}")),
                },
            },
            Err(ScrapeError::Http { status: 404, .. }) => StreamsReading {
                consumers: Vec::new(),
                error: Some(
                    "the broker does not list stream consumers: enable the rabbitmq_stream_management plugin"
                        .to_string(),
                ),
            },
            Err(e) => StreamsReading {
                consumers: Vec::new(),
                error: Some(e.to_string()),
            },
        };
        Some(reading)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As RabbitMQ 4.3.6 lists a named and an anonymous consumer (trimmed of fields we do not read).
    const LISTED: &[u8] = br#"[
      {"queue":{"name":"events","vhost":"/"},"subscription_id":1,"credits":9,"consumed":120,
       "offset":4999,"offset_lag":48768,"active":true,"activity_status":"up",
       "properties":{"name":"billing-reader"},
       "connection_details":{"name":"billing-1","node":"rabbit@a","user":"guest"}},
      {"queue":{"name":"events","vhost":"/"},"subscription_id":0,"offset":53767,"offset_lag":0,
       "active":true,"properties":{},"connection_details":{"name":"10.0.0.1:5000 -> 10.0.0.2:5552"}},
      {"queue":{"name":"orders-0","vhost":"/"},"subscription_id":2,"offset":10,"offset_lag":5,
       "active":false,"properties":{"name":"app","super-stream":"orders"}},
      {"queue":{"name":"unwatched","vhost":"/"},"subscription_id":3,"offset":1,"offset_lag":1,
       "properties":{}},
      {"queue":{"name":"events","vhost":"/"},"subscription_id":5,"offset":1,"offset_lag":1,
       "properties":{},"connection_details":[]},
      {"queue":{"name":"events","vhost":"/"},"subscription_id":4,"properties":{"name":"new"}}
    ]"#;

    #[test]
    fn consumers_of_watched_streams_with_their_names_and_super_streams() {
        let v: Arc<str> = Arc::from("/");
        let watched = HashMap::from([
            (("/", "events"), (v.clone(), Arc::from("events"))),
            (("/", "orders-0"), (v.clone(), Arc::from("orders-0"))),
        ]);
        let got = decode_consumers(LISTED, &watched).expect("decodes");
        assert_eq!(
            got.len(),
            4,
            "unwatched stream and unsampled consumer left out: {got:?}"
        );
        assert_eq!(got[0].name.as_deref(), Some("billing-reader"));
        assert_eq!((got[0].offset, got[0].offset_lag), (4999, 48768));
        assert_eq!(got[0].connection, "billing-1");
        assert_eq!(got[1].name, None, "an anonymous reader");
        assert_eq!(got[2].super_stream.as_deref(), Some("orders"));
        assert!(!got[2].active);
        assert_eq!(
            got[3].connection, "",
            "3.10 lists [] before it has the details"
        );
    }
}
