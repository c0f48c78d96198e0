//! The command line's manners, as a new user meets them: output piped into `head` ends quietly.

use std::fs::File;
use std::io::{Read, Seek};
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::Command;
use tokio::time::timeout;

use crate::util::{
    Daemon, TestVhost, Tuning, config_for, declare_queues, eventually, free_port, run_cli,
};

/// The config `Daemon::start` writes into its directory.
const CONFIG: &str = "rabbitwatch.yaml";
/// How long a command that talks to a local daemon may take.
const COMMAND_DEADLINE: Duration = Duration::from_secs(30);
/// A Linux pipe holds 64 KiB by default; `head` reads a few KiB more before it exits.
const PIPE_BYTES: usize = 64 * 1024;

/// The binary as a user starts it: default log settings, whatever the test runner's environment says.
fn rabbitwatch() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rabbitwatch"));
    command
        .env_remove("RUST_LOG")
        .env_remove("RABBITWATCH_LOG")
        .env_remove("RABBITWATCH_LOG_FORMAT")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

/// A file for a child's stderr, and a handle to read it back afterwards.
fn stderr_file() -> (File, File) {
    let file = tempfile::tempfile().expect("a temp file for stderr");
    let child_end = file.try_clone().expect("cloning the stderr file");
    (file, child_end)
}

fn read_back(mut file: File) -> String {
    let mut text = String::new();
    file.rewind().expect("rewinding the stderr file");
    file.read_to_string(&mut text)
        .expect("reading the stderr file");
    text
}

async fn wait(child: &mut tokio::process::Child, what: &str) -> ExitStatus {
    timeout(COMMAND_DEADLINE, child.wait())
        .await
        .unwrap_or_else(|_| panic!("{what} was still running after {COMMAND_DEADLINE:?}"))
        .unwrap_or_else(|e| panic!("waiting for {what}: {e}"))
}

/// `rabbitwatch ARGS | head -n LINES`, run in `dir` as a shell would: rabbitwatch's exit status and
/// stderr, and what `head` printed.
async fn piped_into_head(args: &[&str], dir: &Path, lines: usize) -> (ExitStatus, String, String) {
    let what = format!("rabbitwatch {}", args.join(" "));
    let (reader, writer) = std::io::pipe().expect("a pipe");
    let (stderr, child_stderr) = stderr_file();
    // Each Command is dropped at the end of its statement, and with it this process's copy of its
    // end of the pipe: once `head` exits, nobody reads any more, as in a shell.
    let mut producer = rabbitwatch()
        .args(args)
        .current_dir(dir)
        .stdout(writer)
        .stderr(child_stderr)
        .spawn()
        .expect("spawning rabbitwatch");
    let head = Command::new("head")
        .args(["-n", &lines.to_string()])
        .stdin(reader)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawning head");
    let head = timeout(COMMAND_DEADLINE, head.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("head was still running after {COMMAND_DEADLINE:?}"))
        .expect("waiting for head");
    let status = wait(&mut producer, &what).await;
    (
        status,
        read_back(stderr),
        String::from_utf8_lossy(&head.stdout).into_owned(),
    )
}

/// `rabbitwatch ARGS` in `dir` with stdout a pipe nobody reads any more (the reader exited before
/// the first line): its exit status and stderr.
async fn reader_gone(args: &[&str], dir: &Path) -> (ExitStatus, String) {
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let (stderr, child_stderr) = stderr_file();
    let mut child = rabbitwatch()
        .args(args)
        .current_dir(dir)
        .stdout(writer)
        .stderr(child_stderr)
        .spawn()
        .expect("spawning rabbitwatch");
    let status = wait(&mut child, &format!("rabbitwatch {}", args.join(" "))).await;
    (status, read_back(stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_piped_into_head_ends_quietly_with_exit_0() {
    const QUEUES: usize = 1000;
    let vhost = TestVhost::create().await;
    // Long names make a table several pipes long: `head` has its lines and is gone while rabbitwatch
    // still writes, and rabbitwatch meets a broken pipe.
    let queues: Vec<String> = (0..QUEUES)
        .map(|i| format!("{}-{i:04}", "q".repeat(240)))
        .collect();
    declare_queues(&vhost.amqp_url(), &queues).await;
    let daemon = Daemon::start(&config_for(vhost.name(), free_port(), &Tuning::default())).await;
    eventually(
        Duration::from_secs(60),
        "the daemon to list every queue",
        async || {
            let (_, body) = daemon.get_json("/api/v1/queues").await?;
            match body["queues"].as_array().map(Vec::len) {
                Some(QUEUES) => Ok(()),
                n => Err(format!("{n:?} of {QUEUES} queues listed")),
            }
        },
    )
    .await;
    let whole = run_cli(&["status", "--config", CONFIG], daemon.dir());
    assert!(
        whole.status.success() && whole.stdout.len() > 4 * PIPE_BYTES,
        "the whole table ({} bytes, {}) should be well past what a pipe and head hold: {}",
        whole.stdout.len(),
        whole.status,
        String::from_utf8_lossy(&whole.stderr)
    );

    let watch = [
        "status",
        "--config",
        CONFIG,
        "--watch",
        "--interval",
        "100ms",
    ];
    let mut loud = Vec::new();
    for args in [&["status", "--config", CONFIG][..], &watch] {
        let (status, stderr, head) = piped_into_head(args, daemon.dir(), 3).await;
        assert!(
            head.lines().count() == 3 && head.contains("CLUSTER"),
            "head printed:\n{head}"
        );
        if status.code() != Some(0) || !stderr.is_empty() {
            loud.push(format!(
                "{args:?} | head -n 3: rabbitwatch exited {status}; stderr:\n{stderr}"
            ));
        }
    }
    assert!(loud.is_empty(), "{}", loud.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_printing_subcommand_ends_quietly_when_its_reader_is_gone() {
    let vhost = TestVhost::create().await;
    let config = config_for(vhost.name(), free_port(), &Tuning::default())
        + "receivers:\n  - name: file\n    log: { path: notifications.jsonl }\nroute: { receiver: file }\n";
    let daemon = Daemon::start(&config).await;
    let rules = concat!(env!("CARGO_MANIFEST_DIR"), "/rules/tests/queue-health.yaml");
    let commands: [&[&str]; 8] = [
        &["check", "--config", CONFIG],
        &["test", "rules", rules],
        &["status", "--config", CONFIG],
        &["status", "--config", CONFIG, "--watch"],
        &[
            "silence",
            "add",
            "--config",
            CONFIG,
            "-m",
            "alertname=Quiet",
        ],
        &["silence", "list", "--config", CONFIG],
        &["deadletters", "list", "--config", CONFIG],
        &["notify", "test", "--receiver", "file", "--config", CONFIG],
    ];
    let mut loud = Vec::new();
    for args in commands {
        let (status, stderr) = reader_gone(args, daemon.dir()).await;
        if status.code() != Some(0) || !stderr.is_empty() {
            loud.push(format!("{args:?} exited {status}; stderr:\n{stderr}"));
        }
    }
    assert!(loud.is_empty(), "{}", loud.join("\n"));
    // The commands did their work; only their report went unread.
    let (_, silences) = daemon
        .get_json("/api/v1/silences")
        .await
        .expect("listing silences");
    assert!(
        silences.to_string().contains("alertname=Quiet"),
        "{silences}"
    );
    let delivered = std::fs::read_to_string(daemon.dir().join("notifications.jsonl"))
        .expect("notify test wrote to the log receiver's file");
    assert!(
        delivered.contains("RabbitwatchTestNotification"),
        "{delivered}"
    );
}
