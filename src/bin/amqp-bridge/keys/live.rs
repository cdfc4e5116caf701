//! Key files that are read again when they change, as sshd reads
//! `authorized_keys` at each login: every handshake looks at the files
//! (one `stat` each: size, times, inode) and reads them again if any
//! changed; SIGHUP reads them again whatever their stamps say. A change
//! that does not read (a file half written, a typo) is logged once and
//! fails every handshake until the files read again: a key removed from
//! a file must never come back because the file broke.
//!
//! ```ignore
//! let live = LiveKeys::open(vec![authorized.clone()], move || load(&authorized))?;
//! let (keys, change) = live.current();
//! ```

use crate::fatal::Fatal;
use std::io::{self, ErrorKind};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

/// What identifies a file's content without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(path: &PathBuf) -> Option<Stamp> {
        let meta = std::fs::metadata(path).ok()?;
        Some(Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        })
    }
}

/// How the keys stand after a look at the files.
pub enum Change<K> {
    /// No file changed.
    Unchanged,
    /// The files changed and were read: these are the keys now.
    Taken(Arc<K>),
    /// The files changed and do not read: why (handshakes fail now).
    Failed(String),
}

/// Keys loaded from files, read again when the files change.
pub struct LiveKeys<K> {
    files: Vec<PathBuf>,
    load: Box<dyn Fn() -> Result<K, Fatal> + Send + Sync>,
    state: Mutex<State<K>>,
}

struct State<K> {
    stamps: Vec<Option<Stamp>>,
    keys: Result<Arc<K>, String>,
}

impl<K> LiveKeys<K> {
    /// Loads the keys with `load`, which reads `files`: a failure here is
    /// the command's (exit code 2).
    pub fn open(
        files: Vec<PathBuf>,
        load: impl Fn() -> Result<K, Fatal> + Send + Sync + 'static,
    ) -> Result<LiveKeys<K>, Fatal> {
        // Stamped before they are read: a change during the read is seen
        // at the next look.
        let stamps = files.iter().map(Stamp::of).collect();
        let keys = Arc::new(load()?);
        Ok(LiveKeys {
            files,
            load: Box::new(load),
            state: Mutex::new(State {
                stamps,
                keys: Ok(keys),
            }),
        })
    }

    /// The keys now, after a look at the files (read again if changed),
    /// and what the look found. Fails while changed files do not read.
    pub fn current(&self) -> (io::Result<Arc<K>>, Change<K>) {
        self.look(false)
    }

    /// Reads the files again, changed or not (SIGHUP).
    pub fn reload(&self) -> Change<K> {
        self.look(true).1
    }

    fn look(&self, forced: bool) -> (io::Result<Arc<K>>, Change<K>) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let stamps: Vec<Option<Stamp>> = self.files.iter().map(Stamp::of).collect();
        let change = if forced || stamps != state.stamps {
            state.stamps = stamps;
            match (self.load)() {
                Ok(keys) => {
                    let keys = Arc::new(keys);
                    state.keys = Ok(Arc::clone(&keys));
                    Change::Taken(keys)
                }
                Err(err) => {
                    state.keys = Err(err.to_string());
                    Change::Failed(err.to_string())
                }
            }
        } else {
            Change::Unchanged
        };
        let keys = match &state.keys {
            Ok(keys) => Ok(Arc::clone(keys)),
            Err(why) => Err(io::Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "the key files changed and do not read ({why}): no handshake until they do"
                ),
            )),
        };
        (keys, change)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_file_is_read_again_and_a_broken_one_fails_until_mended() {
        let path = std::env::temp_dir().join(format!("live-keys-{}", uuid::Uuid::new_v4()));
        std::fs::write(&path, "1").unwrap();
        let read = path.clone();
        let live = LiveKeys::open(vec![path.clone()], move || {
            let text = std::fs::read_to_string(&read).map_err(|e| Fatal::usage(e.to_string()))?;
            text.trim()
                .parse::<u32>()
                .map_err(|e| Fatal::usage(e.to_string()))
        })
        .unwrap();
        assert!(matches!(live.current(), (Ok(k), Change::Unchanged) if *k == 1));
        std::fs::write(&path, "22").unwrap();
        assert!(matches!(live.current(), (Ok(k), Change::Taken(_)) if *k == 22));
        assert!(matches!(live.current(), (Ok(_), Change::Unchanged)));
        std::fs::write(&path, "not a number").unwrap();
        let (keys, change) = live.current();
        assert!(matches!(change, Change::Failed(_)));
        assert_eq!(keys.unwrap_err().kind(), ErrorKind::InvalidInput);
        // Still failing, and said once.
        assert!(matches!(live.current(), (Err(_), Change::Unchanged)));
        std::fs::write(&path, "333").unwrap();
        assert!(matches!(live.current(), (Ok(k), Change::Taken(_)) if *k == 333));
        assert!(matches!(live.reload(), Change::Taken(k) if *k == 333));
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(live.current(), (Err(_), Change::Failed(_))));
    }
}
