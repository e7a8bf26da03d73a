//! The SQLite store: one file, WAL (a `report` reads while `watch` writes), and every commit
//! synced (`synchronous = FULL`) because `watch` acknowledges messages to the broker only after it.

use std::path::Path;

use anyhow::{Context, Result};
use rusqlite::types::{ToSqlOutput, Value as SqlValue, ValueRef};

use super::{Store, Val};

pub struct Sqlite {
    connection: rusqlite::Connection,
    path: String,
}

impl Sqlite {
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let connection =
            rusqlite::Connection::open(path).with_context(|| format!("cannot open the store {}", path.display()))?;
        connection
            .execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 10000;")
            .with_context(|| format!("cannot set up the store {}", path.display()))?;
        Ok(Self { connection, path: path.display().to_string() })
    }
}

impl rusqlite::ToSql for Val {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Val::Null => ToSqlOutput::Owned(SqlValue::Null),
            Val::Int(i) => ToSqlOutput::Owned(SqlValue::Integer(*i)),
            Val::Text(t) => ToSqlOutput::Borrowed(ValueRef::Text(t.as_bytes())),
        })
    }
}

impl Store for Sqlite {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    fn execute(&mut self, statements: &[(&'static str, Vec<Val>)]) -> Result<()> {
        let path = &self.path;
        let transaction = self.connection.transaction().with_context(|| format!("store {path}: cannot begin"))?;
        for (sql, params) in statements {
            let mut statement =
                transaction.prepare_cached(sql).with_context(|| format!("store {path}: cannot prepare {sql}"))?;
            statement
                .execute(rusqlite::params_from_iter(params.iter()))
                .with_context(|| format!("store {path}: {sql}"))?;
        }
        transaction.commit().with_context(|| format!("store {path}: cannot commit"))
    }

    fn query(&mut self, sql: &str, params: &[Val]) -> Result<Vec<Vec<Val>>> {
        let path = &self.path;
        let mut statement = self.connection.prepare_cached(sql).with_context(|| format!("store {path}: {sql}"))?;
        let columns = statement.column_count();
        let rows = statement
            .query_map(rusqlite::params_from_iter(params.iter()), |row| {
                (0..columns)
                    .map(|i| {
                        Ok(match row.get_ref(i)? {
                            ValueRef::Null => Val::Null,
                            ValueRef::Integer(n) => Val::Int(n),
                            ValueRef::Real(x) => Val::Int(x as i64),
                            ValueRef::Text(t) | ValueRef::Blob(t) => Val::Text(String::from_utf8_lossy(t).into_owned()),
                        })
                    })
                    .collect::<rusqlite::Result<Vec<Val>>>()
            })
            .with_context(|| format!("store {path}: {sql}"))?;
        rows.collect::<rusqlite::Result<Vec<_>>>().with_context(|| format!("store {path}: {sql}"))
    }
}
