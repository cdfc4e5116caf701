//! Who a `serve` with keys lets in, now and later: the keys of every
//! handshake come from files looked at each time (and every second, and
//! read again on SIGHUP), and when they change so that a connection's
//! credential is no longer admitted (its client key was removed from the
//! authorized keys, or the pre-shared key changed), that connection is
//! reset: revoking a key ends what it opened, as well as what it would
//! open.
//!
//! ```ignore
//! let keys = admission.keys()?;                       // for the handshake
//! let secured = broker_stream::accept(stream, Some(&keys.config))?;
//! let _held = admission.admit(guard.id(), keys.credential(secured.peer_key()))?;
//! ```

use crate::keys::live::{Change, LiveKeys};
use crate::keys::options::{Credential, ServeKeys};
use crate::tunnel::Reloaded;
use crate::tunnel::connections::Connections;
use log::{error, info};
use std::collections::HashMap;
use std::io::{self, ErrorKind};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

/// How often the key files are looked at between handshakes: how soon a
/// revoked key's open connections are reset when no SIGHUP comes.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// The keys of one `serve`, and the credentials of its open connections.
pub struct Admission {
    keys: LiveKeys<ServeKeys>,
    /// What each open connection proved, by its number.
    holders: Mutex<HashMap<u64, Credential>>,
    connections: Arc<Connections>,
}

/// Held while an admitted connection is open.
pub struct Held {
    admission: Arc<Admission>,
    id: u64,
}

impl Admission {
    /// Admits connections of `connections` with `keys`, and looks at the
    /// key files every second for as long as it is in use.
    pub fn start(keys: LiveKeys<ServeKeys>, connections: Arc<Connections>) -> Arc<Admission> {
        let admission = Arc::new(Admission {
            keys,
            holders: Mutex::default(),
            connections,
        });
        let watched = Arc::downgrade(&admission);
        let _ = std::thread::Builder::new()
            .name("key-files".to_string())
            .spawn(move || watch(&watched));
        admission
    }

    /// The keys for a new handshake, after a look at the files; fails
    /// while changed files do not read.
    pub fn keys(&self) -> io::Result<Arc<ServeKeys>> {
        let mut holders = self.holders();
        let (keys, change) = self.keys.current();
        self.take(change, &mut holders);
        keys
    }

    /// Records that connection `id` proved `credential`; refused if the
    /// keys changed during its handshake and no longer admit it.
    pub fn admit(self: &Arc<Self>, id: u64, credential: Credential) -> io::Result<Held> {
        // The keys are looked at under the lock a revocation takes:
        // either this sees the new keys, or the revocation sees this
        // connection.
        let mut holders = self.holders();
        let (keys, change) = self.keys.current();
        self.take(change, &mut holders);
        if !keys?.admits(&credential) {
            return Err(revoked());
        }
        holders.insert(id, credential);
        Ok(Held {
            admission: Arc::clone(self),
            id,
        })
    }

    /// Reads the key files again, changed or not (SIGHUP).
    pub fn reload(&self) -> Reloaded {
        let mut reloaded = Reloaded::default();
        let mut holders = self.holders();
        match self.keys.reload() {
            Change::Taken(keys) => {
                let reset = self.revoke(&keys, &mut holders);
                let mut change = format!("key files read again: {}", keys.describe());
                if reset > 0 {
                    change.push_str(&format!(
                        "; {reset} open connection(s) of revoked keys reset"
                    ));
                }
                reloaded.changes.push(change);
            }
            Change::Failed(why) => reloaded.errors.push(format!(
                "the key files do not read: {why}; new connections are refused until they do \
                 (open ones go on)"
            )),
            Change::Unchanged => {}
        }
        reloaded
    }

    /// Logs what a look at the files found, and resets the connections
    /// that new keys no longer admit (`holders` locked).
    fn take(&self, change: Change<ServeKeys>, holders: &mut HashMap<u64, Credential>) {
        match change {
            Change::Unchanged => {}
            Change::Taken(keys) => {
                info!("the key files changed: read again ({})", keys.describe());
                self.revoke(&keys, holders);
            }
            Change::Failed(why) => error!(
                "the key files changed and do not read: {why}; new connections are refused \
                 until they do (open ones go on)"
            ),
        }
    }

    /// Resets every open connection whose credential `keys` no longer
    /// admit (`holders` locked); how many.
    fn revoke(&self, keys: &ServeKeys, holders: &mut HashMap<u64, Credential>) -> usize {
        let gone: Vec<u64> = holders
            .iter()
            .filter(|(_, credential)| !keys.admits(credential))
            .map(|(&id, _)| id)
            .collect();
        for id in &gone {
            holders.remove(id);
            // Its log line says why when it closes.
            self.connections.abort(*id, revoked());
        }
        gone.len()
    }

    fn holders(&self) -> MutexGuard<'_, HashMap<u64, Credential>> {
        self.holders.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.admission.holders().remove(&self.id);
    }
}

/// Why a connection of a revoked key ends.
fn revoked() -> io::Error {
    io::Error::new(
        ErrorKind::PermissionDenied,
        "its key is no longer authorized (the key files changed)",
    )
}

/// Looks at the key files every [`WATCH_EVERY`] while the admission is
/// in use.
fn watch(admission: &Weak<Admission>) {
    loop {
        std::thread::sleep(WATCH_EVERY);
        let Some(admission) = admission.upgrade() else {
            return;
        };
        let _ = admission.keys();
    }
}
