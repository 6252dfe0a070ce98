//! relay: `chat-relay serve`, everything wired together.
//!
//! ```text
//! Replicator ──StreamEvent──▶ pipeline ──▶ LocalFanout (Hub, Membership) ──▶ sessions (gateway)
//!      ▲                         │   (replicas: JetStreamFanout ▶ NATS ▶ follow ▶ LocalFanout)
//!      └── Progress (handed-on LSN) ◀┘
//! ```
//!
//! Nothing here decides anything about an event: this module builds the
//! stages, connects them, and takes them down in order.
//!
//! Shutdown order on SIGTERM/SIGINT: stop accepting, close every WebSocket
//! with 1001 (and wait for the close frames), flush pending delivered-marks,
//! then let the replicator confirm the last handed-on LSN, and exit 0.

use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::serve::ListenerExt;
use axum::Router;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::cluster;
use crate::config::ServeArgs;
use crate::delivery::Delivery;
use crate::fanout::LocalFanout;
use crate::gateway::{self, Auth, Gateway, GatewayConfig, GatewayParts};
use crate::hub::Hub;
use crate::inbox::Inbox;
use crate::limits::Limits;
use crate::membership::Membership;
use crate::metrics as m;
use crate::pgoutput::TxnMemory;
use crate::pipeline::{self, Pipeline};
use crate::replication::{Health, Progress, ReplicationConfig, Replicator, StreamEvent};
use crate::sequencer::{Sequencer, SequencerConfig};
use crate::server::{self, AppState, ClusterState};
use crate::store::Store;

/// Runs the relay until a signal, then drains and returns.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let signals = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested");
        signals.cancel();
    });
    run(args, shutdown).await
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Runs the relay until `shutdown` is cancelled.
pub async fn run(args: ServeArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let auth = Arc::new(Auth::new(&args.auth())?);
    let limits = Arc::new(Limits::new(args.limits()));
    let prometheus = m::install()?;
    let info = args.db.conn_info()?;
    let store = Store::new(&info, args.pool_size as usize)?;
    let hub = Arc::new(Hub::new());
    let membership = Arc::new(Membership::new(store.clone(), Duration::from_millis(args.membership_ttl_ms)));
    // The receiving side: this process's hub and membership, fed by the
    // local pipeline (one relay) or by the NATS follower (replicas).
    let inbox_stop = CancellationToken::new();
    let (inbox, asker) = Inbox::new(store.clone(), hub.clone(), inbox_stop.clone());
    let asker = tokio::spawn(asker);
    let local = Arc::new(LocalFanout::new(hub.clone(), membership.clone()).with_inbox(inbox.clone()));
    let health = Arc::new(Health::default());
    let progress = Progress::default();
    let side_stop = CancellationToken::new();

    // Replication → pipeline.
    let (tx, rx) = mpsc::channel(1024);
    let replication_stop = CancellationToken::new();
    let replication_cfg = ReplicationConfig {
        conn: info.clone(),
        slot: args.slot.clone(),
        publication: args.db.publication.clone(),
        status_interval: Duration::from_secs(10),
        memory: Some(TxnMemory::new(args.txn_memory_mb, args.spill_dir.clone())),
    };
    let mut sequencer = Sequencer::new(SequencerConfig {
        dedupe_capacity: args.dedupe_capacity as usize,
        dedupe_ttl: Duration::from_secs(args.dedupe_ttl_secs),
        gap_window: Duration::from_millis(args.gap_window_ms),
    });
    sequencer.set_held_budget(args.held_events as usize);
    let (replication, pipeline, cluster) = match &args.nats_url {
        None => {
            // One process: it is the one that holds the slot.
            m::leader(true);
            let replicator = Replicator::new(replication_cfg, tx, progress.clone(), health.clone());
            let replication = tokio::spawn(replicator.run(replication_stop.clone()));
            let stage = Pipeline::new(sequencer, local, Arc::new(progress.clone()), None);
            let pipeline = tokio::spawn(pipeline::run(rx, stage, store.clone()));
            (replication, pipeline, None)
        }
        Some(url) => {
            // This process among the replicas: in presence messages, in the
            // headers of what it publishes, and in NATS's connection list.
            let replica = uuid::Uuid::new_v4();
            tracing::info!(%replica, "joining the replicas through NATS");
            let client = async_nats::ConnectOptions::new()
                .retry_on_initial_connect()
                .name(format!("chat-relay {} {replica}", args.slot))
                .connect(url.split(',').map(str::trim).filter(|u| !u.is_empty()).collect::<Vec<_>>())
                .await
                .map_err(|e| anyhow::anyhow!("NATS at {url}: {e}"))?;
            let names = cluster::Names::new(&args.slot);
            let js = async_nats::jetstream::new(client.clone());
            // Which leadership term may publish (see cluster::leader).
            let lease = Arc::new(cluster::leader::Lease::default());
            let (fanout, backlog, _publisher) = cluster::publish::JetStreamFanout::start(
                js,
                names.clone(),
                replica,
                lease.clone(),
                progress.clone(),
                replication_stop.clone(),
            );
            let stage = Pipeline::new(sequencer, Arc::new(fanout.clone()), Arc::new(fanout), Some(backlog));
            let pipeline = tokio::spawn(pipeline::run(rx, stage, store.clone()));
            let state =
                ClusterState { leading: Arc::default(), following: Arc::new(Health::default()), nats: client.clone() };
            tokio::spawn(cluster::presence::run(
                client.clone(),
                names.clone(),
                replica,
                hub.clone(),
                side_stop.clone(),
            ));
            tokio::spawn(cluster::follow::follow(client, names, local, state.following.clone(), side_stop.clone()));
            let (progress, health) = (progress.clone(), health.clone());
            let replication = tokio::spawn(cluster::leader::compete(
                info.clone(),
                args.slot.clone(),
                state.leading.clone(),
                lease,
                replication_stop.clone(),
                move |cancel, term| {
                    let tx = tx.clone();
                    let replicator =
                        Replicator::new(replication_cfg.clone(), tx.clone(), progress.clone(), health.clone());
                    async move {
                        // In order before anything this term streams.
                        if tx.send(StreamEvent::Term(term)).await.is_ok() {
                            replicator.run(cancel).await;
                        }
                    }
                },
            ));
            (replication, pipeline, Some(state))
        }
    };
    // A pipeline that fails stops the relay (a restart replays from the slot).
    let failed: Arc<std::sync::Mutex<Option<anyhow::Error>>> = Arc::default();
    let pipeline = {
        let (failed, shutdown) = (failed.clone(), shutdown.clone());
        tokio::spawn(async move {
            let result = match pipeline.await {
                Ok(r) => r.map_err(anyhow::Error::from),
                Err(e) => Err(anyhow::anyhow!("pipeline task: {e}")),
            };
            if let Err(e) = result {
                tracing::error!(error = %e, "pipeline failed; stopping");
                if let Ok(mut f) = failed.lock() {
                    *f = Some(e);
                }
                shutdown.cancel();
            }
        })
    };

    // Side tasks: lag probe, membership cache sweep.
    tokio::spawn(auth.clone().refresh_jwks(side_stop.clone()));
    tokio::spawn(lag_probe(store.clone(), args.slot.clone(), health.clone(), side_stop.clone()));
    {
        let (membership, limits) = (membership.clone(), limits.clone());
        let stop = side_stop.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = every.tick() => {
                        membership.sweep();
                        limits.sweep();
                    }
                    _ = stop.cancelled() => break,
                }
            }
        });
    }

    let delivery_stop = CancellationToken::new();
    let (delivery, delivery_task) = Delivery::start(store.clone(), args.delivered_debounce(), delivery_stop.clone());
    let gw = Arc::new(Gateway::new(
        GatewayParts {
            hub,
            store: store.clone(),
            membership,
            auth: auth.clone(),
            delivery,
            limits: limits.clone(),
            inbox,
        },
        GatewayConfig {
            max_frame_bytes: args.max_frame_bytes as usize,
            max_content_bytes: args.max_content_bytes,
            outbound_queue: args.outbound_queue as usize,
            slow_consumer: Duration::from_millis(args.slow_consumer_ms),
            backfill_page: args.backfill_page,
            ping_interval: Duration::from_secs(args.ping_interval_secs),
            auto_delivered: args.auto_delivered,
            max_connections_per_user: args.max_connections_per_user,
        },
        shutdown.clone(),
    ));

    let state = AppState { prometheus, health, store, cluster };
    let app =
        Router::new().route("/v1/ws", get(gateway::ws_handler).with_state(gw.clone())).merge(server::router(state));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?
        .tap_io(tune_socket);
    tracing::info!(listen = %args.listen, slot = %args.slot, publication = %args.db.publication, "chat-relay serving");
    let stop = shutdown.clone();
    let http = axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await });
    let http_result = http.await;

    // Drain, in order.
    gw.sessions.close();
    if tokio::time::timeout(Duration::from_secs(5), gw.sessions.wait()).await.is_err() {
        tracing::warn!("some WebSocket sessions did not close within 5 s");
    }
    delivery_stop.cancel();
    let _ = delivery_task.await;
    replication_stop.cancel();
    let _ = replication.await;
    let _ = pipeline.await;
    side_stop.cancel();
    inbox_stop.cancel();
    let _ = asker.await;
    http_result?;
    if let Some(e) = failed.lock().ok().and_then(|mut f| f.take()) {
        return Err(e);
    }
    tracing::info!("stopped");
    Ok(())
}

/// Kernel send buffer of each client socket. Left to autotuning it grows to
/// 4 MiB per connection, kernel memory outside every bound of ours, and a
/// reader that fell behind would be noticed only megabytes later. This still
/// carries ~1 MB/s per connection over a 200 ms round trip.
pub const SOCKET_SEND_BUFFER: usize = 128 * 1024;

/// Every accepted connection: no Nagle delay for small frames, and a bounded
/// send buffer.
fn tune_socket(tcp: &mut tokio::net::TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "TCP_NODELAY");
    }
    if let Err(e) = socket2::SockRef::from(&*tcp).set_send_buffer_size(SOCKET_SEND_BUFFER) {
        tracing::debug!(error = %e, "SO_SNDBUF");
    }
}

/// Every 5 s: server WAL position minus the slot's confirmed position, and
/// the readiness gauge (streaming and the database answered this probe).
async fn lag_probe(store: Store, slot: String, health: Arc<Health>, stop: CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.cancelled() => return,
        }
        let answered = match tokio::time::timeout(Duration::from_secs(4), store.slot_lag(&slot)).await {
            Ok(Ok(lag)) => {
                if let Some(lag) = lag {
                    m::lag_bytes(lag);
                }
                true
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "lag probe failed");
                false
            }
            Err(_) => false,
        };
        m::ready(answered && health.is_streaming());
    }
}
