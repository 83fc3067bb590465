//! `postshard sandbox up/status/down` as a user runs them: servers that
//! outlive the command, a second `up`, `down` twice, missing binaries.

use std::net::{Ipv4Addr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_postshard");

/// Runs `postshard ARGS` with `env` set.
fn postshard(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run postshard")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A scratch directory the `postgres` user can reach when we are root
/// (tempfile makes it 0700), and a sandbox path inside it that does not
/// exist yet.
pub fn scratch() -> (tempfile::TempDir, PathBuf) {
    let base = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = base.path().join("sandbox");
    (base, dir)
}

/// The ports `sandbox status` lists.
fn ports(status: &str) -> Vec<u16> {
    status
        .lines()
        .filter(|l| l.starts_with('s'))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .collect()
}

fn accepts(port: u16) -> bool {
    TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok()
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn up_status_down_and_again() {
    let (_base, dir) = scratch();
    let d = path(&dir);
    let up = postshard(&["sandbox", "up", "--shards", "2", "--dir", d], &[]);
    assert!(up.status.success(), "up: {}", text(&up.stderr));
    let out = text(&up.stdout);
    assert!(
        out.contains("shardmap.yaml") && out.contains("sandbox down"),
        "{out}"
    );

    // The servers outlive the command; the map is ready and init has run.
    let map = dir.join("shardmap.yaml");
    let yaml = std::fs::read_to_string(&map).unwrap();
    assert!(
        yaml.contains("control: ") && yaml.contains("name: s1"),
        "{yaml}"
    );
    let status = postshard(&["status", "--map", path(&map)], &[]);
    assert!(status.status.success(), "{}", text(&status.stderr));
    assert!(text(&status.stdout).contains("live epoch 1"));
    let verify = postshard(&["verify", "--map", path(&map)], &[]);
    assert!(verify.status.success(), "{}", text(&verify.stderr));

    let listed = postshard(&["sandbox", "status", "--dir", d], &[]);
    assert!(listed.status.success());
    let listed = text(&listed.stdout);
    let ports = ports(&listed);
    assert_eq!(ports.len(), 2, "{listed}");
    assert!(listed.contains(" up "), "{listed}");
    assert!(ports.iter().all(|&p| accepts(p)), "{listed}");

    // A second `up` changes nothing and says so (exit 0).
    let again = postshard(&["sandbox", "up", "--dir", d], &[]);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert!(
        text(&again.stdout).contains("already up"),
        "{}",
        text(&again.stdout)
    );
    let still = text(&postshard(&["sandbox", "status", "--dir", d], &[]).stdout);
    assert_eq!(self::ports(&still), ports);

    let down = postshard(&["sandbox", "down", "--dir", d], &[]);
    assert!(down.status.success(), "{}", text(&down.stderr));
    assert!(!dir.exists(), "down removes the directory");
    assert!(ports.iter().all(|&p| !accepts(p)), "servers stopped");

    // `down` and `status` on a directory without a sandbox: exit 1, said clearly.
    for sub in ["down", "status"] {
        let missing = postshard(&["sandbox", sub, "--dir", d], &[]);
        assert_eq!(missing.status.code(), Some(1), "{sub}");
        assert!(
            text(&missing.stderr).contains("no sandbox in"),
            "{sub}: {}",
            text(&missing.stderr)
        );
    }
}

#[test]
fn up_without_server_binaries_says_how_to_install_them() {
    let (_base, dir) = scratch();
    let out = postshard(
        &["sandbox", "up", "--dir", path(&dir)],
        &[("POSTSHARD_PG_BINDIR", "/nonexistent/postgresql/bin")],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("apt-get install postgresql"), "{err}");
    assert!(err.contains("/nonexistent/postgresql/bin"), "{err}");
    assert!(!dir.exists(), "nothing created");
}

#[test]
fn up_refuses_a_directory_holding_other_files() {
    let (_base, dir) = scratch();
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("notes.txt"), "mine").unwrap();
    let out = postshard(&["sandbox", "up", "--dir", path(&dir)], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("not empty"));
    assert_eq!(
        std::fs::read_to_string(dir.join("notes.txt")).unwrap(),
        "mine"
    );
    // `down` there must not remove someone's directory.
    let down = postshard(&["sandbox", "down", "--dir", path(&dir)], &[]);
    assert_eq!(down.status.code(), Some(1));
    assert!(dir.join("notes.txt").exists());
}
