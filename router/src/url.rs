//! Connection URLs: `${VAR}` expansion and password redaction.
//!
//! A [`ConnUrl`] never shows its password: `Display` and `Debug` both print the
//! redacted form, so a URL can go into any error, log line or output safely.

use std::fmt;
use std::str::FromStr;

/// A shard's connection URL as written (`template`, with `${VAR}` references)
/// and as expanded from the environment.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnUrl {
    template: String,
    expanded: String,
}

impl ConnUrl {
    /// Expands `${VAR}` references in `template` with `lookup`.
    ///
    /// On failure returns every problem: unset variables and unclosed `${`.
    pub fn expand(
        template: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<ConnUrl, Vec<String>> {
        let mut expanded = String::with_capacity(template.len());
        let mut problems = Vec::new();
        let mut rest = template;
        while let Some(start) = rest.find("${") {
            expanded.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else {
                problems.push(format!("unclosed `${{` in URL `{}`", redact(template)));
                rest = "";
                break;
            };
            let name = &after[..end];
            match lookup(name) {
                Some(value) => expanded.push_str(&value),
                None => problems.push(format!("environment variable `{name}` is not set")),
            }
            rest = &after[end + 1..];
        }
        expanded.push_str(rest);
        if problems.is_empty() {
            Ok(ConnUrl {
                template: template.to_string(),
                expanded,
            })
        } else {
            Err(problems)
        }
    }

    /// The URL as written, `${VAR}` references intact.
    pub fn template(&self) -> &str {
        &self.template
    }

    /// The expanded URL, password included: pass it to the driver only.
    pub fn expose(&self) -> &str {
        &self.expanded
    }
}

impl fmt::Display for ConnUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(&self.expanded))
    }
}

impl fmt::Debug for ConnUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnUrl({:?})", redact(&self.expanded))
    }
}

/// True when `template` holds a password written out rather than as `${VAR}`.
pub fn has_literal_password(template: &str) -> bool {
    let Ok(without_vars) = ConnUrl::expand(template, |_| Some(String::new())) else {
        return false;
    };
    match tokio_postgres::Config::from_str(&without_vars.expanded) {
        Ok(config) => config.get_password().is_some_and(|p| !p.is_empty()),
        // Unparsable: judge by the text, erring on the side of a secret.
        Err(_) => redact(&without_vars.expanded) != without_vars.expanded,
    }
}

/// Replaces every password in a connection string with `***`: the userinfo
/// password of a URL (`postgres://user:secret@host`, up to the last `@`, so
/// a password holding `@`, `/` or `?` is masked whole), a `password=` query
/// parameter, and a `password` key of a key/value connection string (spaces
/// around `=` and quoted values included). When none of these match but the
/// driver would still read a password, that password is masked wherever it
/// appears.
pub fn redact(conn: &str) -> String {
    let mut out = conn.to_string();
    if let Some(scheme_end) = out.find("://") {
        let rest = scheme_end + 3;
        if let Some(at) = out[rest..].rfind('@') {
            let userinfo = rest..rest + at;
            if let Some(colon) = out[userinfo.clone()].find(':') {
                let password = userinfo.start + colon + 1..userinfo.end;
                if !password.is_empty() {
                    out.replace_range(password, "***");
                }
            }
        }
    }
    redact_keys(&mut out);
    if out != conn {
        return out;
    }
    // Nothing matched the known forms, yet the driver may still read a
    // password (say, from a percent-encoded key): mask its every occurrence.
    if let Ok(config) = tokio_postgres::Config::from_str(conn) {
        if let Some(password) = config
            .get_password()
            .and_then(|p| std::str::from_utf8(p).ok())
        {
            if !password.is_empty() && password != "***" {
                out = out.replace(password, "***");
            }
        }
    }
    out
}

/// Masks the value of every `password` key: `password=x`, `password = x`,
/// `PASSWORD='a b'` (up to `&`, whitespace or the end; a quoted value up to
/// its closing quote, backslash escapes included).
fn redact_keys(out: &mut String) {
    const KEY: &str = "password";
    let mut from = 0;
    while let Some(pos) = out[from..].to_ascii_lowercase().find(KEY) {
        let key_start = from + pos;
        from = key_start + KEY.len();
        let preceded_ok = out[..key_start]
            .chars()
            .next_back()
            .is_none_or(|c| c.is_whitespace() || c == '?' || c == '&');
        let after = &out[from..];
        let trimmed = after.trim_start();
        let Some(value) = trimmed.strip_prefix('=').filter(|_| preceded_ok) else {
            continue;
        };
        let value = value.trim_start();
        let start = out.len() - value.len();
        let len = match value.strip_prefix('\'') {
            Some(quoted) => {
                let mut escaped = false;
                quoted
                    .char_indices()
                    .find(|&(_, c)| {
                        let closes = c == '\'' && !escaped;
                        escaped = c == '\\' && !escaped;
                        closes
                    })
                    .map_or(value.len(), |(i, _)| i + 2)
            }
            None => value
                .find(|c: char| c == '&' || c.is_whitespace())
                .unwrap_or(value.len()),
        };
        if len > 0 {
            out.replace_range(start..start + len, "***");
            from = start + 3;
        } else {
            from = start;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_every_password_form() {
        let cases = [
            ("postgres://u:pw@h:5432/db", "postgres://u:***@h:5432/db"),
            ("postgres://u@h/db", "postgres://u@h/db"),
            ("postgres://u:p@ss@h/db", "postgres://u:***@h/db"),
            (
                "postgres://u@h/db?password=x&sslmode=off",
                "postgres://u@h/db?password=***&sslmode=off",
            ),
            (
                "host=h user=u password=secret dbname=d",
                "host=h user=u password=*** dbname=d",
            ),
            (
                "host=h PASSWORD='a b' dbname=d",
                "host=h PASSWORD=*** dbname=d",
            ),
            // An `@` after the host masks too much, never too little.
            ("postgres://h/db#x:y@z", "postgres://h/db#x:***@z"),
            (
                "postgres://u:@h/db?password=",
                "postgres://u:@h/db?password=",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(redact(input), want, "{input}");
        }
    }

    #[test]
    fn literal_passwords_are_told_from_variables() {
        assert!(has_literal_password("postgres://u:pw@h/db"));
        assert!(has_literal_password("postgres://u:a/b@h/db"));
        assert!(has_literal_password("host=h password = secret"));
        assert!(has_literal_password("postgres://u@h/db?passwor%64=x"));
        assert!(has_literal_password("host=h password=pw"));
        assert!(!has_literal_password("postgres://u:${PW}@h/db"));
        assert!(!has_literal_password("postgres://u@h/db?password=${PW}"));
        assert!(!has_literal_password("postgres://u@h/db"));
    }

    #[test]
    fn expands_variables_and_reports_unset_ones() {
        let lookup = |name: &str| (name == "PW").then(|| "s3cret".to_string());
        let url = ConnUrl::expand("postgres://u:${PW}@h/db", lookup).unwrap();
        assert_eq!(url.expose(), "postgres://u:s3cret@h/db");
        assert_eq!(url.template(), "postgres://u:${PW}@h/db");
        assert_eq!(url.to_string(), "postgres://u:***@h/db");
        assert!(!format!("{url:?}").contains("s3cret"));
        let err = ConnUrl::expand("postgres://${A}:${PW}@${B}/db", lookup).unwrap_err();
        assert_eq!(err.len(), 2, "{err:?}");
        assert!(err[0].contains("`A`"));
        assert!(ConnUrl::expand("postgres://${X", lookup).is_err());
    }
}
