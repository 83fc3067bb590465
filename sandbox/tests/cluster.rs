//! Starting, stopping and dropping real sandbox servers.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeSet;
use std::fs;
use std::net::{Ipv4Addr, TcpStream};
use std::path::Path;

use postshard_sandbox::{Cluster, Options, SandboxError, Server};

type Result = std::result::Result<(), SandboxError>;

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
fn accepts(port: u16) -> bool {
    TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok()
}

/// The postmaster's PID, from its lock file.
fn postmaster_pid(server: &Server) -> String {
    let lock = fs::read_to_string(server.dir().join("data/postmaster.pid")).unwrap();
    lock.lines().next().unwrap().to_owned()
}

/// Whether any process's command line holds `-c port=<port>`.
fn process_with_port_exists(port: u16) -> bool {
    let needle = format!("port={port}");
    fs::read_dir("/proc").unwrap().flatten().any(|entry| {
        fs::read(entry.path().join("cmdline")).is_ok_and(|cmdline| {
            cmdline
                .split(|&byte| byte == 0)
                .any(|arg| arg == needle.as_bytes())
        })
    })
}

#[test]
fn three_servers_answer_on_distinct_ports() -> Result {
    let cluster = Cluster::start(3)?;
    assert_eq!(cluster.servers().len(), 3);
    for server in cluster.servers() {
        assert!(server.is_running());
        assert_eq!(server.psql("SELECT 1")?, "1");
        assert_eq!(server.psql("SELECT current_database()")?, "forum");
        let url = format!("postgres://postgres@127.0.0.1:{}/forum", server.port());
        assert_eq!(server.url(), url);
    }
    let ports: BTreeSet<u16> = cluster.servers().iter().map(Server::port).collect();
    assert_eq!(ports.len(), 3);
    assert!(cluster.server(3).is_none());
    Ok(())
}

#[test]
fn stop_refuses_connections_and_start_keeps_data() -> Result {
    let cluster = Cluster::start(1)?;
    let server = cluster.server(0).unwrap();
    server.psql("CREATE TABLE post (id int PRIMARY KEY, body text)")?;
    server.psql("INSERT INTO post VALUES (1, 'hello'), (2, 'world')")?;

    server.stop()?;
    assert!(!server.is_running());
    assert!(!accepts(server.port()));
    server.stop()?;

    server.start()?;
    assert!(server.is_running());
    let rows = server.psql("SELECT id, body FROM post ORDER BY id")?;
    assert_eq!(rows, "1|hello\n2|world");
    server.start()?;
    Ok(())
}

#[test]
fn drop_stops_servers_and_removes_directories() -> Result {
    let cluster = Cluster::start(2)?;
    let servers: Vec<_> = cluster
        .servers()
        .iter()
        .map(|server| {
            (
                server.port(),
                server.dir().to_owned(),
                postmaster_pid(server),
            )
        })
        .collect();
    for (port, dir, pid) in &servers {
        assert!(accepts(*port));
        assert!(dir.exists());
        assert!(Path::new("/proc").join(pid).exists());
    }

    drop(cluster);
    for (port, dir, pid) in &servers {
        assert!(!dir.exists(), "{} still exists", dir.display());
        assert!(
            !Path::new("/proc").join(pid).exists(),
            "postmaster {pid} still runs"
        );
        assert!(
            !process_with_port_exists(*port),
            "a process for port {port} remains"
        );
        assert!(!accepts(*port));
    }
    Ok(())
}

#[test]
fn options_name_the_database_and_add_settings() -> Result {
    let options = Options::new(1)
        .database("shop floor")
        .setting("work_mem", "7MB");
    let cluster = Cluster::start_with(&options)?;
    let server = cluster.server(0).unwrap();
    let row = server.psql("SELECT current_database(), current_setting('work_mem')")?;
    assert_eq!(row, "shop floor|7MB");
    assert!(server.url().ends_with("/shop%20floor"));
    assert!(server.url_for("postgres").ends_with("/postgres"));
    Ok(())
}

#[test]
fn psql_reports_sql_errors() -> Result {
    let cluster = Cluster::start(1)?;
    let err = cluster.servers()[0].psql("SELEC 1").unwrap_err();
    match &err {
        SandboxError::Command { stderr, .. } => assert!(stderr.contains("syntax error"), "{err}"),
        other => panic!("unexpected error: {other}"),
    }
    Ok(())
}
