//! The only wiring: builds tasks from a `Config`, starts them in order (state → http → scrape loops),
//! and stops them in reverse on SIGTERM/Ctrl-C.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::watch;
use tracing::{Instrument, info, warn};

use crate::alerts::dispatch::Dispatch;
use crate::analysis::Params;
use crate::config::{Config, Heartbeat, ReceiverConfig, ReceiverKind, Require};
use crate::domain::{StatsMode, Timestamp};
use crate::engine::{Alerting, Engine, ReloadStatus};
use crate::http::{HttpState, router};
use crate::outbox::{self, Pacer, ReceiverStats, Stats};
use crate::receivers::{
    EmailReceiver, InvalidReceiver, LogReceiver, Receiver, SlackReceiver, WebhookReceiver,
};
use crate::scrape::Scraper;
use crate::store::Store;
use crate::view::{ClusterHandle, ClusterView, LastError, Tracker};

/// Checks every cluster before anything starts: reachable, credentials accepted, a user that can see
/// every vhost. `startup.require` decides what failing means; the message lists every failed check
/// and what to do about it.
async fn startup_checks(config: &Config, scrapers: &[Scraper]) -> anyhow::Result<()> {
    let mut failed = Vec::new();
    for s in scrapers {
        let name = &s.config().name;
        match s.check_access().await {
            Ok(tags) => info!(cluster = %name, tags = ?tags, "start-up check passed"),
            Err(e) => {
                let hint = match &e {
                    crate::scrape::AccessProblem::Scrape(se) => match se.reason() {
                        "connect" | "timeout" => {
                            " (is the management plugin enabled? rabbitmq-plugins enable rabbitmq_management)"
                        }
                        _ => "",
                    },
                    crate::scrape::AccessProblem::NotMonitoring { .. } => "",
                };
                warn!(cluster = %name, error = %e, "start-up check failed");
                failed.push(format!("cluster {name}: {e}{hint}"));
            }
        }
    }
    let stop = match config.startup {
        Require::All => !failed.is_empty(),
        Require::Any => failed.len() == scrapers.len() && !scrapers.is_empty(),
        Require::None => false,
    };
    if stop {
        anyhow::bail!(
            "start-up checks failed (startup.require: {}):\n  {}",
            match config.startup {
                Require::All => "all",
                Require::Any => "any",
                Require::None => "none",
            },
            failed.join("\n  ")
        );
    }
    Ok(())
}

/// "Die rather than limp": a poll loop that made no progress for five intervals (and a minute) is
/// stuck in a way retrying will not fix; exit non-zero so the supervisor restarts the daemon.
/// `/healthz` reports the condition earlier (three intervals).
async fn watchdog(handles: Vec<Arc<ClusterHandle>>) {
    let mut every = tokio::time::interval(Duration::from_secs(5));
    loop {
        every.tick().await;
        let now = Timestamp::now();
        for h in &handles {
            let idle = now.secs_since(h.last_progress());
            let limit = 5.0 * h.poll_interval.as_secs_f64() + 60.0;
            if idle > limit {
                tracing::error!(cluster = %h.name, idle_s = idle as u64, limit_s = limit as u64, "watchdog: the poll loop made no progress; exiting so the supervisor restarts rabbitwatch");
                std::process::exit(70);
            }
        }
    }
}

/// Dead-man's switch: GET the heartbeat URL every interval while every poll loop is progressing, so
/// whoever watches the URL learns when the monitor itself is gone.
async fn heartbeat(hb: Heartbeat, handles: Vec<Arc<ClusterHandle>>) {
    let Ok(client) = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
    else {
        warn!("heartbeat: cannot build an HTTP client");
        return;
    };
    let mut every = tokio::time::interval(hb.interval);
    loop {
        every.tick().await;
        let now = Timestamp::now();
        let healthy = handles.iter().all(|h| {
            now.secs_since(h.last_progress()) <= 3.0 * h.poll_interval.as_secs_f64() + 30.0
        });
        if !healthy {
            warn!("heartbeat: skipped, a poll loop is not progressing");
            continue;
        }
        match client.get(hb.url.clone()).send().await {
            Ok(r) if r.status().is_success() => tracing::debug!("heartbeat sent"),
            Ok(r) => warn!(
                status = r.status().as_u16(),
                "heartbeat: endpoint refused the ping"
            ),
            Err(e) => warn!(error = %e.without_url(), "heartbeat: cannot reach the endpoint"),
        }
    }
}

/// The parts of a config that a reload can swap in without a restart.
pub fn alerting(config: &Config) -> Alerting {
    Alerting {
        rules: config.rules.clone(),
        dispatch: config.route.clone().map(|root| Dispatch {
            root,
            send_resolved: config
                .receivers
                .iter()
                .map(|r| (r.name.clone(), r.send_resolved))
                .collect(),
        }),
        inhibit: config.inhibit.clone(),
    }
}

/// Builds every configured receiver; a configuration that cannot work fails here, at start (and in
/// `rabbitwatch check`), not at the first alert.
pub fn build_receivers(config: &Config) -> Result<Vec<Receiver>, Vec<InvalidReceiver>> {
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(15))
        .user_agent(concat!("rabbitwatch/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| {
            vec![InvalidReceiver {
                receiver: String::new(),
                message: format!("cannot build an HTTP client: {e}"),
            }]
        })?;
    let mut ok = Vec::new();
    let mut errors = Vec::new();
    for ReceiverConfig { name, kind, .. } in &config.receivers {
        let built = match kind {
            ReceiverKind::Slack(c) => {
                SlackReceiver::new(name, c.clone(), http.clone()).map(Receiver::Slack)
            }
            ReceiverKind::Email(c) => EmailReceiver::new(name, c.clone()).map(Receiver::Email),
            ReceiverKind::Webhook(c) => Ok(Receiver::Webhook(WebhookReceiver::new(
                name,
                c.clone(),
                http.clone(),
            ))),
            ReceiverKind::Log(c) => Ok(Receiver::Log(LogReceiver::new(name, c.clone()))),
        };
        match built {
            Ok(r) => ok.push(r),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(ok)
    } else {
        Err(errors)
    }
}

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

    startup_checks(&config, &scrapers).await?;

    let (stop_tx, stop_rx) = watch::channel(false);

    // State first: alerts, group states and the outbox resume from it.
    let store = Arc::new(Store::open(&config.state.path)?);
    let receivers = build_receivers(&config).map_err(|errs| {
        anyhow::anyhow!(
            errs.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        )
    })?;
    let wakes: Vec<Arc<tokio::sync::Notify>> = receivers
        .iter()
        .map(|_| Arc::new(tokio::sync::Notify::new()))
        .collect();
    let engine = Arc::new(Engine::new(
        store.clone(),
        alerting(&config),
        wakes.clone(),
    )?);
    let reload_status = Arc::new(ReloadStatus::new(now));
    let reloader: Arc<dyn Fn() -> Result<String, String> + Send + Sync> = {
        let (path, engine, status) = (config.source.clone(), engine.clone(), reload_status.clone());
        let running: Vec<String> = receivers.iter().map(|r| r.name().to_string()).collect();
        Arc::new(move || reload(&path, &engine, &status, &running))
    };
    let stats: Stats = receivers
        .iter()
        .map(|r| (r.name().to_string(), Arc::new(ReceiverStats::default())))
        .collect();
    info!(rules = config.rules.len(), receivers = receivers.len(), state = %store.path().display(), "alerting ready");

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
        engine: engine.clone(),
        stats: Arc::new(stats.clone()),
        api_token: config.server.api_token.clone(),
        reload: reloader.clone(),
        reload_status: reload_status.clone(),
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
    let pacer = Arc::new(Pacer::default());
    let mut loops: Vec<_> = receivers
        .into_iter()
        .zip(wakes)
        .map(|(r, wake)| {
            let st = stats[r.name()].clone();
            tokio::spawn(outbox::run_worker(
                Arc::new(r),
                store.clone(),
                wake,
                pacer.clone(),
                config.outbox,
                st,
            ))
        })
        .collect();
    loops.push(tokio::spawn(watchdog(handles.clone())));
    if let Some(hb) = config.heartbeat.clone() {
        loops.push(tokio::spawn(heartbeat(hb, handles.clone())));
    }
    let ticker = engine.clone();
    loops.push(tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            every.tick().await;
            ticker.tick(Timestamp::now());
        }
    }));
    loops.extend(scrapers.into_iter().zip(&handles).map(|(scraper, handle)| {
        tokio::spawn(poll_loop(handle.clone(), scraper, params, engine.clone()))
    }));

    wait_for_shutdown(&*reloader).await;
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

/// Re-reads the config file and swaps in its rules, routes and inhibitions. Anything invalid keeps
/// the running config: every error is logged and returned, and the reload metric drops to 0.
fn reload(
    path: &std::path::Path,
    engine: &Engine,
    status: &ReloadStatus,
    running: &[String],
) -> Result<String, String> {
    use std::sync::atomic::Ordering::Relaxed;
    let fail = |why: String| {
        status.ok.store(false, Relaxed);
        warn!(config = %path.display(), error = %why, "reload failed; keeping the running config");
        Err(why)
    };
    let cfg = match crate::config::load(path) {
        Ok(c) => c,
        Err(e) => return fail(e.to_string()),
    };
    // Receivers need workers; those start with the daemon. A route to a new receiver would queue
    // notifications nobody delivers.
    let missing: Vec<&str> = cfg
        .receivers
        .iter()
        .map(|r| r.name.as_str())
        .filter(|n| !running.iter().any(|r| r == n))
        .collect();
    if !missing.is_empty() {
        return fail(format!(
            "new receivers need a restart: {}",
            missing.join(", ")
        ));
    }
    let rules = cfg.rules.len();
    engine.reload(alerting(&cfg), Timestamp::now());
    status.ok.store(true, Relaxed);
    status.last_success.store(Timestamp::now().0, Relaxed);
    info!(config = %path.display(), rules, "config reloaded (rules, routes, inhibitions); cluster, receiver, server and state changes need a restart");
    Ok(format!(
        "reloaded {rules} rule(s); cluster, receiver, server and state changes need a restart\n"
    ))
}

async fn wait_for_shutdown(reload: &(dyn Fn() -> Result<String, String> + Send + Sync)) {
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
            _ = hup.recv() => {
                let _ = reload();
            }
        }
    }
}

/// One cluster's loop: scrape, fold into history, publish the view. Cycles never overlap: a cycle
/// longer than the interval makes the loop skip (and count) the ticks it overran.
async fn poll_loop(
    handle: Arc<ClusterHandle>,
    scraper: Scraper,
    params: Params,
    engine: Arc<Engine>,
) {
    let cfg = scraper.config().clone();
    let poll = cfg.poll_interval;
    let mut tracker = Tracker::new(&cfg.name, params);
    let mut errors = std::collections::BTreeMap::new();
    let mut skipped = 0u64;
    let mut cycle: u64 = 0;
    loop {
        cycle += 1;
        // Every log line of this cycle carries the cluster and the cycle number.
        let span = tracing::info_span!("cycle", cluster = %cfg.name, cycle);
        let started = Instant::now();
        let progress = || handle.mark_progress(Timestamp::now());
        let result = scraper
            .scrape(Timestamp::now, &progress)
            .instrument(span.clone())
            .await;
        let next = {
            let _entered = span.enter();
            let elapsed = started.elapsed();
            let prev = handle.view.load_full();
            let now = Timestamp::now();
            let view = match result {
                Ok(mut snap) => {
                    if !prev.up {
                        info!(queues = snap.queues.len(), version = %snap.rabbitmq_version, "cluster reachable");
                    }
                    if snap.stats_mode == StatsMode::DepthOnly
                        && (prev.stats_mode != StatsMode::DepthOnly || prev.last_success.is_none())
                    {
                        warn!(
                            "broker keeps no message statistics (disable_stats or rates_mode none): depth-only analysis, rates unknown"
                        );
                    }
                    if snap.truncated > 0 {
                        warn!(
                            watched = snap.queues.len(),
                            dropped = snap.truncated,
                            "more queues than max_queues: watching those with the largest backlog"
                        );
                    }
                    let queues =
                        tracker.observe(std::mem::take(&mut snap.queues), snap.taken_at, now);
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
                    warn!(reason, error = %e, "scrape failed; keeping history, no samples this cycle");
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
            let view = Arc::new(view);
            handle.view.store(view.clone());
            engine.on_cycle(&view, now);
            handle.mark_progress(now);

            let missed = (elapsed.as_nanos() / poll.as_nanos().max(1)) as u32;
            if missed > 0 {
                skipped += u64::from(missed);
                warn!(
                    took_ms = elapsed.as_millis() as u64,
                    skipped = missed,
                    "scrape took longer than poll_interval; skipping ticks"
                );
            }
            // ±5% jitter keeps many daemons (or clusters) from polling in lockstep.
            let jitter = poll.mul_f64(0.1 * fastrand::f64());
            started + poll * (missed + 1) + jitter - poll.mul_f64(0.05)
        };
        tokio::time::sleep_until(next.into()).await;
    }
}
