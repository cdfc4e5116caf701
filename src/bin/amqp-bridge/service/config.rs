//! `run`'s config file: TOML, one table per tunnel, `[KIND.NAME]`, whose
//! keys are the options of the subcommand KIND without their dashes.
//! Each table becomes that subcommand's argument list and is parsed by
//! the same clap structures as the command line, so every option of
//! every tunnel kind works in the file, checked the same way.
//!
//! ```toml
//! url = "amqp://bridge@broker:5672/"     # optional: every tunnel's broker
//! password_file = "/etc/amqp-bridge/password"   # optional: its password
//!
//! [serve.db]
//! queue = "db"
//! to = "127.0.0.1:5432"
//!
//! [forward.web]
//! listen = "127.0.0.1:8080"
//! queue = "web"
//! grace = 30
//! ```

use crate::carry::address::BrokerAddress;
use crate::cli::{Cli, Command};
use crate::service::kinds::KINDS;
use amqp_stream::BrokerUrls;
use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{CommandFactory, Parser};
use std::error::Error as _;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// What a tunnel gets when its table does not say.
#[derive(Debug, Clone)]
pub struct Defaults {
    /// The broker URL of `run` (`--url`, `AMQP_URL`).
    pub url: String,
    /// `run --password-file`, if given.
    pub password_file: Option<PathBuf>,
    /// `run --grace`, if given.
    pub grace: Option<Duration>,
    /// `run --fail-fast`.
    pub fail_fast: bool,
}

/// One tunnel of the file.
#[derive(Debug)]
pub struct TunnelSpec {
    /// Its subcommand: `serve`, `forward`, ...
    pub kind: String,
    /// The NAME of its `[KIND.NAME]` table.
    pub name: String,
    /// Its whole argument list (with the broker URL in it: never log it).
    /// Two specs with the same kind, name and arguments are the same
    /// tunnel: a reload leaves it alone.
    pub args: Vec<String>,
    /// Its broker.
    pub broker: BrokerAddress,
    /// The arguments, parsed.
    pub command: Command,
}

impl TunnelSpec {
    /// Whether `other` is the same tunnel, unchanged.
    pub fn same_as(&self, other: &TunnelSpec) -> bool {
        self.kind == other.kind && self.name == other.name && self.args == other.args
    }

    /// `kind "name"`, for messages.
    pub fn label(&self) -> String {
        format!("{} {:?}", self.kind, self.name)
    }
}

/// Reads and checks the file at `path`. The error is one line:
/// `FILE:LINE: KIND "NAME": what is wrong`.
pub fn load(path: &Path, defaults: &Defaults) -> Result<Vec<TunnelSpec>, String> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|err| format!("{shown}: {err}"))?;
    parse(&text, &shown, defaults)
}

/// Checks the config `text` (read from `file`, for messages).
pub fn parse(text: &str, file: &str, defaults: &Defaults) -> Result<Vec<TunnelSpec>, String> {
    let at = |span: Range<usize>, message: String| {
        format!("{file}:{}: {message}", line_of(text, span.start))
    };
    let document = DeTable::parse(text).map_err(|err| {
        let line = err.span().map_or(1, |span| line_of(text, span.start));
        format!("{file}:{line}: {}", err.message())
    })?;
    let mut url = defaults.url.clone();
    let mut password_file = defaults.password_file.clone();
    let mut sections = Vec::new();
    for (key, value) in document.get_ref() {
        match (key.get_ref().as_ref(), value.get_ref()) {
            ("url", DeValue::String(text)) => {
                check_url(text).map_err(|err| at(value.span(), format!("url: {err}")))?;
                url = text.to_string();
            }
            ("password_file" | "password-file", DeValue::String(text)) => {
                password_file = Some(PathBuf::from(text.as_ref()));
            }
            ("url" | "password_file" | "password-file", _) => {
                return Err(at(
                    value.span(),
                    format!("{key}: expected a string", key = key.get_ref()),
                ));
            }
            (kind, DeValue::Table(tunnels)) if KINDS.contains(&kind) => {
                sections.push((kind.to_string(), tunnels));
            }
            (other, _) => {
                return Err(at(
                    key.span(),
                    format!(
                        "unknown {other:?}: expected url, password_file or tables [KIND.NAME], \
                         KIND one of {}",
                        KINDS.join(", ")
                    ),
                ));
            }
        }
    }
    // In the order of the file: tunnels start in it, and the first
    // error in it is the one reported.
    let mut specs = Vec::new();
    for (kind, tunnels) in sections {
        for (name, table) in tunnels {
            let name_text = name.get_ref().to_string();
            let spec = match table.get_ref() {
                DeValue::Table(table) => Tunnel {
                    text,
                    file,
                    kind: &kind,
                    name: &name_text,
                    name_span: name.span(),
                }
                .spec(table, &url, password_file.as_ref(), defaults),
                _ => Err(at(
                    name.span(),
                    format!("{kind}.{name_text}: expected a table [{kind}.NAME] per tunnel"),
                )),
            };
            specs.push((name.span().start, spec));
        }
    }
    if specs.is_empty() {
        return Err(format!(
            "{file}: no tunnel in it: add a table [KIND.NAME] per tunnel, KIND one of {}",
            KINDS.join(", ")
        ));
    }
    specs.sort_by_key(|(offset, _)| *offset);
    specs.into_iter().map(|(_, spec)| spec).collect()
}

/// One `[KIND.NAME]` table being turned into an argument list.
struct Tunnel<'a> {
    text: &'a str,
    file: &'a str,
    kind: &'a str,
    name: &'a str,
    name_span: Range<usize>,
}

impl Tunnel<'_> {
    /// The error `message` about this tunnel, at `span`.
    fn error(&self, span: Range<usize>, message: impl std::fmt::Display) -> String {
        format!(
            "{}:{}: {} {:?}: {message}",
            self.file,
            line_of(self.text, span.start),
            self.kind,
            self.name
        )
    }

    fn spec(
        &self,
        table: &DeTable<'_>,
        url: &str,
        password_file: Option<&PathBuf>,
        defaults: &Defaults,
    ) -> Result<TunnelSpec, String> {
        let subcommand = Cli::command();
        let subcommand = subcommand
            .find_subcommand(self.kind)
            .expect("every tunnel kind is a subcommand");
        let mut args = vec!["amqp-bridge".to_string(), self.kind.to_string()];
        let mut spans: Vec<(String, Range<usize>)> = Vec::new();
        let mut own_url = None;
        let mut own_password_file = None;
        let mut broker_span = self.name_span.clone();
        for (key, value) in table {
            let flag = key.get_ref().replace('_', "-");
            let span = key.span();
            if flag == "url" || flag == "password-file" {
                let DeValue::String(text) = value.get_ref() else {
                    return Err(self.error(value.span(), format!("{flag}: expected a string")));
                };
                if flag == "url" {
                    check_url(text)
                        .map_err(|err| self.error(value.span(), format!("url: {err}")))?;
                    own_url = Some(text.to_string());
                } else {
                    own_password_file = Some(PathBuf::from(text.as_ref()));
                }
                broker_span = value.span();
                continue;
            }
            if flag == "metrics" {
                return Err(self.error(
                    span,
                    "metrics: set it on the command line (run --metrics ADDR:PORT), for all tunnels",
                ));
            }
            let Some(arg) = subcommand
                .get_arguments()
                .find(|arg| arg.get_long() == Some(flag.as_str()) && flag != "help")
            else {
                let known: Vec<&str> = subcommand
                    .get_arguments()
                    .filter_map(|arg| arg.get_long())
                    .filter(|long| *long != "help")
                    .collect();
                return Err(self.error(
                    span,
                    format!(
                        "unknown option {:?} (a {} tunnel takes: {})",
                        key.get_ref(),
                        self.kind,
                        known.join(", ")
                    ),
                ));
            };
            let takes_values = arg.get_action().takes_values();
            let values: Vec<&Spanned<DeValue<'_>>> = match value.get_ref() {
                DeValue::Array(items) if takes_values => items.iter().collect(),
                _ => vec![value],
            };
            for value in values {
                match (takes_values, value.get_ref()) {
                    (false, DeValue::Boolean(true)) => args.push(format!("--{flag}")),
                    (false, DeValue::Boolean(false)) => {}
                    (false, _) => {
                        return Err(
                            self.error(value.span(), format!("{flag}: expected true or false"))
                        );
                    }
                    (true, scalar) => {
                        let text = scalar_text(scalar).ok_or_else(|| {
                            self.error(
                                value.span(),
                                format!("{flag}: expected a string, a number or a list of them"),
                            )
                        })?;
                        args.push(format!("--{flag}={text}"));
                    }
                }
            }
            spans.push((flag, span));
        }
        if let Some(grace) = defaults.grace
            && !spans.iter().any(|(flag, _)| flag == "grace")
            && subcommand
                .get_arguments()
                .any(|a| a.get_long() == Some("grace"))
        {
            args.push(format!("--grace={}", grace.as_secs_f64()));
        }
        if defaults.fail_fast && !spans.iter().any(|(flag, _)| flag == "fail-fast") {
            args.push("--fail-fast".to_string());
        }
        let url = own_url.unwrap_or_else(|| url.to_string());
        let password_file = own_password_file.or_else(|| password_file.cloned());
        let broker = BrokerAddress::new(&url, password_file.clone());
        broker.check().map_err(|err| self.error(broker_span, err))?;
        args.push(format!("--url={url}"));
        if let Some(file) = &password_file {
            args.push(format!("--password-file={}", file.display()));
        }
        let cli = Cli::try_parse_from(&args).map_err(|err| self.clap_error(&err, &spans))?;
        Ok(TunnelSpec {
            kind: self.kind.to_string(),
            name: self.name.to_string(),
            args,
            broker,
            command: cli.command,
        })
    }

    /// clap's error about this table, at the line of the key it is about
    /// (else the table's own line).
    fn clap_error(&self, err: &clap::Error, spans: &[(String, Range<usize>)]) -> String {
        let flag = match err.get(ContextKind::InvalidArg) {
            Some(ContextValue::String(arg)) => arg
                .split_whitespace()
                .next()
                .map(|f| f.trim_start_matches('-').to_string()),
            _ => None,
        };
        let span = flag
            .as_ref()
            .and_then(|flag| spans.iter().find(|(f, _)| f == flag))
            .map_or(self.name_span.clone(), |(_, span)| span.clone());
        let message = match (err.kind(), &flag, err.source()) {
            (ErrorKind::ValueValidation, Some(flag), Some(source)) => format!("--{flag}: {source}"),
            (ErrorKind::MissingRequiredArgument, _, _) => match err.get(ContextKind::InvalidArg) {
                Some(ContextValue::Strings(missing)) => {
                    // `--to <HOST:PORT>`, or a group: `<--to <HOST:PORT>|--allow <..>>`.
                    let keys: Vec<String> = missing
                        .iter()
                        .map(|arg| {
                            arg.split(['|', ' '])
                                .map(|word| word.trim_start_matches('<'))
                                .filter_map(|word| word.strip_prefix("--"))
                                .collect::<Vec<&str>>()
                                .join(" or ")
                        })
                        .collect();
                    format!("missing {}", keys.join(", "))
                }
                _ => "a required option is missing".to_string(),
            },
            _ => {
                let rendered = err.render().to_string();
                let first = rendered.lines().next().unwrap_or_default().to_string();
                first.strip_prefix("error: ").unwrap_or(&first).to_string()
            }
        };
        self.error(span, message)
    }
}

/// A scalar as a command-line value.
fn scalar_text(value: &DeValue<'_>) -> Option<String> {
    match value {
        DeValue::String(text) => Some(text.to_string()),
        DeValue::Integer(number) => {
            let digits = number.as_str().replace('_', "");
            let digits = digits.trim_start_matches("0x").trim_start_matches("0o");
            let digits = digits.trim_start_matches("0b");
            i128::from_str_radix(digits, number.radix())
                .ok()
                .map(|n| n.to_string())
        }
        DeValue::Float(number) => Some(number.as_str().replace('_', "")),
        DeValue::Boolean(yes) => Some(yes.to_string()),
        _ => None,
    }
}

/// Checks a broker URL; the message never shows the password.
fn check_url(url: &str) -> Result<(), String> {
    url.parse::<BrokerUrls>()
        .map(drop)
        .map_err(|e| e.to_string())
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let offset = offset.min(text.len());
    text.as_bytes()[..offset]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Defaults {
        Defaults {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            password_file: None,
            grace: None,
            fail_fast: false,
        }
    }

    fn check(text: &str) -> Result<Vec<TunnelSpec>, String> {
        parse(text, "tunnels.toml", &defaults())
    }

    #[test]
    fn each_table_is_a_tunnel_parsed_by_its_subcommand() {
        let specs = check(
            r#"
url = "amqp://bridge:secret@broker:5672/%2f"

[serve.db]
queue = "db"
to = "127.0.0.1:5432"
shared = true

[forward.web]
listen = "127.0.0.1:0"
queue = "web"
grace = 2.5

[http.front]
listen = "127.0.0.1:0"
url = "amqp://other:pw@broker2/%2f"
"#,
        )
        .unwrap();
        assert_eq!(specs.len(), 3);
        let by_kind = |kind: &str| specs.iter().find(|s| s.kind == kind).unwrap();
        let Command::Serve(serve) = &by_kind("serve").command else {
            panic!("not serve")
        };
        assert_eq!((serve.queue.as_str(), serve.shared), ("db", true));
        assert_eq!(serve.to.as_ref().unwrap().to_string(), "127.0.0.1:5432");
        assert_eq!(
            by_kind("serve").broker,
            BrokerAddress::new("amqp://bridge:secret@broker:5672/%2f", None)
        );
        let Command::Forward(forward) = &by_kind("forward").command else {
            panic!("not forward")
        };
        assert_eq!(forward.service.grace, Duration::from_millis(2500));
        assert_eq!(
            by_kind("http").broker,
            BrokerAddress::new("amqp://other:pw@broker2/%2f", None)
        );
        assert_eq!(by_kind("http").name, "front");
    }

    #[test]
    fn errors_name_the_line_and_the_tunnel() {
        let err = check("[serve.db]\nqueue = \"db\"\n\nto = \"127.0.0.1\"\n").unwrap_err();
        assert!(
            err.starts_with("tunnels.toml:4: serve \"db\": --to: bad target address"),
            "{err}"
        );
        let err = check("[serve.db]\nqueue = \"db\"\n").unwrap_err();
        assert_eq!(err, "tunnels.toml:1: serve \"db\": missing to or allow");
        let err =
            check("[forward.x]\nlisten = \"127.0.0.1:0\"\nqueue = \"q\"\ntoo = 1\n").unwrap_err();
        assert!(
            err.starts_with("tunnels.toml:4: forward \"x\": unknown option \"too\""),
            "{err}"
        );
        let err = check("[serve.db]\nqueue = \"db\"\nto = \"127.0.0.1:1\"\nshared = \"yes\"\n")
            .unwrap_err();
        assert!(
            err.starts_with("tunnels.toml:4: serve \"db\": shared: expected true or false"),
            "{err}"
        );
        let err = check("\n\n[connect.x]\nqueue = \"q\"\n").unwrap_err();
        assert!(
            err.starts_with("tunnels.toml:3: unknown \"connect\""),
            "{err}"
        );
        let err = check("[serve.db\nqueue = 1\n").unwrap_err();
        assert!(err.starts_with("tunnels.toml:1: "), "{err}");
        let err = check("[forward.x]\nlisten = \"127.0.0.1:0\"\nqueue = \"\"\n").unwrap_err();
        assert!(
            err.starts_with("tunnels.toml:3: forward \"x\": --queue: "),
            "{err}"
        );
    }

    #[test]
    fn tunnels_come_in_the_order_of_the_file_and_so_does_the_first_error() {
        let text = "[serve.b]\nqueue = \"b\"\nto = \"127.0.0.1:1\"\n\
                    [forward.a]\nlisten = \"127.0.0.1:0\"\nqueue = \"a\"\n\
                    [serve.c]\nqueue = \"c\"\nto = \"127.0.0.1:1\"\n";
        let names: Vec<String> = check(text).unwrap().into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["b", "a", "c"]);
        let err = check(&format!("{text}[forward.z]\n"))
            .map(drop)
            .unwrap_err();
        assert!(
            err.starts_with("tunnels.toml:10: forward \"z\": missing"),
            "{err}"
        );
        let err = check(
            &text
                .replace("\"c\"", "\"\"")
                .replace("queue = \"a\"", "queue = \"\""),
        )
        .map(drop)
        .unwrap_err();
        assert!(err.starts_with("tunnels.toml:6: forward \"a\""), "{err}");
    }

    #[test]
    fn a_bad_url_is_refused_without_showing_its_password() {
        let err = check("url = \"http://user:hunter2@host/\"\n").unwrap_err();
        assert!(err.starts_with("tunnels.toml:1: url: "), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn a_url_may_list_a_clusters_nodes() {
        let nodes = "amqp://b:pw@node1/%2f,amqp://b:pw@node2/%2f";
        let specs = check(&format!(
            "url = \"{nodes}\"\n[serve.s]\nqueue = \"q\"\nto = \"127.0.0.1:1\"\n"
        ))
        .unwrap();
        assert_eq!(specs[0].broker.url(), nodes);
        let err = check("url = \"amqp://b:hunter2@node1,node2/%2f\"\n").unwrap_err();
        assert!(err.contains("comma"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn run_grace_is_the_default_and_identical_tables_are_the_same_tunnel() {
        let text = "[forward.x]\nlisten = \"127.0.0.1:0\"\nqueue = \"q\"\n";
        let with_grace = Defaults {
            grace: Some(Duration::from_secs(3)),
            ..defaults()
        };
        let specs = parse(text, "f", &with_grace).unwrap();
        let Command::Forward(forward) = &specs[0].command else {
            panic!("not forward")
        };
        assert_eq!(forward.service.grace, Duration::from_secs(3));
        let again = parse(text, "f", &with_grace).unwrap();
        assert!(specs[0].same_as(&again[0]));
        let changed = parse(&text.replace("\"q\"", "\"r\""), "f", &with_grace).unwrap();
        assert!(!specs[0].same_as(&changed[0]));
    }
}
