//! Background clients: commands left running while the test goes on, and interactive ones
//! fed line by line; each is killed and reaped when dropped.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::tools::{describe, text, wait_child};

/// Kills a child that is still running and waits for it: what every handle does when dropped.
pub(super) fn reap(child: Option<Child>) {
    if let Some(mut child) = child {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A client running in the background, its output going to files; killed when dropped.
#[derive(Debug)]
pub struct Background {
    child: Option<Child>,
    what: String,
    out: PathBuf,
    err: PathBuf,
}

impl Background {
    /// Starts `cmd`; its stdout and stderr go to `DIR/NAME.out` and `DIR/NAME.err`.
    pub fn spawn(cmd: &mut Command, dir: &Path, name: &str) -> Self {
        let out = dir.join(format!("{name}.out"));
        let err = dir.join(format!("{name}.err"));
        let what = describe(cmd);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(File::create(&out).expect("stdout file"))
            .stderr(File::create(&err).expect("stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
        Self {
            child: Some(child),
            what,
            out,
            err,
        }
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().expect("try_wait").is_none(),
            None => false,
        }
    }

    /// What it printed so far: stdout then stderr.
    pub fn output_so_far(&self) -> String {
        format!(
            "{}{}",
            fs::read_to_string(&self.out).unwrap_or_default(),
            fs::read_to_string(&self.err).unwrap_or_default()
        )
    }

    /// Waits for it to exit within `limit`.
    pub fn wait_within(mut self, limit: Duration) -> Output {
        let child = self.child.take().expect("running");
        let (status, _) = wait_child(child, limit);
        let stdout = fs::read(&self.out).unwrap_or_default();
        let stderr = fs::read(&self.err).unwrap_or_default();
        let Some(status) = status else {
            panic!(
                "{} did not finish within {limit:?}\nstdout: {}\nstderr: {}",
                self.what,
                text(&stdout),
                text(&stderr)
            );
        };
        Output {
            status,
            stdout,
            stderr,
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        reap(self.child.take());
    }
}

/// An interactive client: commands are written to its stdin, its output is collected as it
/// comes. Killed when dropped.
#[derive(Debug)]
pub struct Interactive {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    output: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

impl Interactive {
    pub fn spawn(cmd: &mut Command) -> Self {
        let what = describe(cmd);
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
        let output = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        let stdout: Box<dyn Read + Send> = Box::new(child.stdout.take().expect("stdout"));
        let stderr: Box<dyn Read + Send> = Box::new(child.stderr.take().expect("stderr"));
        for mut r in [stdout, stderr] {
            let sink = output.clone();
            readers.push(thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = r.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    sink.lock()
                        .expect("output lock")
                        .extend_from_slice(&buf[..n]);
                }
            }));
        }
        Self {
            stdin: child.stdin.take(),
            child: Some(child),
            output,
            readers,
        }
    }

    /// Sends one line.
    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .expect("write to the client's stdin");
        stdin.flush().expect("flush the client's stdin");
    }

    pub fn output(&self) -> String {
        text(&self.output.lock().expect("output lock"))
    }

    /// Waits until the output contains `needle` (at most 60 s).
    pub fn wait_for(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.output().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "the client did not print {needle:?} within 60 s; it printed:\n{}",
                self.output()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Closes stdin and waits for the client to exit; returns everything it printed.
    pub fn finish(mut self) -> (ExitStatus, String) {
        drop(self.stdin.take());
        let child = self.child.take().expect("running");
        let (status, _) = wait_child(child, Duration::from_secs(60));
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let status = status.unwrap_or_else(|| {
            panic!(
                "the client did not exit within 60 s; it printed:\n{}",
                self.output()
            )
        });
        (status, self.output())
    }
}

impl Drop for Interactive {
    fn drop(&mut self) {
        drop(self.stdin.take());
        reap(self.child.take());
    }
}
