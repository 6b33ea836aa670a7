//! API keys: random secrets, stored as SHA-256 digests in `<data-dir>/keys.json`. `hanga keys`
//! edits the file (under a lock, replaced by a rename so a reader never sees half of it); a
//! running server re-reads it when it changes ([`KeyRing`]), which is how the commands work
//! while the server holds the data directory's database.

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::RwLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::Error;

/// What a key may do. `admin` includes the other two.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Queue and cancel jobs, upload images.
    Generate,
    /// Read jobs, streams, images and model information.
    Read,
    /// Server operations: metrics, rescans, freeing memory.
    Admin,
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scope::Generate => "generate",
            Scope::Read => "read",
            Scope::Admin => "admin",
        })
    }
}

/// `N/second`, `N/minute`, `N/hour` or `N/day`: a bucket of N requests, refilled evenly over
/// the period.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rate {
    pub requests: u32,
    pub per_seconds: u64,
}

impl Rate {
    /// The time one request's worth of the bucket takes to come back.
    pub fn refill_interval(&self) -> Duration {
        Duration::from_secs(self.per_seconds) / self.requests
    }
}

impl FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("rate `{s}` is not N/second, N/minute, N/hour or N/day (e.g. 1000/hour)");
        let (count, period) = s.split_once('/').ok_or_else(bad)?;
        let requests: u32 = count.trim().parse().map_err(|_| bad())?;
        let per_seconds = match period.trim() {
            "s" | "sec" | "second" => 1,
            "m" | "min" | "minute" => 60,
            "h" | "hour" => 3600,
            "d" | "day" => 86_400,
            _ => return Err(bad()),
        };
        if requests == 0 {
            return Err(format!("rate `{s}`: the count must be at least 1"));
        }
        Ok(Rate {
            requests,
            per_seconds,
        })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let period = match self.per_seconds {
            1 => "second",
            60 => "minute",
            3600 => "hour",
            _ => "day",
        };
        write!(f, "{}/{period}", self.requests)
    }
}

/// One key as stored: never the secret itself.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeyRecord {
    /// `key_` and 8 hex digits: what `keys list` shows and `keys revoke` takes.
    pub id: String,
    pub name: String,
    /// The secret's first characters, to tell keys apart.
    pub prefix: String,
    /// Hex SHA-256 of the secret. Keys are 256 random bits, so a fast hash is enough: there is
    /// nothing to guess, unlike a password.
    pub sha256: String,
    pub scopes: Vec<Scope>,
    /// None: no limit.
    pub rate: Option<Rate>,
    /// Seconds since the epoch.
    pub created: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<u64>,
}

impl KeyRecord {
    pub fn allows(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope) || self.scopes.contains(&Scope::Admin)
    }

    pub fn is_active(&self) -> bool {
        self.revoked.is_none()
    }
}

#[derive(Default, Serialize, Deserialize)]
struct KeysDocument {
    keys: Vec<KeyRecord>,
}

/// `<data-dir>/keys.json`.
#[derive(Clone, Debug)]
pub struct KeyFile {
    path: PathBuf,
}

fn now_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn digest(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl KeyFile {
    pub fn in_data_dir(data_dir: &Path) -> Self {
        KeyFile {
            path: data_dir.join("keys.json"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The keys, revoked ones too; none when the file does not exist.
    pub fn read(&self) -> Result<Vec<KeyRecord>, Error> {
        match fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice::<KeysDocument>(&bytes)
                .map(|d| d.keys)
                .map_err(|e| Error::config(format!("{}: {e}", self.path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }

    /// A new key: returns the secret (shown once; only its digest is kept) and its record.
    pub fn create(
        &self,
        name: &str,
        scopes: &[Scope],
        rate: Option<Rate>,
    ) -> Result<(String, KeyRecord), Error> {
        if name.trim().is_empty() {
            return Err(Error::request("a key needs a --name"));
        }
        if scopes.is_empty() {
            return Err(Error::request("a key needs at least one scope"));
        }
        let mut random = [0u8; 36];
        getrandom::fill(&mut random)
            .map_err(|e| Error::Io(std::io::Error::other(format!("no system randomness: {e}"))))?;
        let secret = format!(
            "hk_{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&random[..32])
        );
        let id: String = random[32..].iter().map(|b| format!("{b:02x}")).collect();
        let mut scopes = scopes.to_vec();
        scopes.dedup();
        let record = KeyRecord {
            id: format!("key_{id}"),
            name: name.trim().to_owned(),
            prefix: secret[..9].to_owned(),
            sha256: digest(&secret),
            scopes,
            rate,
            created: now_seconds(),
            revoked: None,
        };
        self.update(|keys| {
            keys.push(record.clone());
            Ok(())
        })?;
        Ok((secret, record))
    }

    /// Marks the key with this id (or this name, where one key has it) revoked.
    pub fn revoke(&self, id_or_name: &str) -> Result<KeyRecord, Error> {
        self.update(|keys| {
            let by_id = keys.iter().position(|k| k.id == id_or_name);
            let index = match by_id {
                Some(i) => i,
                None => {
                    let named: Vec<usize> = (0..keys.len())
                        .filter(|&i| keys[i].name == id_or_name && keys[i].is_active())
                        .collect();
                    match named[..] {
                        [i] => i,
                        [] => return Err(Error::request(format!("no key `{id_or_name}`"))),
                        _ => {
                            return Err(Error::request(format!(
                                "several keys are named `{id_or_name}`: revoke one by its id"
                            )));
                        }
                    }
                }
            };
            let key = &mut keys[index];
            if key.revoked.is_none() {
                key.revoked = Some(now_seconds());
            }
            Ok(key.clone())
        })
    }

    /// Read, change and write the file under an exclusive lock on `keys.json.lock`, so that
    /// two commands at once do not lose each other's key; the new file replaces the old by a
    /// rename, so a reading server sees the one or the other.
    fn update<T>(
        &self,
        change: impl FnOnce(&mut Vec<KeyRecord>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        if let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir)?;
        }
        let lock = File::create(self.path.with_extension("json.lock"))?;
        lock.lock()?;
        let mut keys = self.read()?;
        let result = change(&mut keys)?;
        let text = serde_json::to_string_pretty(&KeysDocument { keys }).expect("keys serialise");
        let temporary = self.path.with_extension("json.tmp");
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        fs::rename(&temporary, &self.path)?;
        Ok(result)
    }
}

/// The keys as a running server sees them: re-read from the file when it has changed, looked
/// at no more than every [`KeyRing::RECHECK`].
pub struct KeyRing {
    file: KeyFile,
    state: RwLock<Loaded>,
}

struct Loaded {
    /// Active keys by digest.
    by_digest: HashMap<String, KeyRecord>,
    /// (inode, length, modified) of the file read; a rename gives a new inode.
    stamp: Option<(u64, u64, SystemTime)>,
    checked: Instant,
}

impl KeyRing {
    /// A revoked key stops working within this (plus the time to read the file).
    pub const RECHECK: Duration = Duration::from_millis(250);

    pub fn open(file: KeyFile) -> Result<Self, Error> {
        let ring = KeyRing {
            file,
            state: RwLock::new(Loaded {
                by_digest: HashMap::new(),
                stamp: None,
                checked: Instant::now(),
            }),
        };
        ring.reload(&mut ring.state.write().expect("keys lock"))?;
        Ok(ring)
    }

    fn stamp(&self) -> Option<(u64, u64, SystemTime)> {
        let meta = fs::metadata(self.file.path()).ok()?;
        Some((meta.ino(), meta.len(), meta.modified().ok()?))
    }

    fn reload(&self, loaded: &mut Loaded) -> Result<(), Error> {
        let stamp = self.stamp();
        let keys = self.file.read()?;
        loaded.by_digest = keys
            .into_iter()
            .filter(KeyRecord::is_active)
            .map(|k| (k.sha256.clone(), k))
            .collect();
        loaded.stamp = stamp;
        loaded.checked = Instant::now();
        Ok(())
    }

    fn refresh(&self) {
        let due = self.state.read().expect("keys lock").checked.elapsed() >= Self::RECHECK;
        if !due {
            return;
        }
        let mut loaded = self.state.write().expect("keys lock");
        loaded.checked = Instant::now();
        if self.stamp() != loaded.stamp
            && let Err(e) = self.reload(&mut loaded)
        {
            // A hand-edited file that does not parse keeps the keys last read.
            tracing::error!("keys not reloaded: {e}");
        }
    }

    /// Whether any key is active (then every request needs one).
    pub fn any_active(&self) -> bool {
        self.refresh();
        !self.state.read().expect("keys lock").by_digest.is_empty()
    }

    /// The active key whose secret this is.
    pub fn lookup(&self, secret: &str) -> Option<KeyRecord> {
        self.refresh();
        let digest = digest(secret);
        self.state
            .read()
            .expect("keys lock")
            .by_digest
            .get(&digest)
            .cloned()
    }
}
