//! The audit-events cursor: where the poller is, and where that is kept
//! (a file, or an object in a bucket).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::MAX_LOOKBACK;

/// Where the poller is: the last `created_at` taken and the guids taken in that second.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub created_at: String,
    pub guids: BTreeSet<String>,
}

impl Cursor {
    pub(super) fn starting(lookback: Duration) -> Self {
        let start = chrono::Utc::now()
            - chrono::Duration::from_std(lookback.min(MAX_LOOKBACK)).unwrap_or_default();
        Self {
            created_at: start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            guids: BTreeSet::new(),
        }
    }

    pub(super) fn second(&self) -> i64 {
        seconds(&self.created_at).unwrap_or(i64::MIN)
    }

    /// Whether an event was taken already.
    pub(super) fn has(&self, created: i64, guid: &str) -> bool {
        created < self.second() || (created == self.second() && self.guids.contains(guid))
    }

    pub(super) fn take(&mut self, created_at: &str, created: i64, guid: &str) {
        if created > self.second() {
            self.created_at = created_at.to_string();
            self.guids.clear();
        }
        self.guids.insert(guid.to_string());
    }
}

pub(super) fn seconds(t: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(t)
        .ok()
        .map(|t| t.timestamp())
}

#[derive(Debug, thiserror::Error)]
pub enum CursorError {
    #[error("cannot read the audit-events cursor file {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("cannot write the audit-events cursor file {path}: {reason}")]
    Write { path: String, reason: String },
}

/// Reads a stored cursor's bytes.
pub(crate) type GetCursor =
    Arc<dyn Fn() -> BoxFuture<'static, Result<Option<bytes::Bytes>, String>> + Send + Sync>;
/// Stores a cursor's bytes.
pub(crate) type PutCursor =
    Arc<dyn Fn(bytes::Bytes) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// Where the cursor is kept: a file, or an object in a bucket (a `cf push`ed
/// instance has an ephemeral disk), given as get and put functions of its
/// JSON bytes.
#[derive(Clone)]
pub enum CursorStore {
    File(PathBuf),
    Object {
        /// For messages, e.g. `s3://bucket/prefix/CFLogs-State/prod/audit-events.cursor.json`.
        name: String,
        get: GetCursor,
        put: PutCursor,
    },
}

impl std::fmt::Debug for CursorStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CursorStore::File(p) => write!(f, "File({})", p.display()),
            CursorStore::Object { name, .. } => write!(f, "Object({name})"),
        }
    }
}

impl CursorStore {
    pub async fn load(&self) -> Result<Option<Cursor>, CursorError> {
        match self {
            CursorStore::File(path) => load_cursor(path),
            CursorStore::Object { name, get, .. } => {
                let err = |reason: String| CursorError::Read {
                    path: name.clone(),
                    reason,
                };
                match get().await.map_err(err)? {
                    None => Ok(None),
                    Some(bytes) => parse_cursor(&bytes).map(Some).map_err(err),
                }
            }
        }
    }

    pub async fn store(&self, cursor: &Cursor) -> Result<(), CursorError> {
        match self {
            CursorStore::File(path) => store_cursor(path, cursor),
            CursorStore::Object { name, put, .. } => {
                let bytes = serde_json::to_vec(cursor).expect("cursor serialises");
                put(bytes.into())
                    .await
                    .map_err(|reason| CursorError::Write {
                        path: name.clone(),
                        reason,
                    })
            }
        }
    }
}

fn parse_cursor(bytes: &[u8]) -> Result<Cursor, String> {
    let c: Cursor = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if seconds(&c.created_at).is_none() {
        return Err(format!("created_at {:?} is not a time", c.created_at));
    }
    Ok(c)
}

/// Reads the cursor file; `None` when there is none yet.
pub fn load_cursor(path: &std::path::Path) -> Result<Option<Cursor>, CursorError> {
    let err = |reason: String| CursorError::Read {
        path: path.display().to_string(),
        reason,
    };
    match std::fs::read(path) {
        Ok(bytes) => parse_cursor(&bytes).map(Some).map_err(err),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(err(e.to_string())),
    }
}

/// Writes the cursor file atomically: a temporary file, synced, renamed over it.
pub(crate) fn store_cursor(path: &std::path::Path, cursor: &Cursor) -> Result<(), CursorError> {
    use std::io::Write;
    let err = |e: std::io::Error| CursorError::Write {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(&serde_json::to_vec(cursor).expect("cursor serialises"))
        .map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}
