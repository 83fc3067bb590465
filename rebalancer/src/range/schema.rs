//! A sharded table's columns as one shard's catalogs describe them: names,
//! types, generated and identity columns, the primary key. Columns are known
//! by name: a shard where a column was added later orders them differently.

use postshard_router::map::Table;
use tokio_postgres::GenericClient;

use super::{describe, quote_ident};

/// One column of a sharded table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Name, as the catalog holds it.
    pub name: String,
    /// Type as `format_type` spells it (`bigint`, `character varying(20)`).
    pub type_sql: String,
    /// A generated column: the target computes it, so it is never copied in.
    pub generated: bool,
    /// An identity column (`GENERATED ALWAYS|BY DEFAULT AS IDENTITY`); its
    /// values are copied as they are.
    pub identity: bool,
}

/// A sharded table on one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSchema {
    /// The table as the map names it.
    pub table: Table,
    /// Columns in the shard's physical order, dropped columns left out.
    pub columns: Vec<Column>,
    /// Primary-key columns in key order; empty when the table has none.
    pub primary_key: Vec<String>,
    /// Whether the table is partitioned (`relkind = 'p'`).
    pub partitioned: bool,
}

impl TableSchema {
    /// Columns sorted by name: the order checksums build row images in.
    pub fn columns_by_name(&self) -> Vec<&Column> {
        let mut columns: Vec<&Column> = self.columns.iter().collect();
        columns.sort_by(|a, b| a.name.cmp(&b.name));
        columns
    }

    /// Columns a copy moves, sorted by name: all but generated ones.
    pub fn copied_columns(&self) -> Vec<&Column> {
        let mut columns = self.columns_by_name();
        columns.retain(|c| !c.generated);
        columns
    }

    /// `"a", "b", …` for `columns`.
    pub fn column_list(columns: &[&Column]) -> String {
        columns
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// How `other` (the same table on another shard) differs, one line per
    /// column; empty when both have the same columns by name, with the same
    /// types and the same generated-ness (physical order may differ).
    pub fn differences(&self, other: &TableSchema) -> Vec<String> {
        let mut out = Vec::new();
        for c in &self.columns {
            match other.columns.iter().find(|o| o.name == c.name) {
                None => out.push(format!("column {} is missing", quote_ident(&c.name))),
                Some(o) if o.type_sql != c.type_sql => out.push(format!(
                    "column {} is {} here but {} there",
                    quote_ident(&c.name),
                    c.type_sql,
                    o.type_sql
                )),
                Some(o) if o.generated != c.generated => out.push(format!(
                    "column {} is {}generated here but {}generated there",
                    quote_ident(&c.name),
                    if c.generated { "" } else { "not " },
                    if o.generated { "" } else { "not " }
                )),
                Some(_) => {}
            }
        }
        for o in &other.columns {
            if !self.columns.iter().any(|c| c.name == o.name) {
                out.push(format!("column {} is extra", quote_ident(&o.name)));
            }
        }
        out
    }
}

/// Why a table's schema could not be read or cannot be sharded.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// No such table (or not a table: a view, a sequence).
    #[error("shard {shard}: table {table} does not exist")]
    Missing {
        /// Shard name.
        shard: String,
        /// Table as the map names it.
        table: String,
    },
    /// The key column is not a column of the table.
    #[error("shard {shard}: table {table} has no key column {key}")]
    NoKeyColumn {
        /// Shard name.
        shard: String,
        /// Table as the map names it.
        table: String,
        /// Key column as the map names it.
        key: String,
    },
    /// The key column is not `smallint`, `integer` or `bigint`.
    #[error(
        "shard {shard}: table {table}: key column {key} is {found}; \
         postshard shards by smallint, integer or bigint keys"
    )]
    KeyType {
        /// Shard name.
        shard: String,
        /// Table as the map names it.
        table: String,
        /// Key column.
        key: String,
        /// Its type.
        found: String,
    },
    /// Reading the catalogs failed.
    #[error("shard {shard}: table {table}: reading the catalogs failed: {detail}")]
    Query {
        /// Shard name.
        shard: String,
        /// Table as the map names it.
        table: String,
        /// The server's or driver's message.
        detail: String,
        /// Driver error.
        source: tokio_postgres::Error,
    },
}

/// Columns, with whether each is generated or identity and whether its
/// (base) type is an integer a key may have.
const COLUMNS_SQL: &str = "
    SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attgenerated <> '',
           a.attidentity <> '',
           coalesce(nullif(t.typbasetype, 0), t.oid) IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype)
    FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
    WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
    ORDER BY a.attnum";

/// Primary-key columns in key order.
const PRIMARY_KEY_SQL: &str = "
    SELECT a.attname::text
    FROM pg_index i
    CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
    WHERE i.indrelid = $1 AND i.indisprimary
    ORDER BY k.n";

/// Reads `table` from `shard`'s catalogs through `client` (a connection or
/// an open transaction).
///
/// Errors: [`SchemaError::Missing`] when the table does not exist or is not a
/// table (ordinary or partitioned); [`SchemaError::NoKeyColumn`] and
/// [`SchemaError::KeyType`] when its key column is absent or not an integer
/// (a domain over one is accepted); [`SchemaError::Query`] when a catalog
/// query fails.
pub async fn read_schema(
    client: &impl GenericClient,
    shard: &str,
    table: &Table,
) -> Result<TableSchema, SchemaError> {
    let fail = |source: tokio_postgres::Error| SchemaError::Query {
        shard: shard.to_string(),
        table: table.name.clone(),
        detail: describe(&source),
        source,
    };
    let relation = client
        .query_opt(
            "SELECT c.oid, c.relkind = 'p' FROM pg_class c \
             WHERE c.oid = to_regclass($1) AND c.relkind IN ('r', 'p')",
            &[&table.sql_name()],
        )
        .await
        .map_err(fail)?;
    let Some(relation) = relation else {
        return Err(SchemaError::Missing {
            shard: shard.to_string(),
            table: table.name.clone(),
        });
    };
    let oid: u32 = relation.try_get(0).map_err(fail)?;
    let partitioned: bool = relation.try_get(1).map_err(fail)?;
    let mut columns = Vec::new();
    let mut key_is_integer = None;
    for row in client.query(COLUMNS_SQL, &[&oid]).await.map_err(fail)? {
        let column = Column {
            name: row.try_get(0).map_err(fail)?,
            type_sql: row.try_get(1).map_err(fail)?,
            generated: row.try_get(2).map_err(fail)?,
            identity: row.try_get(3).map_err(fail)?,
        };
        if column.name == table.key {
            key_is_integer = Some((
                row.try_get::<_, bool>(4).map_err(fail)?,
                column.type_sql.clone(),
            ));
        }
        columns.push(column);
    }
    match key_is_integer {
        None => {
            return Err(SchemaError::NoKeyColumn {
                shard: shard.to_string(),
                table: table.name.clone(),
                key: table.key.clone(),
            })
        }
        Some((false, found)) => {
            return Err(SchemaError::KeyType {
                shard: shard.to_string(),
                table: table.name.clone(),
                key: table.key.clone(),
                found,
            })
        }
        Some((true, _)) => {}
    }
    let primary_key = client
        .query(PRIMARY_KEY_SQL, &[&oid])
        .await
        .map_err(fail)?
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<Vec<String>, _>>()
        .map_err(fail)?;
    Ok(TableSchema {
        table: table.clone(),
        columns,
        primary_key,
        partitioned,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(name: &str, type_sql: &str, generated: bool) -> Column {
        Column {
            name: name.into(),
            type_sql: type_sql.into(),
            generated,
            identity: false,
        }
    }

    fn schema(columns: Vec<Column>) -> TableSchema {
        TableSchema {
            table: Table {
                name: "posts".into(),
                key: "id".into(),
            },
            columns,
            primary_key: vec!["id".into()],
            partitioned: false,
        }
    }

    #[test]
    fn physical_order_does_not_matter_but_names_types_and_generation_do() {
        let here = schema(vec![
            column("id", "bigint", false),
            column("title", "text", false),
            column("score", "integer", false),
            column("len", "integer", true),
        ]);
        let reordered = schema(vec![
            column("score", "integer", false),
            column("len", "integer", true),
            column("id", "bigint", false),
            column("title", "text", false),
        ]);
        assert!(here.differences(&reordered).is_empty());
        let names: Vec<&str> = here
            .copied_columns()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(names, ["id", "score", "title"]);
        let other = schema(vec![
            column("id", "integer", false),
            column("len", "integer", false),
            column("body", "text", false),
        ]);
        assert_eq!(
            here.differences(&other),
            [
                "column \"id\" is bigint here but integer there",
                "column \"title\" is missing",
                "column \"score\" is missing",
                "column \"len\" is generated here but not generated there",
                "column \"body\" is extra",
            ]
        );
    }
}
