//! Which Noise handshake a pair of configurations runs, and the hello
//! each end sends first to say which.

use std::fmt;

/// The Noise parameters the key pairs are for (X25519).
pub(crate) const KEY_PARAMS: &str = "Noise_XK_25519_AESGCM_SHA256";

/// The first bytes each end sends: this magic, then its [`Mode`].
pub(crate) const MAGIC: &[u8; 8] = b"\0AMQPSC1";

/// The length of a hello.
pub(crate) const HELLO_LEN: usize = MAGIC.len() + 1;

/// The keys an end holds, which decide the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// A pre-shared key only: `NNpsk0`.
    Psk,
    /// Static key pairs only: `XK`.
    Keys,
    /// Both: `XKpsk3`.
    KeysAndPsk,
}

impl Mode {
    /// The mode of an end holding a PSK and/or a key pair.
    pub(crate) fn of(psk: bool, keys: bool) -> Option<Mode> {
        match (psk, keys) {
            (true, false) => Some(Mode::Psk),
            (false, true) => Some(Mode::Keys),
            (true, true) => Some(Mode::KeysAndPsk),
            (false, false) => None,
        }
    }

    /// The Noise protocol name.
    pub(crate) fn params(self) -> &'static str {
        match self {
            Mode::Psk => "Noise_NNpsk0_25519_AESGCM_SHA256",
            Mode::Keys => KEY_PARAMS,
            Mode::KeysAndPsk => "Noise_XKpsk3_25519_AESGCM_SHA256",
        }
    }

    /// Where the PSK goes in the pattern, if there is one.
    pub(crate) fn psk_location(self) -> Option<u8> {
        match self {
            Mode::Psk => Some(0),
            Mode::Keys => None,
            Mode::KeysAndPsk => Some(3),
        }
    }

    /// Whether the pattern has three messages (the client's last one
    /// proves it is live); `NNpsk0` has two, so the client confirms with
    /// an empty first transport record.
    pub(crate) fn has_third_message(self) -> bool {
        self != Mode::Psk
    }

    fn byte(self) -> u8 {
        match self {
            Mode::Psk => 1,
            Mode::Keys => 2,
            Mode::KeysAndPsk => 3,
        }
    }

    /// This end's hello.
    pub(crate) fn hello(self) -> [u8; HELLO_LEN] {
        let mut hello = [0u8; HELLO_LEN];
        hello[..MAGIC.len()].copy_from_slice(MAGIC);
        hello[MAGIC.len()] = self.byte();
        hello
    }

    /// The mode in a peer's hello: `Err(None)` when it is no hello at
    /// all, `Err(Some(byte))` for a mode this version does not know.
    pub(crate) fn from_hello(hello: &[u8; HELLO_LEN]) -> Result<Mode, Option<u8>> {
        if &hello[..MAGIC.len()] != MAGIC {
            return Err(None);
        }
        match hello[MAGIC.len()] {
            1 => Ok(Mode::Psk),
            2 => Ok(Mode::Keys),
            3 => Ok(Mode::KeysAndPsk),
            other => Err(Some(other)),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Psk => "a pre-shared key",
            Mode::Keys => "key pairs",
            Mode::KeysAndPsk => "key pairs and a pre-shared key",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mode_parses_and_reads_back_from_its_hello() {
        for mode in [Mode::Psk, Mode::Keys, Mode::KeysAndPsk] {
            assert!(mode.params().parse::<snow::params::NoiseParams>().is_ok());
            assert_eq!(Mode::from_hello(&mode.hello()), Ok(mode));
        }
        assert_eq!(Mode::from_hello(b"GET / HTT"), Err(None));
    }
}
