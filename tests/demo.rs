//! `chat-relay demo`: the newcomer's first command. The scripted
//! conversation runs and exits cleanly; `--serve-only` serves the browser
//! chat (the TypeScript client's page, embedded) and what a test needs.
//! The page itself is tested in a real browser by clients/typescript.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use serde_json::{json, Value};
use support::{http_get, Ws};
use uuid::Uuid;

fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().and_then(|p| p.trim_end_matches('/').split('/').next()?.parse().ok()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_scripted_demo_runs_to_the_end_and_exits_0() {
    let out = tokio::task::spawn_blocking(|| {
        Command::new(env!("CARGO_BIN_EXE_chat-relay"))
            .args(["demo", "--messages", "4", "--interval-ms", "10", "--exit"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.matches("[bob]   <- message").count(), 4, "{stdout}");
    assert!(stdout.contains("status=read"), "{stdout}");
    assert!(stdout.contains("browser chat: http://127.0.0.1:"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_only_serves_the_page_tokens_for_demo_users_and_stops_on_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_chat-relay"))
        .args(["demo", "--serve-only"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line
    })
    .await
    .unwrap();
    let info: Value = serde_json::from_str(&line).unwrap();
    let web = port_of(info["web_url"].as_str().unwrap());

    let (status, page) = http_get(web, "/").await.unwrap();
    assert_eq!(status, 200);
    assert!(page.contains(r#"<script type="module" src="/app.js">"#));
    let (status, app) = http_get(web, "/app.js").await.unwrap();
    assert_eq!(status, 200);
    assert!(app.contains(r#"from "/client/index.js""#));
    // Every module the client's index imports is served.
    let (_, index) = http_get(web, "/client/index.js").await.unwrap();
    for import in index.lines().filter_map(|l| l.split("from \"./").nth(1)?.split('"').next()) {
        let (status, _) = http_get(web, &format!("/client/{import}")).await.unwrap();
        assert_eq!(status, 200, "{import}");
    }
    assert_eq!(http_get(web, "/client/nope.js").await.unwrap().0, 404);

    let (_, config) = http_get(web, "/demo/config").await.unwrap();
    let config: Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["chat_id"], info["chat_id"]);
    let alice = info["alice"].as_str().unwrap();
    let (status, token) = http_get(web, &format!("/demo/token?user={alice}")).await.unwrap();
    assert_eq!(status, 200);
    let token: Value = serde_json::from_str(&token).unwrap();
    assert_eq!(http_get(web, &format!("/demo/token?user={}", Uuid::new_v4())).await.unwrap().0, 403);
    assert_eq!(http_get(web, "/demo/token?user=x").await.unwrap().0, 400);

    // The token works on the relay, and the chat has its earlier messages.
    let mut ws = Ws::connect(info["relay_port"].as_u64().unwrap() as u16, token["token"].as_str().unwrap()).await;
    let sub = ws.subscribe(info["chat_id"].as_str().unwrap().parse().unwrap(), None).await;
    assert_eq!(sub["latest_seq"], 60);
    assert_eq!(sub["online"], json!([alice]));

    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
    assert!(status.success(), "{status:?}");
}
