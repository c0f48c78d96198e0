//! The only wiring: builds tasks from a `Config`, starts them in order (state → http → scrape loops),
//! and stops them in reverse on SIGTERM/Ctrl-C.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::analysis::Params;
use crate::config::Config;
use crate::domain::{StatsMode, Timestamp};
use crate::http::{HttpState, router};
use crate::scrape::Scraper;
use crate::view::{ClusterHandle, ClusterView, LastError, Tracker};

pub async fn run(config: Config) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.state.path).with_context(|| {
        format!(
            "cannot create state directory {}",
            config.state.path.display()
        )
    })?;

    let now = Timestamp::now();
    let handles: Vec<Arc<ClusterHandle>> = config
        .clusters
        .iter()
        .map(|c| Arc::new(ClusterHandle::new(&c.name, c.poll_interval, now)))
        .collect();
    let scrapers = config
        .clusters
        .iter()
        .map(|c| Scraper::new(c.clone()).with_context(|| format!("cluster {}", c.name)))
        .collect::<anyhow::Result<Vec<_>>>()?;

    let (stop_tx, stop_rx) = watch::channel(false);

    // Things that take requests start before things that send them.
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("cannot listen on {} (server.listen)", config.server.listen))?;
    let addr = listener.local_addr()?;
    info!(listen = %addr, "serving /metrics /healthz /readyz /api/v1");
    let state = HttpState {
        clusters: Arc::new(handles.clone()),
        state_dir: config.state.path.clone(),
        started_at: now,
    };
    let mut http_stop = stop_rx.clone();
    let http = tokio::spawn(async move {
        axum::serve(listener, router(state))
            .with_graceful_shutdown(async move {
                let _ = http_stop.wait_for(|s| *s).await;
            })
            .await
    });

    let params = Params {
        window_ms: config.analysis.window.as_millis() as i64,
    };
    let loops: Vec<_> = scrapers
        .into_iter()
        .zip(&handles)
        .map(|(scraper, handle)| tokio::spawn(poll_loop(handle.clone(), scraper, params)))
        .collect();

    wait_for_shutdown().await;
    info!("shutting down");
    for l in &loops {
        l.abort();
    }
    let _ = stop_tx.send(true);
    match tokio::time::timeout(Duration::from_secs(5), http).await {
        Ok(Ok(Ok(()))) | Err(_) => {}
        Ok(Ok(Err(e))) => return Err(e).context("http server failed"),
        Ok(Err(e)) => return Err(e).context("http server task failed"),
    }
    Ok(())
}

async fn wait_for_shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return,
            _ = term.recv() => return,
            _ = hup.recv() => warn!("SIGHUP received: live reload is not implemented yet; restart to apply config changes"),
        }
    }
}

/// One cluster's loop: scrape, fold into history, publish the view. Cycles never overlap: a cycle
/// longer than the interval makes the loop skip (and count) the ticks it overran.
async fn poll_loop(handle: Arc<ClusterHandle>, scraper: Scraper, params: Params) {
    let cfg = scraper.config().clone();
    let poll = cfg.poll_interval;
    let mut tracker = Tracker::new(&cfg.name, params);
    let mut errors = std::collections::BTreeMap::new();
    let mut skipped = 0u64;
    loop {
        let started = Instant::now();
        let progress = || handle.mark_progress(Timestamp::now());
        let result = scraper.scrape(Timestamp::now, &progress).await;
        let elapsed = started.elapsed();
        let prev = handle.view.load_full();
        let now = Timestamp::now();
        let view = match result {
            Ok(snap) => {
                if !prev.up {
                    info!(cluster = %cfg.name, queues = snap.queues.len(), version = %snap.rabbitmq_version, "cluster reachable");
                }
                if snap.stats_mode == StatsMode::DepthOnly
                    && (prev.stats_mode != StatsMode::DepthOnly || prev.last_success.is_none())
                {
                    warn!(cluster = %cfg.name, "broker keeps no message statistics (disable_stats or rates_mode none): depth-only analysis, rates unknown");
                }
                if snap.truncated > 0 {
                    warn!(cluster = %cfg.name, watched = snap.queues.len(), dropped = snap.truncated, "more queues than max_queues: watching those with the largest backlog");
                }
                let queues = tracker.observe(&snap, now);
                ClusterView {
                    name: cfg.name.clone(),
                    poll_interval: poll,
                    up: true,
                    last_attempt: Some(now),
                    last_success: Some(snap.taken_at),
                    last_error: None,
                    scrape_duration: Some(elapsed.as_secs_f64()),
                    stats_mode: snap.stats_mode,
                    rabbitmq_version: snap.rabbitmq_version,
                    nodes: Arc::new(snap.nodes),
                    queues: Arc::new(queues),
                    truncated: snap.truncated,
                    errors_total: errors.clone(),
                    skipped_total: skipped,
                }
            }
            Err(e) => {
                let reason = e.reason();
                warn!(cluster = %cfg.name, reason, error = %e, "scrape failed; keeping history, no samples this cycle");
                *errors.entry(reason).or_insert(0u64) += 1;
                ClusterView {
                    up: false,
                    last_attempt: Some(now),
                    last_error: Some(LastError {
                        reason,
                        message: e.to_string(),
                        at: now.0,
                    }),
                    scrape_duration: Some(elapsed.as_secs_f64()),
                    errors_total: errors.clone(),
                    skipped_total: skipped,
                    ..(*prev).clone()
                }
            }
        };
        handle.view.store(Arc::new(view));
        handle.mark_progress(now);

        let missed = (elapsed.as_nanos() / poll.as_nanos().max(1)) as u32;
        if missed > 0 {
            skipped += u64::from(missed);
            warn!(cluster = %cfg.name, took_ms = elapsed.as_millis() as u64, skipped = missed, "scrape took longer than poll_interval; skipping ticks");
        }
        // ±5% jitter keeps many daemons (or clusters) from polling in lockstep.
        let jitter = poll.mul_f64(0.1 * fastrand::f64());
        let next = started + poll * (missed + 1) + jitter - poll.mul_f64(0.05);
        tokio::time::sleep_until(next.into()).await;
    }
}
