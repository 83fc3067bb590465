//! TLS against a real server whose certificate (for `localhost` only)
//! comes from a throwaway CA made in the test: each `sslmode` through
//! `connect()`, a `Router` and the built binary.

use std::time::Duration;

use postshard_router::{connect, ConnUrl, Router, ShardMap};
use postshard_sandbox::{Cluster, Options};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

use crate::cli_map::map_file;
use crate::common::{runtime, FORUM_SCHEMA};
use crate::conn_secrets::{
    assert_no_secret, one_shard_map, postshard_with, texts, PASSWORD, PW_VAR,
};

/// TLS only: every TCP connection must use TLS (`hostssl` lines only).
const TLS_ONLY_HBA: &str = "\
local all all trust
hostssl all all 127.0.0.1/32 trust
";

/// A CA certificate (PEM) and the key that signs with it.
struct Ca {
    pem: String,
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn make_ca(name: &str) -> Ca {
    let key = KeyPair::generate().expect("CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params.self_signed(&key).expect("CA certificate");
    Ca {
        pem: cert.pem(),
        cert,
        key,
    }
}

/// A server certificate for `localhost` only, signed by `ca`: (cert, key).
fn server_cert(ca: &Ca) -> (String, String) {
    let key = KeyPair::generate().expect("server key");
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let cert = params
        .signed_by(&key, &ca.cert, &ca.key)
        .expect("server certificate");
    (cert.pem(), key.serialize_pem())
}

/// A TLS-only server with a certificate from a fresh CA, and the CA's PEM
/// file and another CA's.
struct Setup {
    cluster: Cluster,
    ca_file: tempfile::NamedTempFile,
    other_ca_file: tempfile::NamedTempFile,
}

fn setup() -> Setup {
    let ca = make_ca("postshard test CA");
    let other = make_ca("some other CA");
    let (cert, key) = server_cert(&ca);
    let options = Options::new(1).hba(TLS_ONLY_HBA).tls(&cert, &key);
    let cluster = Cluster::start_with(&options).expect("start PostgreSQL with TLS");
    cluster.servers()[0].psql(FORUM_SCHEMA).expect("schema");
    let file = |pem: &str| {
        let f = tempfile::Builder::new()
            .suffix(".pem")
            .tempfile()
            .expect("CA file");
        std::fs::write(f.path(), pem).expect("write CA file");
        f
    };
    Setup {
        ca_file: file(&ca.pem),
        other_ca_file: file(&other.pem),
        cluster,
    }
}

impl Setup {
    fn port(&self) -> u16 {
        self.cluster.servers()[0].port()
    }

    /// A URL to `host` with `params` (e.g. `sslmode=verify-full`).
    fn url(&self, host: &str, params: &str) -> String {
        format!("postgres://postgres@{host}:{}/forum?{params}", self.port())
    }

    fn ca(&self) -> String {
        self.ca_file.path().display().to_string()
    }

    fn other_ca(&self) -> String {
        self.other_ca_file.path().display().to_string()
    }
}

/// Connects with `connect()` and returns whether the session uses TLS,
/// or the error's text.
fn ssl_in_use(url: &str) -> Result<bool, String> {
    let url = ConnUrl::expand(url, |_| None).map_err(|e| e.join("; "))?;
    let rt = runtime();
    rt.block_on(async {
        let client = connect(&url, Duration::from_secs(10))
            .await
            .map_err(|e| e.to_string())?;
        let row = client
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .map_err(|e| e.to_string())?;
        Ok(row.get::<_, bool>(0))
    })
}

#[test]
fn each_sslmode_connects_or_fails_as_libpq_does() {
    let s = setup();
    let (ca, other) = (s.ca(), s.other_ca());
    let encrypted = [
        s.url("localhost", &format!("sslmode=verify-full&sslrootcert={ca}")),
        format!(
            "host=localhost port={} user=postgres dbname=forum sslmode=verify-full sslrootcert='{ca}'",
            s.port()
        ),
        // verify-ca checks the chain but not the name (127.0.0.1 is not in it).
        s.url("127.0.0.1", &format!("sslmode=verify-ca&sslrootcert={ca}")),
        s.url("127.0.0.1", "sslmode=require"),
        s.url("127.0.0.1", &format!("sslmode=require&sslrootcert={ca}")),
        s.url("127.0.0.1", "sslmode=prefer"),
        s.url("127.0.0.1", ""),
    ];
    for url in &encrypted {
        assert_eq!(ssl_in_use(url), Ok(true), "{url}");
    }
    let refused = [
        (
            s.url(
                "localhost",
                &format!("sslmode=verify-full&sslrootcert={other}"),
            ),
            "invalid peer certificate",
        ),
        (
            s.url(
                "127.0.0.1",
                &format!("sslmode=verify-ca&sslrootcert={other}"),
            ),
            "invalid peer certificate",
        ),
        // libpq: require with a root file verifies the chain.
        (
            s.url("127.0.0.1", &format!("sslmode=require&sslrootcert={other}")),
            "invalid peer certificate",
        ),
        // verify-full checks the name: the certificate names only localhost.
        (
            s.url(
                "127.0.0.1",
                &format!("sslmode=verify-full&sslrootcert={ca}"),
            ),
            "not valid for name",
        ),
        // The server takes TLS connections only.
        (s.url("127.0.0.1", "sslmode=disable"), "no encryption"),
    ];
    for (url, want) in &refused {
        let err = ssl_in_use(url).expect_err(url);
        assert!(
            err.to_lowercase().contains(want) && err.contains("cannot connect"),
            "{url}: {err}"
        );
    }
}

#[test]
fn router_pools_verify_the_server() {
    let s = setup();
    let rt = runtime();
    let good = s.url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", s.ca()),
    );
    let map = ShardMap::parse(&one_shard_map("secure", &good), "test", &|_| None).expect("map");
    let router = rt.block_on(Router::connect(map)).expect("router");
    let row = rt
        .block_on(router.query_one(
            1,
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        ))
        .expect("query over TLS");
    assert!(row.get::<_, bool>(0));

    let bad = s.url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", s.other_ca()),
    );
    let map = ShardMap::parse(&one_shard_map("secure", &bad), "test", &|_| None).expect("map");
    let router = rt.block_on(Router::connect(map)).expect("router");
    let err = rt
        .block_on(router.query_one(1, "SELECT 1", &[]))
        .expect_err("unknown CA");
    let text = err.to_string();
    assert!(
        text.contains("secure") && text.contains("invalid peer certificate"),
        "{text}"
    );
}

#[test]
fn the_binary_reports_tls_failures_naming_the_shard() {
    let s = setup();
    // Each URL also carries a password (the server trusts, so it is
    // unused): no failure may show a piece of it.
    let run = |url: &str| {
        let url = format!("{url}&password=${{{PW_VAR}}}");
        let map = map_file(&one_shard_map("secure-shard", &url));
        let out = postshard_with(
            &["skew", "--map", map.path().to_str().expect("path")],
            PW_VAR,
            PASSWORD,
        );
        let (stdout, stderr) = texts(&out);
        assert_no_secret(&url, &format!("{stdout}{stderr}"));
        (out.status.code(), stdout, stderr)
    };
    let (code, stdout, stderr) = run(&s.url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", s.ca()),
    ));
    assert_eq!(code, Some(0), "{stdout}{stderr}");

    for (url, want) in [
        (
            s.url(
                "localhost",
                &format!("sslmode=verify-full&sslrootcert={}", s.other_ca()),
            ),
            "invalid peer certificate",
        ),
        (s.url("127.0.0.1", "sslmode=disable"), "no encryption"),
    ] {
        let (code, stdout, stderr) = run(&url);
        assert_eq!(code, Some(1), "{url}\n{stdout}{stderr}");
        assert!(stderr.contains("secure-shard"), "{stderr}");
        let both = format!("{stdout}{stderr}").to_lowercase();
        assert!(both.contains(want), "{stdout}{stderr}");
    }

    // A missing root file is invalid input, found by `check`, naming it.
    let missing = s.ca_file.path().with_extension("missing.pem");
    let url = s.url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", missing.display()),
    );
    let map = map_file(&one_shard_map("secure-shard", &url));
    for command in ["check", "skew"] {
        let out = postshard_with(
            &[command, "--map", map.path().to_str().expect("path")],
            "UNUSED",
            "",
        );
        let (stdout, stderr) = texts(&out);
        assert_eq!(out.status.code(), Some(2), "{command}: {stdout}{stderr}");
        assert!(
            stderr.contains(&missing.display().to_string()) && stderr.contains("shards[0].url"),
            "{command}: {stderr}"
        );
    }
}
