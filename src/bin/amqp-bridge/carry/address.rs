//! Where the broker is, and who we are there: the URL (`--url`,
//! `AMQP_URL`, a config file's `url`) and, when the password is kept out
//! of it, the file it is in (`--password-file`), read again at each
//! connection so that a changed password is taken at the next reconnect.
//!
//! ```ignore
//! let address = BrokerAddress::new("amqp://bridge@broker/", Some("/run/secrets/amqp".into()));
//! let connector = Connector::open(&address.resolve()?)?;
//! ```

use amqp_stream::BrokerUrl;
use std::io::{self, ErrorKind};
use std::path::{Path, PathBuf};

/// A broker URL, and the file its password is in (if any). Neither
/// `Debug` nor any message shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerAddress {
    url: String,
    password_file: Option<PathBuf>,
}

impl BrokerAddress {
    /// The broker at `url`, its password in `password_file` if given (it
    /// replaces one in the URL).
    pub fn new(url: &str, password_file: Option<PathBuf>) -> BrokerAddress {
        BrokerAddress {
            url: url.to_string(),
            password_file,
        }
    }

    /// The URL as given (perhaps with a password in it: never log it).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The password file, if any.
    pub fn password_file(&self) -> Option<&PathBuf> {
        self.password_file.as_ref()
    }

    /// Checks the URL and that the password file reads: the error is one
    /// line without the password.
    pub fn check(&self) -> Result<(), String> {
        self.resolve()
            .map_err(|err| err.to_string())?
            .parse::<BrokerUrl>()
            .map(drop)
            .map_err(|err| err.to_string())
    }

    /// The URL to connect with: the password file's password in it, when
    /// there is one (read now).
    pub fn resolve(&self) -> io::Result<String> {
        let Some(file) = &self.password_file else {
            return Ok(self.url.clone());
        };
        let password = read_password(file)?;
        let mut url = url::Url::parse(&self.url)
            .map_err(|_| io::Error::new(ErrorKind::InvalidInput, "bad broker URL"))?;
        if url.username().is_empty() {
            // amqp://host/ means user guest: the password file is for it.
            url.set_username("guest")
                .map_err(|()| io::Error::new(ErrorKind::InvalidInput, "bad broker URL"))?;
        }
        url.set_password(Some(&password))
            .map_err(|()| io::Error::new(ErrorKind::InvalidInput, "bad broker URL"))?;
        Ok(url.to_string())
    }
}

impl std::fmt::Debug for BrokerAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = self
            .url
            .parse::<BrokerUrl>()
            .map_or_else(|_| "(a bad URL)".to_string(), |url| url.to_string());
        f.debug_struct("BrokerAddress")
            .field("url", &shown)
            .field("password_file", &self.password_file)
            .finish()
    }
}

/// The password in `file`: its first line, without the line end.
fn read_password(file: &Path) -> io::Result<String> {
    let text = std::fs::read_to_string(file).map_err(|err| {
        io::Error::new(
            err.kind(),
            format!("password file {}: {err}", file.display()),
        )
    })?;
    let password = text.lines().next().unwrap_or_default();
    if password.is_empty() {
        return Err(io::Error::new(
            ErrorKind::InvalidInput,
            format!(
                "password file {}: its first line is empty (it holds the password alone)",
                file.display()
            ),
        ));
    }
    Ok(password.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(text: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("amqp-bridge-pw-{}", uuid::Uuid::new_v4()));
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn the_password_file_goes_into_the_url_and_nowhere_else() {
        let file = file_with("s3cret:/@%\n");
        let address = BrokerAddress::new("amqp://bridge:old@broker:5673/", Some(file.clone()));
        let url: BrokerUrl = address.resolve().unwrap().parse().unwrap();
        assert_eq!(url.username(), "bridge");
        assert_eq!(url.vhost(), "/");
        assert!(!format!("{address:?}").contains("s3cret"));
        assert!(!format!("{address:?}").contains("old"));
        address.check().unwrap();
        let guest = BrokerAddress::new("amqp://broker", Some(file.clone()));
        assert_eq!(
            guest
                .resolve()
                .unwrap()
                .parse::<BrokerUrl>()
                .unwrap()
                .username(),
            "guest"
        );
        std::fs::write(&file, "\n").unwrap();
        let err = address.check().unwrap_err();
        assert!(err.contains("first line is empty"), "{err}");
        std::fs::remove_file(&file).unwrap();
        let err = address.check().unwrap_err();
        assert!(err.contains("password file"), "{err}");
    }
}
