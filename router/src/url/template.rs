//! A connection string as written, parsed with its `${VAR}` references kept
//! as placeholders: libpq's URL form (`postgres://…`, `postgresql://…`) and
//! its key/value form (`host=… port=… dbname=…`).
//!
//! Parsing the template (not the expanded text) is what makes `${VAR}` a
//! *value in its position*: a variable is one opaque piece of one value, so
//! nothing in its value (`@`, `%`, `&`, a quote, a space, `${`) can end the
//! value, be percent-decoded or be unquoted. Literal text is percent-decoded
//! (URL form) or unquoted (key/value form) before it is joined with the
//! variables' values.
//!
//! Error messages never quote the string's text (a piece of a literal
//! password could sit anywhere in a malformed string): they name the field
//! and the byte offset.

use percent_encoding::percent_decode;

/// One piece of a value: text as written (already decoded/unquoted) or a
/// `${VAR}` reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Piece {
    /// Literal bytes, percent-decoded (URL) or unquoted (key/value).
    Text(Vec<u8>),
    /// `${NAME}`: the variable's value goes here, as is.
    Var(String),
}

/// A value: literal text and variable references, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Value(pub(crate) Vec<Piece>);

impl Value {
    fn push_byte(&mut self, byte: u8) {
        match self.0.last_mut() {
            Some(Piece::Text(text)) => text.push(byte),
            _ => self.0.push(Piece::Text(vec![byte])),
        }
    }

    /// Appends `other`, merging adjacent text.
    fn append(&mut self, other: Value) {
        for piece in other.0 {
            match piece {
                Piece::Text(text) => text.into_iter().for_each(|b| self.push_byte(b)),
                var => self.0.push(var),
            }
        }
    }

    /// Whether any piece is literal text (not a variable).
    pub(crate) fn has_text(&self) -> bool {
        self.0
            .iter()
            .any(|p| matches!(p, Piece::Text(t) if !t.is_empty()))
    }

    /// Whether there is nothing at all.
    pub(crate) fn is_empty(&self) -> bool {
        self.0
            .iter()
            .all(|p| matches!(p, Piece::Text(t) if t.is_empty()))
    }

    /// The value split at `sep` in its literal text (never inside a variable).
    pub(crate) fn split(&self, sep: u8) -> Vec<Value> {
        let mut parts = vec![Value::default()];
        for piece in &self.0 {
            match piece {
                Piece::Var(name) => {
                    if let Some(last) = parts.last_mut() {
                        last.0.push(Piece::Var(name.clone()));
                    }
                }
                Piece::Text(text) => {
                    for &byte in text {
                        if byte == sep {
                            parts.push(Value::default());
                        } else if let Some(last) = parts.last_mut() {
                            last.push_byte(byte);
                        }
                    }
                }
            }
        }
        parts
    }

    /// Names of the variables referenced, in order.
    pub(crate) fn vars(&self) -> impl Iterator<Item = &str> {
        self.0.iter().filter_map(|p| match p {
            Piece::Var(name) => Some(name.as_str()),
            Piece::Text(_) => None,
        })
    }
}

/// Which form the string was written in; the canonical form keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Form {
    /// `postgres://user@host:port/dbname?key=value`
    Url,
    /// `host=… port=… dbname=…`
    KeyValue,
}

/// The connection parameters postshard accepts (libpq's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Key {
    Host,
    Hostaddr,
    Port,
    User,
    Password,
    Dbname,
    Options,
    ApplicationName,
    ConnectTimeout,
    Sslmode,
    Sslrootcert,
    TargetSessionAttrs,
    ChannelBinding,
    LoadBalanceHosts,
    Keepalives,
    KeepalivesIdle,
    KeepalivesInterval,
    KeepalivesCount,
    TcpUserTimeout,
}

/// Every accepted parameter with its libpq name.
pub(crate) const KEYS: [(Key, &str); 19] = [
    (Key::Host, "host"),
    (Key::Hostaddr, "hostaddr"),
    (Key::Port, "port"),
    (Key::User, "user"),
    (Key::Password, "password"),
    (Key::Dbname, "dbname"),
    (Key::Options, "options"),
    (Key::ApplicationName, "application_name"),
    (Key::ConnectTimeout, "connect_timeout"),
    (Key::Sslmode, "sslmode"),
    (Key::Sslrootcert, "sslrootcert"),
    (Key::TargetSessionAttrs, "target_session_attrs"),
    (Key::ChannelBinding, "channel_binding"),
    (Key::LoadBalanceHosts, "load_balance_hosts"),
    (Key::Keepalives, "keepalives"),
    (Key::KeepalivesIdle, "keepalives_idle"),
    (Key::KeepalivesInterval, "keepalives_interval"),
    (Key::KeepalivesCount, "keepalives_count"),
    (Key::TcpUserTimeout, "tcp_user_timeout"),
];

/// libpq parameters postshard does not support. Only these names are ever
/// quoted in an error: an unknown name could be a piece of a password.
const UNSUPPORTED: [&str; 24] = [
    "passfile",
    "service",
    "sslcert",
    "sslkey",
    "sslpassword",
    "sslcrl",
    "sslcrldir",
    "sslsni",
    "sslcompression",
    "sslcertmode",
    "sslnegotiation",
    "sslkeylogfile",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "requirepeer",
    "require_auth",
    "gssencmode",
    "gsslib",
    "gssdelegation",
    "krbsrvname",
    "replication",
    "client_encoding",
    "fallback_application_name",
    "tty",
];

impl Key {
    /// libpq's name of the parameter.
    pub(crate) fn name(self) -> &'static str {
        KEYS.iter()
            .find(|(k, _)| *k == self)
            .map_or("?", |(_, n)| n)
    }

    fn from_name(name: &[u8], at: usize) -> Result<Key, String> {
        if let Some((key, _)) = KEYS.iter().find(|(_, n)| n.as_bytes() == name) {
            return Ok(*key);
        }
        match UNSUPPORTED.iter().find(|n| n.as_bytes() == name) {
            Some(known) => Err(format!(
                "parameter `{known}` (at byte {at}) is not supported by postshard"
            )),
            None => Err(format!(
                "unknown parameter at byte {at} (accepted: {})",
                KEYS.iter().map(|(_, n)| *n).collect::<Vec<_>>().join(", ")
            )),
        }
    }
}

/// A parsed connection string template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Template {
    /// How it was written.
    pub(crate) form: Form,
    /// Parameters in order of appearance; a later one overrides an earlier.
    pub(crate) params: Vec<(Key, Value)>,
}

impl Template {
    /// Checks the literal text of hosts and ports (values of variables are
    /// checked once expanded), so that a malformed string, where a piece of
    /// a password may have landed in a host, is never shown.
    pub(crate) fn check_literal_hosts(&self) -> Result<(), String> {
        let ok = |value: &Value, allowed: &dyn Fn(u8) -> bool| {
            value.0.iter().all(|p| match p {
                Piece::Text(t) => t.iter().all(|&b| allowed(b)),
                Piece::Var(_) => true,
            })
        };
        for (key, value) in &self.params {
            let fine = match key {
                Key::Host => ok(value, &|b| {
                    b.is_ascii_alphanumeric()
                        || matches!(b, b'-' | b'.' | b'_' | b':' | b'/' | b',')
                }),
                Key::Port => ok(value, &|b| b.is_ascii_digit() || b == b','),
                _ => true,
            };
            if !fine {
                return Err(format!("invalid {}", key.name()));
            }
        }
        Ok(())
    }

    /// The last value given for `key`.
    pub(crate) fn get(&self, key: Key) -> Option<&Value> {
        self.params
            .iter()
            .rev()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }
}

/// A byte of the template, or a `${NAME}` reference, with its byte offset.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Byte(u8, usize),
    Var(String, usize),
}

impl Tok {
    fn is(&self, byte: u8) -> bool {
        matches!(self, Tok::Byte(b, _) if *b == byte)
    }

    fn at(&self) -> usize {
        match self {
            Tok::Byte(_, at) | Tok::Var(_, at) => *at,
        }
    }
}

/// Splits `text` into bytes and `${NAME}` references (NAME: letters,
/// digits and `_`, not starting with a digit). A `$` not followed by `{`
/// is an ordinary byte.
fn lex(text: &str) -> Result<Vec<Tok>, String> {
    let bytes = text.as_bytes();
    let mut toks = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        if byte == b'$' && bytes.get(i + 1) == Some(&b'{') {
            let name_start = i + 2;
            let Some(len) = bytes
                .get(name_start..)
                .and_then(|rest| rest.iter().position(|&b| b == b'}'))
            else {
                return Err(format!("`${{` at byte {i} is not closed by `}}`"));
            };
            let name = text.get(name_start..name_start + len).unwrap_or_default();
            let valid = name
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid {
                return Err(format!(
                    "invalid variable reference at byte {i}: a name inside `${{…}}` is \
                     letters, digits and `_`, not starting with a digit"
                ));
            }
            toks.push(Tok::Var(name.to_string(), i));
            i = name_start + len + 1;
        } else {
            toks.push(Tok::Byte(byte, i));
            i += 1;
        }
    }
    Ok(toks)
}

/// Parses `text`: a URL if it starts with `postgres://` or `postgresql://`,
/// otherwise key/value pairs.
pub(crate) fn parse(text: &str) -> Result<Template, String> {
    let toks = lex(text)?;
    for scheme in ["postgresql://", "postgres://"] {
        if text.starts_with(scheme) {
            return parse_url(toks.get(scheme.len()..).unwrap_or_default());
        }
    }
    if text.contains("://") {
        return Err(
            "a connection URL must start with `postgres://` or `postgresql://`".to_string(),
        );
    }
    if matches!(toks.first(), Some(Tok::Var(..))) && toks.len() == 1 {
        return Err(
            "the whole connection string is one ${VAR}: write the string in the map and use \
             ${VAR} for its values (such as the password), so that it can be checked"
                .to_string(),
        );
    }
    parse_key_value(&toks)
}

/// Position of the first literal byte of `toks` that is one of `stops`.
fn find(toks: &[Tok], stops: &[u8]) -> Option<usize> {
    toks.iter()
        .position(|t| matches!(t, Tok::Byte(b, _) if stops.contains(b)))
}

/// Percent-decodes the literal text of `toks`; variables stay pieces.
fn decode(toks: &[Tok], field: &str) -> Result<Value, String> {
    let mut value = Value::default();
    let mut text: Vec<u8> = Vec::new();
    let mut text_at = 0;
    let flush = |value: &mut Value, text: &mut Vec<u8>, at: usize| -> Result<(), String> {
        if text.is_empty() {
            return Ok(());
        }
        // Every `%` must start a `%XX` escape within the literal text.
        let mut rest = text.as_slice();
        while let Some(pct) = rest.iter().position(|&b| b == b'%') {
            let hex = rest.get(pct + 1..pct + 3).unwrap_or_default();
            if hex.len() != 2 || !hex.iter().all(u8::is_ascii_hexdigit) {
                return Err(format!(
                    "invalid percent-encoding in the {field} (near byte {at}): write `%` as \
                     `%25`, or put the value in a ${{VAR}}"
                ));
            }
            rest = rest.get(pct + 3..).unwrap_or_default();
        }
        for byte in percent_decode(text) {
            value.push_byte(byte);
        }
        text.clear();
        Ok(())
    };
    for tok in toks {
        match tok {
            Tok::Byte(b, at) => {
                if text.is_empty() {
                    text_at = *at;
                }
                text.push(*b);
            }
            Tok::Var(name, _) => {
                flush(&mut value, &mut text, text_at)?;
                value.0.push(Piece::Var(name.clone()));
            }
        }
    }
    flush(&mut value, &mut text, text_at)?;
    Ok(value)
}

/// `postgres://[user[:password]@][host[:port][,…]][/dbname][?key=value[&…]]`
/// (after the scheme). `@`, `/`, `?`, `:`, `,`, `&`, `=` and `#` in literal
/// text must be percent-encoded where they would end a part.
fn parse_url(toks: &[Tok]) -> Result<Template, String> {
    if let Some(hash) = toks.iter().find(|t| t.is(b'#')) {
        return Err(format!(
            "`#` at byte {} must be percent-encoded as `%23` in a connection URL",
            hash.at()
        ));
    }
    let mut params = Vec::new();
    let mut rest = toks;
    // userinfo: up to an `@` that comes before any `/` or `?`.
    if let Some(i) = find(rest, b"@/?").filter(|&i| rest.get(i).is_some_and(|t| t.is(b'@'))) {
        let userinfo = rest.get(..i).unwrap_or_default();
        rest = rest.get(i + 1..).unwrap_or_default();
        let (user, password) = match find(userinfo, b":") {
            Some(c) => (
                userinfo.get(..c).unwrap_or_default(),
                Some(userinfo.get(c + 1..).unwrap_or_default()),
            ),
            None => (userinfo, None),
        };
        let user = decode(user, "user name")?;
        if !user.is_empty() {
            params.push((Key::User, user));
        }
        if let Some(password) = password {
            let password = decode(password, "password")?;
            if !password.is_empty() {
                params.push((Key::Password, password));
            }
        }
    }
    let host_end = find(rest, b"/?").unwrap_or(rest.len());
    let hostspec = rest.get(..host_end).unwrap_or_default();
    rest = rest.get(host_end..).unwrap_or_default();
    if !hostspec.is_empty() {
        let (hosts, ports) = parse_hostspec(hostspec)?;
        params.push((Key::Host, hosts));
        if ports.has_text() || ports.vars().next().is_some() {
            params.push((Key::Port, ports));
        }
    }
    if rest.first().is_some_and(|t| t.is(b'/')) {
        let end = find(rest, b"?").unwrap_or(rest.len());
        let dbname = decode(rest.get(1..end).unwrap_or_default(), "database name")?;
        if !dbname.is_empty() {
            params.push((Key::Dbname, dbname));
        }
        rest = rest.get(end..).unwrap_or_default();
    }
    if let Some(query) = rest.get(1..) {
        for pair in query.split(|t| t.is(b'&')) {
            let Some(first) = pair.first() else {
                continue;
            };
            let Some(eq) = find(pair, b"=") else {
                return Err(format!("query parameter at byte {} has no `=`", first.at()));
            };
            let name = decode(pair.get(..eq).unwrap_or_default(), "parameter name")?;
            let name = match name.0.as_slice() {
                [Piece::Text(name)] => name.clone(),
                _ => {
                    return Err(format!(
                        "parameter name at byte {} must be written out, not a ${{VAR}}",
                        first.at()
                    ))
                }
            };
            let key = Key::from_name(&name, first.at())?;
            let field = if key == Key::Password {
                "password"
            } else {
                key.name()
            };
            let value = decode(pair.get(eq + 1..).unwrap_or_default(), field)?;
            params.push((key, value));
        }
    }
    Ok(Template {
        form: Form::Url,
        params,
    })
}

/// `host[:port],[ipv6]:port,…` into a comma-separated host value and a
/// comma-separated port value (empty entries where no port is given).
fn parse_hostspec(toks: &[Tok]) -> Result<(Value, Value), String> {
    let mut hosts = Value::default();
    let mut ports = Value::default();
    for (n, entry) in toks.split(|t| t.is(b',')).enumerate() {
        if n > 0 {
            hosts.push_byte(b',');
            ports.push_byte(b',');
        }
        let at = entry.first().map_or(0, Tok::at);
        let (host, port) = if entry.first().is_some_and(|t| t.is(b'[')) {
            let Some(close) = find(entry, b"]") else {
                return Err(format!("`[` at byte {at} is not closed by `]`"));
            };
            let after = entry.get(close + 1..).unwrap_or_default();
            let port = match after.split_first() {
                None => None,
                Some((colon, port)) if colon.is(b':') => Some(port),
                Some(_) => {
                    return Err(format!(
                        "expected `:port` after the IPv6 address at byte {at}"
                    ))
                }
            };
            (entry.get(1..close).unwrap_or_default(), port)
        } else {
            match find(entry, b":") {
                Some(c) => (
                    entry.get(..c).unwrap_or_default(),
                    Some(entry.get(c + 1..).unwrap_or_default()),
                ),
                None => (entry, None),
            }
        };
        hosts.append(decode(host, "host")?);
        if let Some(port) = port {
            ports.append(decode(port, "port")?);
        }
    }
    Ok((hosts, ports))
}

/// libpq's `key = value` pairs separated by whitespace; a value may be
/// single-quoted, and `\` escapes the next byte in quoted and bare values.
fn parse_key_value(toks: &[Tok]) -> Result<Template, String> {
    let mut params = Vec::new();
    let mut i = 0;
    let space = |t: Option<&Tok>| matches!(t, Some(Tok::Byte(b, _)) if b.is_ascii_whitespace());
    loop {
        while space(toks.get(i)) {
            i += 1;
        }
        let Some(start) = toks.get(i) else {
            break;
        };
        let key_at = start.at();
        let mut name = Vec::new();
        while let Some(tok) = toks.get(i) {
            match tok {
                Tok::Byte(b'=', _) => break,
                Tok::Byte(b, _) if b.is_ascii_whitespace() => break,
                Tok::Byte(b, _) => name.push(*b),
                Tok::Var(..) => {
                    return Err(format!(
                        "parameter name at byte {key_at} must be written out, not a ${{VAR}}"
                    ))
                }
            }
            i += 1;
        }
        while space(toks.get(i)) {
            i += 1;
        }
        if !toks.get(i).is_some_and(|t| t.is(b'=')) {
            return Err(format!(
                "expected `=` after the parameter name at byte {key_at} (key/value form is \
                 `key=value` pairs; quote values holding spaces: key='a b')"
            ));
        }
        i += 1;
        let key = Key::from_name(&name, key_at)?;
        while space(toks.get(i)) {
            i += 1;
        }
        let mut value = Value::default();
        if toks.get(i).is_some_and(|t| t.is(b'\'')) {
            i += 1;
            loop {
                match toks.get(i) {
                    None => {
                        return Err(format!(
                            "the quoted value of `{}` (at byte {key_at}) is not closed by `'`",
                            key.name()
                        ))
                    }
                    Some(Tok::Byte(b'\'', _)) => break,
                    Some(Tok::Byte(b'\\', _)) => {
                        i += 1;
                        match toks.get(i) {
                            Some(Tok::Byte(b, _)) => value.push_byte(*b),
                            Some(Tok::Var(name, _)) => value.0.push(Piece::Var(name.clone())),
                            None => continue,
                        }
                    }
                    Some(Tok::Byte(b, _)) => value.push_byte(*b),
                    Some(Tok::Var(name, _)) => value.0.push(Piece::Var(name.clone())),
                }
                i += 1;
            }
            i += 1;
        } else {
            while let Some(tok) = toks.get(i) {
                match tok {
                    Tok::Byte(b, _) if b.is_ascii_whitespace() => break,
                    Tok::Byte(b'\\', _) => {
                        i += 1;
                        match toks.get(i) {
                            Some(Tok::Byte(b, _)) => value.push_byte(*b),
                            Some(Tok::Var(name, _)) => value.0.push(Piece::Var(name.clone())),
                            None => break,
                        }
                    }
                    Tok::Byte(b, _) => value.push_byte(*b),
                    Tok::Var(name, _) => value.0.push(Piece::Var(name.clone())),
                }
                i += 1;
            }
        }
        params.push((key, value));
    }
    if params.is_empty() {
        return Err("empty connection string".to_string());
    }
    Ok(Template {
        form: Form::KeyValue,
        params,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Piece {
        Piece::Text(s.as_bytes().to_vec())
    }

    fn var(s: &str) -> Piece {
        Piece::Var(s.to_string())
    }

    fn get(t: &Template, key: Key) -> Vec<Piece> {
        t.get(key).map(|v| v.0.clone()).unwrap_or_default()
    }

    #[test]
    fn variables_are_pieces_of_one_value_in_every_position() {
        let cases: [(&str, Key, Vec<Piece>); 9] = [
            (
                "postgres://app:${PW}@127.0.0.1/forum",
                Key::Password,
                vec![var("PW")],
            ),
            (
                "postgres://app@h:5432/forum?password=${PW}",
                Key::Password,
                vec![var("PW")],
            ),
            (
                "host=127.0.0.1 port=5432 password=${PW} user=app dbname=forum",
                Key::Password,
                vec![var("PW")],
            ),
            ("host=h password='${PW}'", Key::Password, vec![var("PW")]),
            (
                "host=h password=pre${PW}post",
                Key::Password,
                vec![text("pre"), var("PW"), text("post")],
            ),
            (
                "postgres://${U}:${PW}@${H}:${P}/${DB}",
                Key::Host,
                vec![var("H")],
            ),
            (
                "postgres://${U}:${PW}@${H}:${P}/${DB}",
                Key::Port,
                vec![var("P")],
            ),
            (
                "postgres://${U}:${PW}@${H}:${P}/${DB}",
                Key::Dbname,
                vec![var("DB")],
            ),
            (
                "postgres://u:a%40b${PW}@h/db",
                Key::Password,
                vec![text("a@b"), var("PW")],
            ),
        ];
        for (input, key, want) in cases {
            let t = parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(get(&t, key), want, "{input}");
        }
    }

    #[test]
    fn url_parts_are_split_and_decoded_as_libpq_does() {
        let t = parse("postgresql://us%40er:p%3Aw@[::1]:5433,Host2,h3:7/my%20db?sslmode=require&application_name=a%26b").unwrap();
        assert_eq!(t.form, Form::Url);
        assert_eq!(get(&t, Key::User), vec![text("us@er")]);
        assert_eq!(get(&t, Key::Password), vec![text("p:w")]);
        assert_eq!(get(&t, Key::Host), vec![text("::1,Host2,h3")]);
        assert_eq!(get(&t, Key::Port), vec![text("5433,,7")]);
        assert_eq!(get(&t, Key::Dbname), vec![text("my db")]);
        assert_eq!(get(&t, Key::Sslmode), vec![text("require")]);
        assert_eq!(get(&t, Key::ApplicationName), vec![text("a&b")]);
        let t = parse("postgres:///forum?host=/var/run/postgresql&port=5433").unwrap();
        assert_eq!(get(&t, Key::Host), vec![text("/var/run/postgresql")]);
        assert_eq!(get(&t, Key::Dbname), vec![text("forum")]);
        let t = parse("postgres://%2Ftmp%2Fpg/forum").unwrap();
        assert_eq!(get(&t, Key::Host), vec![text("/tmp/pg")]);
    }

    #[test]
    fn key_value_quoting_follows_libpq() {
        let t =
            parse(r"host = h  dbname='my db' user=a\ b password='it\'s \\ ok' options='-c x=1'")
                .unwrap();
        assert_eq!(t.form, Form::KeyValue);
        assert_eq!(get(&t, Key::Host), vec![text("h")]);
        assert_eq!(get(&t, Key::Dbname), vec![text("my db")]);
        assert_eq!(get(&t, Key::User), vec![text("a b")]);
        assert_eq!(get(&t, Key::Password), vec![text(r"it's \ ok")]);
        assert_eq!(get(&t, Key::Options), vec![text("-c x=1")]);
        assert_eq!(
            get(&parse("host=h password=''").unwrap(), Key::Password),
            vec![]
        );
    }

    #[test]
    fn malformed_strings_are_refused_without_quoting_their_text() {
        let cases = [
            (
                "postgres://u:Secret%zzTail42@h/db",
                "percent-encoding in the password",
            ),
            ("postgres://u:${PW@h/db", "not closed"),
            ("postgres://u:${1x}@h/db", "invalid variable reference"),
            ("host=h password=Secret Tail42", "expected `=`"),
            ("host=h password='Secret Tail42", "not closed"),
            ("host=h Secret=Tail42", "unknown parameter at byte 7"),
            ("host=h sslcert=/x", "`sslcert`"),
            ("postgres://h/db?Secret=1", "unknown parameter"),
            ("postgres://h/db?Secret", "has no `=`"),
            ("postgres://u:Secret#Tail42@h/db", "`#`"),
            ("mysql://h/db", "must start with"),
            ("${DATABASE_URL}", "whole connection string"),
            ("   ", "empty"),
            ("postgres://[::1/db", "not closed"),
            ("${K}=v", "must be written out"),
        ];
        for (input, want) in cases {
            let err = parse(input).expect_err(input);
            assert!(err.contains(want), "{input}: {err}");
            for piece in ["Secret", "Tail42"] {
                assert!(!err.contains(piece), "{input}: {err}");
            }
        }
    }

    #[test]
    fn splits_only_at_literal_separators() {
        let t = parse("host=a,${H},c").unwrap();
        let hosts = t.get(Key::Host).unwrap().split(b',');
        assert_eq!(hosts.len(), 3);
        assert_eq!(hosts[1].0, vec![var("H")]);
    }
}
