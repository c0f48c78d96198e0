//! Label matchers (Alertmanager's syntax) and the silences built from them.

use std::collections::BTreeMap;

use regex::Regex;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug)]
pub enum MatchOp {
    Eq,
    Ne,
    Re(Regex),
    NotRe(Regex),
}

/// `name=value`, `name!=value`, `name=~regex`, `name!~regex` (regexes anchored, as in Alertmanager).
#[derive(Clone, Debug)]
pub struct Matcher {
    pub name: String,
    pub op: MatchOp,
    pub value: String,
}

impl Matcher {
    pub fn parse(s: &str) -> Result<Matcher, String> {
        let (name, op, value) = ["=~", "!~", "!=", "="]
            .iter()
            .find_map(|op| s.split_once(op).map(|(n, v)| (n.trim(), *op, v.trim())))
            .ok_or_else(|| {
                format!(
                    "matcher {s:?}: expected name=value, name!=value, name=~regex or name!~regex"
                )
            })?;
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("matcher {s:?}: invalid label name {name:?}"));
        }
        let value = value.trim_matches('"').to_string();
        let re = || {
            Regex::new(&format!("^(?:{value})$")).map_err(|e| {
                format!(
                    "matcher {s:?}: invalid regex: {}",
                    e.to_string().lines().last().unwrap_or_default().trim()
                )
            })
        };
        let op = match op {
            "=" => MatchOp::Eq,
            "!=" => MatchOp::Ne,
            "=~" => MatchOp::Re(re()?),
            _ => MatchOp::NotRe(re()?),
        };
        Ok(Matcher {
            name: name.to_string(),
            op,
            value,
        })
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let v = labels.get(&self.name).map_or("", String::as_str);
        match &self.op {
            MatchOp::Eq => v == self.value,
            MatchOp::Ne => v != self.value,
            MatchOp::Re(re) => re.is_match(v),
            MatchOp::NotRe(re) => !re.is_match(v),
        }
    }
}

/// A silence as stored and shown; matchers are kept as text and compiled when used.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Silence {
    pub id: String,
    pub matchers: Vec<String>,
    /// Milliseconds since the epoch.
    pub starts_at: i64,
    pub ends_at: i64,
    #[serde(default)]
    pub created_by: String,
    #[serde(default)]
    pub comment: String,
}

impl Silence {
    pub fn is_active(&self, now: i64) -> bool {
        self.starts_at <= now && now < self.ends_at
    }

    /// Compiles the matchers; every matcher must hold for an alert to be silenced.
    pub fn compile(&self) -> Result<Vec<Matcher>, String> {
        if self.matchers.is_empty() {
            return Err("a silence needs at least one matcher".into());
        }
        self.matchers.iter().map(|m| Matcher::parse(m)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matchers_parse_and_match() {
        let labels = BTreeMap::from([("severity".to_string(), "critical".to_string())]);
        assert!(
            Matcher::parse("severity=critical")
                .unwrap()
                .matches(&labels)
        );
        assert!(Matcher::parse("severity=~crit.*").unwrap().matches(&labels));
        assert!(!Matcher::parse("severity!~crit.*").unwrap().matches(&labels));
        assert!(Matcher::parse("team!=payments").unwrap().matches(&labels));
        assert!(Matcher::parse("severity").is_err());
        assert!(Matcher::parse("severity=~([").is_err());
    }
}
