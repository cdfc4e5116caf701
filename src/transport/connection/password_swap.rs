//! Keeps the password out of amiquip's log of the login, without touching
//! the process's logging.
//!
//! amiquip 0.4 logs each method of the AMQP login at `debug` (target
//! `amiquip::io_loop::handshake_state`), the `start-ok` among them, whose
//! SASL PLAIN response is `\0user\0password` in clear. A library cannot
//! filter another crate's records without changing the process-wide
//! `log` level, which belongs to the application. So amiquip never gets
//! the password: it logs in with a *mask* of it (as many `*` as the
//! password has bytes), and the socket it writes through puts the
//! password in place of the mask in the one frame that carries it, on its
//! way out. The frame keeps its length, so nothing else changes; amiquip's
//! record shows the user name and the mask.
//!
//! The swap looks for the whole SASL response field (its 4-byte length,
//! the user name and the mask) in what amiquip writes; amiquip serialises
//! each frame whole before writing it, so the field is found in one
//! piece, and writes that stop part of the way through it are followed
//! byte by byte. Should it never be found, the broker gets the mask and
//! refuses the login: the failure is loud, never a leak.

/// The mask amiquip logs in with instead of `password`.
pub(crate) fn mask(password: &str) -> String {
    "*".repeat(password.len())
}

/// Puts the password in place of its mask in the bytes written to the
/// broker, once; then lets everything through unchanged.
pub(crate) struct PasswordSwap {
    /// The SASL PLAIN response field as amiquip writes it, with the mask.
    field: Vec<u8>,
    password: Vec<u8>,
    /// Bytes of the connection written so far.
    written: u64,
    /// Where in the connection the mask starts, once found.
    at: Option<u64>,
}

impl PasswordSwap {
    /// The swap for a PLAIN login as `username` with `password`; `None`
    /// when there is nothing to hide.
    pub(crate) fn new(username: &str, password: &str) -> Option<PasswordSwap> {
        if password.is_empty() {
            return None;
        }
        let response = format!("\0{username}\0{}", mask(password));
        let length = u32::try_from(response.len()).ok()?;
        let mut field = length.to_be_bytes().to_vec();
        field.extend_from_slice(response.as_bytes());
        Some(PasswordSwap {
            field,
            password: password.as_bytes().to_vec(),
            written: 0,
            at: None,
        })
    }

    /// Whether the password has gone out: nothing is left to change.
    pub(crate) fn done(&self) -> bool {
        self.at
            .is_some_and(|at| self.written >= at + self.password.len() as u64)
    }

    /// What to write for `buf`, the bytes at the current position: `buf`
    /// itself, or a copy with (part of) the password in place of the mask.
    pub(crate) fn outgoing<'a>(&mut self, buf: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
        if self.at.is_none()
            && let Some(found) = buf
                .windows(self.field.len())
                .position(|window| window == self.field)
        {
            let mask_offset = self.field.len() - self.password.len();
            self.at = Some(self.written + (found + mask_offset) as u64);
        }
        let Some(at) = self.at else {
            return buf.into();
        };
        let start = self.written;
        let end = start + buf.len() as u64;
        let mask_end = at + self.password.len() as u64;
        if end <= at || start >= mask_end {
            return buf.into();
        }
        let mut out = buf.to_vec();
        for position in start.max(at)..end.min(mask_end) {
            out[(position - start) as usize] = self.password[(position - at) as usize];
        }
        out.into()
    }

    /// Counts `n` bytes as written.
    pub(crate) fn wrote(&mut self, n: usize) {
        self.written += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `stream` through a swap, `chunk` bytes at a time at most,
    /// as a socket that accepts `accept` bytes of each write.
    fn send(swap: &mut PasswordSwap, stream: &[u8], accept: usize) -> Vec<u8> {
        let mut sent = Vec::new();
        let mut position = 0;
        while position < stream.len() {
            let out = swap.outgoing(&stream[position..]);
            let n = accept.min(out.len());
            sent.extend_from_slice(&out[..n]);
            swap.wrote(n);
            position += n;
        }
        sent
    }

    /// A start-ok method frame's tail as amiquip writes it, for `password`.
    fn login(user: &str, password: &str) -> Vec<u8> {
        let response = format!("\0{user}\0{password}");
        let mut bytes = b"AMQP\0\0\x09\x01\x01\0\0\0\0\0\x80\0\x0a\0\x0b".to_vec();
        bytes.extend_from_slice(b"\0\0\0\x10product\x53\0\0\0\x05pwd**");
        bytes.extend_from_slice(b"\x05PLAIN");
        bytes.extend_from_slice(&(response.len() as u32).to_be_bytes());
        bytes.extend_from_slice(response.as_bytes());
        bytes.extend_from_slice(b"\x05en_US\xce");
        bytes
    }

    #[test]
    fn the_password_replaces_its_mask_and_nothing_else() {
        for accept in [1, 2, 3, 7, 1000] {
            let mut swap = PasswordSwap::new("streamer", "s3cr*t").unwrap();
            let sent = send(&mut swap, &login("streamer", &mask("s3cr*t")), accept);
            assert_eq!(sent, login("streamer", "s3cr*t"), "{accept} bytes a write");
            assert!(swap.done());
            // Later frames go through untouched, even with a mask in them.
            let later = login("streamer", &mask("s3cr*t"));
            assert_eq!(send(&mut swap, &later, accept), later);
        }
    }

    #[test]
    fn a_multibyte_password_keeps_the_frame_length() {
        let password = "pässwörd-€";
        let mut swap = PasswordSwap::new("ü", password).unwrap();
        let masked = login("ü", &mask(password));
        let sent = send(&mut swap, &masked, 5);
        assert_eq!(sent.len(), masked.len());
        assert_eq!(sent, login("ü", password));
    }

    #[test]
    fn without_the_field_nothing_changes_and_the_broker_gets_the_mask() {
        let mut swap = PasswordSwap::new("someone-else", "secret").unwrap();
        let masked = login("streamer", &mask("secret"));
        assert_eq!(send(&mut swap, &masked, 4), masked);
        assert!(!swap.done());
    }

    #[test]
    fn an_empty_password_needs_no_swap() {
        assert!(PasswordSwap::new("guest", "").is_none());
    }
}
