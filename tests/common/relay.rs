//! A TCP relay between a client under test and the broker, which the test
//! can cut: every relayed connection is closed at once and new ones are
//! accepted and closed straight away, until the test restores it.

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// Both sockets of every relayed connection, to cut them.
    sockets: Mutex<Vec<TcpStream>>,
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
        for socket in self.shared.sockets.lock().unwrap().drain(..) {
            let _ = socket.shutdown(Shutdown::Both);
        }
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
    fn relay(&self, client: TcpStream) -> io::Result<()> {
        let server = TcpStream::connect(self.target)?;
        client.set_nodelay(true)?;
        server.set_nodelay(true)?;
        {
            let mut sockets = self.sockets.lock().unwrap();
            sockets.push(client.try_clone()?);
            sockets.push(server.try_clone()?);
        }
        pump(client.try_clone()?, server.try_clone()?);
        pump(server, client);
        Ok(())
    }
}

/// Copies `from` to `to` on a thread; at the end closes both.
fn pump(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let _ = io::copy(&mut from, &mut to);
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    });
}
