//! The `semtap` binary as a child process: JSON log lines collected as they come, found by
//! message; killed when dropped.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_semtap");

pub struct Proc {
    pub child: Child,
    pub lines: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    pub fn spawn(args: &[&str], envs: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env_remove("RUST_LOG");
        // Off unless a test turns it on (it would distil the real model's table).
        if !envs.iter().any(|(k, _)| *k == "SEMTAP_SEMANTIC") {
            cmd.env("SEMTAP_SEMANTIC", "off");
        }
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn semtap");
        let lines = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    lines.lock().expect("lines").push(line);
                }
            });
        }
        Proc { child, lines }
    }

    /// `semtap run --config FILE` with JSON logs at trace level (everything a leak could be in).
    pub fn run_config(cfg: &std::path::Path, envs: &[(&str, &str)]) -> Proc {
        let cfg = cfg.to_str().expect("utf8 path");
        Proc::spawn(
            &[
                "run",
                "--config",
                cfg,
                "--log-format",
                "json",
                "--log-level",
                "trace",
            ],
            envs,
        )
    }

    /// `semtap run` from flags alone: a loopback listener (free port) in front of `upstream`, a
    /// loopback admin server and JSON logs; `extra` arguments appended.
    pub fn run_flags(upstream: &str, extra: &[&str], envs: &[(&str, &str)]) -> Proc {
        let mut args = vec![
            "run",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            upstream,
            "--admin",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ];
        args.extend_from_slice(extra);
        Proc::spawn(&args, envs)
    }

    /// Waits for a JSON log line whose message is `msg` and returns it.
    pub fn wait_log(&self, msg: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for l in self.lines.lock().expect("lines").iter() {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(l) {
                    if v["fields"]["message"] == msg {
                        return v;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "no `{msg}` log line; got: {:?}",
                self.lines.lock().expect("lines")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no shutdown path runs, as in a crash or an OOM kill.
    pub fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn output(&self) -> String {
        self.lines.lock().expect("lines").join("\n")
    }

    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "semtap did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn addr_of(v: &serde_json::Value) -> String {
    v["fields"]["addr"]
        .as_str()
        .expect("addr field")
        .to_string()
}
