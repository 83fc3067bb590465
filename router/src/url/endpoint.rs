//! Normalized endpoints: which server and database a connection reaches,
//! written so that two spellings of the same endpoint compare equal.

use std::fmt;
use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};

use tokio_postgres::config::Host;

use super::expand::DEFAULT_PORT;

/// A server (host and port) and a database, normalized: host names in
/// lower case without a trailing dot, IP addresses in canonical form (an
/// IPv4-mapped IPv6 address as IPv4), socket directories without `.`,
/// repeated or trailing `/`, the port defaulted to 5432 and the database
/// to the user name (libpq's and tokio-postgres's default).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    /// Normalized host name, IP address or socket directory.
    pub host: String,
    /// TCP port (for a socket, the number in the socket file's name).
    pub port: u16,
    /// Database name; empty when neither it nor the user is given (both
    /// default to the OS user's name).
    pub dbname: String,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') && !self.host.starts_with('/') {
            write!(f, "[{}]:{}/{}", self.host, self.port, self.dbname)
        } else {
            write!(f, "{}:{}/{}", self.host, self.port, self.dbname)
        }
    }
}

/// The endpoints `config` may connect to, one per host.
pub(crate) fn endpoints(config: &tokio_postgres::Config) -> Vec<Endpoint> {
    let dbname = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or_default()
        .to_string();
    let ports = config.get_ports();
    let addrs = config.get_hostaddrs();
    config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(n, host)| {
            let port = match ports {
                [] => DEFAULT_PORT,
                [one] => *one,
                many => many.get(n).copied().unwrap_or(DEFAULT_PORT),
            };
            // With `hostaddr`, the connection goes to that address.
            let host = match (addrs.get(n), host) {
                (Some(ip), _) => normalize_ip(*ip),
                (None, Host::Tcp(name)) => normalize_host(name),
                (None, Host::Unix(dir)) => normalize_dir(dir),
            };
            Endpoint {
                host,
                port,
                dbname: dbname.clone(),
            }
        })
        .collect()
}

/// A host name or IP address, normalized.
pub(crate) fn normalize_host(name: &str) -> String {
    let bare = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    match bare.parse::<IpAddr>() {
        Ok(ip) => normalize_ip(ip),
        Err(_) => {
            let lower = bare.to_ascii_lowercase();
            match lower.strip_suffix('.') {
                Some(stripped) if !stripped.is_empty() => stripped.to_string(),
                _ => lower,
            }
        }
    }
}

fn normalize_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => v6.to_string(),
        },
        IpAddr::V4(v4) => v4.to_string(),
    }
}

/// A socket directory without `.` components and repeated or trailing `/`
/// (not resolved on disk: symlinks are kept).
pub(crate) fn normalize_dir(dir: &Path) -> String {
    let normal: PathBuf = dir
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect();
    normal.display().to_string()
}

#[cfg(test)]
mod tests {
    use crate::url::ConnUrl;

    fn endpoints_of(url: &str) -> Vec<String> {
        let url = ConnUrl::expand(url, |_| Some("v".into())).unwrap();
        url.endpoints().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn spellings_of_one_endpoint_compare_equal() {
        let cases: [(&str, &str); 10] = [
            (
                "postgres://u@localhost:5433/db",
                "postgres://u@LOCALHOST:5433/db",
            ),
            (
                "postgres://u@db.example.com/db",
                "host=DB.Example.COM. user=u dbname=db",
            ),
            ("postgres://u@h/db", "postgres://u@h:5432/db"),
            ("postgres://u@h/u", "postgres://u@h:5432"),
            (
                "postgres://u@[::1]/db",
                "host=0:0:0:0:0:0:0:1 user=u dbname=db",
            ),
            (
                "postgres://u@[2001:DB8::0:1]/db",
                "postgres://u@[2001:db8::1]/db",
            ),
            (
                "postgres://u@[::ffff:127.0.0.1]/db",
                "postgres://u@127.0.0.1/db",
            ),
            (
                "host=/var/run/postgresql/ user=u dbname=db",
                "postgres:///db?host=/var/run//postgresql/./&user=u",
            ),
            (
                "host=example.org hostaddr=10.0.0.1 user=u dbname=db",
                "host=10.0.0.1 user=u dbname=db",
            ),
            ("postgres://u@h:5432,g/db", "postgres://u@g:5432/db"),
        ];
        for (a, b) in cases {
            let (ea, eb) = (endpoints_of(a), endpoints_of(b));
            assert!(
                ea.iter().any(|e| eb.contains(e)),
                "{a} {ea:?} vs {b} {eb:?}"
            );
        }
    }

    #[test]
    fn different_endpoints_stay_different() {
        let cases: [(&str, &str); 5] = [
            ("postgres://u@h:5432/db", "postgres://u@h:5433/db"),
            ("postgres://u@h/db", "postgres://u@h/db2"),
            ("postgres://u@localhost/db", "postgres://u@127.0.0.1/db"),
            ("host=/tmp user=u dbname=db", "host=/tmp/x user=u dbname=db"),
            ("postgres://a@h", "postgres://b@h"),
        ];
        for (a, b) in cases {
            let (ea, eb) = (endpoints_of(a), endpoints_of(b));
            assert!(
                !ea.iter().any(|e| eb.contains(e)),
                "{a} {ea:?} vs {b} {eb:?}"
            );
        }
    }

    #[test]
    fn endpoint_shows_normal_form() {
        assert_eq!(
            endpoints_of("postgres://u@[2001:DB8::0:1]:6000/Db"),
            ["[2001:db8::1]:6000/Db"]
        );
        assert_eq!(endpoints_of("host=/tmp//pg/ user=x"), ["/tmp/pg:5432/x"]);
    }
}
