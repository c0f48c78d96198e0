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
use crate::domain::Timestamp;
use crate::engine::{Alerting, Engine, ReloadStatus, Scaling};
use crate::fault::Fault;
use crate::http::{HttpState, router};
use crate::liveness::{Beat, EXIT_STUCK, Liveness, Verdict};
use crate::outbox::{self, Pacer, ReceiverStats, Stats};
use crate::probe::Probe;
use crate::receivers::{
    AlertmanagerReceiver, EmailReceiver, InvalidReceiver, LogReceiver, Reason, Receiver,
    SlackReceiver, WebhookReceiver,
};
use crate::scrape::{ScrapeReason, Scraper};
use crate::snapshot::Source;
use crate::store::Store;
use crate::view::{ClusterHandle, CycleEvent, Tracker};

/// Checks every cluster before anything starts (reachable, credentials accepted, a user that can see
/// every vhost), and every receiver with `verify_on_start` live. `startup.require` decides what
/// failing means; the message lists every failed check and what to do about it.
async fn startup_checks(
    config: &Config,
    scrapers: &[Scraper],
    receivers: &[Receiver],
    probes: &[Arc<Probe>],
) -> anyhow::Result<()> {
    let mut failed = Vec::new();
    let mut clusters_failed = 0;
    for s in scrapers {
        let name = &s.config().name;
        match s.check_access().await {
            Ok(tags) => info!(cluster = %name, tags = ?tags, "start-up check passed"),
            Err(e) => {
                let hint = match &e {
                    crate::scrape::AccessProblem::Scrape(se) => match se.reason() {
                        ScrapeReason::Connect | ScrapeReason::Timeout => {
                            " (is the management plugin enabled? rabbitmq-plugins enable rabbitmq_management)"
                        }
                        _ => "",
                    },
                    crate::scrape::AccessProblem::NotMonitoring { .. } => "",
                };
                warn!(cluster = %name, error = %e, "start-up check failed");
                failed.push(format!("cluster {name}: {e}{hint}"));
                clusters_failed += 1;
            }
        }
    }
    // A canary's target is checked like a cluster: connect, open a channel, find its queue.
    let checks = probes.iter().cloned().map(|p| async move {
        let result = crate::probe::check(&p.config).await;
        (p, result)
    });
    for (p, result) in futures_join(checks).await {
        let c = &p.config;
        match result {
            Ok(()) => {
                info!(cluster = %c.cluster, vhost = %c.vhost, probe = %c.name, "probe start-up check passed")
            }
            Err(e) => {
                warn!(cluster = %c.cluster, vhost = %c.vhost, probe = %c.name, error = %e, "probe start-up check failed");
                failed.push(format!("cluster {}: {e}", c.cluster));
            }
        }
    }
    let (mut verified, mut receivers_failed) = (0, 0);
    for r in receivers {
        let wanted = config
            .receivers
            .iter()
            .any(|c| c.name == r.name() && c.verify_on_start);
        if !wanted {
            continue;
        }
        verified += 1;
        match r.verify().await {
            Ok(()) => info!(
                receiver = r.name(),
                kind = r.kind(),
                "receiver check passed"
            ),
            Err(e) => {
                warn!(receiver = r.name(), kind = r.kind(), error = %e, "receiver check failed");
                failed.push(format!(
                    "receiver {}: {} check failed: {e}{}",
                    r.name(),
                    r.kind(),
                    receiver_hint(r, &e)
                ));
                receivers_failed += 1;
            }
        }
    }
    // `any`: something to watch and, when receivers are checked, someone to tell.
    let stop = match config.startup {
        Require::All => !failed.is_empty(),
        Require::Any => {
            (clusters_failed == scrapers.len() && !scrapers.is_empty())
                || (receivers_failed == verified && verified > 0)
        }
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

/// What to do about a failed receiver check, by what failed.
fn receiver_hint(r: &Receiver, e: &crate::receivers::DeliveryError) -> &'static str {
    match (r, e.reason()) {
        (Receiver::Slack(_), Reason::SlackApi) => {
            " (check the token in bot_token_file: wrong, revoked or missing scopes)"
        }
        (Receiver::Slack(_), _) => {
            " (is the Slack API reachable from here? check api_url and proxies)"
        }
        (Receiver::Email(_), Reason::Connect | Reason::Timeout | Reason::Transport) => {
            " (is an SMTP server listening at smtp_url, and reachable from here?)"
        }
        (Receiver::Email(_), _) => " (check smtp_url, its tls mode and the credentials)",
        _ => "",
    }
}

/// "Die rather than limp": a loop that made no progress for five of its intervals (and twice the
/// grace) is stuck in a way retrying will not fix; exit non-zero so the supervisor restarts the
/// daemon. `/healthz` reports the condition earlier, from the same judgement (`liveness`).
///
/// An OS thread of its own, not a task: it must still act when the async runtime is wedged (every
/// worker thread blocked), which is exactly when nothing else can. Stops checking once `stopping`.
fn watchdog(liveness: Liveness, stopping: Arc<std::sync::atomic::AtomicBool>) {
    let every = liveness
        .beats
        .iter()
        .map(|b| b.interval)
        .chain([liveness.grace / 2])
        .min()
        .unwrap_or(Duration::from_secs(5))
        .clamp(Duration::from_millis(250), Duration::from_secs(5));
    let mut unhealthy: std::collections::BTreeSet<String> = Default::default();
    loop {
        std::thread::sleep(every);
        if stopping.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        for state in liveness.states(Timestamp::now()) {
            match state.verdict {
                Verdict::Stuck => {
                    tracing::error!(
                        loop_name = %state.name,
                        idle_s = state.idle_s as u64,
                        limit_s = state.stuck_after_s as u64,
                        "watchdog: loop {} made no progress for {:.0}s (limit {:.0}s); exiting with status {EXIT_STUCK} so the supervisor restarts rabbitwatch",
                        state.name,
                        state.idle_s,
                        state.stuck_after_s
                    );
                    std::process::exit(EXIT_STUCK);
                }
                Verdict::Unhealthy => {
                    if unhealthy.insert(state.name.clone()) {
                        warn!(loop_name = %state.name, idle_s = state.idle_s as u64, exit_after_s = state.stuck_after_s as u64, "watchdog: loop {} is not progressing; /healthz answers 503", state.name);
                    }
                }
                Verdict::Ok => {
                    if unhealthy.remove(&state.name) {
                        info!(loop_name = %state.name, "watchdog: loop {} is progressing again", state.name);
                    }
                }
            }
        }
    }
}

/// Dead-man's switch: GET the heartbeat URL every interval while every loop is progressing, so
/// whoever watches the URL learns when the monitor itself is gone.
async fn heartbeat(hb: Heartbeat, liveness: Liveness) {
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
        if !liveness.all_ok(Timestamp::now()) {
            warn!("heartbeat: skipped, a loop is not progressing");
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
            per_alert: config
                .receivers
                .iter()
                .filter_map(|r| match &r.kind {
                    ReceiverKind::Alertmanager(c) => Some((r.name.clone(), c.resend_interval)),
                    _ => None,
                })
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
            ReceiverKind::Alertmanager(c) => AlertmanagerReceiver::new(name, c.clone())
                .map(Receiver::Alertmanager)
                .map_err(|message| InvalidReceiver {
                    receiver: name.clone(),
                    message,
                }),
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

/// `build_receivers`, every problem in one error.
pub fn receivers(config: &Config) -> anyhow::Result<Vec<Receiver>> {
    build_receivers(config).map_err(|errs| {
        anyhow::anyhow!(
            errs.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        )
    })
}

/// How often the state store is probed (and reopened after a failure) in the background.
const STORE_PROBE: Duration = Duration::from_secs(3);

/// Probes the state store every few seconds, so `/readyz` knows whether it accepts writes and the
/// store reopens by itself once the disk accepts writes again.
async fn probe_store(store: Arc<Store>) {
    let mut every = tokio::time::interval(STORE_PROBE);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let s = store.clone();
        let _ = tokio::task::spawn_blocking(move || s.probe()).await;
    }
}

/// Runs the futures concurrently; their outputs in order.
async fn futures_join<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.expect("start-up check task"));
    }
    out
}

/// How often the dispatcher runs its timers (group_wait, group_interval, repeat_interval).
const DISPATCH_TICK: Duration = Duration::from_secs(1);

pub async fn run(config: Config) -> anyhow::Result<()> {
    // SIGHUP's default action ends the process: take it over before the (possibly slow) start-up
    // checks, so a `systemctl reload` during start-up is a reload once the daemon runs, not a kill.
    // SIGTERM keeps its default until then: stopping a daemon that is still starting is fine.
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot handle SIGHUP")?;
    std::fs::create_dir_all(&config.state.path).with_context(|| {
        format!(
            "cannot create state directory {}",
            config.state.path.display()
        )
    })?;

    let fault = Fault::from_env();
    let now = Timestamp::now();
    let handles: Vec<Arc<ClusterHandle>> = config
        .clusters
        .iter()
        .map(|c| Arc::new(ClusterHandle::new(&c.name, c.poll_interval)))
        .collect();
    let scrapers = config
        .clusters
        .iter()
        .map(|c| Scraper::new(c.clone()).with_context(|| format!("cluster {}", c.name)))
        .collect::<anyhow::Result<Vec<_>>>()?;

    let receivers = receivers(&config)?;

    let probes: Vec<Arc<Probe>> = config.probes.iter().cloned().map(Probe::new).collect();

    startup_checks(&config, &scrapers, &receivers, &probes).await?;

    let (stop_tx, stop_rx) = watch::channel(false);

    // State first: alerts, group states and the outbox resume from it.
    let store = Arc::new(Store::open(&config.state.path)?);
    let wakes: Vec<Arc<tokio::sync::Notify>> = receivers
        .iter()
        .map(|_| Arc::new(tokio::sync::Notify::new()))
        .collect();
    let commit_delay = if fault.is(Fault::SlowStateDisk) {
        crate::fault::SLOW_DISK
    } else {
        Duration::ZERO
    };
    let engine = Arc::new(Engine::new(
        store.clone(),
        alerting(&config),
        wakes.clone(),
        commit_delay,
    )?);
    let watched: Vec<String> = config.clusters.iter().map(|c| c.name.clone()).collect();
    engine.retire_clusters(&watched, Timestamp::now());
    let scaling = Arc::new(Scaling::new(
        config.scalers.clone(),
        config.analysis.window,
        &store,
    )?);
    let reload_status = Arc::new(ReloadStatus::new(now));
    let reloader: Arc<dyn Fn() -> Result<String, String> + Send + Sync> = {
        let (path, engine, status) = (config.source.clone(), engine.clone(), reload_status.clone());
        let running: Vec<String> = receivers.iter().map(|r| r.name().to_string()).collect();
        Arc::new(move || reload(&path, &engine, &status, &running))
    };
    // Every long-running loop beats; `/healthz` and the watchdog judge the beats. They start now,
    // after the start-up checks, however long those took.
    let now = Timestamp::now();
    let poll_beats: Vec<Arc<Beat>> = config
        .clusters
        .iter()
        .map(|c| Beat::new(format!("poll:{}", c.name), c.poll_interval, now))
        .collect();
    let dispatcher_beat = Beat::new("dispatcher", DISPATCH_TICK, now);
    let probe_beats: Vec<Arc<Beat>> = probes
        .iter()
        .map(|p| {
            let c = &p.config;
            Beat::new(format!("probe:{}/{}", c.cluster, c.name), c.interval, now)
        })
        .collect();
    let worker_beats: Vec<Arc<Beat>> = receivers
        .iter()
        .map(|r| {
            let interval = outbox::IDLE_WAKE.max(r.attempt_budget());
            Beat::new(format!("outbox:{}", r.name()), interval, now)
        })
        .collect();
    let liveness = Liveness {
        beats: poll_beats
            .iter()
            .chain([&dispatcher_beat])
            .chain(&worker_beats)
            .chain(&probe_beats)
            .cloned()
            .collect(),
        grace: config.watchdog.grace,
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
    let metrics_cache = Arc::new(crate::export::QueueCache::default());
    let published = Arc::new(tokio::sync::Notify::new());
    let state = HttpState {
        clusters: Arc::new(handles.clone()),
        liveness: liveness.clone(),
        started_at: now,
        engine: engine.clone(),
        stats: Arc::new(stats.clone()),
        api_token: config.server.api_token.clone(),
        reload: reloader.clone(),
        reload_status: reload_status.clone(),
        scaling: scaling.clone(),
        probes: Arc::new(probes.clone()),
        metrics_cache: metrics_cache.clone(),
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
        .zip(worker_beats)
        .map(|((r, wake), beat)| {
            let st = stats[r.name()].clone();
            tokio::spawn(outbox::run_worker(outbox::Worker {
                receiver: Arc::new(r),
                store: store.clone(),
                wake,
                pacer: pacer.clone(),
                policy: config.outbox,
                stats: st,
                beat,
                fault,
            }))
        })
        .collect();
    let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let (liveness, stopping) = (liveness.clone(), stopping.clone());
        std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || watchdog(liveness, stopping))
            .context("cannot start the watchdog thread")?;
    }
    loops.push(tokio::spawn(probe_store(store.clone())));
    for (p, beat) in probes.iter().zip(probe_beats) {
        loops.push(tokio::spawn(crate::probe::run(p.clone(), beat)));
    }
    if let Some(hb) = config.heartbeat.clone() {
        loops.push(tokio::spawn(heartbeat(hb, liveness.clone())));
    }
    let ticker = engine.clone();
    loops.push(tokio::spawn(async move {
        let mut every = tokio::time::interval(DISPATCH_TICK);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            every.tick().await;
            ticker.tick(Timestamp::now());
            dispatcher_beat.mark(Timestamp::now());
            if fault.is(Fault::StallDispatcher) {
                std::future::pending::<()>().await;
            }
        }
    }));
    loops.push(tokio::spawn(prebuild_metrics(
        handles.clone(),
        metrics_cache,
        published.clone(),
    )));
    loops.extend(scrapers.into_iter().zip(&handles).zip(poll_beats).map(
        |((scraper, handle), beat)| {
            tokio::spawn(poll_loop(PollLoop {
                published: published.clone(),
                handle: handle.clone(),
                beat,
                scraper,
                params,
                engine: engine.clone(),
                scaling: scaling.clone(),
                probes: probes
                    .iter()
                    .filter(|p| p.config.cluster == handle.name)
                    .cloned()
                    .collect(),
                fault,
            }))
        },
    ));

    wait_for_shutdown(hup, reloader.clone()).await;
    info!("shutting down");
    // Loops stop beating from here on; that is not a stuck loop.
    stopping.store(true, std::sync::atomic::Ordering::Relaxed);
    for l in &loops {
        l.abort();
    }
    let _ = stop_tx.send(true);
    // What the last cycles changed is committed before the process ends (the writer keeps a write
    // the store refuses; a disk that stays down loses nothing the next start cannot re-derive).
    if tokio::time::timeout(Duration::from_secs(5), engine.flush())
        .await
        .is_err()
    {
        warn!("alert state not yet committed at shutdown; the next start re-plans from the store");
    }
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
    info!(config = %path.display(), rules, "config reloaded (rules, routes, inhibitions); cluster, receiver, scaler, server and state changes need a restart");
    Ok(format!(
        "reloaded {rules} rule(s); cluster, receiver, scaler, server and state changes need a restart\n"
    ))
}

/// Until SIGTERM or Ctrl-C; every SIGHUP (one received during start-up included) reloads.
async fn wait_for_shutdown(
    mut hup: tokio::signal::unix::Signal,
    reload: Arc<dyn Fn() -> Result<String, String> + Send + Sync>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return,
            _ = term.recv() => return,
            _ = hup.recv() => {
                // Reading and validating the files is disk I/O: off the async threads.
                let reload = reload.clone();
                let _ = tokio::task::spawn_blocking(move || reload()).await;
            }
        }
    }
}

/// For `RABBITWATCH_FAULT=block-runtime`: what blocking code on an async worker does.
fn block_this_thread_forever() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// One log event for each thing a cycle has to say (see `CycleEvent`).
fn log_cycle_event(event: CycleEvent) {
    match event {
        CycleEvent::Reachable { queues, version } => {
            info!(queues, version = %version, "cluster reachable")
        }
        CycleEvent::DepthOnly {
            source: Source::Management,
        } => warn!(
            "broker keeps no message statistics (disable_stats or rates_mode none): depth-only analysis, rates unknown"
        ),
        CycleEvent::DepthOnly {
            source: Source::Prometheus,
        } => warn!(
            "no per-queue message counters from the Prometheus plugin (RabbitMQ 3.x's lists none; on 4.x, management.rates_mode = none stops channels counting): depth-only analysis, rates unknown"
        ),
        CycleEvent::Source {
            source,
            reason: None,
        } => info!(
            source = source.as_str(),
            "reading queue figures from this source"
        ),
        CycleEvent::Source {
            source,
            reason: Some(reason),
        } => warn!(
            source = source.as_str(),
            reason = %reason,
            "source auto: reading the management API instead of the Prometheus plugin"
        ),
        CycleEvent::Truncated { watched, dropped } => warn!(
            watched,
            dropped, "more queues than max_queues: watching those with the largest backlog"
        ),
        CycleEvent::StatsPending { pending, listed } => warn!(
            stats_pending = pending,
            listed,
            "broker lists queues without statistics (a node starting, or management_agent.disable_metrics_collector): their last known figures are shown, queues never seen with figures are left out"
        ),
        CycleEvent::Failed { reason, error } => {
            warn!(reason = reason.as_str(), error = %error, "scrape failed; keeping history, no samples this cycle")
        }
        CycleEvent::TopologyUnreadable { error } => warn!(
            error = %error,
            "cannot read the dead-letter topology (exchanges and bindings): is_dead_letter_target is unknown until it can"
        ),
        CycleEvent::StreamsUnreadable { error } => warn!(
            error = %error,
            "cannot read the stream consumers: every stream reader's lag is unknown until they can"
        ),
        CycleEvent::Overran { took, skipped } => warn!(
            took_ms = took.as_millis() as u64,
            skipped, "scrape took longer than poll_interval; skipping ticks"
        ),
    }
}

/// Builds `/metrics`' gzip block of each published cycle ahead of the next scrape (see
/// `QueueCache::prebuild`). Publications during a build coalesce into one more build after it.
async fn prebuild_metrics(
    clusters: Vec<Arc<ClusterHandle>>,
    cache: Arc<crate::export::QueueCache>,
    published: Arc<tokio::sync::Notify>,
) {
    loop {
        published.notified().await;
        let views: Vec<_> = clusters.iter().map(|c| c.view.load_full()).collect();
        let cache = cache.clone();
        let _ = tokio::task::spawn_blocking(move || cache.prebuild(&views, Timestamp::now())).await;
    }
}

/// One cluster's poll loop and everything its cycles feed.
struct PollLoop {
    handle: Arc<ClusterHandle>,
    /// Told each time a cycle's view is published (`prebuild_metrics`).
    published: Arc<tokio::sync::Notify>,
    beat: Arc<Beat>,
    scraper: Scraper,
    params: Params,
    engine: Arc<Engine>,
    scaling: Arc<Scaling>,
    /// The cluster's canaries: each cycle's view carries their latest samples.
    probes: Vec<Arc<Probe>>,
    fault: Fault,
}

/// One cluster's loop: scrape, fold into history, publish the view. Cycles never overlap: a cycle
/// longer than the interval makes the loop skip (and count) the ticks it overran.
async fn poll_loop(l: PollLoop) {
    let PollLoop {
        published,
        handle,
        beat,
        scraper,
        params,
        engine,
        scaling,
        probes,
        fault,
    } = l;
    let cfg = scraper.config().clone();
    let poll = cfg.poll_interval;
    let mut tracker = Tracker::new(&cfg.name, params);
    let mut cycle: u64 = 0;
    loop {
        cycle += 1;
        // Every log line of this cycle carries the cluster and the cycle number.
        let span = tracing::info_span!("cycle", cluster = %cfg.name, cycle);
        let started = Instant::now();
        let progress = || beat.mark(Timestamp::now());
        // Every request has its own timeout; the cycle as a whole has a deadline too, so nothing a
        // broker (or a bug in a request path) does can keep the loop from its next cycle.
        let scrape = async {
            if fault.is(Fault::HangScrape) {
                std::future::pending::<()>().await;
            }
            scraper.scrape(Timestamp::now, &progress).await
        };
        let result = match tokio::time::timeout(cfg.cycle_timeout, scrape)
            .instrument(span.clone())
            .await
        {
            Ok(result) => result,
            Err(_) => Err(crate::scrape::ScrapeError::CycleDeadline {
                limit: cfg.cycle_timeout,
            }),
        };
        let next = {
            let _entered = span.enter();
            let elapsed = started.elapsed();
            let now = Timestamp::now();
            let prev = handle.view.load_full();
            let (mut view, events) = tracker.next_view(&prev, result, elapsed, now);
            for event in events {
                log_cycle_event(event);
            }
            if !probes.is_empty() {
                view.probes = Arc::new(probes.iter().map(|p| (*p.sample()).clone()).collect());
            }
            let skipped = (view.skipped_total - prev.skipped_total) as u32;
            let view = Arc::new(view);
            handle.view.store(view.clone());
            engine.on_cycle(&view, now);
            scaling.on_cycle(&view, now, &engine);
            // The view this one replaced lends its buffers to the next cycle, as do the samples.
            tracker.recycle(prev);
            scraper.recycle_samples(tracker.take_spare_samples());
            beat.mark(now);
            // ±5% jitter keeps many daemons (or clusters) from polling in lockstep.
            let jitter = poll.mul_f64(0.1 * fastrand::f64());
            started + poll * (skipped + 1) + jitter - poll.mul_f64(0.05)
        };
        // After the previous view is dropped, so its queues are not held while /metrics is built.
        published.notify_one();
        if fault.is(Fault::StallPollLoop) {
            warn!(cluster = %cfg.name, "RABBITWATCH_FAULT=stall-poll-loop: this poll loop now hangs");
            std::future::pending::<()>().await;
        }
        // From the third cycle, so the daemon is seen healthy first.
        if fault.is(Fault::BlockRuntime) && cycle >= 3 {
            warn!("RABBITWATCH_FAULT=block-runtime: blocking every async worker thread");
            let workers = tokio::runtime::Handle::current().metrics().num_workers();
            for _ in 1..workers {
                tokio::spawn(async { block_this_thread_forever() });
            }
            block_this_thread_forever();
        }
        tokio::time::sleep_until(next.into()).await;
    }
}
