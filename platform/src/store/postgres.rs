//! The PostgreSQL store, for a city: the same statements as SQLite with `$n` parameters, prepared
//! once per connection, over the synchronous client of rust-postgres (no libpq). The connection is
//! plain TCP or a Unix socket; put a TLS tunnel in front for a database on another machine.

use std::collections::HashMap;

use anyhow::{Context, Result};
use postgres::types::{ToSql, Type};

use super::{Store, Val};

pub struct Postgres {
    client: postgres::Client,
    statements: HashMap<String, postgres::Statement>,
    /// Host and database, never the password.
    name: String,
}

impl Postgres {
    pub fn connect(url: &str) -> Result<Self> {
        let config: postgres::Config = url.parse().context("--store is not a PostgreSQL URL")?;
        let hosts: Vec<String> = config
            .get_hosts()
            .iter()
            .map(|h| match h {
                postgres::config::Host::Tcp(name) => name.clone(),
                postgres::config::Host::Unix(path) => path.display().to_string(),
            })
            .collect();
        let name = format!("postgres {}/{}", hosts.join(","), config.get_dbname().unwrap_or_default());
        let client = config.connect(postgres::NoTls).with_context(|| format!("cannot connect to {name}"))?;
        Ok(Self { client, statements: HashMap::new(), name })
    }

    fn prepared(&mut self, sql: &str) -> Result<postgres::Statement> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement =
            self.client.prepare(&numbered(sql)).with_context(|| format!("{}: cannot prepare {sql}", self.name))?;
        self.statements.insert(sql.to_string(), statement.clone());
        Ok(statement)
    }
}

/// `?` parameters as PostgreSQL's `$1`, `$2`, … (the SQL of this crate has no `?` elsewhere).
pub fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push_str(&format!("${n}"));
        } else {
            out.push(c);
        }
    }
    out
}

/// Each value as the Rust type of the column the statement compares it with.
fn bound(params: &[Val], types: &[Type]) -> Vec<Box<dyn ToSql + Sync>> {
    params
        .iter()
        .zip(types)
        .map(|(value, ty)| -> Box<dyn ToSql + Sync> {
            match (value, ty) {
                (Val::Int(i), &Type::INT4) => Box::new(i32::try_from(*i).unwrap_or(i32::MAX)),
                (Val::Int(i), _) => Box::new(*i),
                (Val::Text(t), _) => Box::new(t.clone()),
                (Val::Null, &Type::INT8) => Box::new(None::<i64>),
                (Val::Null, &Type::INT4) => Box::new(None::<i32>),
                (Val::Null, _) => Box::new(None::<String>),
            }
        })
        .collect()
}

impl Store for Postgres {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn execute(&mut self, statements: &[(&'static str, Vec<Val>)]) -> Result<()> {
        let Self { client, statements: prepared, name } = self;
        let mut transaction = client.transaction().with_context(|| format!("{name}: cannot begin"))?;
        for (sql, params) in statements {
            // Prepared in order, inside the transaction: a migration's statement may need the table
            // the one before it makes.
            let statement = match prepared.get(*sql) {
                Some(statement) => statement.clone(),
                None => {
                    let statement =
                        transaction.prepare(&numbered(sql)).with_context(|| format!("{name}: cannot prepare {sql}"))?;
                    prepared.insert(sql.to_string(), statement.clone());
                    statement
                }
            };
            let values = bound(params, statement.params());
            let refs: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| v.as_ref()).collect();
            transaction.execute(&statement, &refs).with_context(|| format!("{name}: {sql}"))?;
        }
        transaction.commit().with_context(|| format!("{name}: cannot commit"))
    }

    fn query(&mut self, sql: &str, params: &[Val]) -> Result<Vec<Vec<Val>>> {
        let statement = self.prepared(sql)?;
        let values = bound(params, statement.params());
        let refs: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| v.as_ref()).collect();
        let rows = self.client.query(&statement, &refs).with_context(|| format!("{}: {sql}", self.name))?;
        rows.iter()
            .map(|row| {
                (0..row.len())
                    .map(|i| {
                        let ty = row.columns()[i].type_();
                        Ok(match *ty {
                            Type::INT8 => row.try_get::<_, Option<i64>>(i)?.map(Val::Int).unwrap_or(Val::Null),
                            Type::INT4 => {
                                row.try_get::<_, Option<i32>>(i)?.map(|n| Val::Int(n.into())).unwrap_or(Val::Null)
                            }
                            _ => row.try_get::<_, Option<String>>(i)?.map(Val::Text).unwrap_or(Val::Null),
                        })
                    })
                    .collect::<Result<Vec<Val>, postgres::Error>>()
                    .with_context(|| format!("{}: reading {sql}", self.name))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn question_marks_become_numbered_parameters_in_order() {
        assert_eq!(
            super::numbered("UPDATE t SET a = ? WHERE b = ? AND c >= ?"),
            "UPDATE t SET a = $1 WHERE b = $2 AND c >= $3"
        );
    }
}
