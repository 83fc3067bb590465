//! Connection strings with `${VAR}` passwords holding every character that
//! means something in a connection string, against a real server with
//! SCRAM authentication: through `connect()`, a `Router` and the built
//! `postshard` binary, on success, wrong-password and unreachable paths,
//! and never a piece of the password in any output.

use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::ffi::OsStrExt;
use std::process::{Command, Output};
use std::time::Duration;

use postshard_router::map::yaml::scalar as yaml_scalar;
use postshard_router::{connect, ConnUrl, ShardMap};
use postshard_sandbox::{Cluster, Options};

use crate::cli_map::map_file;
use crate::common::{runtime, FORUM_SCHEMA};

const BIN: &str = env!("CARGO_BIN_EXE_postshard");

/// The variable maps use for the password.
pub const PW_VAR: &str = "POSTSHARD_CONN_PW";

/// The role's password: `@ : / % # ? & '`, space, backslash, `${`, a
/// percent escape and a quote, around two distinctive pieces.
pub const PASSWORD: &str = "Secret@:/%41#?&'\" \\${X}Tail42";

/// A wrong password, with its own distinctive pieces.
const WRONG: &str = "Wrong&Pass@Word%20";

/// Pieces of [`PASSWORD`] and [`WRONG`] that must never be shown.
const PIECES: [&str; 8] = [
    PASSWORD, WRONG, "Secret", "Tail42", "%41#?&", "Wrong", "Pass@", "Word%20",
];

/// Lines of pg_hba.conf: the superuser by trust (for the sandbox's psql),
/// everyone else by SCRAM over TCP.
const SCRAM_HBA: &str = "\
local all all trust
host all postgres 127.0.0.1/32 trust
host all all 127.0.0.1/32 scram-sha-256
";

/// Connection string templates: URL userinfo, URL query parameter and
/// key/value form, each with `${POSTSHARD_CONN_PW}` for the password.
fn templates(port: u16) -> Vec<String> {
    vec![
        format!("postgres://app:${{{PW_VAR}}}@127.0.0.1:{port}/forum"),
        format!("postgresql://app@127.0.0.1:{port}/forum?password=${{{PW_VAR}}}&sslmode=disable"),
        format!("host=127.0.0.1 port={port} password=${{{PW_VAR}}} user=app dbname=forum"),
        format!("host=127.0.0.1 port={port} user=app dbname=forum password='${{{PW_VAR}}}'"),
    ]
}

/// A port nothing listens on (it was free a moment ago).
fn dead_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Asserts `text` holds no piece of a password.
#[track_caller]
pub fn assert_no_secret(what: &str, text: &str) {
    for piece in PIECES {
        assert!(!text.contains(piece), "{what} shows `{piece}`:\n{text}");
    }
}

/// A one-shard map over `url`, with the forum tables.
pub fn one_shard_map(shard: &str, url: &str) -> String {
    format!(
        "version: 1\nhash: {{ function: pg_hashint8extended, seed: 0 }}\n\
         tables:\n  - {{ name: posts, key: id }}\n  - {{ name: comments, key: post_id }}\n\
         shards:\n  - name: {shard}\n    url: {}\n\
         ring:\n  - {{ from: -9223372036854775808, shard: {shard} }}\n",
        yaml_scalar(url)
    )
}

/// Runs `postshard ARGS` with the password variable set to `password`.
pub fn postshard_with(args: &[&str], var: &str, password: &str) -> Output {
    Command::new(BIN)
        .args(args)
        .env(var, password)
        .output()
        .expect("run postshard")
}

fn scram_server() -> Cluster {
    let cluster = Cluster::start_with(&Options::new(1).hba(SCRAM_HBA)).expect("start PostgreSQL");
    let server = &cluster.servers()[0];
    let sql = format!(
        "SET password_encryption = 'scram-sha-256';
         CREATE ROLE app LOGIN PASSWORD '{}';
         GRANT CREATE ON SCHEMA public TO app;
         SET ROLE app;
         {FORUM_SCHEMA}",
        PASSWORD.replace('\'', "''")
    );
    server.psql(&sql).expect("create the SCRAM role");
    assert!(
        server
            .psql("SELECT rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid WHERE rolname = 'app'")
            .expect("role")
            == "t"
    );
    cluster
}

#[test]
fn scram_passwords_with_every_special_character_work_in_every_form() {
    let cluster = scram_server();
    let port = cluster.servers()[0].port();
    let rt = runtime();
    let env = |pw: &'static str| move |name: &str| (name == PW_VAR).then(|| pw.to_string());
    for template in templates(port) {
        // connect(): the right password authenticates as `app`.
        let url = ConnUrl::expand(&template, env(PASSWORD)).expect("valid URL");
        assert_no_secret("ConnUrl", &format!("{url} {url:?}"));
        let client = rt
            .block_on(connect(&url, Duration::from_secs(10)))
            .unwrap_or_else(|e| panic!("{template}: {e}"));
        let row = rt
            .block_on(client.query_one("SELECT current_user::text", &[]))
            .expect("query");
        assert_eq!(row.get::<_, String>(0), "app", "{template}");

        // A wrong password and an unreachable port fail without showing it.
        let wrong = ConnUrl::expand(&template, env(WRONG)).expect("valid URL");
        let err = rt
            .block_on(connect(&wrong, Duration::from_secs(10)))
            .expect_err("wrong password");
        let text = format!("{err} {err:?}");
        assert!(
            text.contains("28P01") || text.contains("password"),
            "{text}"
        );
        assert_no_secret("auth failure", &text);
        let dead = template.replace(&port.to_string(), &dead_port().to_string());
        let url = ConnUrl::expand(&dead, env(PASSWORD)).expect("valid URL");
        let err = rt
            .block_on(connect(&url, Duration::from_secs(5)))
            .expect_err("unreachable");
        let text = format!("{err} {err:?}");
        assert!(text.contains("cannot connect"), "{text}");
        assert_no_secret("unreachable", &text);

        // Router: pools built from a map with the same URL.
        let yaml = one_shard_map("forum-a", &template);
        let map = ShardMap::parse(&yaml, "test", &env(PASSWORD)).expect("valid map");
        let router = rt
            .block_on(postshard_router::Router::connect(map))
            .expect("router");
        let row = rt
            .block_on(router.query_one(42, "SELECT current_user::text", &[]))
            .unwrap_or_else(|e| panic!("{template}: {e}"));
        assert_eq!(row.get::<_, String>(0), "app");
        let map = ShardMap::parse(&yaml, "test", &env(WRONG)).expect("valid map");
        let router = rt
            .block_on(postshard_router::Router::connect(map))
            .expect("router");
        let err = rt
            .block_on(router.query_one(42, "SELECT 1", &[]))
            .expect_err("wrong password");
        assert_no_secret("router auth failure", &format!("{err} {err:?}"));
    }
}

#[test]
fn the_binary_connects_with_the_variable_and_never_prints_the_password() {
    let cluster = scram_server();
    let port = cluster.servers()[0].port();
    for template in templates(port) {
        let map = map_file(&one_shard_map("forum-a", &template));
        let path = map.path().to_str().expect("utf-8 path");

        let out = postshard_with(&["check", "--map", path], PW_VAR, PASSWORD);
        let (stdout, stderr) = texts(&out);
        assert_eq!(out.status.code(), Some(0), "{template}\n{stdout}{stderr}");
        assert!(
            stdout.contains("***") && stdout.contains("127.0.0.1"),
            "{stdout}"
        );
        assert_no_secret("check", &format!("{stdout}{stderr}"));

        let out = postshard_with(&["skew", "--map", path], PW_VAR, PASSWORD);
        let (stdout, stderr) = texts(&out);
        assert_eq!(out.status.code(), Some(0), "{template}\n{stdout}{stderr}");
        assert!(stdout.contains("forum-a"), "{stdout}");
        assert_no_secret("skew", &format!("{stdout}{stderr}"));

        let out = postshard_with(&["route", "--map", path, "1", "2"], PW_VAR, PASSWORD);
        let (stdout, stderr) = texts(&out);
        assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
        assert_no_secret("route", &format!("{stdout}{stderr}"));

        for (password, why) in [(WRONG, "wrong password"), (PASSWORD, "unreachable")] {
            let template = match why {
                "unreachable" => template.replace(&port.to_string(), &dead_port().to_string()),
                _ => template.clone(),
            };
            let map = map_file(&one_shard_map("forum-a", &template));
            let path = map.path().to_str().expect("utf-8 path");
            let out = postshard_with(&["skew", "--map", path], PW_VAR, password);
            let (stdout, stderr) = texts(&out);
            assert_eq!(
                out.status.code(),
                Some(1),
                "{why}: {template}\n{stdout}{stderr}"
            );
            assert!(stderr.contains("forum-a"), "{why}: {stderr}");
            assert_no_secret(why, &format!("{stdout}{stderr}"));
        }
    }
}

#[test]
fn a_literal_password_is_refused_without_showing_any_piece_of_it() {
    let literal = [
        "postgres://app:Secret@Tail42@127.0.0.1/forum",
        "postgres://app:Secret%40Tail42@127.0.0.1/forum",
        "postgres://app@127.0.0.1/forum?password=Secret%26Tail42",
        "host=127.0.0.1 dbname=forum password=Secret&Tail42",
        "host=127.0.0.1 dbname=forum password='Secret Tail42'",
        "host=127.0.0.1 dbname=forum password=Secret Tail42",
        "host=127.0.0.1 dbname=forum password=Secret${POSTSHARD_CONN_PW}",
    ];
    for url in literal {
        let map = map_file(&one_shard_map("forum-a", url));
        let path = map.path().to_str().expect("utf-8 path");
        let out = postshard_with(&["check", "--map", path], PW_VAR, "x");
        let (stdout, stderr) = texts(&out);
        assert_eq!(out.status.code(), Some(2), "{url}\n{stdout}{stderr}");
        assert!(stderr.contains("shards[0].url"), "{url}: {stderr}");
        assert_no_secret(url, &format!("{stdout}{stderr}"));
    }
    // Malformed strings whose password is a variable: refused (exit 2)
    // without showing it either.
    for url in [
        format!("postgres://app:${{{PW_VAR}}}@127.0.0.1:notaport/forum"),
        format!("postgres://app:${{{PW_VAR}}}@/forum"),
        format!("host=127.0.0.1 password=${{{PW_VAR}}} sslmode=verify-everything"),
        format!("host=127.0.0.1 password=${{{PW_VAR}}} sslcert=/x"),
        format!("host='127.0.0.1 password=${{{PW_VAR}}}"),
    ] {
        let map = map_file(&one_shard_map("forum-a", &url));
        let path = map.path().to_str().expect("utf-8 path");
        for command in ["check", "skew"] {
            let out = postshard_with(&[command, "--map", path], PW_VAR, PASSWORD);
            let (stdout, stderr) = texts(&out);
            assert_eq!(out.status.code(), Some(2), "{url}\n{stdout}{stderr}");
            assert!(stderr.contains("shards[0].url"), "{url}: {stderr}");
            assert_no_secret(&url, &format!("{stdout}{stderr}"));
        }
    }
    // The variable form of the same is accepted (the example).
    let url = format!("host=127.0.0.1 port=5432 password=${{{PW_VAR}}} user=app dbname=forum");
    let map = map_file(&one_shard_map("forum-a", &url));
    let path = map.path().to_str().expect("utf-8 path");
    let out = postshard_with(&["check", "--map", path], PW_VAR, PASSWORD);
    assert_eq!(out.status.code(), Some(0), "{}", texts(&out).1);
    // A value that is not UTF-8 is named as such, not as unset.
    let out = Command::new(BIN)
        .args(["check", "--map", path])
        .env(PW_VAR, std::ffi::OsStr::from_bytes(b"Secret\xffTail42"))
        .output()
        .expect("run postshard");
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    assert!(stderr.contains("is not valid UTF-8"), "{stderr}");
    assert_no_secret("non-UTF-8", &format!("{stdout}{stderr}"));
}

#[test]
fn two_spellings_of_one_endpoint_are_the_same_shard() {
    let pairs = [
        (
            "postgres://u@localhost:5433/forum",
            "postgres://u@LOCALHOST:5433/forum",
        ),
        (
            "postgres://u@[::1]/forum",
            "host=0:0:0:0:0:0:0:1 port=5432 user=u dbname=forum",
        ),
        (
            "host=/var/run/postgresql/ user=u dbname=forum",
            "postgres:///forum?host=/var/run/postgresql&user=u",
        ),
        ("postgres://u@db/u", "postgres://u@db.:5432"),
    ];
    for (a, b) in pairs {
        let yaml = format!(
            "version: 1\nhash: {{ function: pg_hashint8extended, seed: 0 }}\n\
             tables:\n  - {{ name: posts, key: id }}\n\
             shards:\n  - {{ name: a, url: {} }}\n  - {{ name: b, url: {} }}\n\
             ring:\n  - {{ from: -9223372036854775808, shard: a }}\n  - {{ from: 0, shard: b }}\n",
            yaml_scalar(a),
            yaml_scalar(b)
        );
        let map = map_file(&yaml);
        let out = postshard_with(
            &["check", "--map", map.path().to_str().expect("path")],
            PW_VAR,
            "x",
        );
        let (stdout, stderr) = texts(&out);
        assert_eq!(out.status.code(), Some(2), "{a} vs {b}\n{stdout}{stderr}");
        assert!(stderr.contains("same server and database"), "{stderr}");
        assert!(stderr.contains("shards[1].url"), "{stderr}");
    }
}

pub fn texts(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn unix_socket_hosts_connect_in_both_forms() {
    let cluster = scram_server();
    let server = &cluster.servers()[0];
    let (dir, port) = (server.dir().display().to_string(), server.port());
    let rt = runtime();
    for template in [
        format!("host={dir} port={port} user=app dbname=forum"),
        // sslmode does not apply to sockets, as in libpq.
        format!("host='{dir}/' port={port} user=app dbname=forum sslmode=require"),
        format!("postgres:///forum?host={dir}&port={port}&user=app"),
        format!("postgresql://app@{}:{port}/forum", dir.replace('/', "%2F")),
    ] {
        let url = ConnUrl::expand(&template, |_| None).expect("valid URL");
        let client = rt
            .block_on(connect(&url, Duration::from_secs(10)))
            .unwrap_or_else(|e| panic!("{template}: {e}"));
        let row = rt
            .block_on(
                client.query_one("SELECT current_user::text, inet_server_addr() IS NULL", &[]),
            )
            .expect("query");
        assert_eq!(row.get::<_, String>(0), "app", "{template}");
        assert!(row.get::<_, bool>(1), "{template}: not over the socket");
    }
}
