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
