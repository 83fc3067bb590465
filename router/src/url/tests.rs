use tokio_postgres::config::Host;

use super::*;

/// Passwords with every character that has a meaning somewhere in a
/// connection string.
const NASTY: [&str; 14] = [
    "p@ss",
    "a%41b",
    "Secret@Tail42",
    "Secret&Tail42",
    "Secret Tail42",
    "Sec'ret\\Tail42",
    "S:e/c%r#e?t&'T a\\il42",
    "${PW}",
    "x${",
    "'quoted'",
    "a=b c=d",
    "back\\",
    "tab\there",
    "ünï©ødé",
];

fn env(pw: &'static str) -> impl Fn(&str) -> Option<String> {
    move |name| match name {
        "PW" => Some(pw.to_string()),
        "U" => Some("app".to_string()),
        _ => None,
    }
}

#[test]
fn a_variable_is_a_value_in_its_position_in_every_form() {
    let templates = [
        "postgres://app:${PW}@127.0.0.1:5433/forum",
        "postgresql://${U}:${PW}@127.0.0.1:5433/forum?sslmode=disable",
        "postgres://app@127.0.0.1:5433/forum?password=${PW}",
        "postgres://app@127.0.0.1:5433/forum?password=${PW}&application_name=x",
        "host=127.0.0.1 port=5433 password=${PW} user=app dbname=forum",
        "host=127.0.0.1 port=5433 user=app dbname=forum password='${PW}'",
        "password = ${PW} host = 127.0.0.1 port = 5433 user = app dbname = forum",
    ];
    for template in templates {
        for pw in NASTY {
            let url = ConnUrl::expand(template, env(pw))
                .unwrap_or_else(|e| panic!("{template} with {pw:?}: {e:?}"));
            let c = url.pg_config();
            assert_eq!(c.get_password(), Some(pw.as_bytes()), "{template} {pw:?}");
            assert_eq!(c.get_hosts(), [Host::Tcp("127.0.0.1".into())], "{template}");
            assert_eq!(c.get_ports(), [5433], "{template}");
            assert_eq!(c.get_user(), Some("app"), "{template}");
            assert_eq!(c.get_dbname(), Some("forum"), "{template}");
            for shown in [url.to_string(), format!("{url:?}")] {
                assert!(shown.contains("***"), "{shown}");
                for piece in secret_pieces(pw) {
                    assert!(!shown.contains(&piece), "{template} {pw:?}: {shown}");
                }
            }
        }
    }
}

/// Heads and tails of a password that would give it away (4+ bytes, so
/// that common text such as `app` is not counted).
fn secret_pieces(pw: &str) -> Vec<String> {
    let mut pieces = vec![pw.to_string()];
    for piece in pw.split(|c: char| !c.is_alphanumeric()) {
        if piece.len() >= 4 && !["forum", "disable"].contains(&piece) {
            pieces.push(piece.to_string());
        }
    }
    pieces
}

#[test]
fn literal_text_is_decoded_and_unquoted_but_values_are_not() {
    let url = ConnUrl::expand("postgres://u%40x:${PW}@h/my%20db", env("a%41b")).unwrap();
    assert_eq!(url.pg_config().get_user(), Some("u@x"));
    assert_eq!(url.pg_config().get_dbname(), Some("my db"));
    assert_eq!(url.pg_config().get_password(), Some(&b"a%41b"[..]));
    let url = ConnUrl::expand(r"host=h user='it\'s' password=${PW}", env("'x'")).unwrap();
    assert_eq!(url.pg_config().get_user(), Some("it's"));
    assert_eq!(url.pg_config().get_password(), Some(&b"'x'"[..]));
}

#[test]
fn hosts_ports_and_sockets() {
    let url = ConnUrl::expand("postgres://u@[::1]:1,Db.Example:2,h3/db", |_| None).unwrap();
    let c = url.pg_config();
    assert_eq!(
        c.get_hosts(),
        [
            Host::Tcp("::1".into()),
            Host::Tcp("Db.Example".into()),
            Host::Tcp("h3".into())
        ]
    );
    assert_eq!(c.get_ports(), [1, 2, 5432]);
    assert_eq!(
        url.to_string(),
        "postgres://u@[::1]:1,Db.Example:2,h3:5432/db"
    );
    let url = ConnUrl::expand("postgres:///forum?host=/var/run/postgresql&user=u", |_| {
        None
    })
    .unwrap();
    assert_eq!(
        url.pg_config().get_hosts(),
        [Host::Unix("/var/run/postgresql".into())]
    );
    assert_eq!(
        url.to_string(),
        "postgres://u@/forum?host=/var/run/postgresql"
    );
    let url = ConnUrl::expand("host=/tmp port=5433 dbname='my db'", |_| None).unwrap();
    assert_eq!(url.pg_config().get_hosts(), [Host::Unix("/tmp".into())]);
    assert_eq!(url.to_string(), "host=/tmp port=5433 dbname='my db'");
}

#[test]
fn invalid_values_are_reported_without_quoting_them() {
    let cases = [
        ("postgres://u:${PW}@/db", "names no host"),
        ("postgres://u:${PW}@h:Tail42/db", "port #1"),
        ("postgres://u:${PW}@h:0/db", "port #1"),
        ("postgres://u:Secret@Tail42@h/db", "host #1"),
        ("host=a,b port=1,2,3", "3 ports for 2 hosts"),
        ("host=h sslmode=Tail42", "sslmode must be"),
        ("host=h sslmode=verify-full", "needs sslrootcert"),
        ("host=h connect_timeout=Tail42", "connect_timeout"),
        ("host=h hostaddr=Tail42", "hostaddr #1"),
        ("host=h password=${NOPE}", "`NOPE` is not set"),
    ];
    for (input, want) in cases {
        let err = ConnUrl::expand(input, env("x"))
            .expect_err(input)
            .join("; ");
        assert!(err.contains(want), "{input}: {err}");
        assert!(
            !err.contains("Tail42") && !err.contains("Secret"),
            "{input}: {err}"
        );
    }
    let err = ConnUrl::expand("postgres://${A}:${B}@${A}/db", |_| None).unwrap_err();
    assert_eq!(err.len(), 2, "each unset variable once: {err:?}");
}

#[test]
fn literal_passwords_are_told_from_variables_on_the_parsed_string() {
    let literal = [
        "postgres://u:pw@h/db",
        "postgres://u:a%2Fb@h/db",
        "host=h password = secret",
        "host=h password='a b'",
        "postgres://u@h/db?password=x",
        "postgres://u:pre${PW}@h/db",
        "host=h password=${PW}post",
        "postgres://u:lit@h/db?password=${PW}",
    ];
    for t in literal {
        assert!(has_literal_password(t), "{t}");
    }
    let not_literal = [
        "postgres://u:${PW}@h/db",
        "postgres://u@h/db?password=${PW}",
        "host=127.0.0.1 port=5432 password=${PW} user=app dbname=forum",
        "host=h password='${PW}'",
        "postgres://u@h/db",
        "postgres://u:@h/db",
        "host=h password=''",
    ];
    for t in not_literal {
        assert!(!has_literal_password(t), "{t}");
    }
}

#[test]
fn redacts_the_template_from_its_parsed_fields() {
    let cases = [
        ("postgres://u:pw@h:5432/db", "postgres://u:***@h:5432/db"),
        ("postgres://u@h/db", "postgres://u@h/db"),
        (
            "postgres://app@h:5432/forum?password=Secret%40Tail42",
            "postgres://app:***@h:5432/forum",
        ),
        (
            "host=h dbname=forum password=Secret&Tail42",
            "host=h password=*** dbname=forum",
        ),
        (
            "host=h user=${U} password='a b' sslmode=require",
            "host=h user=${U} password=*** sslmode=require",
        ),
        (
            "postgres://${U}:${PW}@${H}:${P}/forum?sslmode=verify-full&sslrootcert=/etc/ca.pem",
            "postgres://${U}:***@${H}:${P}/forum?sslmode=verify-full&sslrootcert=/etc/ca.pem",
        ),
    ];
    for (input, want) in cases {
        assert_eq!(redact(input), want, "{input}");
    }
    let shown = redact("postgres://u:Secret@Tail42@h/db");
    assert!(!shown.contains("Tail42"), "{shown}");
}

#[test]
fn tls_settings_are_read_in_both_forms() {
    for (t, mode, root) in [
        ("postgres://u@h/db", SslMode::Prefer, None),
        ("host=h sslmode=disable", SslMode::Disable, None),
        ("postgres://h/db?sslmode=require", SslMode::Require, None),
        (
            "postgres://h/db?sslmode=verify-ca&sslrootcert=%2Fca.pem",
            SslMode::VerifyCa,
            Some(RootCert::File("/ca.pem".into())),
        ),
        (
            "host=h sslmode=verify-full sslrootcert=system",
            SslMode::VerifyFull,
            Some(RootCert::System),
        ),
    ] {
        let url = ConnUrl::expand(t, |_| None).unwrap();
        assert_eq!(url.sslmode(), mode, "{t}");
        assert_eq!(url.sslrootcert(), root.as_ref(), "{t}");
    }
}

proptest::proptest! {
    /// Whatever a variable holds, it is the password byte for byte, the
    /// other fields stay as written, and the canonical form never shows it.
    #[test]
    fn any_value_is_the_password_byte_for_byte(pw in proptest::prelude::any::<String>()) {
        let templates = [
            "postgres://app:${PW}@db.example:5433/forum",
            "postgres://app@db.example:5433/forum?password=${PW}",
            "host=db.example port=5433 password=${PW} user=app dbname=forum",
            "host=db.example port=5433 user=app dbname=forum password='${PW}'",
        ];
        for template in templates {
            let value = pw.clone();
            let url = ConnUrl::expand(template, move |_| Some(value.clone()))
                .map_err(|e| proptest::test_runner::TestCaseError::fail(format!("{e:?}")))?;
            let c = url.pg_config();
            let want = (!pw.is_empty()).then_some(pw.as_bytes());
            proptest::prop_assert_eq!(c.get_password(), want);
            proptest::prop_assert_eq!(c.get_hosts(), [Host::Tcp("db.example".into())]);
            proptest::prop_assert_eq!(c.get_ports(), [5433]);
            proptest::prop_assert_eq!(c.get_user(), Some("app"));
            proptest::prop_assert_eq!(c.get_dbname(), Some("forum"));
            let shown = format!("{url} {url:?}");
            // Short values may occur in the rest of the text by chance.
            if pw.chars().count() >= 6 {
                proptest::prop_assert!(!shown.contains(&pw), "{}", shown);
            }
        }
    }
}
