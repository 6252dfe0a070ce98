//! `chat-relay migrate` against real PostgreSQL 15: empty and legacy
//! databases, idempotence, the seq trigger under concurrency, the functions.

mod support;

use std::process::Command;

use support::{insert, Db};
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread")]
async fn migrates_an_empty_database_once() {
    let db = Db::bare().await;
    let first = db.migrate();
    assert!(first.contains("applied 0001_tables.sql"), "{first}");
    assert!(first.contains("created publication chat_relay"), "{first}");
    let second = db.migrate();
    assert!(second.contains("schema up to date (5 migrations already applied)"), "{second}");

    let c = db.client().await;
    let applied: i64 = c.query_one("SELECT count(*) FROM chat_relay_schema_migrations", &[]).await.unwrap().get(0);
    assert_eq!(applied, 5);
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
