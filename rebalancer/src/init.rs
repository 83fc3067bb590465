//! `postshard init`: the control store and every shard made ready for moves.
//!
//! 1. Inspect every shard's catalogs (read only) and collect every problem:
//!    a sharded table missing everywhere, a key column that is not
//!    `smallint`/`integer`/`bigint`, a table without a primary key, shards
//!    disagreeing on a table's columns (compared by name and type, never by
//!    position). Any problem: refuse, having changed nothing.
//! 2. Create the control schema and seed the live map (refusing to replace
//!    a live map of another epoch, see [`control::seed`]).
//! 3. On every shard, in one transaction: the fence schema and functions;
//!    the sharded tables it lacks, copied with `pg_dump --schema-only` from a
//!    shard that has them all (with the functions their triggers call); the
//!    fence trigger on every sharded table; the fence row (ownership at the
//!    map's epoch) unless one exists.
//!
//! Running it again changes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use postshard_router::map::Table;
use postshard_router::{connect, describe_db_error, ConnUrl, ConnectError, ShardMap};
use tokio_postgres::Client;

use crate::control::{self, ControlError, Seeded};
use crate::fence;
use crate::token_range::TokenRange;

/// A failure of `init`.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// The map names no control store.
    #[error("the map has no `control:` URL; init needs a control store")]
    NoControl,
    /// A connection failed.
    #[error("{what}: {source}")]
    Connect {
        /// `control store` or `shard NAME`.
        what: String,
        /// Why.
        source: ConnectError,
    },
    /// The shards' schemas do not allow sharding; nothing was changed.
    #[error("init refused, nothing changed:\n  {}", problems.join("\n  "))]
    Refused {
        /// Every problem found.
        problems: Vec<String>,
    },
    /// The control store refused or failed.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// A statement failed on a shard.
    #[error("shard {shard}: {what}: {detail}")]
    Shard {
        /// The shard.
        shard: String,
        /// What was being done.
        what: &'static str,
        /// The server's message.
        detail: String,
    },
    /// `pg_dump` could not run or failed.
    #[error("shard {shard}: pg_dump ({program}) of {tables:?}: {detail}")]
    Dump {
        /// The shard dumped from.
        shard: String,
        /// The program run.
        program: String,
        /// The tables dumped.
        tables: Vec<String>,
        /// Why it failed (its stderr, passwords never included).
        detail: String,
    },
}

/// How init runs.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Directory of `pg_dump`; `None`: `$POSTSHARD_PG_BIN`, then `PATH`,
    /// then `/usr/lib/postgresql/15/bin`.
    pub pg_bin: Option<PathBuf>,
    /// Connect timeout for every connection.
    pub connect_timeout: Duration,
}

impl Default for InitOptions {
    fn default() -> InitOptions {
        InitOptions {
            pg_bin: None,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// What init did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitReport {
    /// Whether the live map was created or already there.
    pub seeded: Seeded,
    /// Per shard (map order): the tables copied to it, and from which shard.
    pub copied: Vec<ShardCopy>,
    /// Things that work but will bite later (e.g. per-shard sequences
    /// filling a unique column that does not include the key).
    pub warnings: Vec<String>,
}

/// What one shard's catalogs say about one sharded table.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TableInfo {
    /// `"schema"."table"` as resolved on the shard.
    qualified: String,
    schema: String,
    /// Column name → type, as `format_type` writes it.
    columns: BTreeMap<String, String>,
    has_primary_key: bool,
    /// Unique indexes whose columns exclude the key and include a column
    /// filled from a sequence (serial or identity).
    sequence_uniques: Vec<String>,
    /// Functions called by the table's own (non-internal, non-postshard) triggers.
    trigger_functions: Vec<u32>,
}

/// Runs init for `map` (see the module docs); `env` resolves `${VAR}` in
/// the stored live map when comparing it.
pub async fn init(
    map: &ShardMap,
    env: &(dyn Fn(&str) -> Option<String> + Sync),
    options: &InitOptions,
) -> Result<InitReport, InitError> {
    let control_url = map.control().ok_or(InitError::NoControl)?;
    let mut control = connect(control_url, options.connect_timeout)
        .await
        .map_err(|source| InitError::Connect {
            what: "control store".into(),
            source,
        })?;
    // 1. Inspect, changing nothing; the control store's check (another
    // live epoch) also precedes every change.
    let inspected = Inspected::new(map, options).await?;
    if let Some(live) = live_epoch_if_installed(&control).await? {
        if live != map.version() {
            return Err(ControlError::OtherEpoch {
                live,
                file: map.version(),
            }
            .into());
        }
    }
    // 2. Control store.
    control::install(&control).await?;
    let seeded = control::seed(&mut control, map, env).await?;
    // 3. Shards.
    let owned = |shard: usize| fence::owned_ranges(map, shard);
    let (copied, warnings) = inspected
        .prepare(map, map.version(), &owned, &|_| true, options)
        .await?;
    Ok(InitReport {
        seeded,
        copied,
        warnings,
    })
}

/// Readies every shard of `map` for moves without touching the control
/// store: what `apply` does for a shard its plan adds. Checks as init does
/// (refusing, nothing changed, on the same problems), then on each shard
/// creates the sharded tables it lacks, the fence schema and triggers, and,
/// unless the shard has one, the fence row at `epoch` with `owned(index)`
/// as its owned ranges (for a shard being added: none).
///
/// Returns, per shard, the tables created and the shard they came from, and
/// the warnings.
pub async fn prepare_shards(
    map: &ShardMap,
    epoch: u64,
    owned: &(dyn Fn(usize) -> Vec<TokenRange> + Sync),
    options: &InitOptions,
) -> Result<(Vec<ShardCopy>, Vec<String>), InitError> {
    prepare_shards_where(map, epoch, owned, &|_| true, options).await
}

/// [`prepare_shards`], changing only the shards `index` for which
/// `install(index)` holds (all are still checked): `apply` readies only the
/// shards without a fence, since the DDL would queue a live shard's writers
/// behind its longest transaction; with `|_| false` it only checks.
pub async fn prepare_shards_where(
    map: &ShardMap,
    epoch: u64,
    owned: &(dyn Fn(usize) -> Vec<TokenRange> + Sync),
    install: &(dyn Fn(usize) -> bool + Sync),
    options: &InitOptions,
) -> Result<(Vec<ShardCopy>, Vec<String>), InitError> {
    Inspected::new(map, options)
        .await?
        .prepare(map, epoch, owned, install, options)
        .await
}

/// Per shard: its name, the tables created on it, and the shard they were
/// copied from (none when nothing was missing).
pub type ShardCopy = (String, Vec<String>, Option<String>);

/// Every shard's connection and catalogs, judged fit for sharding.
struct Inspected {
    shards: Vec<Client>,
    infos: Vec<Vec<Option<TableInfo>>>,
    donor: Option<usize>,
    warnings: Vec<String>,
}

impl Inspected {
    /// Connects to every shard and reads its catalogs; refuses
    /// ([`InitError::Refused`]) on any problem. Changes nothing.
    async fn new(map: &ShardMap, options: &InitOptions) -> Result<Inspected, InitError> {
        let mut shards = Vec::with_capacity(map.shards().len());
        for shard in map.shards() {
            let client = connect(&shard.url, options.connect_timeout)
                .await
                .map_err(|source| InitError::Connect {
                    what: format!("shard {}", shard.name),
                    source,
                })?;
            shards.push(client);
        }
        let mut infos: Vec<Vec<Option<TableInfo>>> = Vec::with_capacity(shards.len());
        for (shard, client) in map.shards().iter().zip(&shards) {
            let mut per_table = Vec::with_capacity(map.tables().len());
            for table in map.tables() {
                per_table.push(inspect(client, table).await.map_err(|e| InitError::Shard {
                    shard: shard.name.clone(),
                    what: "reading the catalogs",
                    detail: describe_db_error(&e),
                })?);
            }
            infos.push(per_table);
        }
        let (problems, warnings) = judge(map, &infos);
        if !problems.is_empty() {
            return Err(InitError::Refused { problems });
        }
        let donor = infos
            .iter()
            .position(|tables| tables.iter().all(Option::is_some));
        let needs_copy = infos.iter().any(|t| t.iter().any(Option::is_none));
        if donor.is_none() && needs_copy {
            return Err(InitError::Refused {
                problems: vec![
                    "no shard has every sharded table, so none can be copied from".into(),
                ],
            });
        }
        Ok(Inspected {
            shards,
            infos,
            donor,
            warnings,
        })
    }

    /// Step 3 of init on every shard (see [`prepare_shards`]).
    async fn prepare(
        mut self,
        map: &ShardMap,
        epoch: u64,
        owned: &(dyn Fn(usize) -> Vec<TokenRange> + Sync),
        install: &(dyn Fn(usize) -> bool + Sync),
        options: &InitOptions,
    ) -> Result<(Vec<ShardCopy>, Vec<String>), InitError> {
        // The DDL copying missing tables is built first, while the donor's
        // connection can still be borrowed.
        let mut copies = Vec::with_capacity(self.shards.len());
        for tables in &self.infos {
            let missing: Vec<String> = map
                .tables()
                .iter()
                .zip(tables)
                .filter(|(_, info)| info.is_none())
                .map(|(t, _)| t.name.clone())
                .collect();
            let copy = match (missing.is_empty(), self.donor) {
                (false, Some(d)) => {
                    let (Some(donor_shard), Some(donor_client), Some(donor_infos)) =
                        (map.shards().get(d), self.shards.get(d), self.infos.get(d))
                    else {
                        return Err(InitError::Refused {
                            problems: vec![format!("no shard #{d} to copy tables from")],
                        });
                    };
                    let ddl = copy_ddl(donor_shard, donor_client, donor_infos, options).await?;
                    Some((donor_shard.name.clone(), ddl))
                }
                _ => None,
            };
            copies.push((missing, copy));
        }
        let mut copied = Vec::with_capacity(self.shards.len());
        for (index, ((shard, client), (missing, copy))) in map
            .shards()
            .iter()
            .zip(self.shards.iter_mut())
            .zip(copies)
            .enumerate()
            .filter(|(index, _)| install(*index))
        {
            let shard_error = |what: &'static str| {
                move |e: tokio_postgres::Error| InitError::Shard {
                    shard: shard.name.clone(),
                    what,
                    detail: describe_db_error(&e),
                }
            };
            let mut sql = fence::schema_sql(map);
            if let Some((_, ddl)) = &copy {
                sql.push_str(ddl);
                // pg_dump's script empties search_path for the session.
                sql.push_str("\nRESET search_path;\n");
            }
            sql.push_str(&fence::triggers_sql(map));
            sql.push_str(&fence::seed_sql(epoch, map.seed(), &owned(index)));
            let tx = client
                .transaction()
                .await
                .map_err(shard_error("starting the transaction"))?;
            tx.batch_execute(&sql)
                .await
                .map_err(shard_error(if copy.is_some() {
                    "creating copied tables and the fence"
                } else {
                    "installing the fence"
                }))?;
            tx.commit().await.map_err(shard_error("committing"))?;
            let missing = if copy.is_some() { missing } else { Vec::new() };
            copied.push((shard.name.clone(), missing, copy.map(|(from, _)| from)));
        }
        Ok((copied, self.warnings))
    }
}

/// The live epoch when the control schema exists and holds one.
async fn live_epoch_if_installed(client: &Client) -> Result<Option<u64>, InitError> {
    let installed = client
        .query_one(
            &format!(
                "SELECT to_regclass('{}.live') IS NOT NULL",
                postshard_router::live_map::CONTROL_SCHEMA
            ),
            &[],
        )
        .await
        .map_err(|e| InitError::Shard {
            shard: "control store".into(),
            what: "reading the catalogs",
            detail: describe_db_error(&e),
        })?
        .get::<_, bool>(0);
    if !installed {
        return Ok(None);
    }
    Ok(postshard_router::live_map::live_epoch(client)
        .await
        .map_err(ControlError::from)?)
}

/// Reads what the shard's catalogs say about `table`; `None` when the shard
/// has no such table.
async fn inspect(
    client: &Client,
    table: &Table,
) -> Result<Option<TableInfo>, tokio_postgres::Error> {
    let Some(row) = client
        .query_opt(
            "SELECT c.oid, format('%I.%I', n.nspname, c.relname), n.nspname \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.oid = to_regclass($1) AND c.relkind IN ('r', 'p')",
            &[&table.sql_name()],
        )
        .await?
    else {
        return Ok(None);
    };
    let oid: u32 = row.get(0);
    let columns = client
        .query(
            "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute \
             WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped",
            &[&oid],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let has_primary_key = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = $1 AND contype = 'p')",
            &[&oid],
        )
        .await?
        .get(0);
    let sequence_uniques = client
        .query(
            "SELECT i.indexrelid::regclass::text FROM pg_index i \
             WHERE i.indrelid = $1 AND i.indisunique \
             AND NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = i.indrelid \
                 AND a.attnum = ANY (i.indkey::int2[]) AND a.attname = $2) \
             AND EXISTS (SELECT 1 FROM pg_attribute a \
                 LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
                 WHERE a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey::int2[]) \
                 AND (a.attidentity <> '' OR pg_get_expr(d.adbin, d.adrelid) LIKE 'nextval(%')) \
             ORDER BY 1",
            &[&oid, &table.key],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let trigger_functions = client
        .query(
            "SELECT DISTINCT t.tgfoid FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid \
             JOIN pg_namespace n ON n.oid = p.pronamespace \
             WHERE t.tgrelid = $1 AND NOT t.tgisinternal AND n.nspname <> $2 \
             AND n.nspname <> 'pg_catalog'",
            &[&oid, &fence::SHARD_SCHEMA],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok(Some(TableInfo {
        qualified: row.get(1),
        schema: row.get(2),
        columns,
        has_primary_key,
        sequence_uniques,
        trigger_functions,
    }))
}

/// Problems (refuse) and warnings from every shard's view of every table.
fn judge(map: &ShardMap, infos: &[Vec<Option<TableInfo>>]) -> (Vec<String>, Vec<String>) {
    let mut problems = Vec::new();
    let mut warnings = BTreeSet::new();
    for (t, table) in map.tables().iter().enumerate() {
        let seen: Vec<(&str, &TableInfo)> = map
            .shards()
            .iter()
            .zip(infos)
            .filter_map(|(s, tables)| Some((s.name.as_str(), tables.get(t)?.as_ref()?)))
            .collect();
        let Some((first_shard, first)) = seen.first().copied() else {
            problems.push(format!("table {}: exists on no shard", table.name));
            continue;
        };
        for (shard, info) in &seen {
            match info.columns.get(&table.key).map(String::as_str) {
                Some("smallint" | "integer" | "bigint") => {}
                Some(other) => problems.push(format!(
                    "table {} on shard {shard}: key column {} is {other}; it must be smallint, integer or bigint",
                    table.name, table.key
                )),
                None => problems.push(format!(
                    "table {} on shard {shard}: no key column {}",
                    table.name, table.key
                )),
            }
            if !info.has_primary_key {
                problems.push(format!(
                    "table {} on shard {shard}: no primary key",
                    table.name
                ));
            }
            if info.columns != first.columns {
                problems.push(format!(
                    "table {}: shards {first_shard} and {shard} disagree on its columns: {}",
                    table.name,
                    column_difference(&first.columns, &info.columns)
                ));
            }
            for index in &info.sequence_uniques {
                warnings.insert(format!(
                    "table {}: unique index {index} does not include the key {} and is filled \
                     from a per-shard sequence; values from two shards collide when a move \
                     brings their rows together",
                    table.name, table.key
                ));
            }
        }
    }
    (problems, warnings.into_iter().collect())
}

/// How two column sets differ, by name and type.
fn column_difference(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> String {
    let mut out = Vec::new();
    for (name, ty) in a {
        match b.get(name) {
            None => out.push(format!("{name} ({ty}) only on the first")),
            Some(other) if other != ty => out.push(format!("{name} is {ty} against {other}")),
            Some(_) => {}
        }
    }
    for (name, ty) in b {
        if !a.contains_key(name) {
            out.push(format!("{name} ({ty}) only on the second"));
        }
    }
    out.join("; ")
}

/// DDL creating, on a shard that lacks them, every sharded table: the
/// functions their triggers call, then `pg_dump --schema-only` of the
/// tables from the donor (columns, defaults and their sequences,
/// constraints with foreign keys between them, indexes, triggers).
async fn copy_ddl(
    donor: &postshard_router::map::Shard,
    donor_client: &Client,
    donor_infos: &[Option<TableInfo>],
    options: &InitOptions,
) -> Result<String, InitError> {
    let infos: Vec<&TableInfo> = donor_infos.iter().flatten().collect();
    let mut ddl = String::new();
    let schemas: BTreeSet<&str> = infos.iter().map(|i| i.schema.as_str()).collect();
    for schema in schemas {
        ddl.push_str(&format!(
            "CREATE SCHEMA IF NOT EXISTS \"{}\";\n",
            schema.replace('"', "\"\"")
        ));
    }
    let functions: BTreeSet<u32> = infos
        .iter()
        .flat_map(|i| i.trigger_functions.iter().copied())
        .collect();
    for oid in functions {
        let def: String = donor_client
            .query_one("SELECT pg_get_functiondef($1)", &[&oid])
            .await
            .map_err(|e| InitError::Shard {
                shard: donor.name.clone(),
                what: "reading trigger functions",
                detail: describe_db_error(&e),
            })?
            .get(0);
        ddl.push_str(&def);
        ddl.push_str(";\n");
    }
    let tables: Vec<String> = infos.iter().map(|i| i.qualified.clone()).collect();
    ddl.push_str(&pg_dump(&donor.url, &donor.name, &tables, options).await?);
    Ok(ddl)
}

/// The `pg_dump` program to run.
fn pg_dump_program(options: &InitOptions) -> PathBuf {
    let dir = options
        .pg_bin
        .clone()
        .or_else(|| std::env::var_os("POSTSHARD_PG_BIN").map(PathBuf::from));
    if let Some(dir) = dir {
        return dir.join("pg_dump");
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("pg_dump").is_file()))
        .unwrap_or(false);
    if on_path {
        PathBuf::from("pg_dump")
    } else {
        PathBuf::from("/usr/lib/postgresql/15/bin/pg_dump")
    }
}

/// `pg_dump --schema-only` of `tables` (qualified, quoted) from `url`. The
/// password goes through `PGPASSWORD`, never the command line; psql
/// meta-commands (`\restrict`) and postshard's own triggers are left out.
async fn pg_dump(
    url: &ConnUrl,
    shard: &str,
    tables: &[String],
    options: &InitOptions,
) -> Result<String, InitError> {
    let program = pg_dump_program(options);
    let dump_error = |detail: String| InitError::Dump {
        shard: shard.to_string(),
        program: program.display().to_string(),
        tables: tables.to_vec(),
        detail,
    };
    let config = url.pg_config();
    let mut command = tokio::process::Command::new(&program);
    command
        .args([
            "--schema-only",
            "--no-owner",
            "--no-privileges",
            "--no-comments",
        ])
        .env_remove("PGPASSWORD")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => {
            command.arg("--host").arg(host);
        }
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(path)) => {
            command.arg("--host").arg(path);
        }
        None => {}
    }
    if let Some(port) = config.get_ports().first() {
        command.arg("--port").arg(port.to_string());
    }
    if let Some(user) = config.get_user() {
        command.arg("--username").arg(user);
    }
    if let Some(password) = config.get_password() {
        command.env("PGPASSWORD", String::from_utf8_lossy(password).as_ref());
    }
    command.env(
        "PGCONNECT_TIMEOUT",
        options.connect_timeout.as_secs().max(1).to_string(),
    );
    for table in tables {
        command.arg("--table").arg(table);
    }
    command
        .arg("--dbname")
        .arg(config.get_dbname().unwrap_or("postgres"));
    let output = command
        .output()
        .await
        .map_err(|e| dump_error(e.to_string()))?;
    if !output.status.success() {
        return Err(dump_error(format!(
            "{}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    let text = String::from_utf8(output.stdout).map_err(|e| dump_error(e.to_string()))?;
    // Ours are installed afresh after the copy.
    let trigger = format!("CREATE TRIGGER {}", fence::TRIGGER);
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('\\') && !l.starts_with(&trigger))
        .map(|l| format!("{l}\n"))
        .collect())
}
