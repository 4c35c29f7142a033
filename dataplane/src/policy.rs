//! The security policy: ordered rules, first match wins, implicit drop at the end. Only the
//! first packet of a connection is checked; the connection table carries the rest.
//!
//! ```toml
//! version = 2
//! [[rules]]
//! name = "web"
//! src = ["198.18.0.0/24", "2001:db8:18::/64"]
//! dst = ["198.19.0.10/32"]
//! proto = "tcp"
//! dport = "80-443"
//! action = "accept"
//! log = true
//! ```

use std::path::Path;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use baton_common::net::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP};

use crate::conntrack::Packet;

#[derive(Debug, Error)]
pub enum PolicyError {
    #[error("cannot read policy {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("policy {path}: {message}")]
    Parse { path: String, message: String },
    #[error("policy rule {rule}: {message}")]
    Rule { rule: usize, message: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Accept,
    Drop,
}

/// A rule as written in the file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    #[serde(default)]
    pub name: Option<String>,
    /// Source prefixes (empty: any).
    #[serde(default)]
    pub src: Vec<IpNet>,
    /// Destination prefixes (empty: any).
    #[serde(default)]
    pub dst: Vec<IpNet>,
    /// "tcp", "udp", "icmp", "icmpv6", "any" (default) or a protocol number.
    #[serde(default)]
    pub proto: Option<String>,
    /// "80" or "1000-2000" (TCP/UDP only).
    #[serde(default)]
    pub sport: Option<String>,
    #[serde(default)]
    pub dport: Option<String>,
    pub action: Action,
    #[serde(default)]
    pub log: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    pub version: u64,
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
}

#[derive(Clone, Debug, PartialEq)]
struct Rule {
    src: Vec<IpNet>,
    dst: Vec<IpNet>,
    proto: Option<u8>,
    sport: Option<(u16, u16)>,
    dport: Option<(u16, u16)>,
    action: Action,
    log: bool,
}

/// A compiled policy.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub version: u64,
    rules: Vec<Rule>,
}

/// The verdict on a first packet: the action and the rule that decided (None: the
/// implicit drop).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub action: Action,
    pub rule: Option<usize>,
    pub log: bool,
}

fn range(s: &str) -> Result<(u16, u16), String> {
    let parse = |p: &str| {
        p.trim()
            .parse::<u16>()
            .map_err(|_| format!("{p:?} is not a port (0-65535)"))
    };
    let (lo, hi) = if let Some((a, b)) = s.split_once('-') {
        (parse(a)?, parse(b)?)
    } else {
        let p = parse(s)?;
        (p, p)
    };
    if lo > hi {
        return Err(format!("port range {s:?} is empty (low > high)"));
    }
    Ok((lo, hi))
}

fn protocol(s: &str) -> Result<Option<u8>, String> {
    Ok(match s {
        "any" => None,
        "tcp" => Some(IPPROTO_TCP),
        "udp" => Some(IPPROTO_UDP),
        "icmp" => Some(IPPROTO_ICMP),
        "icmpv6" => Some(IPPROTO_ICMPV6),
        n => Some(n.parse::<u8>().map_err(|_| {
            format!("unknown protocol {n:?}: use tcp, udp, icmp, icmpv6, any or a number")
        })?),
    })
}

impl Policy {
    /// Accepts every connection (the lab's version 1).
    pub fn accept_all(version: u64) -> Self {
        Self::compile(&PolicyFile {
            version,
            rules: vec![RuleConfig {
                name: Some("any connection".into()),
                src: vec![],
                dst: vec![],
                proto: None,
                sport: None,
                dport: None,
                action: Action::Accept,
                log: false,
            }],
        })
        .expect("valid")
    }

    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: p.clone(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            PolicyError::Parse { message, .. } => PolicyError::Parse { path: p, message },
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let file: PolicyFile = toml::from_str(text).map_err(|e| PolicyError::Parse {
            path: "(text)".into(),
            message: e.to_string(),
        })?;
        Self::compile(&file)
    }

    pub fn compile(file: &PolicyFile) -> Result<Self, PolicyError> {
        let mut rules = Vec::new();
        for (i, r) in file.rules.iter().enumerate() {
            let err = |message: String| PolicyError::Rule {
                rule: i + 1,
                message,
            };
            let proto = protocol(r.proto.as_deref().unwrap_or("any")).map_err(err)?;
            let sport = r.sport.as_deref().map(range).transpose().map_err(err)?;
            let dport = r.dport.as_deref().map(range).transpose().map_err(err)?;
            if (sport.is_some() || dport.is_some())
                && !matches!(proto, Some(IPPROTO_TCP | IPPROTO_UDP))
            {
                return Err(err("ports need proto = \"tcp\" or \"udp\"".into()));
            }
            rules.push(Rule {
                src: r.src.clone(),
                dst: r.dst.clone(),
                proto,
                sport,
                dport,
                action: r.action,
                log: r.log,
            });
        }
        Ok(Self {
            version: file.version,
            rules,
        })
    }

    /// The first matching rule's action, or the implicit drop.
    pub fn evaluate(&self, p: &Packet) -> Verdict {
        let inside = |nets: &[IpNet], ip| nets.is_empty() || nets.iter().any(|n| n.contains(&ip));
        let within =
            |r: Option<(u16, u16)>, port: u16| r.is_none_or(|(lo, hi)| (lo..=hi).contains(&port));
        for (i, r) in self.rules.iter().enumerate() {
            if inside(&r.src, p.src)
                && inside(&r.dst, p.dst)
                && r.proto.is_none_or(|x| x == p.proto)
                && within(r.sport, p.sport)
                && within(r.dport, p.dport)
            {
                return Verdict {
                    action: r.action,
                    rule: Some(i),
                    log: r.log,
                };
            }
        }
        Verdict {
            action: Action::Drop,
            rule: None,
            log: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(src: &str, dst: &str, proto: u8, sport: u16, dport: u16) -> Packet {
        Packet {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            proto,
            sport,
            dport,
            flags: 0,
        }
    }

    const POLICY: &str = r#"
version = 3
[[rules]]
name = "no ssh"
dport = "22"
proto = "tcp"
action = "drop"
log = true
[[rules]]
src = ["198.18.0.0/24", "2001:db8:18::/64"]
proto = "tcp"
dport = "1-1024"
action = "accept"
[[rules]]
proto = "icmp"
action = "accept"
"#;

    #[test]
    fn first_match_wins_and_the_end_drops() {
        let p = Policy::parse(POLICY).unwrap();
        assert_eq!(p.version, 3);
        let v = p.evaluate(&pkt("198.18.0.1", "198.19.0.1", IPPROTO_TCP, 5000, 22));
        assert_eq!((v.action, v.rule, v.log), (Action::Drop, Some(0), true));
        assert_eq!(
            p.evaluate(&pkt("198.18.0.1", "198.19.0.1", IPPROTO_TCP, 5000, 80))
                .action,
            Action::Accept
        );
        assert_eq!(
            p.evaluate(&pkt(
                "2001:db8:18::1",
                "2001:db8:19::1",
                IPPROTO_TCP,
                5000,
                443
            ))
            .rule,
            Some(1)
        );
        // Outside the prefixes, the port range or the protocol: the implicit drop.
        for q in [
            pkt("198.19.0.1", "198.18.0.1", IPPROTO_TCP, 5000, 80),
            pkt("198.18.0.1", "198.19.0.1", IPPROTO_TCP, 5000, 8080),
            pkt("198.18.0.1", "198.19.0.1", IPPROTO_UDP, 5000, 80),
        ] {
            assert_eq!(
                p.evaluate(&q),
                Verdict {
                    action: Action::Drop,
                    rule: None,
                    log: false
                }
            );
        }
        assert_eq!(
            p.evaluate(&pkt("198.19.0.1", "198.18.0.1", IPPROTO_ICMP, 1, 1))
                .rule,
            Some(2)
        );
        assert_eq!(
            Policy::accept_all(1)
                .evaluate(&pkt("203.0.113.1", "198.19.0.1", 47, 0, 0))
                .action,
            Action::Accept
        );
    }

    #[test]
    fn bad_policies_say_what_is_wrong() {
        let cases = [
            (
                "version = 1\n[[rules]]\naction = \"allow\"",
                "unknown variant",
            ),
            (
                "version = 1\n[[rules]]\naction = \"accept\"\nproto = \"tcpp\"",
                "unknown protocol",
            ),
            (
                "version = 1\n[[rules]]\naction = \"accept\"\nproto = \"tcp\"\ndport = \"90-80\"",
                "is empty",
            ),
            (
                "version = 1\n[[rules]]\naction = \"accept\"\nproto = \"tcp\"\ndport = \"99999\"",
                "not a port",
            ),
            (
                "version = 1\n[[rules]]\naction = \"accept\"\ndport = \"80\"",
                "ports need",
            ),
            (
                "version = 1\n[[rules]]\naction = \"accept\"\nsrc = [\"198.18.0.0/33\"]",
                "invalid IP address",
            ),
            (
                "version = 1\n[[rules]]\naction = \"accept\"\nport = \"80\"",
                "unknown field",
            ),
            ("rules = []", "missing field `version`"),
        ];
        for (text, want) in cases {
            let e = Policy::parse(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }
}
