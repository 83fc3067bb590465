//! Copying, checksumming and deleting token ranges between two real shards
//! with a realistic forum schema: triggers, a foreign key, a generated
//! column, an identity column, a TOASTed body and a column added later on
//! one side only.

use postshard_rebalancer::range::{
    checksum_range, copy_range, delete_range, CopyError, CopyProgress, CopySpec, Endpoint,
    TokenRange, RING_END,
};
use postshard_router::hashint8extended;
use postshard_router::map::Table;
use postshard_sandbox::{Cluster, Server};

use crate::common::{connect, runtime};

const SEED: i64 = 7;

/// The source: `score` was added after the table was created, so it is last.
const SOURCE_SCHEMA: &str = "
    CREATE TABLE posts (
        id bigint PRIMARY KEY,
        board int NOT NULL,
        title text NOT NULL,
        body text NOT NULL,
        title_len int GENERATED ALWAYS AS (length(title)) STORED,
        comment_count int NOT NULL DEFAULT 0);
    ALTER TABLE posts ADD COLUMN score int NOT NULL DEFAULT 0;";

/// The target: the same columns in another physical order.
const TARGET_SCHEMA: &str = "
    CREATE TABLE posts (
        score int NOT NULL DEFAULT 0,
        comment_count int NOT NULL DEFAULT 0,
        id bigint PRIMARY KEY,
        title_len int GENERATED ALWAYS AS (length(title)) STORED,
        body text NOT NULL,
        title text NOT NULL,
        board int NOT NULL);";

/// Both sides: comments with an identity key, a foreign key to posts, a
/// trigger counting comments per post, and an audit log that any app
/// trigger on posts or comments writes to.
const COMMON_SCHEMA: &str = "
    CREATE TABLE comments (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        post_id bigint NOT NULL REFERENCES posts (id) ON DELETE CASCADE,
        body text NOT NULL,
        created timestamptz NOT NULL DEFAULT now());
    CREATE INDEX ON comments (post_id);
    CREATE TABLE audit (what text NOT NULL);
    CREATE FUNCTION count_comment() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE posts SET comment_count = comment_count + 1 WHERE id = NEW.post_id;
        INSERT INTO audit VALUES ('comment ' || TG_OP);
        RETURN NULL;
    END $$;
    CREATE FUNCTION audit_row() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO audit VALUES (TG_TABLE_NAME || ' ' || TG_OP);
        RETURN NULL;
    END $$;
    CREATE TRIGGER count_comment AFTER INSERT ON comments FOR EACH ROW EXECUTE FUNCTION count_comment();
    CREATE TRIGGER audit_comments AFTER DELETE ON comments FOR EACH ROW EXECUTE FUNCTION audit_row();
    CREATE TRIGGER audit_posts AFTER INSERT OR DELETE ON posts FOR EACH ROW EXECUTE FUNCTION audit_row();
    -- Probe for generated columns: the target's expression differs on purpose.
    CREATE TABLE gen_probe (id bigint PRIMARY KEY, v int NOT NULL,
        doubled int GENERATED ALWAYS AS (v * GEN_FACTOR) STORED);";

fn tables() -> Vec<Table> {
    vec![
        Table {
            name: "posts".into(),
            key: "id".into(),
        },
        Table {
            name: "comments".into(),
            key: "post_id".into(),
        },
    ]
}

fn token_sql(key: &str) -> String {
    format!("hashint8extended({key}, {SEED})")
}

/// `range` as SQL over `key`, for the test's own queries.
fn in_range(key: &str, range: TokenRange) -> String {
    let mut sql = format!("{} >= {}", token_sql(key), range.from());
    if range.to() < RING_END {
        sql.push_str(&format!(" AND {} < {}", token_sql(key), range.to()));
    }
    sql
}

/// Every column of posts and comments in rows matching `filter` (over
/// posts.id / comments.post_id), in a fixed column order.
fn dump(server: &Server, filter: &dyn Fn(&str) -> String) -> String {
    let posts = server
        .psql(&format!(
            "SELECT id, board, title, md5(body), length(body), title_len, comment_count, score \
             FROM posts WHERE {} ORDER BY id",
            filter("id")
        ))
        .expect("dump posts");
    let comments = server
        .psql(&format!(
            "SELECT id, post_id, body, created FROM comments WHERE {} ORDER BY id",
            filter("post_id")
        ))
        .expect("dump comments");
    format!("posts:\n{posts}\ncomments:\n{comments}")
}

fn audit(server: &Server) -> String {
    server
        .psql("SELECT count(*) FROM audit")
        .expect("read audit")
}

/// A key whose token lies in `range`, from `candidates`.
fn key_in(range: TokenRange, candidates: std::ops::Range<i64>) -> i64 {
    candidates
        .into_iter()
        .find(|k| range.contains(hashint8extended(*k, SEED)))
        .expect("a key in range")
}

fn setup(cluster: &Cluster, range: TokenRange) -> (i64, i64) {
    let (source, target) = (&cluster.servers()[0], &cluster.servers()[1]);
    source
        .psql(&format!(
            "{SOURCE_SCHEMA}{}",
            COMMON_SCHEMA.replace("GEN_FACTOR", "2")
        ))
        .expect("source schema");
    target
        .psql(&format!(
            "{TARGET_SCHEMA}{}",
            COMMON_SCHEMA.replace("GEN_FACTOR", "3")
        ))
        .expect("target schema");
    let viral = key_in(range, 1..300);
    let big = key_in(range, (viral + 1)..300);
    source
        .psql(&format!(
            "INSERT INTO posts (id, board, title, body, score)
                 SELECT g, g % 5, 'title ' || g, repeat('body ', g % 50), g * 3
                 FROM generate_series(1, 300) g;
             INSERT INTO comments (post_id, body, created)
                 SELECT g % 300 + 1, 'comment ' || g, '2024-01-01 12:00+02'::timestamptz + g * interval '1 minute'
                 FROM generate_series(1, 900) g;
             INSERT INTO comments (post_id, body) SELECT {viral}, 'viral ' || g FROM generate_series(1, 40) g;
             UPDATE posts SET body = (SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 3200))
                 WHERE id = {big};
             INSERT INTO gen_probe (id, v) SELECT g, g FROM generate_series(1, 300) g;
             TRUNCATE audit;"
        ))
        .expect("source rows");
    // The target already holds rows outside the range (its own) and one
    // stale row inside it (a copy interrupted earlier). Its comment ids come
    // from its own part of the id space, as a cluster's shards must arrange.
    let stale = key_in(range, (big + 1)..300);
    target
        .psql(&format!(
            "ALTER TABLE comments ALTER COLUMN id RESTART WITH 1000000;
             INSERT INTO posts (id, board, title, body)
                 SELECT g, 9, 'own ' || g, 'own body' FROM generate_series(100001, 100200) g
                 WHERE NOT ({pred});
             INSERT INTO posts (id, board, title, body) VALUES ({stale}, 0, 'stale', 'stale');
             INSERT INTO comments (post_id, body) SELECT id, 'own comment' FROM posts;
             TRUNCATE audit;",
            pred = in_range("g", range)
        ))
        .expect("target rows");
    (viral, big)
}

#[test]
fn copy_checksum_and_delete_a_range_of_a_real_forum() {
    let cluster = Cluster::start(2).expect("start PostgreSQL");
    let (source, target) = (&cluster.servers()[0], &cluster.servers()[1]);
    let range = TokenRange::new(-(1 << 62), 1 << 62).expect("range");
    let (viral, big) = setup(&cluster, range);
    let inside = |key: &str| in_range(key, range);
    let outside = |key: &str| format!("NOT ({})", in_range(key, range));
    let source_before = dump(source, &|_| "true".into());
    let target_outside_before = dump(target, &outside);
    let toasted: i64 = source
        .psql(&format!(
            "SELECT pg_column_size(body) FROM posts WHERE id = {big}"
        ))
        .expect("body size")
        .parse()
        .expect("size");
    assert!(
        toasted > 50_000,
        "the big body must be TOASTed and incompressible: {toasted}"
    );

    let tables = tables();
    let reports = std::sync::Mutex::new(Vec::new());
    let on_progress = |p: CopyProgress<'_>| {
        reports
            .lock()
            .unwrap()
            .push((p.table.to_string(), p.rows, p.bytes));
    };
    let spec = CopySpec {
        tables: &tables,
        seed: SEED,
        range,
        snapshot: None,
        progress: Some(&on_progress),
    };
    runtime().block_on(async {
        let mut from = connect(&source.url()).await;
        let mut to = connect(&target.url()).await;
        let copied = copy_range(
            Endpoint { shard: "s0", client: &mut from },
            Endpoint { shard: "s1", client: &mut to },
            &spec,
        )
        .await
        .expect("copy");
        let want_posts: u64 = source
            .psql(&format!("SELECT count(*) FROM posts WHERE {}", inside("id")))
            .unwrap()
            .parse()
            .unwrap();
        assert!(want_posts > 100 && want_posts < 200, "{want_posts}");
        assert_eq!(copied[0].rows, want_posts);
        assert_eq!(copied[0].replaced, 1, "the stale row is replaced");
        assert!(copied[0].bytes > 100_000, "{copied:?}");
        assert_eq!(copied[1].replaced, 1, "the stale row's comment is replaced");
        // Progress ends with each table's totals.
        let seen = reports.lock().unwrap().clone();
        for t in &copied {
            assert_eq!(
                seen.iter().rev().find(|r| r.0 == t.table),
                Some(&(t.table.clone(), t.rows, t.bytes)),
                "{seen:?}"
            );
        }

        // Row by row, every column: the target's range equals the source's.
        assert_eq!(dump(target, &inside), dump(source, &inside));
        assert!(dump(target, &inside).contains(&format!("\n{viral}|")));
        // Rows outside the range are untouched on both sides.
        assert_eq!(dump(target, &outside), target_outside_before);
        assert_eq!(dump(source, &|_| "true".into()), source_before);
        // No app trigger fired on the target: comment counts were copied,
        // not incremented, and the audit log is empty.
        assert_eq!(audit(target), "0");
        let count_on_target = target
            .psql(&format!("SELECT comment_count FROM posts WHERE id = {viral}"))
            .unwrap();
        assert_eq!(count_on_target, "43", "3 comments + 40 viral ones, counted once");
        // Identity values are kept, and the target's identity sequence
        // cannot be told to override them.
        assert_eq!(
            source
                .psql(&format!("SELECT min(id), max(id) FROM comments WHERE {}", inside("post_id")))
                .unwrap(),
            target
                .psql(&format!("SELECT min(id), max(id) FROM comments WHERE {}", inside("post_id")))
                .unwrap()
        );

        // Checksums agree across physical column orders, and catch one change.
        let sum_source = checksum_range(
            Endpoint { shard: "s0", client: &mut from },
            &tables,
            SEED,
            range,
            None,
        )
        .await
        .expect("source checksum");
        let sum_target = checksum_range(
            Endpoint { shard: "s1", client: &mut to },
            &tables,
            SEED,
            range,
            None,
        )
        .await
        .expect("target checksum");
        assert_eq!(sum_source, sum_target);
        assert_eq!(sum_source[0].rows, want_posts);
        target
            .psql(&format!("UPDATE posts SET score = score + 1 WHERE id = {viral}"))
            .unwrap();
        let changed = checksum_range(
            Endpoint { shard: "s1", client: &mut to },
            &tables,
            SEED,
            range,
            None,
        )
        .await
        .expect("target checksum");
        assert_eq!(changed[0].rows, sum_source[0].rows);
        assert_ne!(changed[0].sum, sum_source[0].sum, "one changed column changes the checksum");
        assert_eq!(changed[1], sum_source[1]);

        // Copying again is idempotent: the range is replaced, not doubled.
        let again = copy_range(
            Endpoint { shard: "s0", client: &mut from },
            Endpoint { shard: "s1", client: &mut to },
            &spec,
        )
        .await
        .expect("second copy");
        assert_eq!(again[0].rows, want_posts);
        assert_eq!(again[0].replaced, want_posts);
        assert_eq!(dump(target, &inside), dump(source, &inside));
        assert_eq!(audit(target), "0");

        // Generated columns are computed by the target (its expression
        // multiplies by 3, the source's by 2), never copied.
        let probe = [Table {
            name: "gen_probe".into(),
            key: "id".into(),
        }];
        copy_range(
            Endpoint { shard: "s0", client: &mut from },
            Endpoint { shard: "s1", client: &mut to },
            &CopySpec { tables: &probe, ..spec },
        )
        .await
        .expect("copy gen_probe");
        assert_eq!(
            target
                .psql("SELECT count(*), bool_and(doubled = v * 3) FROM gen_probe")
                .unwrap(),
            source
                .psql(&format!("SELECT count(*), true FROM gen_probe WHERE {}", inside("id")))
                .unwrap()
        );

        // Delete the range from the source in small batches (the viral post's
        // 43 comments span several): the rest stays, and no trigger fires
        // (the cascade and the audit log are app triggers).
        let deleted = delete_range(
            Endpoint { shard: "s0", client: &mut from },
            &tables,
            SEED,
            range,
            7,
        )
        .await
        .expect("delete");
        assert_eq!(deleted[0].rows, want_posts);
        assert!(deleted[1].batches > 1, "{deleted:?}");
        assert_eq!(
            source
                .psql(&format!(
                    "SELECT (SELECT count(*) FROM posts WHERE {}) + (SELECT count(*) FROM comments WHERE {})",
                    inside("id"),
                    inside("post_id")
                ))
                .unwrap(),
            "0"
        );
        assert_eq!(
            dump(source, &outside),
            dump_outside_from(&source_before, range)
        );
        assert_eq!(audit(source), "0");
    });
}

/// The lines of a [`dump`] whose key (posts: first column; comments: second)
/// lies outside `range`.
fn dump_outside_from(dump: &str, range: TokenRange) -> String {
    let mut section = "";
    let mut out = Vec::new();
    for line in dump.lines() {
        if line.ends_with(':') {
            section = line;
            out.push(line.to_string());
            continue;
        }
        let fields: Vec<&str> = line.split('|').collect();
        let key: i64 = match section {
            "posts:" => fields[0].parse().unwrap(),
            _ => fields[1].parse().unwrap(),
        };
        if !range.contains(hashint8extended(key, SEED)) {
            out.push(line.to_string());
        }
    }
    out.join("\n")
}

#[test]
fn copy_of_the_top_arc_has_no_upper_bound_and_differing_columns_are_refused() {
    let cluster = Cluster::start(2).expect("start PostgreSQL");
    let (source, target) = (&cluster.servers()[0], &cluster.servers()[1]);
    let top = TokenRange::new(1 << 62, RING_END).expect("range");
    setup(&cluster, top);
    let tables = tables();
    runtime().block_on(async {
        let mut from = connect(&source.url()).await;
        let mut to = connect(&target.url()).await;
        let spec = CopySpec {
            tables: &tables,
            seed: SEED,
            range: top,
            snapshot: None,
            progress: None,
        };
        copy_range(
            Endpoint {
                shard: "s0",
                client: &mut from,
            },
            Endpoint {
                shard: "s1",
                client: &mut to,
            },
            &spec,
        )
        .await
        .expect("copy");
        let inside = |key: &str| in_range(key, top);
        assert_eq!(dump(target, &inside), dump(source, &inside));
        let max_token: i64 = target
            .psql(&format!(
                "SELECT max({}) FROM posts WHERE {}",
                token_sql("id"),
                inside("id")
            ))
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            max_token > (1 << 62) + (1 << 61),
            "tokens near the top moved: {max_token}"
        );

        // A column missing on the target is refused by name, and the target
        // is left as it was.
        target
            .psql("ALTER TABLE comments DROP COLUMN created")
            .unwrap();
        let contents = "SELECT (SELECT md5(string_agg(p::text, ',' ORDER BY id)) FROM posts p), \
                        (SELECT md5(string_agg(c::text, ',' ORDER BY id)) FROM comments c)";
        let before = target.psql(contents).unwrap();
        let err = copy_range(
            Endpoint {
                shard: "s0",
                client: &mut from,
            },
            Endpoint {
                shard: "s1",
                client: &mut to,
            },
            &spec,
        )
        .await
        .expect_err("columns differ");
        assert!(matches!(err, CopyError::ColumnsDiffer { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("comments") && text.contains("\"created\" is missing"),
            "{text}"
        );
        assert_eq!(
            target.psql(contents).unwrap(),
            before,
            "the target is unchanged"
        );
    });
}

/// Partitioned tables with an `integer` key: the copy routes rows into the
/// target's partitions, and a batched delete removes only the range even
/// though the same `ctid` exists in every partition.
#[test]
fn partitioned_tables_with_integer_keys_copy_and_delete_only_the_range() {
    let cluster = Cluster::start(2).expect("start PostgreSQL");
    let (source, target) = (&cluster.servers()[0], &cluster.servers()[1]);
    let schema = "
        CREATE TABLE events (board int NOT NULL, topic integer NOT NULL, note text NOT NULL,
            PRIMARY KEY (board, topic)) PARTITION BY LIST (board);
        CREATE TABLE events_a PARTITION OF events FOR VALUES IN (1);
        CREATE TABLE events_b PARTITION OF events FOR VALUES IN (2);";
    source.psql(schema).unwrap();
    target.psql(schema).unwrap();
    // Both partitions get the same topics in opposite orders, so a ctid in
    // one partition names a row of another topic in the other.
    source
        .psql(
            "INSERT INTO events SELECT 1, g, 'note 1/' || g FROM generate_series(1, 400) g; \
             INSERT INTO events SELECT 2, g, 'note 2/' || g FROM generate_series(400, 1, -1) g",
        )
        .unwrap();
    let events = [Table {
        name: "events".into(),
        key: "topic".into(),
    }];
    let range = TokenRange::new(i128::from(i64::MIN), 0).expect("range");
    let inside = in_range("topic", range);
    let all = "SELECT board, topic, note FROM events ORDER BY board, topic";
    let before = source.psql(all).unwrap();
    runtime().block_on(async {
        let mut from = connect(&source.url()).await;
        let mut to = connect(&target.url()).await;
        let copied = copy_range(
            Endpoint { shard: "s0", client: &mut from },
            Endpoint { shard: "s1", client: &mut to },
            &CopySpec {
                tables: &events,
                seed: SEED,
                range,
                snapshot: None,
                progress: None,
            },
        )
        .await
        .expect("copy");
        let in_source: u64 = source
            .psql(&format!("SELECT count(*) FROM events WHERE {inside}"))
            .unwrap()
            .parse()
            .unwrap();
        assert!(in_source > 300 && in_source < 500, "{in_source}");
        assert_eq!(copied[0].rows, in_source);
        let in_range_rows =
            format!("SELECT tableoid::regclass, board, topic, note FROM events WHERE {inside} ORDER BY 2, 3");
        assert_eq!(target.psql(&in_range_rows).unwrap(), source.psql(&in_range_rows).unwrap());
        let sums = |client| {
            checksum_range(Endpoint { shard: "s", client }, &events, SEED, range, None)
        };
        let a = sums(&mut from).await.expect("checksum");
        let b = sums(&mut to).await.expect("checksum");
        assert_eq!(a, b);

        let deleted = delete_range(
            Endpoint { shard: "s0", client: &mut from },
            &events,
            SEED,
            range,
            50,
        )
        .await
        .expect("delete");
        assert_eq!(deleted[0].rows, in_source);
        assert!(deleted[0].batches >= 4, "{deleted:?}");
        let kept: Vec<&str> = before
            .lines()
            .filter(|l| {
                let topic: i64 = l.split('|').nth(1).unwrap().parse().unwrap();
                !range.contains(hashint8extended(topic, SEED))
            })
            .collect();
        assert_eq!(source.psql(all).unwrap(), kept.join("\n"));
    });
}

/// With an exported snapshot (how the online mode lines the backfill up
/// with change capture), copy and checksum see the source as of that
/// snapshot, not rows committed after it.
#[test]
fn copy_and_checksum_read_an_exported_snapshot() {
    let cluster = Cluster::start(2).expect("start PostgreSQL");
    let (source, target) = (&cluster.servers()[0], &cluster.servers()[1]);
    let range = TokenRange::ring();
    setup(&cluster, range);
    target.psql("TRUNCATE posts, comments").unwrap();
    let tables = tables();
    runtime().block_on(async {
        let mut holder = connect(&source.url()).await;
        let mut from = connect(&source.url()).await;
        let mut to = connect(&target.url()).await;
        let exporting = holder
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .start()
            .await
            .unwrap();
        let snapshot: String = exporting
            .query_one("SELECT pg_export_snapshot()", &[])
            .await
            .unwrap()
            .get(0);
        let at_snapshot = source
            .psql("SELECT (SELECT count(*) FROM posts) + (SELECT count(*) FROM comments)")
            .unwrap();
        source
            .psql("INSERT INTO posts (id, board, title, body) VALUES (999999, 1, 'later', 'later')")
            .unwrap();
        let spec = CopySpec {
            tables: &tables,
            seed: SEED,
            range,
            snapshot: Some(&snapshot),
            progress: None,
        };
        let copied = copy_range(
            Endpoint {
                shard: "s0",
                client: &mut from,
            },
            Endpoint {
                shard: "s1",
                client: &mut to,
            },
            &spec,
        )
        .await
        .expect("copy");
        let rows: u64 = copied.iter().map(|t| t.rows).sum();
        assert_eq!(rows.to_string(), at_snapshot);
        assert_eq!(
            target
                .psql("SELECT count(*) FROM posts WHERE id = 999999")
                .unwrap(),
            "0"
        );
        let then = checksum_range(
            Endpoint {
                shard: "s0",
                client: &mut from,
            },
            &tables,
            SEED,
            range,
            Some(&snapshot),
        )
        .await
        .expect("checksum at snapshot");
        let now = checksum_range(
            Endpoint {
                shard: "s0",
                client: &mut from,
            },
            &tables,
            SEED,
            range,
            None,
        )
        .await
        .expect("checksum now");
        let copy = checksum_range(
            Endpoint {
                shard: "s1",
                client: &mut to,
            },
            &tables,
            SEED,
            range,
            None,
        )
        .await
        .expect("target checksum");
        assert_eq!(then, copy);
        assert_eq!(now[0].rows, then[0].rows + 1);
        exporting.commit().await.unwrap();
    });
}

/// A key that is not an integer, or a table missing on the target, stops
/// the copy with an error naming shard, table and column, before any row.
#[test]
fn bad_keys_and_missing_tables_are_refused_by_name() {
    let cluster = Cluster::start(2).expect("start PostgreSQL");
    let (source, target) = (&cluster.servers()[0], &cluster.servers()[1]);
    let schema = "CREATE TABLE tags (name text PRIMARY KEY, post bigint NOT NULL);
                  CREATE DOMAIN post_id AS bigint;
                  CREATE TABLE votes (post post_id NOT NULL, who int NOT NULL);";
    source.psql(schema).unwrap();
    source
        .psql("INSERT INTO votes SELECT g, g FROM generate_series(1, 100) g")
        .unwrap();
    target
        .psql("CREATE TABLE tags (name text PRIMARY KEY, post bigint NOT NULL)")
        .unwrap();
    let table = |name: &str, key: &str| Table {
        name: name.into(),
        key: key.into(),
    };
    runtime().block_on(async {
        let mut from = connect(&source.url()).await;
        let mut to = connect(&target.url()).await;
        for (tables, want) in [
            (
                vec![table("tags", "name")],
                "shard s0: table tags: key column name is text; postshard shards by smallint, integer or bigint keys",
            ),
            (vec![table("tags", "id")], "shard s0: table tags has no key column id"),
            (vec![table("nope", "id")], "shard s0: table nope does not exist"),
            // A domain over bigint is a fine key; the target lacks the table.
            (vec![table("votes", "post")], "shard s1: table votes does not exist"),
        ] {
            let err = copy_range(
                Endpoint { shard: "s0", client: &mut from },
                Endpoint { shard: "s1", client: &mut to },
                &CopySpec {
                    tables: &tables,
                    seed: SEED,
                    range: TokenRange::ring(),
                    snapshot: None,
                    progress: None,
                },
            )
            .await
            .expect_err("refused");
            assert_eq!(err.to_string(), want);
        }
    });
}
