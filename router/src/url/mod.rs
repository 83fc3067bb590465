//! Connection strings as libpq users write them: parsing, `${VAR}`
//! expansion, redaction and endpoint normalization.
//!
//! - [`template`]: the string as written (URL or key/value form) parsed with
//!   `${VAR}` references kept as placeholders, so that a variable's value is
//!   a *value in its position*: never pasted into the text and re-parsed,
//!   never percent-decoded or unquoted.
//! - [`expand`]: substitutes the variables and builds the driver's
//!   [`tokio_postgres::Config`] with its setters.
//! - [`render`]: the canonical form, rebuilt from the parsed fields with the
//!   password as `***`.
//! - [`endpoint`]: normalized (host, port, database) for comparing shards.
//!
//! A [`ConnUrl`] never shows its password: `Display` and `Debug` both print
//! the canonical redacted form, so it can go into any error, log line or
//! output safely.

mod endpoint;
mod expand;
mod render;
mod template;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

pub use endpoint::Endpoint;
use template::{Form, Key};

/// `sslmode` as libpq defines it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain connections only.
    Disable,
    /// TLS if the server offers it (unverified), plain otherwise. The default.
    Prefer,
    /// TLS, the certificate unverified (verified as for `VerifyCa` when
    /// `sslrootcert` is given).
    Require,
    /// TLS, the certificate chain verified against `sslrootcert`; the host
    /// name is not checked.
    VerifyCa,
    /// TLS, the chain and the host name verified.
    VerifyFull,
}

impl SslMode {
    /// libpq's name of the mode.
    pub fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    fn from_name(name: &str) -> Option<SslMode> {
        [
            SslMode::Disable,
            SslMode::Prefer,
            SslMode::Require,
            SslMode::VerifyCa,
            SslMode::VerifyFull,
        ]
        .into_iter()
        .find(|m| m.name() == name)
    }

    /// What tokio-postgres is told: whether to ask for TLS and whether it
    /// must be had. Verification is postshard's TLS connector's job.
    fn driver_mode(self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as Driver;
        match self {
            SslMode::Disable => Driver::Disable,
            SslMode::Prefer => Driver::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => Driver::Require,
        }
    }
}

/// Where the CA certificates for verifying a server come from (`sslrootcert`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    /// A PEM file of CA certificates.
    File(PathBuf),
    /// `sslrootcert=system`: the operating system's trusted roots.
    System,
}

/// A shard's (or the control store's) connection string: as written
/// (`template`, with `${VAR}` references) and as expanded from the
/// environment into the driver's configuration.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnUrl {
    template: String,
    form: Form,
    /// Shared: a URL is cloned into every error that names it.
    expanded: Arc<expand::Expanded>,
}

impl ConnUrl {
    /// Parses `template` (a `postgres://` / `postgresql://` URL or libpq
    /// key/value pairs) and replaces each `${VAR}` with its value from
    /// `lookup`, as a value in its position.
    ///
    /// On failure returns every problem found: a malformed string, unset
    /// variables, invalid values. Problems never quote a value.
    pub fn expand(
        template: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<ConnUrl, Vec<String>> {
        let parsed = template::parse(template).map_err(|e| vec![e])?;
        let params = expand::substitute(&parsed, &lookup)?;
        let expanded = expand::build(&params)?;
        Ok(ConnUrl {
            template: template.to_string(),
            form: parsed.form,
            expanded: Arc::new(expanded),
        })
    }

    /// The string as written, `${VAR}` references intact.
    pub fn template(&self) -> &str {
        &self.template
    }

    /// The driver configuration, password included: hand it to the driver
    /// only. Its TLS mode is only whether to ask for TLS; use
    /// [`crate::connect`] or a [`crate::Router`], which verify certificates
    /// as [`ConnUrl::sslmode`] says.
    pub fn pg_config(&self) -> &tokio_postgres::Config {
        &self.expanded.config
    }

    /// The `sslmode` (default `prefer`).
    pub fn sslmode(&self) -> SslMode {
        self.expanded.sslmode
    }

    /// The `sslrootcert`, if given.
    pub fn sslrootcert(&self) -> Option<&RootCert> {
        self.expanded.sslrootcert.as_ref()
    }

    /// The normalized endpoints (one per host) this connection may reach.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        endpoint::endpoints(&self.expanded.config)
    }

    /// The canonical form with the password as `***`.
    fn redacted(&self) -> String {
        use tokio_postgres::config::Host;
        let c = &self.expanded.config;
        let hosts = c
            .get_hosts()
            .iter()
            .map(|h| match h {
                Host::Tcp(name) => render::text(name),
                Host::Unix(dir) => render::text(&dir.display().to_string()),
            })
            .collect();
        let mut params = Vec::new();
        if self.expanded.sslmode_given {
            params.push((Key::Sslmode, render::text(self.expanded.sslmode.name())));
        }
        match &self.expanded.sslrootcert {
            Some(RootCert::File(path)) => {
                params.push((Key::Sslrootcert, render::text(&path.display().to_string())));
            }
            Some(RootCert::System) => params.push((Key::Sslrootcert, render::text("system"))),
            None => {}
        }
        if !c.get_hostaddrs().is_empty() {
            let addrs: Vec<String> = c.get_hostaddrs().iter().map(|a| a.to_string()).collect();
            params.push((Key::Hostaddr, render::text(&addrs.join(","))));
        }
        for (key, value) in &self.expanded.shown {
            params.push((*key, render::text(value)));
        }
        params.sort_by_key(|(k, _)| *k);
        render::View {
            user: c.get_user().map(render::text),
            password: c.get_password().is_some(),
            hosts,
            ports: c
                .get_ports()
                .iter()
                .map(|p| render::text(&p.to_string()))
                .collect(),
            dbname: c.get_dbname().map(render::text),
            params,
        }
        .render(self.form)
    }
}

impl fmt::Display for ConnUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for ConnUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnUrl({:?})", self.redacted())
    }
}

/// True when `template` holds a password (or a piece of one) written out
/// rather than as exactly one `${VAR}`: `pre${VAR}` counts, since `pre` is
/// part of the secret and sits in the map. Judged on the parsed string, in
/// every position (URL userinfo, `?password=`, key/value `password=`);
/// false for a string that does not parse (that is reported on its own).
pub fn has_literal_password(template: &str) -> bool {
    template::parse(template).is_ok_and(|t| {
        t.params
            .iter()
            .any(|(k, v)| *k == Key::Password && !v.is_empty() && !is_one_var(v))
    })
}

fn is_one_var(v: &template::Value) -> bool {
    matches!(v.0.as_slice(), [template::Piece::Var(_)])
}

/// The canonical form of the connection string `conn` as written, password
/// `***` and other `${VAR}` references kept; for a string that does not
/// parse, a placeholder with the reason (which never quotes the text).
pub fn redact(conn: &str) -> String {
    match template::parse(conn).and_then(|t| t.check_literal_hosts().map(|()| t)) {
        Ok(t) => render::View::of_template(&t).render(t.form),
        Err(e) => format!("<connection string not shown: {e}>"),
    }
}

#[cfg(test)]
mod tests;
