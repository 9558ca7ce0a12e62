//! What the process-level tests of this crate share: ports for programs
//! that bind their own, and children killed when the test ends.

#![allow(dead_code)] // each test binary uses its own part of it

use std::process::Child;
use std::sync::atomic::{AtomicU16, Ordering};

/// Ports for programs that run as child processes and so cannot be
/// handed a bound socket. Taken from a range below the kernel's ephemeral
/// ports, one process-wide counter, so two labs running at once never pick
/// the same port (a port from `bind(0)` is free again once released, and a
/// parallel test could be handed it before our child binds it).
pub fn free_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 500) as u16 * 20;
    loop {
        let port = base + NEXT.fetch_add(1, Ordering::SeqCst) % 10_000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A child process, killed (SIGKILL) when dropped.
pub struct Proc(pub Child);

impl Proc {
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.0.id() as i32, signal) };
    }

    /// SIGTERM, then waits for it to end (SIGKILL after 20 s).
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.0.kill();
                return self.0.wait().unwrap();
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // A stopped (SIGSTOP) child must go too.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `GET path` on loopback `port`: the status and the body, or None when
/// nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let status = answer.get(9..12)?.parse().ok()?;
    let body = answer.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

/// The body of a 200 answer to `GET path`.
pub fn get_ok(port: u16, path: &str) -> Option<String> {
    http_get(port, path).and_then(|(status, body)| (status == 200).then_some(body))
}

/// Whether the page at `port` answers `/healthz`.
pub fn healthy(port: u16) -> bool {
    get_ok(port, "/healthz").is_some()
}

/// A folder and everything in it, copied.
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A command's stdout, stderr and whether it succeeded (false when it
/// could not start, with why in stderr).
pub fn run(command: &mut std::process::Command) -> (String, String, bool) {
    match command.output() {
        Ok(out) => (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            out.status.success(),
        ),
        Err(error) => (String::new(), error.to_string(), false),
    }
}

/// `homelab up` without a local agent on loopback ports `(mqtt, http)`,
/// keeping its event log as it is (no compression or removal by age), so
/// a fixture's old days stay as they were written.
pub fn up_command(
    root: &std::path::Path,
    repo: &std::path::Path,
    (mqtt, http): (u16, u16),
) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_homelab"));
    command
        .args([
            "up",
            "--no-agent",
            "--retention",
            "3650d",
            "--compress-after",
            "3650d",
        ])
        .args(["--mqtt", &format!("127.0.0.1:{mqtt}")])
        .args(["--http", &format!("127.0.0.1:{http}")])
        .arg("--root")
        .arg(root)
        .arg("--repo")
        .arg(repo)
        .stdout(std::process::Stdio::null());
    command
}
