//! `chat-relay migrate` against real PostgreSQL 15: empty and legacy
//! databases, idempotence and re-runs after failures, the seq trigger under
//! concurrency and with the SQL apps send (bulk, ON CONFLICT, join-then-post,
//! a shadowing temp table), the functions.

mod support;

use std::process::Command;

use support::{insert, Db};
use uuid::Uuid;

/// An app's schema before chat-relay (no seq, status, watermarks; chats
/// without created_at), with two chats: ...0a and ...0b.
const LEGACY: &str = "CREATE TABLE chats (id uuid PRIMARY KEY DEFAULT gen_random_uuid());
     CREATE TABLE chat_participants (chat_id uuid REFERENCES chats ON DELETE CASCADE, user_id uuid, PRIMARY KEY (chat_id, user_id));
     CREATE TABLE chat_messages (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), chat_id uuid NOT NULL REFERENCES chats,
         sender_id uuid NOT NULL, content text NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
     INSERT INTO chats (id) VALUES ('00000000-0000-0000-0000-00000000000a'), ('00000000-0000-0000-0000-00000000000b');";

#[tokio::test(flavor = "multi_thread")]
async fn migrates_an_empty_database_once() {
    let db = Db::bare().await;
    let first = db.migrate();
    assert!(first.contains("applied 0001_tables.sql"), "{first}");
    assert!(first.contains("created publication chat_relay"), "{first}");
    let second = db.migrate();
    let n = chat_relay::migrate::MIGRATIONS.len();
    assert!(second.contains(&format!("schema up to date ({n} migrations already applied)")), "{second}");

    let c = db.client().await;
    let applied: i64 = c.query_one("SELECT count(*) FROM chat_relay_schema_migrations", &[]).await.unwrap().get(0);
    assert_eq!(applied, n as i64);
    // Publication covers both tables; replica identity is FULL.
    let tables: Vec<String> = c
        .query("SELECT tablename::text FROM pg_publication_tables WHERE pubname = 'chat_relay' ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(tables, ["chat_messages", "chat_participants"]);
    let identities: Vec<String> = c
        .query("SELECT relreplident::text FROM pg_class WHERE relname IN ('chat_messages','chat_participants')", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(identities, ["f", "f"]);
    // seq is NOT NULL, unique per chat.
    let nullable: String = c
        .query_one("SELECT is_nullable::text FROM information_schema.columns WHERE table_name='chat_messages' AND column_name='seq'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(nullable, "NO");
    for constraint in ["chat_messages_chat_id_seq_key", "chat_messages_chat_id_client_generated_id_key"] {
        let n: i64 =
            c.query_one("SELECT count(*) FROM pg_constraint WHERE conname = $1", &[&constraint]).await.unwrap().get(0);
        assert_eq!(n, 1, "{constraint}");
    }
    // The inbox lists a user's chats through this index.
    let def: String = c
        .query_one("SELECT indexdef FROM pg_indexes WHERE indexname = 'chat_participants_user_id_idx'", &[])
        .await
        .unwrap()
        .get(0);
    assert!(def.ends_with("(user_id)"), "{def}");
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_failure_is_a_clear_nonzero_exit() {
    let out = Command::new(env!("CARGO_BIN_EXE_chat-relay"))
        .arg("migrate")
        .env("DATABASE_URL", "postgres://nobody:x@127.0.0.1:1/none?sslmode=disable&connect_timeout=2")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("chat-relay: error:") && err.contains("cannot connect"), "{err}");

    let out = Command::new(env!("CARGO_BIN_EXE_chat-relay"))
        .arg("migrate")
        .env("DATABASE_URL", "mysql://x@y/z")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("postgres://"));
}

#[tokio::test(flavor = "multi_thread")]
async fn migrates_a_legacy_chat_database_and_backfills_seq_in_order() {
    let db = Db::bare().await;
    let c = db.client().await;
    // The app's schema before chat-relay: no seq, status, watermarks.
    c.batch_execute(
        "CREATE TABLE chats (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), title text);
         CREATE TABLE chat_participants (chat_id uuid REFERENCES chats ON DELETE CASCADE, user_id uuid, PRIMARY KEY (chat_id, user_id));
         CREATE TABLE chat_messages (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), chat_id uuid NOT NULL REFERENCES chats,
             sender_id uuid NOT NULL, content text NOT NULL, created_at timestamptz NOT NULL DEFAULT now());",
    )
    .await
    .unwrap();
    let chats: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    for (i, chat) in chats.iter().enumerate() {
        c.execute("INSERT INTO chats (id, title) VALUES ($1, $2)", &[chat, &format!("chat {i}")]).await.unwrap();
    }
    // 12000 rows in chat 0 (more than two backfill batches), a few elsewhere,
    // inserted out of created_at order, with created_at ties.
    c.execute(
        "INSERT INTO chat_messages (chat_id, sender_id, content, created_at)
         SELECT $1, gen_random_uuid(), 'm' || g, timestamptz '2024-01-01' + ((12000 - g) / 2) * interval '1 second'
         FROM generate_series(1, 12000) g",
        &[&chats[0]],
    )
    .await
    .unwrap();
    for chat in &chats[1..] {
        c.execute(
            "INSERT INTO chat_messages (chat_id, sender_id, content, created_at)
             SELECT $1, gen_random_uuid(), 'm' || g, timestamptz '2024-01-01' + (g % 3) * interval '1 minute'
             FROM generate_series(1, 7) g",
            &[chat],
        )
        .await
        .unwrap();
    }
    db.migrate();

    // Every chat numbered 1..n in (created_at, id) order.
    let bad: i64 = c
        .query_one(
            "SELECT count(*) FROM (SELECT seq, row_number() OVER (PARTITION BY chat_id ORDER BY created_at, id) rn
             FROM chat_messages) x WHERE seq <> rn",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(bad, 0, "seq must follow (created_at, id) per chat");
    let last: Vec<i64> = c
        .query("SELECT last_seq FROM chats WHERE id = ANY($1) ORDER BY array_position($1, id)", &[&chats])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(last, [12000, 7, 7]);
    // The app's own column survived; new inserts continue the sequence.
    let title: String = c.query_one("SELECT title FROM chats WHERE id = $1", &[&chats[1]]).await.unwrap().get(0);
    assert_eq!(title, "chat 1");
    assert_eq!(insert(&c, chats[1], Uuid::new_v4(), "new").await, 8);
    let status: String = c
        .query_one("SELECT status FROM chat_messages WHERE chat_id = $1 AND seq = 8", &[&chats[1]])
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "sent");
    assert!(db.migrate().contains("up to date"));
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_inserts_into_one_chat_get_consecutive_seqs_and_rollbacks_leave_no_hole() {
    let db = Db::start().await;
    let chat = db.chat(&[]).await;
    let mut tasks = Vec::new();
    for w in 0..8 {
        let url = db.url.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = support::connect(&url).await;
            for i in 0..25 {
                let tx = c.transaction().await.unwrap();
                tx.execute(
                    "INSERT INTO chat_messages (chat_id, sender_id, content) VALUES ($1, gen_random_uuid(), $2)",
                    &[&chat, &format!("w{w} m{i}")],
                )
                .await
                .unwrap();
                // Every fifth transaction rolls back.
                if i % 5 == 4 {
                    tx.rollback().await.unwrap();
                } else {
                    tx.commit().await.unwrap();
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let c = db.client().await;
    let seqs: Vec<i64> = c
        .query("SELECT seq FROM chat_messages WHERE chat_id = $1 ORDER BY seq", &[&chat])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(seqs, (1..=160).collect::<Vec<i64>>(), "8 writers x 20 committed, consecutive, none repeated");
    let last: i64 = c.query_one("SELECT get_latest_seq($1)", &[&chat]).await.unwrap().get(0);
    assert_eq!(last, 160);
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicate_client_generated_id_is_refused_without_burning_a_seq() {
    let db = Db::start().await;
    let chat = db.chat(&[]).await;
    let c = db.client().await;
    let cgid = Uuid::new_v4();
    let sql = "INSERT INTO chat_messages (chat_id, sender_id, content, client_generated_id) VALUES ($1, gen_random_uuid(), 'x', $2) RETURNING seq";
    let first: i64 = c.query_one(sql, &[&chat, &cgid]).await.unwrap().get(0);
    let err = c.query_one(sql, &[&chat, &cgid]).await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("23505"));
    assert_eq!(insert(&c, chat, Uuid::new_v4(), "next").await, first + 1);
    // The same cgid in another chat is fine.
    let other = db.chat(&[]).await;
    assert_eq!(c.query_one(sql, &[&other, &cgid]).await.unwrap().get::<_, i64>(0), 1);
    // A client-supplied seq is ignored: the trigger decides.
    let seq: i64 = c
        .query_one("INSERT INTO chat_messages (chat_id, sender_id, content, seq) VALUES ($1, gen_random_uuid(), 'y', 999) RETURNING seq", &[&chat])
        .await
        .unwrap()
        .get(0);
    assert_eq!(seq, first + 2);
    // A missing chat is a foreign key violation.
    let err = c
        .execute("INSERT INTO chat_messages (chat_id, sender_id, content) VALUES (gen_random_uuid(), gen_random_uuid(), 'z')", &[])
        .await
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("23503"));
}

#[tokio::test(flavor = "multi_thread")]
async fn keyset_pagination_newest_first_uses_the_seq_index() {
    let db = Db::start().await;
    let c = db.client().await;
    c.batch_execute("SET enable_seqscan = off").await.unwrap();
    let plan: Vec<String> = c
        .query(
            "EXPLAIN SELECT * FROM chat_messages WHERE chat_id = $1 AND seq < 100 ORDER BY seq DESC LIMIT 50",
            &[&Uuid::new_v4()],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let plan = plan.join("\n");
    assert!(plan.contains("Index Scan Backward using chat_messages_chat_id_seq_key"), "{plan}");
    assert!(!plan.contains("Sort"), "{plan}");
}

#[tokio::test(flavor = "multi_thread")]
async fn marking_functions_move_watermarks_forward_only_and_flip_other_senders_messages() {
    let db = Db::start().await;
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let chat = db.chat(&[alice, bob]).await;
    let c = db.client().await;
    for i in 0..5 {
        insert(&c, chat, if i == 2 { bob } else { alice }, "hi").await;
    }
    let unread: i64 = c.query_one("SELECT get_unread_count($1, $2)", &[&chat, &bob]).await.unwrap().get(0);
    assert_eq!(unread, 4, "bob's own message is not unread for him");
    let mark: i64 = c.query_one("SELECT mark_messages_as_delivered($1, $2, 3)", &[&chat, &bob]).await.unwrap().get(0);
    assert_eq!(mark, 3);
    assert_eq!(statuses(&c, chat).await, ["delivered", "delivered", "sent", "sent", "sent"]);
    // Backwards is a no-op; beyond the last seq is clamped.
    let mark: i64 = c.query_one("SELECT mark_messages_as_delivered($1, $2, 1)", &[&chat, &bob]).await.unwrap().get(0);
    assert_eq!(mark, 3);
    let mark: i64 =
        c.query_one("SELECT mark_messages_as_delivered($1, $2, 1000)", &[&chat, &bob]).await.unwrap().get(0);
    assert_eq!(mark, 5);
    let mark: i64 = c.query_one("SELECT mark_messages_as_read($1, $2, 4)", &[&chat, &bob]).await.unwrap().get(0);
    assert_eq!(mark, 4);
    assert_eq!(statuses(&c, chat).await, ["read", "read", "sent", "read", "delivered"]);
    let row = c
        .query_one(
            "SELECT last_delivered_seq, last_read_seq FROM chat_participants WHERE chat_id = $1 AND user_id = $2",
            &[&chat, &bob],
        )
        .await
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (5, 4));
    let unread: i64 = c.query_one("SELECT get_unread_count($1, $2)", &[&chat, &bob]).await.unwrap().get(0);
    assert_eq!(unread, 1);
    // Not a participant: NULL, nothing touched.
    let none: Option<i64> =
        c.query_one("SELECT mark_messages_as_read($1, gen_random_uuid(), 5)", &[&chat]).await.unwrap().get(0);
    assert_eq!(none, None);
}

async fn statuses(c: &tokio_postgres::Client, chat: Uuid) -> Vec<String> {
    c.query("SELECT status FROM chat_messages WHERE chat_id = $1 ORDER BY seq", &[&chat])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_migration_that_failed_halfway_runs_again_once_the_cause_is_fixed() {
    let db = Db::bare().await;
    let c = db.client().await;
    // A legacy app that already had client_generated_id, with one duplicate:
    // 0004's unique index cannot be built.
    c.batch_execute(
        "CREATE TABLE chats (id uuid PRIMARY KEY DEFAULT gen_random_uuid());
         CREATE TABLE chat_participants (chat_id uuid REFERENCES chats ON DELETE CASCADE, user_id uuid, PRIMARY KEY (chat_id, user_id));
         CREATE TABLE chat_messages (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), chat_id uuid NOT NULL REFERENCES chats,
             sender_id uuid NOT NULL, content text NOT NULL, created_at timestamptz NOT NULL DEFAULT now(), client_generated_id uuid);
         INSERT INTO chats (id) VALUES ('00000000-0000-0000-0000-00000000000c');
         INSERT INTO chat_messages (chat_id, sender_id, content, client_generated_id)
         SELECT '00000000-0000-0000-0000-00000000000c', gen_random_uuid(), 'm' || g, '00000000-0000-0000-0000-0000000000dd'
         FROM generate_series(1, 2) g;",
    )
    .await
    .unwrap();
    let out =
        Command::new(env!("CARGO_BIN_EXE_chat-relay")).arg("migrate").env("DATABASE_URL", &db.url).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the duplicate must stop migrate");
    assert!(err.contains("0004") && err.contains("client_generated_id"), "{err}");
    // The operator removes the duplicate and runs migrate again.
    c.batch_execute("DELETE FROM chat_messages WHERE content = 'm2'").await.unwrap();
    let again = db.migrate();
    assert!(again.contains("0004"), "{again}");
    let nullable: String = c
        .query_one("SELECT is_nullable::text FROM information_schema.columns WHERE table_name='chat_messages' AND column_name='seq'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(nullable, "NO");
    assert_eq!(
        insert(&c, Uuid::parse_str("00000000-0000-0000-0000-00000000000c").unwrap(), Uuid::new_v4(), "new").await,
        3,
        "numbers are never reused"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_migration_runs_again_after_failing_at_any_statement() {
    use chat_relay::migrate::{split_statements, MIGRATIONS};
    let db = Db::bare().await;
    let admin = db.client().await;
    // Every statement of a no-transaction file can leave the database half
    // done; a transactional file is all or nothing, so failing its last
    // statement covers it.
    let mut cases = Vec::new();
    for m in MIGRATIONS {
        let n = split_statements(m.sql).len();
        if m.transactional() {
            cases.push((m.name, n));
        } else {
            cases.extend((1..=n).map(|k| (m.name, k)));
        }
    }
    assert!(cases.len() > 10, "{cases:?}");
    for (i, (name, k)) in cases.into_iter().enumerate() {
        let dbname = format!("rerun_{i}");
        admin.batch_execute(&format!("CREATE DATABASE {dbname}")).await.unwrap();
        let url = db.pg.url(&dbname);
        let c = support::connect(&url).await;
        // A legacy database with rows to backfill, in two chats.
        c.batch_execute(&format!(
            "{LEGACY}
             INSERT INTO chat_messages (chat_id, sender_id, content)
             SELECT CASE WHEN g % 2 = 0 THEN '00000000-0000-0000-0000-00000000000a'::uuid ELSE '00000000-0000-0000-0000-00000000000b'::uuid END,
                    gen_random_uuid(), 'm' || g FROM generate_series(1, 10) g;"
        ))
        .await
        .unwrap();
        let failed = Command::new(env!("CARGO_BIN_EXE_chat-relay"))
            .arg("migrate")
            .env("DATABASE_URL", &url)
            .env("CHAT_RELAY_TEST_FAIL_MIGRATION", format!("{name}:{k}"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&failed.stderr);
        assert!(!failed.status.success(), "{name}:{k} did not fail");
        assert!(err.contains(&format!("stopped after statement {k}")), "{name}:{k}: {err}");
        let again =
            Command::new(env!("CARGO_BIN_EXE_chat-relay")).arg("migrate").env("DATABASE_URL", &url).output().unwrap();
        assert!(
            again.status.success(),
            "{name} failed at statement {k}, and the re-run failed too: {}",
            String::from_utf8_lossy(&again.stderr)
        );
        let applied: i64 = c.query_one("SELECT count(*) FROM chat_relay_schema_migrations", &[]).await.unwrap().get(0);
        assert_eq!(applied, MIGRATIONS.len() as i64, "{name}:{k}");
        let seqs: Vec<i64> = c
            .query(
                "SELECT seq FROM chat_messages WHERE chat_id = '00000000-0000-0000-0000-00000000000a' ORDER BY seq",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(seqs, [1, 2, 3, 4, 5], "{name}:{k}");
        let next =
            insert(&c, Uuid::parse_str("00000000-0000-0000-0000-00000000000a").unwrap(), Uuid::new_v4(), "n").await;
        assert_eq!(next, 6, "{name}:{k}");
        drop(c);
        admin.batch_execute(&format!("DROP DATABASE {dbname}")).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bulk_insert_into_one_chat_writes_the_chat_row_once_per_statement() {
    let db = Db::start().await;
    let chat = db.chat(&[]).await;
    let mut c = db.client().await;
    let tx = c.transaction().await.unwrap();
    tx.execute(
        "INSERT INTO chat_messages (chat_id, sender_id, content) SELECT $1, gen_random_uuid(), 'bulk ' || g FROM generate_series(1, 5000) g",
        &[&chat],
    )
    .await
    .unwrap();
    // Each update of the chat row inside one transaction leaves a version that
    // every later update walks past: once per row is quadratic.
    let updates: i64 = tx
        .query_one("SELECT n_tup_upd FROM pg_stat_xact_user_tables WHERE relname = 'chats'", &[])
        .await
        .unwrap()
        .get(0);
    // The first row takes its number as a single-row insert does, the
    // statement's end stores the rest: a constant, not one per row.
    assert!(updates <= 2, "chats.last_seq was written {updates} times for one statement of 5000 rows");
    // A second statement and a rolled-back savepoint in the same transaction.
    tx.batch_execute("SAVEPOINT s").await.unwrap();
    tx.execute(
        "INSERT INTO chat_messages (chat_id, sender_id, content) VALUES ($1, gen_random_uuid(), 'gone')",
        &[&chat],
    )
    .await
    .unwrap();
    tx.batch_execute("ROLLBACK TO SAVEPOINT s").await.unwrap();
    tx.execute(
        "INSERT INTO chat_messages (chat_id, sender_id, content) SELECT $1, gen_random_uuid(), 'more' FROM generate_series(1, 10)",
        &[&chat],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let (n, min, max, last): (i64, i64, i64, i64) = {
        let r = c
            .query_one(
                "SELECT count(*), min(seq), max(seq), get_latest_seq($1) FROM chat_messages WHERE chat_id = $1",
                &[&chat],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1), r.get(2), r.get(3))
    };
    assert_eq!((n, min, max, last), (5010, 1, 5010, 5010), "consecutive seqs, no hole from the savepoint");
    assert_eq!(insert(&c, chat, Uuid::new_v4(), "next").await, 5011);
}

#[tokio::test(flavor = "multi_thread")]
async fn join_then_post_transactions_do_not_deadlock() {
    let db = Db::start().await;
    let chat = db.chat(&[]).await;
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let url = db.url.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = support::connect(&url).await;
            let user = Uuid::new_v4();
            let tx = c.transaction().await.unwrap();
            // "X joined the chat": the participant row, then the message.
            tx.execute("INSERT INTO chat_participants (chat_id, user_id) VALUES ($1, $2)", &[&chat, &user]).await?;
            tx.execute(
                "INSERT INTO chat_messages (chat_id, sender_id, content) VALUES ($1, $2, 'joined the chat')",
                &[&chat, &user],
            )
            .await?;
            tx.commit().await
        }));
    }
    let mut failures = Vec::new();
    for t in tasks {
        if let Err(e) = t.await.unwrap() {
            failures.push(e.to_string());
        }
    }
    assert!(failures.is_empty(), "{} of 16 joins failed: {failures:?}", failures.len());
    let c = db.client().await;
    let seqs: Vec<i64> = c
        .query("SELECT seq FROM chat_messages WHERE chat_id = $1 ORDER BY seq", &[&chat])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(seqs, (1..=16).collect::<Vec<i64>>());
}

#[tokio::test(flavor = "multi_thread")]
async fn on_conflict_do_nothing_and_retried_inserts_burn_no_seq() {
    let db = Db::start().await;
    let chat = db.chat(&[]).await;
    let c = db.client().await;
    let cgid = Uuid::new_v4();
    let upsert = "INSERT INTO chat_messages (chat_id, sender_id, content, client_generated_id) \
                  VALUES ($1, gen_random_uuid(), 'x', $2) ON CONFLICT (chat_id, client_generated_id) DO NOTHING RETURNING seq";
    let first = c.query(upsert, &[&chat, &cgid]).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].get::<_, i64>(0), 1);
    // What supabase-js upsert(..., { ignoreDuplicates: true }) sends: no row, no error.
    let again = c.query(upsert, &[&chat, &cgid]).await.unwrap();
    assert!(again.is_empty());
    // Also without a conflict target.
    let bare = c
        .query(
            "INSERT INTO chat_messages (chat_id, sender_id, content, client_generated_id) VALUES ($1, gen_random_uuid(), 'x', $2) ON CONFLICT DO NOTHING RETURNING seq",
            &[&chat, &cgid],
        )
        .await
        .unwrap();
    assert!(bare.is_empty());
    // A plain retry still fails, naming the client_generated_id constraint.
    let err = c
        .execute(
            "INSERT INTO chat_messages (chat_id, sender_id, content, client_generated_id) VALUES ($1, gen_random_uuid(), 'x', $2)",
            &[&chat, &cgid],
        )
        .await
        .unwrap_err();
    let db_err = err.as_db_error().expect("a database error");
    assert_eq!(db_err.code().code(), "23505");
    assert_eq!(db_err.constraint(), Some("chat_messages_chat_id_client_generated_id_key"));
    // None of the retries took a number.
    assert_eq!(insert(&c, chat, Uuid::new_v4(), "next").await, 2);
    // A multi-row upsert mixing old and new ids stores only the new ones, consecutively.
    let fresh = Uuid::new_v4();
    let rows = c
        .query(
            "INSERT INTO chat_messages (chat_id, sender_id, content, client_generated_id)
             VALUES ($1, gen_random_uuid(), 'a', $2), ($1, gen_random_uuid(), 'b', $3)
             ON CONFLICT (chat_id, client_generated_id) DO NOTHING RETURNING seq",
            &[&chat, &cgid, &fresh],
        )
        .await
        .unwrap();
    assert_eq!(rows.iter().map(|r| r.get::<_, i64>(0)).collect::<Vec<_>>(), [3]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_temporary_table_cannot_choose_the_seq() {
    let db = Db::start().await;
    let chat = db.chat(&[]).await;
    let c = db.client().await;
    insert(&c, chat, Uuid::new_v4(), "one").await;
    // Any role that may create temporary tables can put one named `chats`
    // first on its search path.
    c.batch_execute(&format!(
        "CREATE TEMP TABLE chats (id uuid PRIMARY KEY, last_seq bigint NOT NULL DEFAULT 0);
         INSERT INTO pg_temp.chats VALUES ('{chat}', 1000);"
    ))
    .await
    .unwrap();
    let seq = c
        .query_one(
            "INSERT INTO chat_messages (chat_id, sender_id, content) VALUES ($1, gen_random_uuid(), 'two') RETURNING seq",
            &[&chat],
        )
        .await
        .map(|r| r.get::<_, i64>(0));
    assert_eq!(seq.ok(), Some(2), "the shadowing table chose the seq");
}

/// 0009 keeps chats.last_activity: the created_at of the newest message (by
/// seq), or NULL when the chat has none; on a legacy schema too.
#[tokio::test(flavor = "multi_thread")]
async fn last_activity_follows_the_newest_message_through_every_write_path() {
    let db = Db::bare().await;
    let c = db.client().await;
    // A legacy app: chats without created_at, messages already there.
    c.batch_execute(&format!(
        "{LEGACY}
         INSERT INTO chat_messages (chat_id, sender_id, content, created_at) VALUES
           ('00000000-0000-0000-0000-00000000000a', gen_random_uuid(), 'old', '2024-01-01 00:00:00+00'),
           ('00000000-0000-0000-0000-00000000000a', gen_random_uuid(), 'newer', '2024-02-01 00:00:00+00');"
    ))
    .await
    .unwrap();
    db.migrate();
    let a = Uuid::parse_str("00000000-0000-0000-0000-00000000000a").unwrap();
    let b = Uuid::parse_str("00000000-0000-0000-0000-00000000000b").unwrap();
    let activity = |chat: Uuid| {
        let c = &c;
        async move {
            let r = c
                .query_one(
                    "SELECT to_char(last_activity AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI'), created_at IS NOT NULL FROM chats WHERE id = $1",
                    &[&chat],
                )
                .await
                .unwrap();
            assert!(r.get::<_, bool>(1), "chats.created_at exists and is filled");
            r.get::<_, Option<String>>(0)
        }
    };
    // Backfilled from the newest message; none for an empty chat.
    assert_eq!(activity(a).await.as_deref(), Some("2024-02-01 00:00"));
    assert_eq!(activity(b).await, None);
    // A single-row insert with an explicit created_at in the past: it is
    // the newest message, so its created_at is the activity.
    let at = |s: &str| format!("{s}+00");
    let ins = "INSERT INTO chat_messages (chat_id, sender_id, content, created_at) VALUES ($1, gen_random_uuid(), 'x', $2::text::timestamptz)";
    c.execute(ins, &[&a, &at("2023-05-05 05:05")]).await.unwrap();
    assert_eq!(activity(a).await.as_deref(), Some("2023-05-05 05:05"));
    // The newest message's sender is kept beside it (NULL: unknown).
    let sender_is_newest = |chat: Uuid| {
        let c = &c;
        async move {
            c.query_one(
                "SELECT c.last_sender_id IS NOT DISTINCT FROM (SELECT m.sender_id FROM chat_messages m
                   WHERE m.chat_id = c.id AND m.seq = c.last_seq), c.last_sender_id IS NULL FROM chats c WHERE c.id = $1",
                &[&chat],
            )
            .await
            .map(|r| (r.get::<_, bool>(0), r.get::<_, bool>(1)))
            .unwrap()
        }
    };
    assert_eq!(sender_is_newest(a).await, (true, false));
    // Two rows in one transaction, then a multi-row statement over two chats.
    let mut c2 = db.client().await;
    let tx = c2.transaction().await.unwrap();
    tx.execute(ins, &[&a, &at("2025-01-01 00:00")]).await.unwrap();
    tx.execute(ins, &[&a, &at("2025-01-02 00:00")]).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(activity(a).await.as_deref(), Some("2025-01-02 00:00"));
    c.execute(
        "INSERT INTO chat_messages (chat_id, sender_id, content, created_at)
         SELECT CASE WHEN g % 2 = 0 THEN $1::uuid ELSE $2::uuid END, gen_random_uuid(), 'bulk',
                timestamptz '2025-03-01' + g * interval '1 minute' FROM generate_series(1, 10) g",
        &[&a, &b],
    )
    .await
    .unwrap();
    assert_eq!(activity(a).await.as_deref(), Some("2025-03-01 00:10"));
    assert_eq!(activity(b).await.as_deref(), Some("2025-03-01 00:09"));
    assert_eq!(sender_is_newest(a).await, (true, false));
    assert_eq!(sender_is_newest(b).await, (true, false));
    // A retried send takes no seq and leaves the activity as it was.
    let cgid = Uuid::new_v4();
    let send = "INSERT INTO chat_messages (chat_id, sender_id, content, client_generated_id, created_at)
                VALUES ($1, gen_random_uuid(), 'once', $2, $3::text::timestamptz) ON CONFLICT DO NOTHING";
    c.execute(send, &[&b, &cgid, &at("2025-04-01 00:00")]).await.unwrap();
    c.execute(send, &[&b, &cgid, &at("2030-01-01 00:00")]).await.unwrap();
    assert_eq!(activity(b).await.as_deref(), Some("2025-04-01 00:00"));
    assert!(sender_is_newest(b).await.1, "the give-back forgets the sender (the list then looks)");
    // Deleting the newest message moves it back; deleting all clears it.
    c.execute("DELETE FROM chat_messages WHERE chat_id = $1 AND client_generated_id = $2", &[&b, &cgid]).await.unwrap();
    assert_eq!(activity(b).await.as_deref(), Some("2025-03-01 00:09"));
    assert!(sender_is_newest(b).await.1, "unknown after a delete");
    c.execute("DELETE FROM chat_messages WHERE chat_id = $1", &[&b]).await.unwrap();
    assert_eq!(activity(b).await, None);
    // A chat inserted with only its id (or DEFAULT VALUES) is listed by its creation.
    c.execute("INSERT INTO chats DEFAULT VALUES", &[]).await.unwrap();
    assert!(db.migrate().contains("up to date"));
}
