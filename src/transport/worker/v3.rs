//! Setting up a version-3 stream: no channel, queue or consumer of its
//! own, only a stream id on its connection's shared transport
//! ([`Mux`](crate::transport::mux::Mux)). The worker's loop after the handshake is
//! the one every version runs.

use super::assignment::Assignment;
use super::commands::Control;
use super::connected::Connected;
use super::handshake::{Inbound, await_handshake, send_handshake};
use super::publisher::{Publisher, SharedChannel};
use super::shared_transport::SharedTransport;
use crate::session::shared::Failure;
use crate::transport::connection::BrokerConnection;
use crate::transport::mux::{Mux, Registration};
use std::sync::Arc;

/// A version-3 stream's handshake (in a thread of its own, or the
/// caller's), after which the connection's engine runs the stream.
pub(super) fn run(connection: Arc<BrokerConnection>, assignment: Box<Assignment>) {
    let Assignment {
        role,
        options,
        setup,
        ends,
    } = *assignment;
    // A peer that ignores the window is aborted by the demultiplexer
    // before its frames reach the stream: as the inbox would (see
    // `Inbox::abort`), but before they take up memory.
    let abort: Box<dyn Fn(String) + Send> = {
        let (shared, control) = (Arc::clone(&ends.shared), ends.control_sender.clone());
        Box::new(move |why: String| {
            shared.fail(Failure::Protocol(why.clone()));
            let _ = control.send(Control::Abort(why));
            // Called by the demultiplexer, which must not run the worker.
            shared.wake_engine();
        })
    };
    let window = options.get_window() as u64;
    // A client that was not pinned to version 3 (it remembered that the
    // listener took it) asks again as version 2 when refused: it takes an
    // older listener's answer (version 1, or 2 from before version 3),
    // which names no stream, as that refusal.
    let awaits_answer = matches!(role, super::role::Role::Client { .. })
        && options.get_protocol_version().is_none();
    // Setting the transport up (the connection's first version-3
    // stream) takes broker round trips: a client waits for them until
    // its deadline only.
    let give_up = role.give_up();
    let transport =
        SharedTransport::of_until(&connection, give_up.as_ref().map(|give_up| give_up.at))
            .unwrap_or_else(|| Err(give_up.as_ref().expect("a deadline passed").error()));
    let id = Mux::new_stream_id();
    let registered = transport.and_then(|transport| {
        let bell = transport
            .engine
            .bell(Arc::clone(&id), transport.mux.unconfirmed());
        transport
            .mux
            .register(
                Arc::clone(&id),
                Box::new(bell.clone()),
                window,
                abort,
                awaits_answer,
            )
            .map(|registration| (transport, bell, registration))
    });
    let (transport, bell, registration) = match registered {
        Ok(registered) => registered,
        Err(err) => {
            let _ = setup.send(Err(err));
            return;
        }
    };
    let Registration {
        id,
        deliveries,
        confirms,
        returns,
        held,
    } = registration;
    let mux = &transport.mux;
    // From now on the handles ring the engine after every message.
    ends.shared.set_carrier(Box::new(bell.clone()));
    let queue = mux.queue().to_string();
    let channel = SharedChannel {
        mux: Arc::clone(mux),
        own: Arc::clone(&id),
        peer: None,
    };
    let mut publisher = Publisher::new(channel, confirms);
    log::debug!("stream {queue}#{id}: handshake starts");
    let agreed = send_handshake(&role, &queue, &options, &mut publisher).and_then(|sent| {
        await_handshake(
            &connection,
            &role,
            sent,
            &options,
            Inbound {
                deliveries: &deliveries,
                consumer: None,
                returns: &returns,
                believed_untied: Some(&|queue| mux.untied_answer_believed(&id, queue)),
            },
            &mut publisher,
        )
    });
    let agreed = match agreed {
        Ok(agreed) => agreed,
        Err(err) => {
            mux.unregister(&id);
            let _ = setup.send(Err(err));
            return;
        }
    };
    let connected = Connected {
        connection,
        options,
        setup,
        ends,
        agreed,
        local_name: format!("{queue}#{id}"),
        local_queue: queue,
        publisher,
        returns,
        deliveries,
        held: Some(held),
    };
    // The engine runs the stream from here.
    match connected.into_worker() {
        Some((worker, name)) => transport.engine.adopt(worker, &bell, name, mux),
        None => mux.unregister(&id),
    }
}
