//! Where the broker is, and who we are there: the URL (`--url`,
//! `AMQP_URL`, a config file's `url`) and, when the password is kept out
//! of it, the file it is in (`--password-file`), read again at each
//! connection so that a changed password is taken at the next reconnect.
//!
//! ```ignore
//! let address = BrokerAddress::new("amqp://bridge@broker/", Some("/run/secrets/amqp".into()));
//! let connector = Connector::open(&address.resolve()?)?;
//! ```

use amqp_stream::BrokerUrls;
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
            .parse::<BrokerUrls>()
            .map(drop)
            .map_err(|err| err.to_string())
    }

    /// The URL to connect with: the password file's password in it (in
    /// each node's URL of a cluster's list), when there is one (read now).
    pub fn resolve(&self) -> io::Result<String> {
        let Some(file) = &self.password_file else {
            return Ok(self.url.clone());
        };
        let password = read_password(file)?;
        let urls = split_list(&self.url)
            .into_iter()
            .map(|url| with_password(url, &password))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(urls.join(","))
    }
}

/// `url` with `password` in it (and user `guest` if it names none).
fn with_password(url: &str, password: &str) -> io::Result<String> {
    let bad = || io::Error::new(ErrorKind::InvalidInput, "bad broker URL");
    let mut url = url::Url::parse(url.trim()).map_err(|_| bad())?;
    if url.username().is_empty() {
        // amqp://host/ means user guest: the password file is for it.
        url.set_username("guest").map_err(|()| bad())?;
    }
    url.set_password(Some(password)).map_err(|()| bad())?;
    Ok(url.to_string())
}

/// The URLs of a list as `BrokerUrls` splits it: at each comma followed
/// by `amqp://` or `amqps://` (a comma elsewhere belongs to its URL).
fn split_list(list: &str) -> Vec<&str> {
    let starts_url = |rest: &str| {
        let rest = rest.trim_start().to_ascii_lowercase();
        rest.starts_with("amqp://") || rest.starts_with("amqps://")
    };
    let mut urls = Vec::new();
    let mut start = 0;
    for (comma, _) in list.match_indices(',') {
        if starts_url(&list[comma + 1..]) {
            urls.push(&list[start..comma]);
            start = comma + 1;
        }
    }
    urls.push(&list[start..]);
    urls
}

impl std::fmt::Debug for BrokerAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = self
            .url
            .parse::<BrokerUrls>()
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
    use amqp_stream::BrokerUrl;

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

    #[test]
    fn the_password_file_goes_into_every_node_of_a_list() {
        let file = file_with("pw,amqp://x\n");
        let list = "amqp://bridge@node1:5672/v,h,amqp://node2:5673/v,h";
        let address = BrokerAddress::new(list, Some(file.clone()));
        let resolved = address.resolve().unwrap();
        let urls: BrokerUrls = resolved.parse().unwrap();
        let users: Vec<_> = urls.as_slice().iter().map(|u| u.username()).collect();
        assert_eq!(users, ["bridge", "guest"]);
        assert_eq!(urls.as_slice()[1].vhost(), "v,h");
        assert_eq!(
            resolved.matches(":pw,amqp%3A%2F%2Fx@").count(),
            2,
            "{resolved}"
        );
        std::fs::remove_file(&file).unwrap();
    }
}
