//! `serve --allow`: the targets a client may ask for. Nothing is allowed
//! unless a rule allows it.
//!
//! A rule is `HOST:PORTS`:
//! - `HOST`: a domain name (`db.example.com`, any case, a trailing dot
//!   ignored); `*.example.com` (any name below `example.com`, at any
//!   depth, not `example.com` itself); an address (`127.0.0.1`, `[::1]`);
//!   a network (`10.0.0.0/8`, `[fd00::/8]`); or `*` (any host).
//! - `PORTS`: a port (`5432`), a range (`8000-8099`) or `*` (any port).
//!
//! How a request is matched, so that DNS cannot move a target past the
//! list (DNS rebinding):
//! - A request for an address is allowed when an address or network rule
//!   (or `*`) covers it. Name rules never match an address.
//! - A request for a name is allowed, before anything is resolved, when a
//!   name rule (or `*`) covers it: it is then resolved and connected to
//!   whatever it resolves to (listing a name trusts its DNS).
//! - Otherwise the name is resolved (only when there are address rules) and
//!   only the resolved addresses an address rule covers are connected to:
//!   the address checked is the address connected, with no second lookup
//!   in between. When none is covered, the request is refused ("not
//!   allowed"); a name that does not resolve is "host unreachable".
//!
//! An IPv4 address written as IPv6 (`::ffff:10.0.0.1`) is matched as the
//! IPv4 address it is.
//!
//! ```ignore
//! let allow = AllowList::new(vec![AllowRule::parse("*.example.com:443")?]);
//! assert!(allow.permits_name("www.example.com", 443));
//! ```

use crate::carry::target_request::{Host, Reply, TargetRequest, check_name};
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};

/// One `--allow` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowRule {
    host: HostPattern,
    ports: Ports,
    text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    /// `*`: any host.
    Any,
    /// A name, lower-case, without a trailing dot.
    Name(String),
    /// `*.SUFFIX`: stored as `.suffix`.
    Below(String),
    /// An address or a network.
    Net { addr: IpAddr, prefix: u8 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ports {
    low: u16,
    high: u16,
}

impl Ports {
    fn parse(text: &str) -> Result<Ports, String> {
        let port = |p: &str| {
            p.parse::<u16>()
                .map_err(|_| format!("{p:?} is not a port (0 to 65535)"))
        };
        match text {
            "*" => Ok(Ports {
                low: 0,
                high: u16::MAX,
            }),
            _ => match text.split_once('-') {
                Some((low, high)) => {
                    let (low, high) = (port(low)?, port(high)?);
                    if low > high {
                        return Err(format!("the port range {text} runs backwards"));
                    }
                    Ok(Ports { low, high })
                }
                None => {
                    let port = port(text)?;
                    Ok(Ports {
                        low: port,
                        high: port,
                    })
                }
            },
        }
    }

    fn contain(self, port: u16) -> bool {
        (self.low..=self.high).contains(&port)
    }
}

impl AllowRule {
    /// Parses `HOST:PORTS` (see the module's documentation).
    pub fn parse(text: &str) -> Result<AllowRule, String> {
        let bad = |why: String| {
            format!(
                "bad --allow rule {text:?}: {why} (expected HOST:PORTS, such as \
                 db.example.com:5432, *.example.com:443, 10.0.0.0/8:*, [::1]:22)"
            )
        };
        let (host, ports) = split_host_port(text).map_err(bad)?;
        let ports = Ports::parse(ports).map_err(bad)?;
        let host = HostPattern::parse(host).map_err(bad)?;
        Ok(AllowRule {
            host,
            ports,
            text: text.to_string(),
        })
    }

    /// Whether this is a rule for names (or `*`), matched before resolving.
    fn permits_name(&self, name: &str, port: u16) -> bool {
        self.ports.contain(port)
            && match &self.host {
                HostPattern::Any => true,
                HostPattern::Name(rule) => *rule == name,
                HostPattern::Below(suffix) => name.len() > suffix.len() && name.ends_with(suffix),
                HostPattern::Net { .. } => false,
            }
    }

    /// Whether this is a rule for addresses (or `*`) that covers `addr`.
    fn permits_addr(&self, addr: SocketAddr) -> bool {
        self.ports.contain(addr.port())
            && match &self.host {
                HostPattern::Any => true,
                HostPattern::Net { addr: net, prefix } => {
                    in_network(addr.ip().to_canonical(), *net, *prefix)
                }
                HostPattern::Name(_) | HostPattern::Below(_) => false,
            }
    }

    fn is_for_addresses(&self) -> bool {
        matches!(self.host, HostPattern::Any | HostPattern::Net { .. })
    }
}

impl fmt::Display for AllowRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// `HOST` and `PORTS` of `HOST:PORTS`, where an IPv6 host is in brackets.
fn split_host_port(text: &str) -> Result<(&str, &str), String> {
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| "a '[' without its ']'".to_string())?;
        let ports = after
            .strip_prefix(':')
            .ok_or_else(|| "no :PORTS after the ']'".to_string())?;
        return Ok((host, ports));
    }
    let (host, ports) = text
        .rsplit_once(':')
        .ok_or_else(|| "no :PORTS".to_string())?;
    if host.contains(':') {
        return Err("an IPv6 address goes in brackets: [::1]:22".to_string());
    }
    if host.is_empty() {
        return Err("no host".to_string());
    }
    Ok((host, ports))
}

impl HostPattern {
    fn parse(host: &str) -> Result<HostPattern, String> {
        if host == "*" {
            return Ok(HostPattern::Any);
        }
        if let Some((addr, prefix)) = host.split_once('/') {
            let addr: IpAddr = addr
                .parse()
                .map_err(|_| format!("{addr:?} is not an IP address"))?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let prefix: u8 = prefix
                .parse()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("the prefix length /{prefix} is not 0 to {max}"))?;
            return Ok(HostPattern::net(addr, prefix));
        }
        if let Ok(addr) = host.parse::<IpAddr>() {
            let prefix = if addr.is_ipv4() { 32 } else { 128 };
            return Ok(HostPattern::net(addr, prefix));
        }
        let name = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        if let Some(suffix) = name.strip_prefix("*.") {
            check_rule_name(suffix)?;
            return Ok(HostPattern::Below(format!(".{suffix}")));
        }
        check_rule_name(&name)?;
        Ok(HostPattern::Name(name))
    }

    /// A network rule; an IPv4 network written as IPv6 is kept as IPv4.
    fn net(addr: IpAddr, prefix: u8) -> HostPattern {
        if let IpAddr::V6(v6) = addr
            && prefix >= 96
            && let Some(v4) = v6.to_ipv4_mapped()
        {
            return HostPattern::Net {
                addr: IpAddr::V4(v4),
                prefix: prefix - 96,
            };
        }
        HostPattern::Net { addr, prefix }
    }
}

fn check_rule_name(name: &str) -> Result<(), String> {
    check_name(name)?;
    if name.contains('*') || name.split('.').any(str::is_empty) {
        return Err(format!("{name:?} is not a domain name"));
    }
    Ok(())
}

/// Whether `ip` is in the network `net`/`prefix` (IPv4 and IPv6 never
/// mix).
fn in_network(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

/// What to do with a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Connect to these addresses, in this order, until one answers.
    Connect(Vec<SocketAddr>),
    /// Refuse with this answer, for this reason; connect nothing.
    Refuse(Reply, String),
}

/// The `--allow` rules of a `serve`.
#[derive(Debug, Clone)]
pub struct AllowList {
    rules: Vec<AllowRule>,
}

impl AllowList {
    /// The list of `rules` (empty: nothing is allowed).
    pub fn new(rules: Vec<AllowRule>) -> AllowList {
        AllowList { rules }
    }

    /// Whether a name rule covers `name` (lower-case) and `port`.
    pub fn permits_name(&self, name: &str, port: u16) -> bool {
        let name = name.strip_suffix('.').unwrap_or(name);
        self.rules.iter().any(|rule| rule.permits_name(name, port))
    }

    /// Whether an address rule covers `addr`.
    pub fn permits_addr(&self, addr: SocketAddr) -> bool {
        self.rules.iter().any(|rule| rule.permits_addr(addr))
    }

    /// Decides `request`; `resolve` looks a name up (called at most once,
    /// and only for a name).
    pub fn decide(
        &self,
        request: &TargetRequest,
        resolve: impl FnOnce(&str, u16) -> io::Result<Vec<SocketAddr>>,
    ) -> Decision {
        let not_allowed = |why: &str| Decision::Refuse(Reply::NotAllowed, why.to_string());
        match &request.host {
            Host::Ip(ip) => {
                let addr = SocketAddr::new(*ip, request.port);
                if self.permits_addr(addr) {
                    Decision::Connect(vec![addr])
                } else {
                    not_allowed("no --allow rule covers this address")
                }
            }
            Host::Name(name) if self.permits_name(name, request.port) => {
                match resolve(name, request.port) {
                    Ok(addrs) if !addrs.is_empty() => Decision::Connect(addrs),
                    Ok(_) => Decision::Refuse(
                        Reply::HostUnreachable,
                        "the name resolves to no address".to_string(),
                    ),
                    Err(err) => Decision::Refuse(
                        Reply::HostUnreachable,
                        format!("cannot resolve the name: {err}"),
                    ),
                }
            }
            Host::Name(name) => {
                if !self.rules.iter().any(AllowRule::is_for_addresses) {
                    return not_allowed("no --allow rule covers this name");
                }
                // A name that cannot be looked up cannot be checked: the
                // client is told the host is unreachable (SOCKS 4), as
                // when a name rule covers it.
                let resolved = match resolve(name, request.port) {
                    Ok(addrs) if !addrs.is_empty() => addrs,
                    Ok(_) => {
                        return Decision::Refuse(
                            Reply::HostUnreachable,
                            "the name resolves to no address".to_string(),
                        );
                    }
                    Err(err) => {
                        return Decision::Refuse(
                            Reply::HostUnreachable,
                            format!("cannot resolve the name: {err}"),
                        );
                    }
                };
                let permitted: Vec<SocketAddr> = resolved
                    .iter()
                    .copied()
                    .filter(|addr| self.permits_addr(*addr))
                    .collect();
                if permitted.is_empty() {
                    not_allowed(&format!(
                        "no --allow rule covers this name or the addresses it resolves to {resolved:?}"
                    ))
                } else {
                    Decision::Connect(permitted)
                }
            }
        }
    }
}

impl fmt::Display for AllowList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rules: Vec<&str> = self.rules.iter().map(|rule| rule.text.as_str()).collect();
        f.write_str(&rules.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(rules: &[&str]) -> AllowList {
        AllowList::new(rules.iter().map(|r| AllowRule::parse(r).unwrap()).collect())
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    fn request(host: &str, port: u16) -> TargetRequest {
        TargetRequest {
            host: Host::parse(host).unwrap(),
            port,
        }
    }

    fn never_resolves(name: &str, _: u16) -> io::Result<Vec<SocketAddr>> {
        panic!("{name} was resolved")
    }

    #[test]
    fn rules_of_every_shape_parse_and_bad_ones_say_why() {
        for good in [
            "db.example.com:5432",
            "DB.Example.com.:5432",
            "*.example.com:443",
            "10.0.0.0/8:*",
            "127.0.0.1:5432",
            "[::1]:22",
            "[fd00::/8]:8000-8099",
            "*:443",
            "localhost:0-65535",
        ] {
            AllowRule::parse(good).unwrap_or_else(|err| panic!("{good}: {err}"));
        }
        for (bad, why) in [
            ("db.example.com", "no :PORTS"),
            ("::1:22", "brackets"),
            ("10.0.0.0/33:*", "/33"),
            ("10.0.0.0/x:*", "/x"),
            ("host:70000", "not a port"),
            ("host:90-80", "backwards"),
            ("a..b:1", "not a domain name"),
            ("*.*.example.com:1", "cannot be in a host name"),
            ("ex ample.com:1", "cannot be in a host name"),
            (":80", "no host"),
            ("[::1:22", "without its ']'"),
            ("10.0.0.300/8:1", "not an IP address"),
        ] {
            let err = AllowRule::parse(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
            assert!(err.contains("HOST:PORTS"), "{bad}: {err}");
        }
    }

    #[test]
    fn nothing_is_allowed_by_default() {
        let empty = list(&[]);
        assert!(matches!(
            empty.decide(&request("127.0.0.1", 80), never_resolves),
            Decision::Refuse(Reply::NotAllowed, _)
        ));
        assert!(matches!(
            empty.decide(&request("localhost", 80), never_resolves),
            Decision::Refuse(Reply::NotAllowed, _)
        ));
    }

    #[test]
    fn names_are_matched_before_resolving() {
        let allow = list(&["*.example.com:443", "db.internal:5432"]);
        assert!(allow.permits_name("www.example.com", 443));
        assert!(allow.permits_name("a.b.example.com", 443));
        assert!(allow.permits_name("db.internal.", 5432));
        assert!(!allow.permits_name("example.com", 443));
        assert!(!allow.permits_name("badexample.com", 443));
        assert!(!allow.permits_name("www.example.com", 80));
        assert!(!allow.permits_name("db.internal", 5433));
        let resolved = allow.decide(&request("www.example.com", 443), |name, port| {
            assert_eq!((name, port), ("www.example.com", 443));
            Ok(vec![addr("127.0.0.1:443")])
        });
        // Listing a name trusts its DNS.
        assert_eq!(resolved, Decision::Connect(vec![addr("127.0.0.1:443")]));
        // A name outside the list is not even looked up without
        // address rules.
        assert!(matches!(
            allow.decide(&request("evil.test", 443), never_resolves),
            Decision::Refuse(Reply::NotAllowed, _)
        ));
        // An address is never matched by a name rule.
        assert!(matches!(
            allow.decide(&request("93.184.216.34", 443), never_resolves),
            Decision::Refuse(Reply::NotAllowed, _)
        ));
    }

    #[test]
    fn addresses_and_networks_are_matched_on_what_is_connected() {
        let allow = list(&["10.0.0.0/8:*", "127.0.0.1:5432", "[fd00::/8]:22"]);
        assert!(allow.permits_addr(addr("10.1.2.3:1")));
        assert!(!allow.permits_addr(addr("11.0.0.1:1")));
        assert!(allow.permits_addr(addr("127.0.0.1:5432")));
        assert!(!allow.permits_addr(addr("127.0.0.1:5433")));
        assert!(!allow.permits_addr(addr("127.0.0.2:5432")));
        assert!(allow.permits_addr(addr("[fd12::1]:22")));
        assert!(!allow.permits_addr(addr("[fe80::1]:22")));
        // IPv4 written as IPv6 is the IPv4 address.
        assert!(allow.permits_addr(addr("[::ffff:10.9.9.9]:80")));
        assert!(!allow.permits_addr(addr("[::ffff:11.9.9.9]:80")));

        // A name is resolved, and only the covered addresses kept.
        let decided = allow.decide(&request("mixed.test", 5432), |_, _| {
            Ok(vec![addr("192.168.1.1:5432"), addr("127.0.0.1:5432")])
        });
        assert_eq!(decided, Decision::Connect(vec![addr("127.0.0.1:5432")]));
        // A name that resolves (or rebinds) outside the list is refused.
        assert!(matches!(
            allow.decide(&request("rebound.test", 5432), |_, _| Ok(vec![addr(
                "169.254.169.254:5432"
            )])),
            Decision::Refuse(Reply::NotAllowed, _)
        ));
        // A name that does not resolve is unreachable, whatever rules
        // there are (as the README says), not "not allowed".
        assert!(matches!(
            allow.decide(&request("nowhere.test", 5432), |_, _| Err(
                io::Error::other("no such name")
            )),
            Decision::Refuse(Reply::HostUnreachable, _)
        ));
    }

    #[test]
    fn a_star_allows_any_host_on_its_ports() {
        let allow = list(&["*:443", "[::ffff:10.0.0.0/104]:80"]);
        assert!(allow.permits_name("anything.test", 443));
        assert!(allow.permits_addr(addr("8.8.8.8:443")));
        assert!(!allow.permits_addr(addr("8.8.8.8:80")));
        // The IPv4 network written as IPv6.
        assert!(allow.permits_addr(addr("10.3.3.3:80")));
        assert!(matches!(
            allow.decide(&request("unresolvable.test", 443), |_, _| Err(
                io::Error::other("no such name")
            )),
            Decision::Refuse(Reply::HostUnreachable, _)
        ));
    }
    /// The real resolver (numeric forms and /etc/hosts only here).
    fn system(name: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        use std::net::ToSocketAddrs;
        Ok((name, port).to_socket_addrs()?.collect())
    }

    #[test]
    fn requests_that_try_to_escape_the_list_reach_only_what_it_allows() {
        // A database on 10.1.2.3 and a service by name; loopback is not
        // allowed.
        let allow = list(&["10.1.2.3:5432", "db.example.com:5432"]);
        let refused = |host: &str, port: u16| {
            matches!(
                allow.decide(&request(host, port), system),
                Decision::Refuse(Reply::NotAllowed | Reply::HostUnreachable, _)
            )
        };
        // Loopback however written: as an address, IPv4-mapped IPv6,
        // decimal, octal, hexadecimal, short forms, a name.
        for host in [
            "127.0.0.1",
            "::ffff:127.0.0.1",
            "::1",
            "::",
            "0.0.0.0",
            "2130706433",
            "0177.0.0.1",
            "0x7f.1",
            "127.1",
            "localhost",
            "LOCALHOST.",
            "localhost.localdomain",
        ] {
            assert!(refused(host, 5432), "{host} was let through");
        }
        // The allowed address in other spellings is the allowed address,
        // and only it is connected.
        for host in ["::ffff:10.1.2.3", "167838211", "012.1.2.3", "10.1.515"] {
            match allow.decide(&request(host, 5432), system) {
                Decision::Connect(addrs) => assert!(
                    addrs
                        .iter()
                        .all(|a| a.ip().to_canonical() == addr("10.1.2.3:0").ip()),
                    "{host}: {addrs:?}"
                ),
                other => panic!("{host}: {other:?}"),
            }
        }
        // Ports outside the rule, the extremes included.
        for port in [0, 5431, 5433, 65535] {
            assert!(refused("10.1.2.3", port), "port {port}");
            assert!(refused("db.example.com", port), "port {port}");
        }
        // Names: a trailing dot and case are the same name; anything
        // else around it is another name.
        assert!(allow.permits_name("db.example.com.", 5432));
        for name in [
            "db.example.com..",
            "xdb.example.com",
            "db.example.com.evil.test",
        ] {
            assert!(!allow.permits_name(name, 5432), "{name}");
        }
        // An overlong name is no request at all.
        assert!(Host::parse(&"a".repeat(256)).is_err());
    }
}
