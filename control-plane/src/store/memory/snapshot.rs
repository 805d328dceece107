//! The memory store's snapshot file: JSON, replaced atomically (temp file + fsync + rename, mode
//! 0600), so a crash leaves either the old or the new snapshot, never a torn one.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use crate::store::Revision;

/// The only snapshot format so far; a file with another is refused rather than guessed at.
const FORMAT: u32 = 1;

/// Loading or saving the snapshot file failed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("read store snapshot {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("store snapshot {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("write store snapshot {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One unleased key as saved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SavedKey {
    pub(super) key: String,
    pub(super) value: Vec<u8>,
    pub(super) mod_revision: Revision,
    pub(super) create_revision: Revision,
}

/// The file's content: the store revision and every unleased key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Snapshot {
    pub(super) revision: Revision,
    pub(super) keys: Vec<SavedKey>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileV1 {
    format: u32,
    revision: Revision,
    keys: Vec<FileKey>,
}

/// Values are JSON written by the registry, so they are kept readable as text; bytes that are
/// not UTF-8 (the store does not forbid them) go in `value_base64` instead.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileKey {
    key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value_base64: Option<String>,
    mod_revision: Revision,
    /// Absent in files written before it was kept: taken as `mod_revision`.
    #[serde(default)]
    create_revision: Revision,
}

impl Snapshot {
    pub(super) fn encode(&self) -> Vec<u8> {
        let keys = self
            .keys
            .iter()
            .map(|k| match std::str::from_utf8(&k.value) {
                Ok(text) => FileKey {
                    key: k.key.clone(),
                    value: Some(text.to_owned()),
                    value_base64: None,
                    mod_revision: k.mod_revision,
                    create_revision: k.create_revision,
                },
                Err(_) => FileKey {
                    key: k.key.clone(),
                    value: None,
                    value_base64: Some(STANDARD.encode(&k.value)),
                    mod_revision: k.mod_revision,
                    create_revision: k.create_revision,
                },
            })
            .collect();
        let file = FileV1 {
            format: FORMAT,
            revision: self.revision,
            keys,
        };
        // Serializing plain strings and integers into a Vec cannot fail.
        serde_json::to_vec_pretty(&file).unwrap_or_default()
    }

    fn decode(path: &Path, bytes: &[u8]) -> Result<Self, SnapshotError> {
        let corrupt = |reason: String| SnapshotError::Corrupt {
            path: path.to_owned(),
            reason,
        };
        let file: FileV1 = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
        if file.format != FORMAT {
            return Err(corrupt(format!(
                "format {} (this build reads {FORMAT})",
                file.format
            )));
        }
        if file.revision < 0 {
            return Err(corrupt(format!("negative revision {}", file.revision)));
        }
        let mut keys = Vec::with_capacity(file.keys.len());
        let mut last: Option<&str> = None;
        for k in &file.keys {
            if last.is_some_and(|last| last >= k.key.as_str()) {
                return Err(corrupt(format!("key {:?} out of order or repeated", k.key)));
            }
            last = Some(&k.key);
            if k.mod_revision < 1 || k.mod_revision > file.revision {
                return Err(corrupt(format!(
                    "key {:?} has mod_revision {} outside 1..={}",
                    k.key, k.mod_revision, file.revision
                )));
            }
            let value = match (&k.value, &k.value_base64) {
                (Some(text), None) => text.as_bytes().to_vec(),
                (None, Some(b64)) => STANDARD
                    .decode(b64)
                    .map_err(|e| corrupt(format!("key {:?}: value_base64: {e}", k.key)))?,
                _ => {
                    return Err(corrupt(format!(
                        "key {:?} needs exactly one of value and value_base64",
                        k.key
                    )));
                }
            };
            let create_revision = match k.create_revision {
                0 => k.mod_revision,
                c if c < 0 || c > k.mod_revision => {
                    return Err(corrupt(format!(
                        "key {:?} has create_revision {c} outside 1..={}",
                        k.key, k.mod_revision
                    )));
                }
                c => c,
            };
            keys.push(SavedKey {
                key: k.key.clone(),
                value,
                mod_revision: k.mod_revision,
                create_revision,
            });
        }
        Ok(Snapshot {
            revision: file.revision,
            keys,
        })
    }

    /// Reads the snapshot at `path`; `None` when there is no file yet.
    pub(super) fn load(path: &Path) -> Result<Option<Self>, SnapshotError> {
        match std::fs::read(path) {
            Ok(bytes) => Self::decode(path, &bytes).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(SnapshotError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }
}

/// Replaces `path` with `bytes`: write a temp file beside it (mode 0600: the registry may hold
/// names operators consider private), fsync, rename over, fsync the directory so the rename
/// itself survives a power cut.
pub(super) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), SnapshotError> {
    let err = |source| SnapshotError::Write {
        path: path.to_owned(),
        source,
    };
    let name = path
        .file_name()
        .ok_or_else(|| err(std::io::Error::other("snapshot path has no file name")))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    // A stale temp file from a crash may have other permissions; start from nothing.
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    file.write_all(bytes).map_err(err)?;
    file.sync_all().map_err(err)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(err)?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err)
}
