//! Files that must survive a crash: written atomically (a temporary file, fsync, rename)
//! with a SHA-256 of the body on the first line; the previous good copy is kept beside
//! it, so a torn or corrupt file falls back to the last good one. The cluster core stores
//! its snapshot and log this way (`cluster::store`); [`State`] is the format an older
//! orchestrator wrote, read once to import it.

use std::fmt::Write as _;
use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::membership::MemberState;

/// The state file of an orchestrator before the cluster core (imported once).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct State {
    pub table_version: u64,
    /// Members' states as the orchestrator last decided them.
    pub members: BTreeMap<u32, MemberState>,
    /// Each group's bucket table: (active, backup) per bucket.
    pub tables: BTreeMap<u32, Vec<(u32, u32)>>,
    /// Worker counts asked of members (Dynamic Balancing).
    pub workers: BTreeMap<u32, u32>,
    /// Each group's policy versions, oldest first (the last is current).
    #[serde(default)]
    pub policies: BTreeMap<u32, Vec<crate::policy_dist::PolicyVersion>>,
}

#[derive(Debug, Error)]
pub enum PersistError {
    #[error("writing the state file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the state file {0} and its previous copy are both unreadable or corrupt")]
    Corrupt(PathBuf),
}

fn previous(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".prev");
    PathBuf::from(p)
}

fn digest(body: &[u8]) -> String {
    Sha256::digest(body)
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Writes `state` to `path` atomically; the file it replaces becomes the previous copy.
pub fn save<T: Serialize>(path: &Path, state: &T) -> Result<(), PersistError> {
    let err = |source| PersistError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let body = serde_json::to_vec(state).expect("state serialises");
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(digest(&body).as_bytes()).map_err(err)?;
        f.write_all(b"\n").map_err(err)?;
        f.write_all(&body).map_err(err)?;
        f.sync_all().map_err(err)?;
    }
    if path.exists() {
        std::fs::rename(path, previous(path)).map_err(err)?;
    }
    std::fs::rename(&tmp, path).map_err(err)?;
    if let Some(dir) = path.parent().and_then(|d| std::fs::File::open(d).ok()) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Reads one copy; None when it is missing, torn or corrupt.
fn read<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    let text = std::fs::read(path).ok()?;
    let nl = text.iter().position(|b| *b == b'\n')?;
    let (sum, body) = (&text[..nl], &text[nl + 1..]);
    if sum != digest(body).as_bytes() {
        tracing::warn!(path = %path.display(), "state file corrupt or torn: ignored");
        return None;
    }
    serde_json::from_slice(body).ok()
}

/// The last good state: the file, or its previous copy when the file is torn or corrupt;
/// Ok(None) when there is none yet.
pub fn load<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, PersistError> {
    if let Some(s) = read(path) {
        return Ok(Some(s));
    }
    let prev = previous(path);
    if let Some(s) = read(&prev) {
        tracing::warn!(path = %prev.display(), "using the previous state file");
        return Ok(Some(s));
    }
    if path.exists() || prev.exists() {
        return Err(PersistError::Corrupt(path.to_path_buf()));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(v: u64) -> State {
        State {
            table_version: v,
            members: [(1, MemberState::Active), (2, MemberState::Detached)].into(),
            tables: [(1, vec![(1, 2), (2, 1)])].into(),
            workers: [(1, 2)].into(),
            policies: BTreeMap::new(),
        }
    }

    #[test]
    fn round_trip_and_torn_writes_fall_back_to_the_last_good_state() {
        let dir = std::env::temp_dir().join(format!("baton-persist-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("state.json");
        assert_eq!(load::<State>(&path).unwrap(), None, "nothing yet");
        save(&path, &sample(1)).unwrap();
        save(&path, &sample(2)).unwrap();
        assert_eq!(load(&path).unwrap(), Some(sample(2)));
        // A torn write of the current file: the previous good state is used.
        let text = std::fs::read(&path).unwrap();
        std::fs::write(&path, &text[..text.len() / 2]).unwrap();
        assert_eq!(load(&path).unwrap(), Some(sample(1)));
        // A flipped byte is caught by the digest, not parsed.
        let mut text = std::fs::read(previous(&path)).unwrap();
        let last = text.len() - 3;
        text[last] ^= 1;
        std::fs::write(previous(&path), &text).unwrap();
        assert!(matches!(
            load::<State>(&path),
            Err(PersistError::Corrupt(_))
        ));
        // The next save makes it whole again.
        save(&path, &sample(3)).unwrap();
        assert_eq!(load(&path).unwrap(), Some(sample(3)));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
