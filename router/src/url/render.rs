//! The canonical, redacted form of a connection string, rebuilt from its
//! parsed fields (never by editing the text), in the form it was written.
//! A password is always shown as `***`, whatever it holds.

use std::fmt::Write;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use super::template::{Form, Key, Piece, Template, Value};

/// Bytes kept as they are in a URL part: RFC 3986's unreserved set.
const URL_PART: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A query value may keep `/` (socket directories) and `,` (lists).
const URL_QUERY: &AsciiSet = &URL_PART.remove(b'/').remove(b',').remove(b':');

/// What the canonical form shows. Values are pieces so that a template's
/// `${VAR}` can be shown as written.
#[derive(Debug, Default)]
pub(crate) struct View {
    pub(crate) user: Option<Value>,
    pub(crate) password: bool,
    /// TCP hosts (names, IP addresses) or socket directories.
    pub(crate) hosts: Vec<Value>,
    pub(crate) ports: Vec<Value>,
    pub(crate) dbname: Option<Value>,
    /// Other parameters, in [`Key`] order.
    pub(crate) params: Vec<(Key, Value)>,
}

impl View {
    /// The view of a template: what was written, variables as `${NAME}`.
    pub(crate) fn of_template(t: &Template) -> View {
        let list = |key| t.get(key).map(|v| v.split(b',')).unwrap_or_default();
        let mut params: Vec<(Key, Value)> = Vec::new();
        for (key, _) in super::template::KEYS {
            if matches!(
                key,
                Key::Host | Key::Port | Key::User | Key::Password | Key::Dbname
            ) {
                continue;
            }
            if let Some(v) = t.get(key) {
                params.push((key, v.clone()));
            }
        }
        View {
            user: t.get(Key::User).cloned(),
            password: t
                .params
                .iter()
                .any(|(k, v)| *k == Key::Password && !v.is_empty()),
            hosts: list(Key::Host),
            ports: list(Key::Port),
            dbname: t.get(Key::Dbname).cloned(),
            params,
        }
    }

    /// The canonical string in `form`.
    pub(crate) fn render(&self, form: Form) -> String {
        match form {
            Form::Url => self.url(),
            Form::KeyValue => self.key_value(),
        }
    }

    fn url(&self) -> String {
        let mut out = String::from("postgres://");
        if let Some(user) = &self.user {
            out.push_str(&url_value(user, URL_PART));
        }
        if self.password {
            out.push_str(":***");
        }
        if self.user.is_some() || self.password {
            out.push('@');
        }
        let sockets = self.hosts.iter().any(is_socket);
        let mut query: Vec<(&str, String)> = Vec::new();
        if sockets {
            let hosts: Vec<String> = self.hosts.iter().map(|h| url_value(h, URL_QUERY)).collect();
            query.push(("host", hosts.join(",")));
            if !self.ports.is_empty() {
                let ports: Vec<String> =
                    self.ports.iter().map(|p| url_value(p, URL_QUERY)).collect();
                query.push(("port", ports.join(",")));
            }
        } else {
            for (n, host) in self.hosts.iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                if is_ipv6(host) {
                    let _ = write!(out, "[{}]", plain(host));
                } else {
                    out.push_str(&url_value(host, URL_PART));
                }
                let port = match self.ports.as_slice() {
                    [one] => Some(one),
                    ports => ports.get(n),
                };
                if let Some(port) = port.filter(|p| !p.is_empty()) {
                    out.push(':');
                    out.push_str(&url_value(port, URL_PART));
                }
            }
        }
        out.push('/');
        if let Some(db) = &self.dbname {
            out.push_str(&url_value(db, URL_PART));
        }
        for (key, value) in &self.params {
            query.push((key.name(), url_value(value, URL_QUERY)));
        }
        for (n, (key, value)) in query.iter().enumerate() {
            out.push(if n == 0 { '?' } else { '&' });
            let _ = write!(out, "{key}={value}");
        }
        out
    }

    fn key_value(&self) -> String {
        let mut pairs: Vec<(&str, String)> = Vec::new();
        if !self.hosts.is_empty() {
            let hosts: Vec<String> = self.hosts.iter().map(plain).collect();
            pairs.push(("host", quote(&hosts.join(","))));
        }
        if !self.ports.is_empty() {
            let ports: Vec<String> = self.ports.iter().map(plain).collect();
            pairs.push(("port", quote(&ports.join(","))));
        }
        if let Some(user) = &self.user {
            pairs.push(("user", quote(&plain(user))));
        }
        if self.password {
            pairs.push(("password", "***".to_string()));
        }
        if let Some(db) = &self.dbname {
            pairs.push(("dbname", quote(&plain(db))));
        }
        for (key, value) in &self.params {
            pairs.push((key.name(), quote(&plain(value))));
        }
        pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// A value from a string (no variables).
pub(crate) fn text(s: &str) -> Value {
    Value(vec![Piece::Text(s.as_bytes().to_vec())])
}

fn is_socket(v: &Value) -> bool {
    matches!(v.0.first(), Some(Piece::Text(t)) if t.first() == Some(&b'/'))
}

fn is_ipv6(v: &Value) -> bool {
    matches!(v.0.as_slice(), [Piece::Text(t)] if t.contains(&b':'))
}

/// The value as text, variables as `${NAME}`.
fn plain(v: &Value) -> String {
    v.0.iter()
        .map(|p| match p {
            Piece::Text(t) => String::from_utf8_lossy(t).into_owned(),
            Piece::Var(name) => format!("${{{name}}}"),
        })
        .collect()
}

/// The value percent-encoded for a URL, variables as `${NAME}`.
fn url_value(v: &Value, set: &'static AsciiSet) -> String {
    v.0.iter()
        .map(|p| match p {
            Piece::Text(t) => utf8_percent_encode(&String::from_utf8_lossy(t), set).to_string(),
            Piece::Var(name) => format!("${{{name}}}"),
        })
        .collect()
}

/// A key/value value, single-quoted with `\` escapes when it must be.
fn quote(v: &str) -> String {
    if !v.is_empty()
        && !v
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b == b'\'' || b == b'\\')
    {
        return v.to_string();
    }
    let mut out = String::from("'");
    for c in v.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}
