//! The template data directory each server starts from.
//!
//! `initdb` and creating the database run once per process and database
//! name; each server gets a copy, which is much faster.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use tempfile::TempDir;

use crate::bin::{self, Bin, SUPERUSER};
use crate::postmaster::{Postmaster, StopMode};
use crate::user::RunAs;
use crate::{scratch, SandboxError};

/// The templates made so far, by database name; they live until the process
/// exits, and a later process's [`scratch::sweep`] removes them.
static TEMPLATES: Mutex<BTreeMap<String, Arc<Template>>> = Mutex::new(BTreeMap::new());

/// A stopped data directory holding an empty database, and the programs
/// that made it.
#[derive(Debug)]
pub(crate) struct Template {
    bin: Bin,
    dir: TempDir,
}

impl Template {
    /// The template for `database`, made on first use.
    pub(crate) fn get(database: &str) -> Result<Arc<Template>, SandboxError> {
        let mut templates = TEMPLATES.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(template) = templates.get(database) {
            return Ok(Arc::clone(template));
        }
        let template = Arc::new(Template::make(database)?);
        templates.insert(database.to_owned(), Arc::clone(&template));
        Ok(template)
    }

    /// The programs and the user that runs them.
    pub(crate) fn bin(&self) -> &Bin {
        &self.bin
    }

    /// Copies the data directory to `dir/data`, owned by the server user.
    pub(crate) fn copy_to(&self, dir: &Path) -> Result<(), SandboxError> {
        copy_dir(
            &self.dir.path().join("data"),
            &dir.join("data"),
            self.bin.user(),
        )
    }

    /// Runs `initdb`, then starts the server (without TCP) to create
    /// `database`, and stops it.
    fn make(database: &str) -> Result<Template, SandboxError> {
        let bin = Bin::locate()?;
        scratch::sweep(&bin);
        let dir = scratch::create(&bin)?;
        let mut initdb = bin.command("initdb", dir.path());
        initdb.arg("-D").arg(dir.path().join("data"));
        initdb.args(["-A", "trust", "-U", SUPERUSER, "--no-sync"]);
        initdb.args(["-E", "UTF8", "--locale=C"]);
        bin::run(initdb)?;

        let port = 5432; // Only names the socket file, in our own directory.
        let mut postmaster = Postmaster::start(&bin, dir.path(), "", port, &[])?;
        let sql = format!("CREATE DATABASE {}", quote_ident(database));
        bin.psql(dir.path(), dir.path(), port, "postgres", &sql)?;
        postmaster.stop(StopMode::Fast)?;
        Ok(Template { bin, dir })
    }
}

/// `name` as an SQL identifier in double quotes.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Copies directory `from` to the new directory `to`, recursively, keeping
/// permissions and giving every copy to `user`.
fn copy_dir(from: &Path, to: &Path, user: &RunAs) -> Result<(), SandboxError> {
    let permissions = fs::metadata(from)
        .map_err(SandboxError::io("inspect", from))?
        .permissions();
    fs::create_dir(to).map_err(SandboxError::io("create", to))?;
    fs::set_permissions(to, permissions).map_err(SandboxError::io("set permissions of", to))?;
    user.own(to)?;
    for entry in fs::read_dir(from).map_err(SandboxError::io("read", from))? {
        let entry = entry.map_err(SandboxError::io("read", from))?;
        let (source, target) = (entry.path(), to.join(entry.file_name()));
        let file_type = entry
            .file_type()
            .map_err(SandboxError::io("inspect", &source))?;
        if file_type.is_dir() {
            copy_dir(&source, &target, user)?;
        } else {
            // Copies the permissions too.
            fs::copy(&source, &target).map_err(SandboxError::io("copy", &source))?;
            user.own(&target)?;
        }
    }
    Ok(())
}
