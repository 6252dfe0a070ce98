//! migrate: apply the embedded `sql/` migrations and create the publication.
//!
//! Migrations are numbered files compiled into the binary. Each runs once, in
//! order, and is recorded in `chat_relay_schema_migrations` with a checksum;
//! running `migrate` again is a no-op, and an applied file that was edited
//! afterwards is refused rather than silently skipped. A file whose first line
//! is `-- chat-relay: no-transaction` runs statement by statement outside a
//! transaction (for batched backfills that commit as they go and for
//! `CREATE INDEX CONCURRENTLY`); such files are written so that every
//! statement can run again after a failure at any later one (a test fails
//! each statement in turn and runs `migrate` again). A session advisory lock
//! keeps two concurrent `migrate` runs apart.

use tokio_postgres::Client;

use crate::pgconn::quote_ident;
use crate::pgconn::{self, ConnInfo};

/// One embedded migration.
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
    /// Checksums of earlier releases of this file that are still accepted as
    /// applied: edits that only make statements safe to re-run.
    pub also_accepted: &'static [&'static str],
}

impl Migration {
    pub fn transactional(&self) -> bool {
        !self.sql.starts_with("-- chat-relay: no-transaction")
    }
    pub fn checksum(&self) -> String {
        // FNV-1a: enough to notice an edited file.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.sql.bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x100_0000_01b3);
        }
        format!("{h:016x}")
    }
}

macro_rules! migration {
    ($v:expr, $file:literal) => {
        migration!($v, $file, &[])
    };
    ($v:expr, $file:literal, $accepted:expr) => {
        Migration { version: $v, name: $file, sql: include_str!(concat!("../sql/", $file)), also_accepted: $accepted }
    };
}

/// Every migration, in order.
pub const MIGRATIONS: &[Migration] = &[
    migration!(1, "0001_tables.sql"),
    migration!(2, "0002_backfill_seq.sql"),
    migration!(3, "0003_seq_trigger.sql"),
    // Released as b3c9941bde534b4e; its first statement is now conditional.
    migration!(4, "0004_seq_not_null.sql", &["b3c9941bde534b4e"]),
    migration!(5, "0005_functions.sql"),
    migration!(6, "0006_seq_trigger_v2.sql"),
    migration!(7, "0007_id_conflict_keeps_seq.sql"),
    migration!(8, "0008_refuse_chat_move.sql"),
    migration!(9, "0009_inbox_activity.sql"),
];

/// Test hook: `CHAT_RELAY_TEST_FAIL_MIGRATION=<file>:<n>` makes `migrate`
/// stop with an error right after statement `n` (1-based) of that file, as a
/// crash or a failing statement would. Not for production use.
const FAILPOINT_ENV: &str = "CHAT_RELAY_TEST_FAIL_MIGRATION";

fn failpoint() -> Option<(String, usize)> {
    let v = std::env::var(FAILPOINT_ENV).ok()?;
    let (file, n) = v.rsplit_once(':')?;
    Some((file.to_string(), n.parse().ok()?))
}

/// What went wrong while migrating.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("migration {name} failed: {source}")]
    Failed { name: &'static str, source: tokio_postgres::Error },
    #[error("migration {name} was applied with checksum {applied}, but the embedded file has {embedded}: applied migrations must not be edited; add a new one")]
    Edited { name: &'static str, applied: String, embedded: String },
    #[error("migration {name} stopped after statement {statement} ({FAILPOINT_ENV})")]
    Injected { name: &'static str, statement: usize },
    #[error("{0}")]
    Db(#[from] tokio_postgres::Error),
}

/// Summary of one run.
#[derive(Debug, Default)]
pub struct Report {
    pub applied: Vec<&'static str>,
    pub already: usize,
    pub publication_created: bool,
}

/// Applies all pending migrations and makes sure `publication` exists and
/// covers the chat tables.
pub async fn run(info: &ConnInfo, publication: &str) -> Result<Report, MigrateError> {
    let client = pgconn::connect(info).await.map_err(|e| MigrateError::Connect(format!("{e:#}")))?;
    client.batch_execute("SELECT pg_advisory_lock(hashtext('chat_relay_migrate'))").await?;
    let result = apply(&client, publication).await;
    let _ = client.batch_execute("SELECT pg_advisory_unlock(hashtext('chat_relay_migrate'))").await;
    result
}

async fn apply(client: &Client, publication: &str) -> Result<Report, MigrateError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS chat_relay_schema_migrations (
                version integer PRIMARY KEY,
                name text NOT NULL,
                checksum text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await?;
    let mut report = Report::default();
    for m in MIGRATIONS {
        let row = client
            .query_opt("SELECT checksum FROM chat_relay_schema_migrations WHERE version = $1", &[&m.version])
            .await?;
        if let Some(row) = row {
            let applied: String = row.get(0);
            if applied != m.checksum() && !m.also_accepted.contains(&applied.as_str()) {
                return Err(MigrateError::Edited { name: m.name, applied, embedded: m.checksum() });
            }
            report.already += 1;
            continue;
        }
        tracing::info!(migration = m.name, "applying");
        let failed = |source| MigrateError::Failed { name: m.name, source };
        let fail_after = failpoint().filter(|(file, _)| file == m.name).map(|(_, n)| n);
        let record = "INSERT INTO chat_relay_schema_migrations (version, name, checksum) VALUES ($1, $2, $3)";
        let transactional = m.transactional();
        if transactional {
            client.batch_execute("BEGIN").await.map_err(failed)?;
        }
        let done: Result<(), MigrateError> = async {
            for (i, stmt) in split_statements(m.sql).into_iter().enumerate() {
                client.batch_execute(stmt).await.map_err(failed)?;
                if fail_after == Some(i + 1) {
                    return Err(MigrateError::Injected { name: m.name, statement: i + 1 });
                }
            }
            client.execute(record, &[&m.version, &m.name, &m.checksum()]).await.map_err(failed)?;
            if transactional {
                client.batch_execute("COMMIT").await.map_err(failed)?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = done {
            if transactional {
                let _ = client.batch_execute("ROLLBACK").await;
            }
            return Err(e);
        }
        report.applied.push(m.name);
    }
    report.publication_created = ensure_publication(client, publication).await?;
    Ok(report)
}

/// Creates the publication, or adds the chat tables to an existing one, and
/// (again) gives both tables the REPLICA IDENTITY FULL the relay needs.
async fn ensure_publication(client: &Client, publication: &str) -> Result<bool, MigrateError> {
    client
        .batch_execute(
            "DO $$ BEGIN
               IF (SELECT relreplident FROM pg_class WHERE oid = 'chat_messages'::regclass) <> 'f' THEN
                 ALTER TABLE chat_messages REPLICA IDENTITY FULL;
               END IF;
               IF (SELECT relreplident FROM pg_class WHERE oid = 'chat_participants'::regclass) <> 'f' THEN
                 ALTER TABLE chat_participants REPLICA IDENTITY FULL;
               END IF;
             END $$",
        )
        .await?;
    let exists = client.query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&publication]).await?.is_some();
    let name = quote_ident(publication);
    if !exists {
        client.batch_execute(&format!("CREATE PUBLICATION {name} FOR TABLE chat_messages, chat_participants")).await?;
        return Ok(true);
    }
    for table in ["chat_messages", "chat_participants"] {
        let member = client
            .query_opt(
                "SELECT 1 FROM pg_publication_tables WHERE pubname = $1 AND schemaname = current_schema() AND tablename = $2",
                &[&publication, &table],
            )
            .await?
            .is_some();
        if !member {
            client.batch_execute(&format!("ALTER PUBLICATION {name} ADD TABLE {table}")).await?;
        }
    }
    Ok(false)
}

fn push_statement<'a>(out: &mut Vec<&'a str>, s: &'a str) {
    let has_code = s.lines().any(|l| {
        let l = l.trim();
        !l.is_empty() && !l.starts_with("--")
    });
    if has_code {
        out.push(s.trim());
    }
}

/// Splits SQL into statements at top-level semicolons, respecting quotes,
/// dollar-quoted bodies and comments. Empty statements are dropped.
pub fn split_statements(sql: &str) -> Vec<&str> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    i += 1;
                }
                i += 2;
            }
            q @ (b'\'' | b'"') => {
                i += 1;
                while i < b.len() {
                    if b[i] == q {
                        if b.get(i + 1) == Some(&q) {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i += 1;
            }
            b'$' => {
                // $tag$ ... $tag$
                let tag_end =
                    b[i + 1..].iter().position(|c| !(c.is_ascii_alphanumeric() || *c == b'_')).map(|p| i + 1 + p);
                match tag_end {
                    Some(e) if b[e] == b'$' => {
                        let tag = &sql[i..=e];
                        match sql[e + 1..].find(tag) {
                            Some(close) => i = e + 1 + close + tag.len(),
                            None => i = b.len(),
                        }
                    }
                    _ => i += 1,
                }
            }
            b';' => {
                push_statement(&mut out, &sql[start..i]);
                i += 1;
                start = i;
            }
            _ => i += 1,
        }
    }
    if start < b.len() {
        push_statement(&mut out, &sql[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_respecting_bodies_and_quotes() {
        let sql = "-- header; not a split\nSELECT 'a;b';\nDO $$ BEGIN PERFORM 1; END $$;\n\
                   CREATE FUNCTION f() RETURNS int AS $fn$ SELECT 1; $fn$ LANGUAGE sql;\n/* c; */ SELECT \"x;y\";\n-- trailing";
        let parts = split_statements(sql);
        assert_eq!(parts.len(), 4, "{parts:#?}");
        assert_eq!(parts[0], "-- header; not a split\nSELECT 'a;b'");
        assert!(parts[1].starts_with("DO $$") && parts[1].ends_with("END $$"));
        assert!(parts[2].contains("$fn$ SELECT 1; $fn$"));
        assert!(parts[3].ends_with("SELECT \"x;y\""));
    }

    #[test]
    fn migrations_are_numbered_in_order_and_documented() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1);
            assert!(m.name.starts_with(&format!("{:04}_", i + 1)));
            let head: String = m.sql.lines().take_while(|l| l.starts_with("--")).collect::<Vec<_>>().join("\n");
            assert!(head.to_lowercase().contains("rollback"), "{} must say how to roll it back", m.name);
        }
    }

    #[test]
    fn no_transaction_files_split_cleanly() {
        for m in MIGRATIONS.iter().filter(|m| !m.transactional()) {
            for stmt in split_statements(m.sql) {
                assert!(!stmt.trim().is_empty());
            }
        }
        assert!(!MIGRATIONS[1].transactional());
        assert!(MIGRATIONS[0].transactional());
    }
}
