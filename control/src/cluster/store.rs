//! The cluster's snapshot and log on disk (atomic, digested, with the previous copy as a
//! fallback: see `persist`). A state file written by an orchestrator before the cluster
//! core is imported once into a snapshot.

use std::path::Path;

use baton_common::Bucket;
use thiserror::Error;

use super::{ClusterState, GroupState, MemberRecord, Stored, LOG_FORMAT};
use crate::{
    config::Config,
    membership::MemberState,
    persist::{self, PersistError},
    planner,
    policy_dist::PolicyState,
};

#[derive(Debug, Error)]
pub enum StoreError {
    #[error(transparent)]
    File(#[from] PersistError),
    #[error(
        "the state file {path} has log format {found}; this orchestrator reads format {LOG_FORMAT}"
    )]
    Format { path: String, found: u32 },
    #[error("the state file {0} is neither a cluster log nor an older state file")]
    Unknown(String),
}

pub fn save(path: &Path, stored: &Stored) -> Result<(), StoreError> {
    Ok(persist::save(path, stored)?)
}

/// What was stored at `path` (None: nothing yet). An older orchestrator's state file is
/// imported against `config` (it did not record the members' groups and downlinks).
pub fn load(path: &Path, config: &Config) -> Result<Option<Stored>, StoreError> {
    let Some(value) = persist::load::<serde_json::Value>(path)? else {
        return Ok(None);
    };
    let shown = || path.display().to_string();
    if let Some(found) = value.get("format").and_then(serde_json::Value::as_u64) {
        if found != u64::from(LOG_FORMAT) {
            return Err(StoreError::Format {
                path: shown(),
                found: found as u32,
            });
        }
        return serde_json::from_value(value)
            .map(Some)
            .map_err(|_| StoreError::Unknown(shown()));
    }
    let old: persist::State =
        serde_json::from_value(value).map_err(|_| StoreError::Unknown(shown()))?;
    tracing::info!(path = %shown(), "importing an older orchestrator's state file");
    Ok(Some(Stored {
        format: LOG_FORMAT,
        snapshot_index: 0,
        snapshot: import(&old, config),
        tail: Vec::new(),
    }))
}

/// A snapshot from an older state file: its members' states, tables, table version,
/// worker counts and policies, with groups and downlinks from the configuration.
pub fn import(old: &persist::State, config: &Config) -> ClusterState {
    let mut s = ClusterState {
        table_version: old.table_version,
        ..Default::default()
    };
    for g in &config.groups {
        let table = old
            .tables
            .get(&g.id)
            .filter(|t| t.len() == g.buckets as usize)
            .map_or_else(
                || planner::plan(&[], g.buckets),
                |t| {
                    t.iter()
                        .map(|&(active, backup)| Bucket { active, backup })
                        .collect()
                },
            );
        s.groups.insert(
            g.id,
            GroupState {
                buckets: g.buckets,
                sync: g.sync,
                table,
                staging: None,
                policy: PolicyState {
                    history: old.policies.get(&g.id).cloned().unwrap_or_default(),
                    install: None,
                },
            },
        );
        for m in &g.members {
            let state = match old.members.get(&m.id) {
                // The older orchestrator showed a joining member as Active in its file.
                Some(st @ (MemberState::Active | MemberState::Detached)) => *st,
                _ => MemberState::Down,
            };
            s.members.insert(
                m.id,
                MemberRecord {
                    group: g.id,
                    site: m.site,
                    downlink: m.downlink.clone(),
                    state,
                    workers: old.workers.get(&m.id).copied(),
                    isolated: None,
                },
            );
        }
    }
    s
}
