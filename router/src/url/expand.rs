//! From a parsed [`Template`] and the environment to the driver's
//! [`tokio_postgres::Config`], built with its setters (never by formatting
//! a string for it to parse), plus the TLS settings postshard drives itself.

use std::ffi::OsStr;
use std::net::IpAddr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::Duration;

use tokio_postgres::config::{ChannelBinding, LoadBalanceHosts, TargetSessionAttrs};

use super::template::{Key, Piece, Template, Value};
use super::{RootCert, SslMode};

/// The default PostgreSQL port.
pub(crate) const DEFAULT_PORT: u16 = 5432;

/// A connection string with every `${VAR}` replaced by its value.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Expanded {
    /// Everything but TLS verification; `ssl_mode` mapped from [`SslMode`].
    pub(crate) config: tokio_postgres::Config,
    pub(crate) sslmode: SslMode,
    /// Whether `sslmode` was written (the canonical form shows it then).
    pub(crate) sslmode_given: bool,
    pub(crate) sslrootcert: Option<RootCert>,
    /// Settings shown as given (expanded), in [`Key`] order.
    pub(crate) shown: Vec<(Key, String)>,
}

/// Replaces variables with values from `lookup`; every unset variable is a
/// problem (named once each).
pub(crate) fn substitute(
    template: &Template,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<(Key, Vec<u8>)>, Vec<String>> {
    let mut unset: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for (key, value) in &template.params {
        out.push((*key, join(value, lookup, &mut unset)));
    }
    if unset.is_empty() {
        Ok(out)
    } else {
        Err(unset
            .into_iter()
            .map(|name| {
                // The lookup takes UTF-8 text; say so rather than "not set"
                // when the process's variable holds other bytes.
                if std::env::var_os(&name).is_some_and(|v| v.to_str().is_none()) {
                    format!("environment variable `{name}` is not valid UTF-8")
                } else {
                    format!("environment variable `{name}` is not set")
                }
            })
            .collect())
    }
}

/// The bytes of `value`: its text and its variables' values, side by side.
fn join(
    value: &Value,
    lookup: &dyn Fn(&str) -> Option<String>,
    unset: &mut Vec<String>,
) -> Vec<u8> {
    let mut bytes = Vec::new();
    for piece in &value.0 {
        match piece {
            Piece::Text(text) => bytes.extend_from_slice(text),
            Piece::Var(name) => match lookup(name) {
                Some(v) => bytes.extend_from_slice(v.as_bytes()),
                None => {
                    if !unset.contains(name) {
                        unset.push(name.clone());
                    }
                }
            },
        }
    }
    bytes
}

/// Builds the driver configuration from substituted parameters (a later
/// parameter overrides an earlier one of the same key). Problems name the
/// field but never quote a value.
pub(crate) fn build(params: &[(Key, Vec<u8>)]) -> Result<Expanded, Vec<String>> {
    let get = |key: Key| {
        params
            .iter()
            .rev()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_slice())
    };
    let mut problems = Vec::new();
    let mut config = tokio_postgres::Config::new();
    let mut shown = Vec::new();

    let hosts: Vec<&[u8]> = match get(Key::Host) {
        Some(hosts) => hosts.split(|&b| b == b',').collect(),
        None => Vec::new(),
    };
    if hosts.is_empty() {
        problems
            .push("names no host: add one (a name, an IP address or a socket directory)".into());
    }
    for (n, host) in hosts.iter().enumerate() {
        let n = n + 1;
        if host.first() == Some(&b'/') {
            config.host_path(PathBuf::from(OsStr::from_bytes(host)));
            continue;
        }
        match std::str::from_utf8(host) {
            Ok(h) if h.parse::<IpAddr>().is_ok() || is_host_name(h) => {
                config.host(h);
            }
            _ => problems.push(format!(
                "host #{n} is not a host name, an IP address or an absolute socket directory"
            )),
        }
    }
    if let Some(ports) = get(Key::Port) {
        let ports: Vec<&[u8]> = ports.split(|&b| b == b',').collect();
        if ports.len() != 1 && ports.len() != hosts.len() {
            problems.push(format!(
                "{} ports for {} hosts: give one port, or one per host",
                ports.len(),
                hosts.len()
            ));
        }
        for (n, port) in ports.iter().enumerate() {
            match port_number(port) {
                Some(port) => {
                    config.port(port);
                }
                None => problems.push(format!("port #{} is not a number from 1 to 65535", n + 1)),
            }
        }
    }
    if let Some(addrs) = get(Key::Hostaddr) {
        let addrs: Vec<&[u8]> = addrs.split(|&b| b == b',').collect();
        if addrs.len() != hosts.len() {
            problems.push(format!(
                "{} hostaddr entries for {} hosts: give one per host",
                addrs.len(),
                hosts.len()
            ));
        }
        for (n, addr) in addrs.iter().enumerate() {
            match std::str::from_utf8(addr)
                .ok()
                .and_then(|a| a.parse::<IpAddr>().ok())
            {
                Some(ip) => {
                    config.hostaddr(ip);
                }
                None => problems.push(format!("hostaddr #{} is not an IP address", n + 1)),
            }
        }
    }

    let text = |key: Key, problems: &mut Vec<String>| -> Option<String> {
        let bytes = get(key)?;
        match String::from_utf8(bytes.to_vec()) {
            Ok(s) => Some(s),
            Err(_) => {
                problems.push(format!("the {} is not valid UTF-8", key.name()));
                None
            }
        }
    };
    if let Some(user) = text(Key::User, &mut problems).filter(|u| !u.is_empty()) {
        config.user(user);
    }
    if let Some(password) = get(Key::Password).filter(|p| !p.is_empty()) {
        config.password(password);
    }
    if let Some(dbname) = text(Key::Dbname, &mut problems).filter(|d| !d.is_empty()) {
        config.dbname(dbname);
    }
    if let Some(options) = text(Key::Options, &mut problems) {
        config.options(options.clone());
        shown.push((Key::Options, options));
    }
    if let Some(name) = text(Key::ApplicationName, &mut problems) {
        config.application_name(name.clone());
        shown.push((Key::ApplicationName, name));
    }
    if let Some(secs) = text(Key::ConnectTimeout, &mut problems) {
        match secs.trim().parse::<u64>() {
            Ok(0) => {}
            Ok(s) => {
                config.connect_timeout(Duration::from_secs(s));
            }
            Err(_) => problems.push("connect_timeout is not a whole number of seconds".into()),
        }
        shown.push((Key::ConnectTimeout, secs));
    }
    let sslmode_text = text(Key::Sslmode, &mut problems);
    let sslmode = match sslmode_text.as_deref() {
        None => SslMode::Prefer,
        Some(mode) => SslMode::from_name(mode).unwrap_or_else(|| {
            problems
                .push("sslmode must be disable, prefer, require, verify-ca or verify-full".into());
            SslMode::Prefer
        }),
    };
    config.ssl_mode(sslmode.driver_mode());
    let sslrootcert = get(Key::Sslrootcert).map(|path| match path {
        b"system" => RootCert::System,
        path => RootCert::File(PathBuf::from(OsStr::from_bytes(path))),
    });
    if matches!(sslmode, SslMode::VerifyCa | SslMode::VerifyFull) && sslrootcert.is_none() {
        problems.push(format!(
            "sslmode={} needs sslrootcert: a file of CA certificates (PEM), or \
             sslrootcert=system for the system's roots",
            sslmode.name()
        ));
    }
    if let Some(attrs) = text(Key::TargetSessionAttrs, &mut problems) {
        match attrs.as_str() {
            "any" => config.target_session_attrs(TargetSessionAttrs::Any),
            "read-write" => config.target_session_attrs(TargetSessionAttrs::ReadWrite),
            "read-only" => config.target_session_attrs(TargetSessionAttrs::ReadOnly),
            _ => {
                problems.push("target_session_attrs must be any, read-write or read-only".into());
                &mut config
            }
        };
        shown.push((Key::TargetSessionAttrs, attrs));
    }
    if let Some(binding) = text(Key::ChannelBinding, &mut problems) {
        match binding.as_str() {
            "disable" => config.channel_binding(ChannelBinding::Disable),
            "prefer" => config.channel_binding(ChannelBinding::Prefer),
            "require" => config.channel_binding(ChannelBinding::Require),
            _ => {
                problems.push("channel_binding must be disable, prefer or require".into());
                &mut config
            }
        };
        shown.push((Key::ChannelBinding, binding));
    }
    if let Some(balance) = text(Key::LoadBalanceHosts, &mut problems) {
        match balance.as_str() {
            "disable" => config.load_balance_hosts(LoadBalanceHosts::Disable),
            "random" => config.load_balance_hosts(LoadBalanceHosts::Random),
            _ => {
                problems.push("load_balance_hosts must be disable or random".into());
                &mut config
            }
        };
        shown.push((Key::LoadBalanceHosts, balance));
    }
    if let Some(on) = text(Key::Keepalives, &mut problems) {
        match on.as_str() {
            "1" => config.keepalives(true),
            "0" => config.keepalives(false),
            _ => {
                problems.push("keepalives must be 0 or 1".into());
                &mut config
            }
        };
        shown.push((Key::Keepalives, on));
    }
    for (key, unit) in [
        (Key::KeepalivesIdle, 1_000),
        (Key::KeepalivesInterval, 1_000),
        (Key::TcpUserTimeout, 1),
    ] {
        if let Some(n) = text(key, &mut problems) {
            match n.trim().parse::<u64>() {
                Ok(n) => {
                    let d = Duration::from_millis(n.saturating_mul(unit));
                    match key {
                        Key::KeepalivesIdle => config.keepalives_idle(d),
                        Key::KeepalivesInterval => config.keepalives_interval(d),
                        _ => config.tcp_user_timeout(d),
                    };
                }
                Err(_) => problems.push(format!("{} is not a whole number", key.name())),
            }
            shown.push((key, n));
        }
    }
    if let Some(n) = text(Key::KeepalivesCount, &mut problems) {
        match n.trim().parse::<u32>() {
            Ok(count) => {
                config.keepalives_retries(count);
            }
            Err(_) => problems.push("keepalives_count is not a whole number".into()),
        }
        shown.push((Key::KeepalivesCount, n));
    }
    shown.sort_by_key(|(k, _)| *k);
    if problems.is_empty() {
        Ok(Expanded {
            config,
            sslmode,
            sslmode_given: sslmode_text.is_some(),
            sslrootcert,
            shown,
        })
    } else {
        Err(problems)
    }
}

/// A DNS-style host name: letters, digits, `-`, `_` and `.`.
fn is_host_name(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// An empty port is the default; otherwise 1..=65535.
fn port_number(port: &[u8]) -> Option<u16> {
    if port.is_empty() {
        return Some(DEFAULT_PORT);
    }
    std::str::from_utf8(port)
        .ok()
        .and_then(|p| p.parse::<u16>().ok())
        .filter(|&p| p != 0)
}
