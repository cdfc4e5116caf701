//! A stream through the broker as the bridge carries it: secured end to
//! end when key options are given (the secure handshake is the first
//! layer on every stream), plain otherwise. Either way a [`Duplex`].

use crate::carry::abort::abort_stream;
use crate::carry::splice::Duplex;
use amqp_stream::Stream;
use amqp_stream::secure::{self, ClientConfig, SecureStream, ServerConfig};
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::time::Duration;

/// A stream, plain or secured.
pub enum BrokerStream {
    /// Without key options.
    Plain(Stream),
    /// After a secure handshake.
    Secure(SecureStream<Stream>),
}

/// The server's side: the handshake with the client when `config` is
/// given. A client that fails it is reset (nothing else happens to it)
/// and the error says why, without key material.
pub fn accept(stream: Stream, config: Option<&ServerConfig>) -> io::Result<BrokerStream> {
    let Some(config) = config else {
        return Ok(BrokerStream::Plain(stream));
    };
    let kept = stream.try_clone()?;
    match secure::server(stream, config) {
        Ok(secured) => Ok(BrokerStream::Secure(secured)),
        Err(err) => {
            // The last handle: dropped, it resets the stream.
            abort_stream(&kept);
            Err(err)
        }
    }
}

/// The client's side: the handshake with the server when `config` is
/// given; a failure resets the stream.
pub fn connect(stream: Stream, config: Option<&ClientConfig>) -> io::Result<BrokerStream> {
    let Some(config) = config else {
        return Ok(BrokerStream::Plain(stream));
    };
    let kept = stream.try_clone()?;
    match secure::client(stream, config) {
        Ok(secured) => Ok(BrokerStream::Secure(secured)),
        Err(err) => {
            abort_stream(&kept);
            Err(err)
        }
    }
}

impl BrokerStream {
    /// The stream under the secure layer, if any.
    pub fn stream(&self) -> &Stream {
        match self {
            BrokerStream::Plain(stream) => stream,
            BrokerStream::Secure(secured) => secured.get_ref(),
        }
    }
}

impl Read for &BrokerStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            BrokerStream::Plain(stream) => (&*stream).read(buf),
            BrokerStream::Secure(secured) => (&*secured).read(buf),
        }
    }
}

impl Write for &BrokerStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            BrokerStream::Plain(stream) => (&*stream).write(buf),
            BrokerStream::Secure(secured) => (&*secured).write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            BrokerStream::Plain(stream) => (&*stream).flush(),
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
            BrokerStream::Plain(stream) => BrokerStream::Plain(stream.try_clone()?),
            BrokerStream::Secure(secured) => BrokerStream::Secure(secured.try_clone()?),
        })
    }

    fn finish(&self) -> io::Result<()> {
        match self {
            BrokerStream::Plain(stream) => stream.finish(),
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
}
