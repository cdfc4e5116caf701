//! A connection's version-3 transport: the demultiplexer with its
//! publishing channel ([`Mux`]) and the [`Engine`] that runs the
//! connection's streams once they are connected. The connection keeps it
//! (untyped) for as long as it lives.

use super::engine::Engine;
use crate::error::Error;
use crate::transport::bounded_wait;
use crate::transport::connection::BrokerConnection;
use crate::transport::mux::Mux;
use std::sync::Arc;
use std::time::Instant;

/// What every version-3 stream on one connection shares.
pub(crate) struct SharedTransport {
    pub(crate) mux: Arc<Mux>,
    pub(crate) engine: Engine,
}

impl SharedTransport {
    /// `connection`'s transport, set up on first use (and again after its
    /// consumer ended).
    fn of(connection: &BrokerConnection) -> Result<Arc<SharedTransport>, Error> {
        connection.keep(SharedTransport::is_alive, |connection| {
            let mux = Mux::start(|| connection.open_channel("version-3 streams"))?;
            Ok(Arc::new(SharedTransport {
                mux,
                engine: Engine::start()?,
            }))
        })
    }

    /// [`of`](Self::of), waiting for its setup (broker round trips, the
    /// first time) until `deadline` only: `None` after it.
    pub(crate) fn of_until(
        connection: &Arc<BrokerConnection>,
        deadline: Option<Instant>,
    ) -> Option<Result<Arc<SharedTransport>, Error>> {
        if let Some(transport) = connection.kept(SharedTransport::is_alive) {
            return Some(Ok(transport));
        }
        let connection = Arc::clone(connection);
        bounded_wait::until(deadline, "amqp-stream-setup", move || {
            SharedTransport::of(&connection)
        })
    }

    /// Whether the connection's consumer still runs.
    fn is_alive(&self) -> bool {
        self.mux.is_alive()
    }
}
