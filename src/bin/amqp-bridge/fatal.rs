//! Errors that end the bridge: a one-line message and an exit code that
//! says what kind of failure it was (listed in `--help`).

use std::fmt;
use std::io::{self, ErrorKind};
use std::process::ExitCode;

/// A failure that ends the program.
#[derive(Debug)]
pub struct Fatal {
    code: u8,
    message: String,
}

impl Fatal {
    /// Bad arguments: exit code 2.
    pub fn usage(message: impl Into<String>) -> Fatal {
        Fatal {
            code: 2,
            message: message.into(),
        }
    }

    /// A failure while running: exit code 1.
    pub fn runtime(message: impl Into<String>) -> Fatal {
        Fatal {
            code: 1,
            message: message.into(),
        }
    }

    /// Opening the broker connection failed.
    pub fn broker(err: io::Error) -> Fatal {
        Fatal {
            code: broker_code(&err),
            message: err.to_string(),
        }
    }

    /// Binding a queue or a TCP port failed.
    pub fn bind(err: io::Error, what: &str) -> Fatal {
        match err.kind() {
            ErrorKind::AddrInUse => Fatal {
                code: 5,
                message: format!("{what}: {err}"),
            },
            ErrorKind::InvalidInput => Fatal::usage(format!("{what}: {err}")),
            _ => Fatal::runtime(format!("{what}: {err}")),
        }
    }

    /// Opening a stream failed.
    pub fn connect(err: io::Error) -> Fatal {
        match err.kind() {
            // The broker is not there (a stream that opened its own
            // connection): the broker's code, not "nobody serves".
            ErrorKind::HostUnreachable => Fatal::broker(err),
            ErrorKind::ConnectionRefused => Fatal {
                code: 6,
                message: err.to_string(),
            },
            ErrorKind::InvalidInput => Fatal::usage(err.to_string()),
            _ => Fatal::runtime(err.to_string()),
        }
    }

    /// The same failure, its message prefixed with `what` it is about.
    pub fn context(self, what: &str) -> Fatal {
        Fatal {
            code: self.code,
            message: format!("{what}: {}", self.message),
        }
    }

    /// The process exit code.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.code)
    }
}

/// The exit code for a broker connection that could not be opened: 2
/// for a bad URL or TLS setting, 4 for refused credentials or virtual
/// host, 3 for a broker that cannot be reached.
fn broker_code(err: &io::Error) -> u8 {
    match err.kind() {
        ErrorKind::InvalidInput | ErrorKind::Unsupported => 2,
        ErrorKind::PermissionDenied => 4,
        _ => 3,
    }
}

/// Whether a failed attempt to open the broker connection may succeed
/// later (a broker down, restarting, or not yet given our user): all but
/// a bad URL or TLS setting.
pub fn is_worth_retrying(err: &io::Error) -> bool {
    broker_code(err) != 2
}

impl fmt::Display for Fatal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_to_documented_codes() {
        let code = |fatal: Fatal| fatal.code;
        let err = |kind| io::Error::new(kind, "x");
        assert_eq!(code(Fatal::broker(err(ErrorKind::HostUnreachable))), 3);
        assert_eq!(code(Fatal::broker(err(ErrorKind::ConnectionRefused))), 3);
        assert_eq!(code(Fatal::broker(err(ErrorKind::TimedOut))), 3);
        assert_eq!(code(Fatal::broker(err(ErrorKind::PermissionDenied))), 4);
        assert_eq!(code(Fatal::broker(err(ErrorKind::InvalidInput))), 2);
        assert_eq!(code(Fatal::bind(err(ErrorKind::AddrInUse), "q")), 5);
        assert_eq!(code(Fatal::connect(err(ErrorKind::ConnectionRefused))), 6);
        assert_eq!(code(Fatal::connect(err(ErrorKind::HostUnreachable))), 3);
        assert_eq!(code(Fatal::connect(err(ErrorKind::TimedOut))), 1);
        assert_eq!(code(Fatal::usage("bad")), 2);
    }
}
