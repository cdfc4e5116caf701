//! A stream through the broker as the bridge carries it: secured end to
//! end when key options are given (the secure handshake is the first
//! layer on every stream, after the serve's [keys
//! notice](crate::carry::keys_notice)), plain otherwise. Either way a
//! [`Duplex`].

use crate::carry::abort::abort_stream;
use crate::carry::keys_notice::{self, Noticed};
use crate::carry::splice::{Duplex, Health, stream_health};
use amqp_stream::Stream;
use amqp_stream::secure::{self, Channel, ClientConfig, PublicKey, SecureStream, ServerConfig};
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A stream, plain or secured.
pub enum BrokerStream {
    /// Without key options. On a client's side, its first read checks
    /// for a serve that requires keys (set: not checked yet).
    Plain(Stream, Arc<AtomicBool>),
    /// After a secure handshake.
    Secure(SecureStream<Noticed<Stream>>),
}

/// The server's side: the handshake with the client when `config` is
/// given. A client that fails it is reset (nothing else happens to it)
/// and the error says why, without key material.
pub fn accept(stream: Stream, config: Option<&ServerConfig>) -> io::Result<BrokerStream> {
    let Some(config) = config else {
        return Ok(BrokerStream::Plain(stream, Arc::default()));
    };
    let kept = stream.try_clone()?;
    match secure::server(Noticed::server(stream), config) {
        Ok(secured) => Ok(BrokerStream::Secure(secured)),
        Err(err) => {
            // The last handle: dropped, it resets the stream.
            abort_stream(&kept);
            Err(err)
        }
    }
}

/// The client's side: the handshake with the server when `config` is
/// given; a failure resets the stream. Without `config`, a serve that
/// requires keys fails the first read with "this serve requires a key".
pub fn connect(stream: Stream, config: Option<&ClientConfig>) -> io::Result<BrokerStream> {
    let Some(config) = config else {
        return Ok(BrokerStream::Plain(stream, Arc::new(AtomicBool::new(true))));
    };
    let kept = stream.try_clone()?;
    match secure::client(Noticed::client(stream), config) {
        Ok(secured) => Ok(BrokerStream::Secure(secured)),
        Err(err) => {
            abort_stream(&kept);
            Err(err)
        }
    }
}

impl BrokerStream {
    /// The client's public key, proved in the secure handshake (on a
    /// serve's side, with key pairs).
    pub fn peer_key(&self) -> Option<&PublicKey> {
        match self {
            BrokerStream::Plain(..) => None,
            BrokerStream::Secure(secured) => secured.peer_key(),
        }
    }

    /// The stream under the secure layer, if any.
    pub fn stream(&self) -> &Stream {
        match self {
            BrokerStream::Plain(stream, _) => stream,
            BrokerStream::Secure(secured) => secured.get_ref().get_ref(),
        }
    }
}

impl Read for &BrokerStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            BrokerStream::Plain(stream, unchecked) => {
                let n = (&*stream).read(buf)?;
                // The serve's first bytes, when it requires keys, are its
                // notice: one message, so one read.
                if n > 0
                    && unchecked.swap(false, Ordering::SeqCst)
                    && keys_notice::is_notice(&buf[..n])
                {
                    return Err(keys_notice::requires_a_key());
                }
                Ok(n)
            }
            BrokerStream::Secure(secured) => (&*secured).read(buf),
        }
    }
}

impl Write for &BrokerStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            BrokerStream::Plain(stream, _) => (&*stream).write(buf),
            BrokerStream::Secure(secured) => (&*secured).write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            BrokerStream::Plain(stream, _) => (&*stream).flush(),
            BrokerStream::Secure(secured) => (&*secured).flush(),
        }
    }
}

impl Read for BrokerStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self).read(buf)
    }
}

impl Write for BrokerStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        (&*self).flush()
    }
}

impl Duplex for BrokerStream {
    fn duplicate(&self) -> io::Result<Self> {
        Ok(match self {
            BrokerStream::Plain(stream, unchecked) => {
                BrokerStream::Plain(stream.try_clone()?, Arc::clone(unchecked))
            }
            BrokerStream::Secure(secured) => BrokerStream::Secure(secured.try_clone()?),
        })
    }

    fn finish(&self) -> io::Result<()> {
        match self {
            BrokerStream::Plain(stream, _) => stream.finish(),
            BrokerStream::Secure(secured) => {
                // The close record and the FIN wait for the broker's
                // confirms: no write limit on them.
                secured.get_ref().set_write_timeout(None)?;
                secured.shutdown(Shutdown::Write)
            }
        }
    }

    fn stop_reading(&self) {
        self.stream().stop_reading();
    }

    fn abort(&self) {
        abort_stream(self.stream());
    }

    fn drain(&self) {
        // Bounded by the write limit: the broker's confirms, if they come.
        let _ = (&*self).flush();
    }

    fn set_write_limit(&self, limit: Option<Duration>) -> io::Result<()> {
        self.stream().set_write_timeout(limit)
    }
    fn settle(&self) {
        // A stream closes in order unless it was reset.
    }
    fn health(&self) -> Health {
        // The stream under the secure layer knows.
        stream_health(self.stream())
    }
}
