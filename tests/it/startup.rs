//! Start-up checks and the dead-man's switch: the daemon checks its dependencies before it starts,
//! refuses to start when `startup.require` says so (listing every failed check and what to do), and
//! pings a heartbeat URL while it is healthy.

use std::time::Duration;

use crate::util::{
    Daemon, TestVhost, Tuning, cluster_yaml, config_with_clusters, eventually, free_port,
    http_client, management_url, run_cli,
};
use crate::util_slack::FakeHttp;

fn run_to_exit(config: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("rw.yaml");
    std::fs::write(&path, config).expect("writing the config");
    let out = run_cli(
        &["run", "--config", path.to_str().expect("utf-8 path")],
        dir.path(),
    );
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn no_reachable_cluster_refuses_to_start_and_says_why() {
    let tuning = Tuning::default();
    let config = config_with_clusters(
        free_port(),
        &tuning,
        &[cluster_yaml("gone", "http://127.0.0.1:1", "v", &tuning)],
    );
    let (code, stderr) = run_to_exit(&config);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("start-up checks failed (startup.require: any)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("cluster gone: cannot connect")
            && stderr.contains("rabbitmq-plugins enable rabbitmq_management"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_none_starts_anyway_and_reports_the_cluster_down() {
    let tuning = Tuning::default();
    let config = config_with_clusters(
        free_port(),
        &tuning,
        &[cluster_yaml("gone", "http://127.0.0.1:1", "v", &tuning)],
    ) + "startup: { require: none }\n";
    let daemon = Daemon::start(&config).await;
    eventually(
        Duration::from_secs(15),
        "rabbitwatch_up{cluster=gone} 0",
        async || {
            let m = daemon.metrics().await?;
            crate::util::find(&m, "rabbitwatch_up", &[("cluster", "gone")])
                .filter(|v| *v == 0.0)
                .ok_or("not yet".to_string())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_management_only_user_fails_the_start_up_check_with_the_fix() {
    // A `management` user can log in but sees only its own vhosts and no nodes: numbers that look
    // complete and are not.
    let vhost = TestVhost::create().await;
    let user = format!("{}-user", vhost.name());
    let http = http_client();
    let put = |path: String, body: serde_json::Value| {
        http.put(format!("{}{path}", management_url()))
            .basic_auth("guest", Some("guest"))
            .json(&body)
            .send()
    };
    put(
        format!("/api/users/{user}"),
        serde_json::json!({"password": "pw", "tags": "management"}),
    )
    .await
    .expect("creating a user")
    .error_for_status()
    .expect("user created");
    let tuning = Tuning::default();
    let config = config_with_clusters(
        free_port(),
        &tuning,
        &[cluster_yaml(
            "local",
            management_url(),
            vhost.name(),
            &tuning,
        )],
    )
    .replace("username: guest", &format!("username: {user}"))
    .replace("password: guest", "password: pw")
        + "startup: { require: all }\n";
    let (code, stderr) = tokio::task::spawn_blocking(move || run_to_exit(&config))
        .await
        .expect("ran");
    let _ = http
        .delete(format!("{}/api/users/{user}", management_url()))
        .basic_auth("guest", Some("guest"))
        .send()
        .await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("rabbitmqctl set_user_tags"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_heartbeat_is_pinged_while_the_daemon_is_healthy() {
    let vhost = TestVhost::create().await;
    let receiver = FakeHttp::start().await;
    let tuning = Tuning::default();
    let config = config_with_clusters(
        free_port(),
        &tuning,
        &[cluster_yaml(
            "local",
            management_url(),
            vhost.name(),
            &tuning,
        )],
    ) + &format!(
        "heartbeat: {{ url: \"{}\", interval: 1s }}\n",
        receiver.url("/ping/abc")
    );
    let _daemon = Daemon::start(&config).await;
    eventually(
        Duration::from_secs(15),
        "at least three heartbeat pings",
        async || match receiver.requests_to("/ping/abc").len() {
            n if n >= 3 => Ok(()),
            n => Err(format!("{n} ping(s)")),
        },
    )
    .await;
}
