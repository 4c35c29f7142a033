//! The configuration file shared by the orchestrator and its members (TOML): the
//! orchestrator's management settings, and per security group its uplinks and members.
//! Every struct rejects unknown fields, so a typo is an error, not a silently ignored line.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
};

use baton_common::{key, side, MEMBER_ID_MAX};
use baton_dataplane::forward::Side;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use thiserror::Error;

mod edit;

/// Limits from Maestro: members per site per group, appliances per orchestrator.
pub const MEMBERS_PER_GROUP_MAX: usize = 14;
/// Members of a dual-site group (14 per site).
pub const MEMBERS_PER_DUAL_SITE_GROUP_MAX: usize = 28;
pub const MEMBERS_PER_ORCHESTRATOR_MAX: usize = 52;
/// The CCP (heartbeat) port.
pub const CCP_PORT: u16 = 8116;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub orchestrator: OrchestratorConfig,
    #[serde(default)]
    pub groups: Vec<GroupConfig>,
}

/// Management settings of the orchestrator.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OrchestratorConfig {
    /// Address members send heartbeats to (UDP, CCP port 8116).
    #[serde(default = "default_ccp")]
    pub ccp: SocketAddr,
    /// Unix socket of the REST API.
    #[serde(default = "default_api_socket")]
    pub api_socket: PathBuf,
    /// Heartbeat interval in milliseconds.
    #[serde(default = "default_interval")]
    pub heartbeat_interval_ms: u64,
    /// Heartbeats missed in a row before a member is declared Down.
    #[serde(default = "default_dead_count")]
    pub dead_count: u32,
    /// Attach XDP in driver (native) mode; otherwise let the kernel choose.
    #[serde(default = "yes")]
    pub xdp_driver_mode: bool,
    /// Isolate a member whose heartbeats arrive but whose data path does not work.
    #[serde(default = "yes")]
    pub isolate_partitions: bool,
    /// The policy every group starts with (its version 1, say) when nothing is installed
    /// yet; later versions come through `baton policy install`.
    #[serde(default)]
    pub policy_file: Option<PathBuf>,
    /// TCP address of the REST API for remote use (e.g. "0.0.0.0:8117"); needs
    /// `api_token_file`. None: the Unix socket only.
    #[serde(default)]
    pub api_tcp: Option<SocketAddr>,
    /// File holding the bearer token TCP clients must send (`Authorization: Bearer …`).
    #[serde(default)]
    pub api_token_file: Option<PathBuf>,
    /// Where the orchestrator's maps and XDP attachments are pinned (a bpf filesystem), so
    /// the data path keeps forwarding while the orchestrator restarts. Empty: no pins
    /// (programs detach when the orchestrator stops).
    #[serde(default = "default_pin_dir")]
    pub bpf_pin_dir: PathBuf,
    /// The orchestrator's state (members' states, bucket tables, versions), written
    /// atomically on every change and read at start. Empty: nothing persisted.
    #[serde(default = "default_state_file")]
    pub state_file: PathBuf,
}

fn default_pin_dir() -> PathBuf {
    PathBuf::from("/sys/fs/bpf/baton")
}

fn default_state_file() -> PathBuf {
    PathBuf::from("/var/lib/baton/orchestrator.json")
}

fn default_ccp() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(198, 51, 100, 254), CCP_PORT))
}
pub fn default_api_socket() -> PathBuf {
    PathBuf::from("/run/baton/api.sock")
}
fn default_interval() -> u64 {
    100
}
fn default_dead_count() -> u32 {
    3
}
fn yes() -> bool {
    true
}
fn default_buckets() -> u32 {
    4096
}

/// Distribution mode of a group (Maestro's names).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Both addresses, order-independent.
    #[default]
    General,
    /// The external host's address: source on external uplinks, destination on internal.
    AutoTopology,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    External,
    Internal,
}

impl Role {
    pub fn index(self) -> usize {
        match self {
            Role::External => side::EXTERNAL as usize,
            Role::Internal => side::INTERNAL as usize,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    pub id: u32,
    /// Bucket count B (a power of two).
    #[serde(default = "default_buckets")]
    pub buckets: u32,
    #[serde(default)]
    pub mode: Mode,
    /// Add L4 ports to the flow key.
    #[serde(default)]
    pub l4: bool,
    /// HyperSync on.
    #[serde(default = "yes")]
    pub sync: bool,
    /// The group's sync key: 32 bytes as 64 hex digits, in a file only root reads (sync
    /// frames are authenticated with it). Needed when `sync` is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_key_file: Option<PathBuf>,
    pub uplinks: Vec<UplinkConfig>,
    #[serde(default)]
    pub members: Vec<MemberConfig>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UplinkConfig {
    /// Interface on the orchestrator.
    pub iface: String,
    pub role: Role,
    pub gateway_v4: Option<Ipv4Addr>,
    pub gateway_v6: Option<Ipv6Addr>,
    /// Networks reached through this uplink.
    pub prefixes: Vec<IpNet>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    pub id: u32,
    /// The orchestrator's interface towards this member.
    pub downlink: String,
    /// The site the member is at (1 or 2: a dual-site group has members at both).
    #[serde(default = "site_one", skip_serializing_if = "is_site_one")]
    pub site: u8,
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }

    /// Checks what the types cannot: limits, uniqueness, powers of two.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.orchestrator.heartbeat_interval_ms == 0 || self.orchestrator.dead_count == 0 {
            return bad("heartbeat_interval_ms and dead_count must be at least 1".into());
        }
        if self.orchestrator.api_tcp.is_some() && self.orchestrator.api_token_file.is_none() {
            return bad(
                "api_tcp needs api_token_file: the TCP API is never open without a token".into(),
            );
        }
        let mut seen_members = std::collections::BTreeSet::new();
        let mut seen_groups = std::collections::BTreeSet::new();
        for g in &self.groups {
            if !seen_groups.insert(g.id) || g.id == 0 || g.id > baton_common::GROUPS_MAX {
                return bad(format!(
                    "group id {} is duplicated or outside 1..={}",
                    g.id,
                    baton_common::GROUPS_MAX
                ));
            }
            if !g.buckets.is_power_of_two() || g.buckets > baton_common::BUCKETS_PER_GROUP_MAX {
                return bad(format!(
                    "group {}: buckets = {} must be a power of two up to {}",
                    g.id,
                    g.buckets,
                    baton_common::BUCKETS_PER_GROUP_MAX
                ));
            }
            if let Some(m) = g.members.iter().find(|m| !(1..=2).contains(&m.site)) {
                return bad(format!("member {}: site {} must be 1 or 2", m.id, m.site));
            }
            for site in [1u8, 2] {
                let n = g.members.iter().filter(|m| m.site == site).count();
                if n > MEMBERS_PER_GROUP_MAX {
                    return bad(format!(
                        "group {}: {n} members at site {site}, at most {MEMBERS_PER_GROUP_MAX} per site per group",
                        g.id
                    ));
                }
            }
            if g.members.len() > MEMBERS_PER_DUAL_SITE_GROUP_MAX {
                return bad(format!(
                    "group {}: {} members, at most {MEMBERS_PER_DUAL_SITE_GROUP_MAX} per dual-site group",
                    g.id,
                    g.members.len()
                ));
            }
            for r in [Role::External, Role::Internal] {
                if !g.uplinks.iter().any(|u| u.role == r) {
                    return bad(format!("group {}: no {r:?} uplink", g.id));
                }
            }
            for m in &g.members {
                if m.id == 0 || m.id > MEMBER_ID_MAX {
                    return bad(format!("member id {} outside 1..={MEMBER_ID_MAX}", m.id));
                }
                if !seen_members.insert(m.id) {
                    return bad(format!(
                        "member {} is configured twice (a member is in one group)",
                        m.id
                    ));
                }
            }
        }
        if seen_members.len() > MEMBERS_PER_ORCHESTRATOR_MAX {
            return bad(format!(
                "{} members, at most {MEMBERS_PER_ORCHESTRATOR_MAX} per orchestrator",
                seen_members.len()
            ));
        }
        Ok(())
    }

    /// Admits member `id` to `group` with its downlink, within the limits; on error the
    /// configuration is unchanged.
    pub fn add_member(
        &mut self,
        id: u32,
        group: u32,
        site: u8,
        downlink: &str,
    ) -> Result<(), ConfigError> {
        if let Some(g) = self.group_of(id) {
            return Err(ConfigError::Invalid(format!(
                "member {id} is already in group {} (a member is in one group; use move)",
                g.id
            )));
        }
        let mut next = self.clone();
        next.groups
            .iter_mut()
            .find(|g| g.id == group)
            .ok_or_else(|| ConfigError::Invalid(format!("no group {group}")))?
            .members
            .push(MemberConfig {
                id,
                downlink: downlink.to_string(),
                site,
            });
        next.validate()?;
        *self = next;
        Ok(())
    }

    /// Removes member `id`; returns its group and downlink.
    pub fn remove_member(&mut self, id: u32) -> Result<(u32, String), ConfigError> {
        for g in &mut self.groups {
            if let Some(i) = g.members.iter().position(|m| m.id == id) {
                let m = g.members.remove(i);
                return Ok((g.id, m.downlink));
            }
        }
        Err(ConfigError::Invalid(format!("no member {id}")))
    }

    /// Moves member `id` (with its downlink) to `group`, within the limits.
    pub fn move_member(&mut self, id: u32, group: u32) -> Result<(), ConfigError> {
        let mut next = self.clone();
        let site = self
            .group_of(id)
            .and_then(|g| g.members.iter().find(|m| m.id == id))
            .map_or(1, |m| m.site);
        let (from, downlink) = next.remove_member(id)?;
        if from == group {
            return Err(ConfigError::Invalid(format!(
                "member {id} is already in group {group}"
            )));
        }
        next.add_member(id, group, site, &downlink)?;
        *self = next;
        Ok(())
    }

    /// Writes the configuration to `path` atomically (a temporary file, then a rename).
    /// The file there is the operator's: a change of members edits it in place, keeping
    /// its comments and layout; anything else (or no file yet) writes it afresh.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let text = std::fs::read_to_string(path)
            .ok()
            .and_then(|old| edit::edited(&old, self))
            .unwrap_or_else(|| self.to_toml());
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        {
            let mut f = std::fs::File::create(&tmp)?;
            std::io::Write::write_all(&mut f, text.as_bytes())?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)
    }

    pub fn group(&self, id: u32) -> Option<&GroupConfig> {
        self.groups.iter().find(|g| g.id == id)
    }

    pub fn group_of(&self, member: u32) -> Option<&GroupConfig> {
        self.groups
            .iter()
            .find(|g| g.members.iter().any(|m| m.id == member))
    }
}

fn site_one() -> u8 {
    1
}

// serde's skip_serializing_if passes a reference.
#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_site_one(s: &u8) -> bool {
    *s == 1
}

impl GroupConfig {
    /// Index of the group in the kernel maps.
    pub fn slot(&self) -> u32 {
        self.id - 1
    }

    /// The group's virtual MAC of a side: locally administered, 02:ba:70:00:GROUP:SIDE.
    pub fn vmac(&self, side_index: usize) -> [u8; 6] {
        [0x02, 0xba, 0x70, 0x00, self.id as u8, side_index as u8]
    }

    /// The flow-key selector of an uplink of this group.
    pub fn key_for(&self, role: Role) -> u32 {
        let base = match (self.mode, role) {
            (Mode::General, _) => key::BOTH,
            (Mode::AutoTopology, Role::External) => key::SRC,
            (Mode::AutoTopology, Role::Internal) => key::DST,
        };
        if self.l4 {
            base | key::F_PORTS
        } else {
            base
        }
    }

    /// The two sides as a member forwards to them.
    pub fn sides(&self) -> [Side; 2] {
        let side = |role: Role| {
            let ups: Vec<&UplinkConfig> = self.uplinks.iter().filter(|u| u.role == role).collect();
            Side {
                vmac: self.vmac(role.index()),
                gw_v4: ups.iter().find_map(|u| u.gateway_v4),
                gw_v6: ups.iter().find_map(|u| u.gateway_v6),
                prefixes: ups
                    .iter()
                    .flat_map(|u| u.prefixes.iter().copied())
                    .collect(),
            }
        };
        [side(Role::External), side(Role::Internal)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
[orchestrator]
heartbeat_interval_ms = 100

[[groups]]
id = 1
[[groups.uplinks]]
iface = "up-ext"
role = "external"
gateway_v4 = "198.18.0.254"
prefixes = ["198.18.0.0/24"]
[[groups.uplinks]]
iface = "up-int"
role = "internal"
gateway_v4 = "198.19.0.254"
prefixes = ["198.19.0.0/24"]
[[groups.members]]
id = 1
downlink = "dl-sgm1"
"#;

    #[test]
    fn parses_with_defaults() {
        let c: Config = toml::from_str(SAMPLE).unwrap();
        c.validate().unwrap();
        assert_eq!(c.groups[0].buckets, 4096);
        assert_eq!(c.orchestrator.dead_count, 3);
        assert_eq!(c.groups[0].mode, Mode::General);
        let back: Config = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn members_are_added_removed_and_moved_within_the_limits() {
        let mut c: Config = toml::from_str(SAMPLE).unwrap();
        let mut g2 = c.groups[0].clone();
        g2.id = 2;
        g2.members.clear();
        c.groups.push(g2);
        let err = |r: Result<(), ConfigError>| r.unwrap_err().to_string();
        assert!(err(c.add_member(1, 2, 1, "x")).contains("already in group 1"));
        assert!(err(c.add_member(64, 1, 1, "x")).contains("outside 1..=63"));
        assert!(err(c.add_member(5, 9, 1, "x")).contains("no group 9"));
        for id in 2..=14 {
            c.add_member(id, 1, 1, &format!("dl{id}")).unwrap();
        }
        let before = c.clone();
        assert!(err(c.add_member(15, 1, 1, "dl15")).contains("at most 14"));
        assert_eq!(c, before, "a refused change changes nothing");
        c.move_member(14, 2).unwrap();
        assert_eq!(c.group_of(14).unwrap().id, 2);
        assert_eq!(c.groups[1].members[0].downlink, "dl14");
        assert!(err(c.move_member(14, 2)).contains("already in group 2"));
        assert!(err(c.move_member(40, 2)).contains("no member 40"));
        assert_eq!(c.remove_member(14).unwrap(), (2, "dl14".to_string()));
        assert!(c.group_of(14).is_none());
        // 52 per orchestrator, across groups.
        let mut big: Config = toml::from_str(SAMPLE).unwrap();
        big.groups = (1..=4)
            .map(|g| {
                let mut x = c.groups[0].clone();
                x.id = g;
                x.members = (1..=13)
                    .map(|i| MemberConfig {
                        id: (g - 1) * 13 + i,
                        downlink: format!("d{g}-{i}"),
                        site: 1,
                    })
                    .collect();
                x
            })
            .collect();
        big.validate().unwrap();
        assert!(err(big.add_member(53, 4, 1, "d53")).contains("at most 52"));
        // A dual-site group: 14 per site, 28 in all.
        let mut dual: Config = toml::from_str(SAMPLE).unwrap();
        dual.groups[0].members.clear();
        for id in 1..=14 {
            dual.add_member(id, 1, 1, &format!("a{id}")).unwrap();
            dual.add_member(14 + id, 1, 2, &format!("b{id}")).unwrap();
        }
        assert_eq!(dual.groups[0].members.len(), 28);
        assert!(err(dual.add_member(29, 1, 2, "b15")).contains("14 per site"));
        assert!(err(dual.add_member(29, 1, 3, "c1")).contains("site 3 must be 1 or 2"));
    }

    #[test]
    fn rejects_typos_and_bad_values() {
        let typo = SAMPLE.replace("heartbeat_interval_ms", "heartbeat_interval");
        assert!(toml::from_str::<Config>(&typo)
            .unwrap_err()
            .to_string()
            .contains("unknown field"));
        let mut c: Config = toml::from_str(SAMPLE).unwrap();
        c.groups[0].buckets = 1000;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("power of two"));
        let mut c: Config = toml::from_str(SAMPLE).unwrap();
        c.groups[0].members = (1..=15)
            .map(|id| MemberConfig {
                id,
                downlink: format!("d{id}"),
                site: 1,
            })
            .collect();
        assert!(c.validate().unwrap_err().to_string().contains("at most 14"));
        let mut c: Config = toml::from_str(SAMPLE).unwrap();
        c.groups[0].uplinks.pop();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("Internal uplink"));
        // The TCP API is never open without a token.
        let mut c: Config = toml::from_str(SAMPLE).unwrap();
        c.orchestrator.api_tcp = Some("127.0.0.1:8117".parse().unwrap());
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("api_token_file"));
        c.orchestrator.api_token_file = Some("/run/baton/token".into());
        assert!(c.validate().is_ok());
    }

    #[test]
    fn auto_topology_keys_on_the_external_host() {
        let mut c: Config = toml::from_str(SAMPLE).unwrap();
        c.groups[0].mode = Mode::AutoTopology;
        assert_eq!(c.groups[0].key_for(Role::External), key::SRC);
        assert_eq!(c.groups[0].key_for(Role::Internal), key::DST);
        c.groups[0].l4 = true;
        assert_eq!(c.groups[0].key_for(Role::External), key::SRC | key::F_PORTS);
    }
}
