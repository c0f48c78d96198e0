//! The command line's manners, as a new user meets them: output piped into `head` ends quietly, and
//! logs carry colour codes only where a person watches them on a terminal.

use std::fs::File;
use std::io::{Read, Seek};
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::Command;
use tokio::time::timeout;

use crate::util::{
    Daemon, TestVhost, Tuning, cluster_yaml, config_for, config_with_clusters, declare_queues,
    eventually, free_port, run_cli,
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
async fn status_watch_into_a_pipe_appends_tables_without_screen_clearing_codes() {
    let vhost = TestVhost::create().await;
    let daemon = Daemon::start(&config_for(vhost.name(), free_port(), &Tuning::default())).await;
    let watch = [
        "status",
        "--config",
        CONFIG,
        "--watch",
        "--interval",
        "100ms",
    ];
    // An empty vhost: each table is the header, "(no queues watched yet)" and a blank line.
    let (status, stderr, head) = piped_into_head(&watch, daemon.dir(), 9).await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(
        !head.contains('\u{1b}'),
        "escape codes into a pipe: {head:?}"
    );
    assert_eq!(head.matches("CLUSTER").count(), 3, "{head}");
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

/// `rabbitwatch run` as the test harness runs it, stderr appended to a file, with `env`; returns once
/// it has logged that it serves, with everything it logged so far.
async fn logs_of_a_daemon(vhost: &TestVhost, env: &[(&str, &str)]) -> String {
    let config = config_for(vhost.name(), free_port(), &Tuning::default());
    let daemon = Daemon::start_with_env(&config, &[], env).await;
    eventually(
        Duration::from_secs(30),
        "the daemon to log that it serves",
        async || {
            let logs = daemon.logs();
            logs.contains("serving /metrics")
                .then_some(logs)
                .ok_or_else(|| "not yet".to_owned())
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_logs_written_to_a_file_carry_no_colour_codes() {
    let vhost = TestVhost::create().await;
    // The harness sets NO_COLOR=1 for every daemon; an empty NO_COLOR counts as unset (no-color.org).
    let cases: [(&str, &[(&str, &str)]); 3] = [
        ("text logs", &[("NO_COLOR", "")]),
        (
            "JSON logs",
            &[("NO_COLOR", ""), ("RABBITWATCH_LOG_FORMAT", "json")],
        ),
        ("text logs with NO_COLOR=1", &[("NO_COLOR", "1")]),
    ];
    let mut coloured = Vec::new();
    for (what, env) in cases {
        let logs = logs_of_a_daemon(&vhost, env).await;
        if logs.contains('\u{1b}') {
            coloured.push(format!("{what} in a file carry escape codes:\n{logs}"));
        }
    }
    assert!(coloured.is_empty(), "{}", coloured.join("\n"));
}

/// Logs on a terminal keep their colours (a person is reading them), unless NO_COLOR says otherwise.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_on_a_terminal_are_coloured_unless_no_color_is_set() {
    // A cluster nobody listens for: `run` logs a failed start-up check (a WARN, yellow on a
    // terminal) and exits by itself, which closes the terminal and ends the reading.
    let tuning = Tuning::default();
    let config = config_with_clusters(
        free_port(),
        &tuning,
        &[cluster_yaml("gone", "http://127.0.0.1:1", "v", &tuning)],
    );
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join(CONFIG), config).expect("writing the config");
    for (no_color, want_colour) in [(None, true), (Some("1"), false)] {
        let terminal = pty::Pty::open();
        let mut command = rabbitwatch();
        command
            .args(["run", "--config", CONFIG])
            .current_dir(dir.path())
            .env_remove("NO_COLOR")
            .stdout(Stdio::null())
            .stderr(terminal.follower());
        if let Some(value) = no_color {
            command.env("NO_COLOR", value);
        }
        let mut child = command.spawn().expect("spawning rabbitwatch run");
        drop(command); // its copy of the terminal's follower side
        let reading = tokio::task::spawn_blocking(move || terminal.read_until_closed());
        let status = wait(&mut child, "rabbitwatch run").await;
        let seen = timeout(COMMAND_DEADLINE, reading)
            .await
            .expect("the terminal to close once rabbitwatch exited")
            .expect("reading the terminal");
        assert_eq!(status.code(), Some(1), "{seen}");
        assert!(seen.contains("start-up check failed"), "{seen}");
        assert_eq!(
            seen.contains('\u{1b}'),
            want_colour,
            "NO_COLOR={no_color:?}: colour on the terminal should be {want_colour}:\n{seen:?}"
        );
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod pty {
    use std::ffi::CStr;
    use std::fs::{File, OpenOptions};
    use std::io::{self, Read};
    use std::os::fd::FromRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    use std::process::Stdio;

    /// A pseudo-terminal: a child writes to the follower side as it would to a terminal, the test
    /// reads what it wrote from the leader side.
    pub struct Pty {
        leader: File,
        follower: File,
    }

    impl Pty {
        pub fn open() -> Pty {
            // SAFETY: plain libc calls on a descriptor this function owns from posix_openpt on;
            // ptsname_r writes a NUL-terminated name into the buffer it is given, of the size given.
            let (leader, name) = unsafe {
                let fd = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
                assert!(fd >= 0, "posix_openpt: {}", io::Error::last_os_error());
                let leader = File::from_raw_fd(fd);
                assert_eq!(
                    libc::grantpt(fd),
                    0,
                    "grantpt: {}",
                    io::Error::last_os_error()
                );
                assert_eq!(
                    libc::unlockpt(fd),
                    0,
                    "unlockpt: {}",
                    io::Error::last_os_error()
                );
                let mut name = [0 as libc::c_char; 128];
                let rc = libc::ptsname_r(fd, name.as_mut_ptr(), name.len());
                assert_eq!(rc, 0, "ptsname_r: {}", io::Error::from_raw_os_error(rc));
                let name = CStr::from_ptr(name.as_ptr()).to_string_lossy().into_owned();
                (leader, name)
            };
            let follower = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NOCTTY)
                .open(&name)
                .unwrap_or_else(|e| panic!("opening the terminal {name}: {e}"));
            Pty { leader, follower }
        }

        /// The follower side, for a child's stdout or stderr.
        pub fn follower(&self) -> Stdio {
            self.follower
                .try_clone()
                .expect("duplicating the terminal's follower side")
                .into()
        }

        /// Everything written to the terminal until its last writer closed it.
        pub fn read_until_closed(self) -> String {
            let Pty {
                mut leader,
                follower,
            } = self;
            drop(follower);
            let mut seen = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                match leader.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => seen.extend_from_slice(&chunk[..n]),
                    // Linux answers EIO once no one holds the follower side open.
                    Err(e) if e.raw_os_error() == Some(libc::EIO) => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => panic!("reading the terminal: {e}"),
                }
            }
            String::from_utf8_lossy(&seen).into_owned()
        }
    }
}
