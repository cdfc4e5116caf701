//! A TCP relay between a client under test and the broker, which the test
//! can break in three ways:
//! - **cut**: every relayed connection is closed at once, and new ones are
//!   accepted and closed straight away until the test restores it;
//! - **stall**: nothing is forwarded either way, but every socket stays
//!   open (a network that silently stopped delivering);
//! - **half-open**: the broker's side is closed, the client's stays open and
//!   what the client sends vanishes (the client's end of a connection
//!   whose other end is gone without a word);
//! - **choke**: what the client sends is left unread, so its socket
//!   fills up and its writes block (a broker that stopped reading a
//!   publishing connection: a memory or disk alarm);
//! - **deaf after a pattern**: once the broker sends the client something
//!   containing a given byte string, nothing more reaches the client,
//!   while what the client sends still reaches the broker (a client that
//!   acts on a message and dies before it hears the answer).

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A relay on a local port in front of `target`.
pub struct Relay {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

struct Shared {
    target: SocketAddr,
    up: AtomicBool,
    closing: AtomicBool,
    /// Nothing is forwarded while set (stall and half-open).
    frozen: AtomicBool,
    /// What the client sends is left unread while set.
    choked: AtomicBool,
    /// Bytes clients sent that were dropped while frozen.
    discarded: AtomicU64,
    /// Once the broker sends this, the client hears nothing more.
    deaf_after: Mutex<Option<Vec<u8>>>,
    /// Set when `deaf_after` was seen.
    deaf: AtomicBool,
    /// Both sockets of every relayed connection, to cut them: (client,
    /// broker) pairs.
    sockets: Mutex<Vec<(TcpStream, TcpStream)>>,
}

impl Relay {
    /// Starts relaying connections from a fresh local port to `target`.
    pub fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("relay port");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            target,
            up: AtomicBool::new(true),
            closing: AtomicBool::new(false),
            frozen: AtomicBool::new(false),
            choked: AtomicBool::new(false),
            discarded: AtomicU64::new(0),
            deaf_after: Mutex::new(None),
            deaf: AtomicBool::new(false),
            sockets: Mutex::new(Vec::new()),
        });
        let accepting = Arc::clone(&shared);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if accepting.closing.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                if !accepting.up.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                if let Err(err) = accepting.relay(client) {
                    eprintln!("relay: {err}");
                }
            }
        });
        Relay { addr, shared }
    }

    /// A relay in front of the test broker (`AMQP_URL`'s host and port).
    pub fn to_broker() -> Relay {
        let url: amqp_stream::BrokerUrl = super::url().parse().expect("broker URL");
        let target = std::net::ToSocketAddrs::to_socket_addrs(&(url.host(), url.port()))
            .expect("broker address")
            .next()
            .expect("broker address");
        Relay::start(target)
    }

    /// The test broker's URL with the relay's port in place of the broker's.
    pub fn url(&self) -> String {
        let url = super::url();
        let broker: amqp_stream::BrokerUrl = url.parse().expect("broker URL");
        let from = format!("{}:{}", broker.host(), broker.port());
        let to = self.addr.to_string();
        if url.contains(&from) {
            url.replacen(&from, &to, 1)
        } else {
            url.replacen(broker.host(), &to, 1)
        }
    }

    /// The relay's local address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every relayed connection and refuses new ones (they are
    /// accepted and closed at once) until [`restore`](Relay::restore).
    pub fn cut(&self) {
        self.shared.up.store(false, Ordering::SeqCst);
        for (client, broker) in self.shared.sockets.lock().unwrap().drain(..) {
            let _ = client.shutdown(Shutdown::Both);
            let _ = broker.shutdown(Shutdown::Both);
        }
    }

    /// Stops forwarding either way; every socket stays open.
    pub fn stall(&self) {
        self.shared.frozen.store(true, Ordering::SeqCst);
    }

    /// How many bytes clients sent while the relay was stalled (or
    /// half-open), dropped instead of forwarded: a test waits for a
    /// client to try something on a stalled link by watching this grow.
    pub fn discarded(&self) -> u64 {
        self.shared.discarded.load(Ordering::SeqCst)
    }

    /// Closes the broker's side of every relayed connection; the client's
    /// side stays open, and what the client sends is read and dropped.
    pub fn half_open(&self) {
        self.shared.frozen.store(true, Ordering::SeqCst);
        for (_, broker) in self.shared.sockets.lock().unwrap().iter() {
            let _ = broker.shutdown(Shutdown::Both);
        }
    }

    /// Leaves what clients send unread until [`unchoke`](Relay::unchoke):
    /// their sockets fill up and their writes block.
    pub fn choke(&self) {
        self.shared.choked.store(true, Ordering::SeqCst);
    }

    /// Reads and forwards what clients send again.
    pub fn unchoke(&self) {
        self.shared.choked.store(false, Ordering::SeqCst);
    }

    /// [`url`](Relay::url) with AMQP heartbeats off: for a connection the
    /// test keeps silent (choked, say) longer than a heartbeat.
    pub fn url_without_heartbeats(&self) -> String {
        let url = self.url();
        let separator = if url.contains('?') { '&' } else { '?' };
        format!("{url}{separator}heartbeat=0")
    }

    /// Forwards nothing more from the broker to its clients once the
    /// broker has sent one of them `pattern` (that chunk still goes).
    pub fn deaf_after(&self, pattern: &[u8]) {
        *self.shared.deaf_after.lock().unwrap() = Some(pattern.to_vec());
    }

    /// Whether [`deaf_after`](Relay::deaf_after)'s pattern has come.
    pub fn is_deaf(&self) -> bool {
        self.shared.deaf.load(Ordering::SeqCst)
    }

    /// The local ports of the relay's sockets to the broker: the ports the
    /// broker sees its relayed connections come from.
    pub fn broker_side_ports(&self) -> Vec<u16> {
        self.shared
            .sockets
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(_, broker)| broker.local_addr().ok().map(|a| a.port()))
            .collect()
    }

    /// The ports the relayed clients connected from: their local ports.
    pub fn client_ports(&self) -> Vec<u16> {
        self.shared
            .sockets
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(client, _)| client.peer_addr().ok().map(|a| a.port()))
            .collect()
    }

    /// Relays new connections again.
    pub fn restore(&self) {
        self.shared.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
        self.shared.closing.store(true, Ordering::SeqCst);
        // Wake the accepting thread so that it sees `closing` and ends.
        let _ = TcpStream::connect(self.addr);
    }
}

impl Shared {
    fn relay(self: &Arc<Self>, client: TcpStream) -> io::Result<()> {
        let server = TcpStream::connect(self.target)?;
        client.set_nodelay(true)?;
        server.set_nodelay(true)?;
        self.sockets
            .lock()
            .unwrap()
            .push((client.try_clone()?, server.try_clone()?));
        let shared = Arc::clone(self);
        let (from_client, to_server) = (client.try_clone()?, server.try_clone()?);
        std::thread::spawn(move || shared.pump(from_client, to_server, true));
        let shared = Arc::clone(self);
        std::thread::spawn(move || shared.pump(server, client, false));
        Ok(())
    }

    /// Copies `from` to `to` until either ends, then closes both. While
    /// frozen it forwards nothing: the client's side (`from_client`) is
    /// read and dropped, the broker's is left unread. While choked the
    /// client's side is left unread (and what a read blocked at the time
    /// of the choke returns is held until the unchoke).
    fn pump(&self, mut from: TcpStream, mut to: TcpStream, from_client: bool) {
        let mut buf = vec![0; 64 * 1024];
        loop {
            let unread = if from_client {
                &self.choked
            } else {
                &self.frozen
            };
            if unread.load(Ordering::SeqCst) {
                if self.closing.load(Ordering::SeqCst) {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
                continue;
            }
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            // Read while the choke came: held back too, until unchoked.
            while from_client
                && self.choked.load(Ordering::SeqCst)
                && !self.closing.load(Ordering::SeqCst)
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            if self.frozen.load(Ordering::SeqCst) {
                if from_client {
                    self.discarded.fetch_add(n as u64, Ordering::SeqCst);
                }
                continue;
            }
            if !from_client && self.deaf.load(Ordering::SeqCst) {
                continue;
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
            if !from_client
                && let Some(pattern) = &*self.deaf_after.lock().unwrap()
                && buf[..n]
                    .windows(pattern.len())
                    .any(|w| w == pattern.as_slice())
            {
                self.deaf.store(true, Ordering::SeqCst);
            }
        }
        let _ = from.shutdown(Shutdown::Both);
        // Half-open: the broker's side ended, the client's stays open.
        if from_client || !self.frozen.load(Ordering::SeqCst) {
            let _ = to.shutdown(Shutdown::Both);
        }
    }
}
