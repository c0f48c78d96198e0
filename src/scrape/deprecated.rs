//! The deprecated features a cluster uses: `/api/deprecated-features/used` (RabbitMQ 3.13 and
//! later). A feature RabbitMQ deprecates is removed in a later release, so a cluster that uses one
//! cannot be upgraded past it as it is: transient non-exclusive queues on 4.x, say. Read on the first
//! cycle and every `REFRESH_CYCLES` after (it changes when queues are declared, not every poll), and
//! never a reason to fail the cycle: a broker without the endpoint (before 3.13) answers 404 and the
//! answer is unknown, not "none".

use serde::Deserialize;

use super::{ScrapeError, Scraper};

/// Cycles between two readings: 5 minutes at the default 10 s poll.
pub const REFRESH_CYCLES: u64 = 30;

#[derive(Debug, Deserialize)]
struct UsedDto {
    name: String,
}

/// Decodes the endpoint's list into feature names.
pub fn decode_used(body: &[u8]) -> Result<Vec<String>, serde_json::Error> {
    let used: Vec<UsedDto> = serde_json::from_slice(body)?;
    Ok(used.into_iter().map(|u| u.name).collect())
}

/// The last reading and the cycles since.
#[derive(Debug, Default)]
pub(super) struct Cached {
    used: Option<std::sync::Arc<Vec<String>>>,
    age: Option<u64>,
}

impl Scraper {
    /// The deprecated features in use, from the cache while it is fresh.
    pub(super) async fn deprecated_features(&self) -> Option<std::sync::Arc<Vec<String>>> {
        {
            let mut c = self.deprecated.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(age) = c.age.as_mut()
                && *age + 1 < REFRESH_CYCLES
            {
                *age += 1;
                return c.used.clone();
            }
        }
        let read = match self.get("/api/deprecated-features/used").await {
            Ok(body) => decode_used(&body).ok().map(std::sync::Arc::new),
            // No such endpoint (before 3.13): unknown, and not asked again until the next refresh.
            Err(ScrapeError::Http { status: 404, .. }) => None,
            // A failed request says nothing new: the last reading stands, and the next cycle asks
            // again.
            Err(_) => {
                let c = self.deprecated.lock().unwrap_or_else(|p| p.into_inner());
                return c.used.clone();
            }
        };
        *self.deprecated.lock().unwrap_or_else(|p| p.into_inner()) = Cached {
            used: read.clone(),
            age: Some(0),
        };
        read
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_used_features_are_their_names() {
        // As RabbitMQ 4.3.6 answers with a transient non-exclusive queue declared.
        let body = br#"[{"name":"transient_nonexcl_queues","desc":"","deprecation_phase":"permitted_by_default","doc_url":"https://blog.rabbitmq.com/","provided_by":"rabbit"}]"#;
        assert_eq!(decode_used(body).unwrap(), ["transient_nonexcl_queues"]);
        assert_eq!(decode_used(b"[]").unwrap(), Vec::<String>::new());
        assert!(decode_used(b"{}").is_err());
    }
}
