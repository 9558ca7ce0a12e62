//! Runs an outside program (Compose, a `healthcheck.sh`) the way the agent
//! needs it: in its own process group, killed with everything it started
//! when it outlives its timeout, its output (stdout and stderr, as they
//! interleave) kept to a bounded tail.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt};

/// How much output is kept: the tail, where the error usually is.
pub const OUTPUT_LIMIT: usize = 8 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// `None` when it was killed (timeout) or died of a signal.
    pub code: Option<i32>,
    pub timed_out: bool,
    /// The last [`OUTPUT_LIMIT`] bytes of its output, lossily UTF-8.
    pub output: String,
    pub duration: Duration,
}

impl Finished {
    pub fn ok(&self) -> bool {
        self.code == Some(0) && !self.timed_out
    }

    /// At most the last `max` bytes of its output, cut at a character.
    pub fn tail(&self, max: usize) -> &str {
        let mut start = self.output.len().saturating_sub(max);
        while !self.output.is_char_boundary(start) {
            start += 1;
        }
        &self.output[start..]
    }

    /// Its last non-empty line of output: the usual one-line reason.
    pub fn last_line(&self) -> &str {
        self.output
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("")
    }
}

/// Output kept to its last `limit` bytes, counting what was cut.
#[derive(Debug, Default)]
pub struct Tail {
    kept: Vec<u8>,
    cut: usize,
    limit: usize,
}

impl Tail {
    pub fn new(limit: usize) -> Tail {
        Tail {
            kept: Vec::new(),
            cut: 0,
            limit,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.kept.extend_from_slice(bytes);
        if self.kept.len() > self.limit {
            let over = self.kept.len() - self.limit;
            self.kept.drain(..over);
            self.cut += over;
        }
    }

    pub fn text(&self) -> String {
        let body = String::from_utf8_lossy(&self.kept);
        match self.cut {
            0 => body.into_owned(),
            cut => format!("[… {cut} bytes of output cut]\n{body}"),
        }
    }
}

/// Runs `program args` in `dir` with `env` added, for at most `timeout`.
/// Its stdin is closed. Fails only when it cannot be started.
pub async fn run(
    program: &str,
    args: &[String],
    dir: &Path,
    env: &[(&str, &str)],
    timeout: Duration,
) -> std::io::Result<Finished> {
    let started = Instant::now();
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn()?;
    let pid = child.id();
    // Dropped mid-run (its task aborted): the whole group goes too.
    let _group = Group(pid);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    let readers = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn AsyncRead + Send + Unpin>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn AsyncRead + Send + Unpin>),
    ];
    for mut reader in readers.into_iter().flatten() {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = reader.read(&mut buf).await {
                if n == 0 || tx.send(buf[..n].to_vec()).await.is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let mut tail = Tail::new(OUTPUT_LIMIT);
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut timed_out = false;
    let mut open = true;
    let status = loop {
        tokio::select! {
            chunk = rx.recv(), if open => match chunk {
                Some(chunk) => tail.push(&chunk),
                None => open = false,
            },
            status = child.wait() => break status?,
            _ = &mut deadline, if !timed_out => {
                timed_out = true;
                kill_group(pid);
            }
        }
    };
    // Whatever it started may still hold the pipes: take what is there,
    // briefly, and kill the rest of the group.
    kill_group(pid);
    let drain = async {
        while let Some(chunk) = rx.recv().await {
            tail.push(&chunk);
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(500), drain).await;
    Ok(Finished {
        code: if timed_out { None } else { status.code() },
        timed_out,
        output: tail.text(),
        duration: started.elapsed(),
    })
}

struct Group(Option<u32>);

impl Drop for Group {
    fn drop(&mut self) {
        kill_group(self.0);
    }
}

fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        // SAFETY: kill(2) with a negative pid signals that process group,
        // which the child leads (process_group(0)); no memory is touched.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_end_and_counts_the_cut() {
        let cases: &[(&[&str], usize, &str)] = &[
            (&["abc"], 8, "abc"),
            (&["abcd", "efgh"], 8, "abcdefgh"),
            (
                &["abcd", "efghij"],
                8,
                "[… 2 bytes of output cut]\ncdefghij",
            ),
            (
                &["xxxxxxxxxxxxxxxxxxxx"],
                4,
                "[… 16 bytes of output cut]\nxxxx",
            ),
            (&[], 8, ""),
        ];
        for (chunks, limit, want) in cases {
            let mut tail = Tail::new(*limit);
            for chunk in *chunks {
                tail.push(chunk.as_bytes());
            }
            assert_eq!(tail.text(), *want, "{chunks:?}");
        }
    }

    #[test]
    fn tail_of_the_output_cuts_at_a_character() {
        let done = |output: &str| Finished {
            code: Some(0),
            timed_out: false,
            output: output.into(),
            duration: Duration::ZERO,
        };
        let cases = [
            ("abcdef", 3, "def"),
            ("ab", 5, "ab"),
            ("xé!", 2, "!"),
            ("xé!", 3, "é!"),
            ("", 4, ""),
        ];
        for (output, max, want) in cases {
            assert_eq!(done(output).tail(max), want, "{output} {max}");
        }
    }

    fn sh(script: &str) -> Vec<String> {
        vec!["-c".into(), script.into()]
    }

    #[tokio::test]
    async fn exit_code_output_and_a_timeout_that_kills_the_group() {
        let dir = std::env::temp_dir();
        let done = run(
            "sh",
            &sh("echo out; echo err >&2; exit 3"),
            &dir,
            &[],
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        assert_eq!(done.code, Some(3));
        assert!(!done.ok() && !done.timed_out);
        assert!(
            done.output.contains("out") && done.output.contains("err"),
            "{done:?}"
        );

        let env = run(
            "sh",
            &sh("echo $HOMELAB_SERVICE"),
            &dir,
            &[("HOMELAB_SERVICE", "npm")],
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        assert!(env.ok());
        assert_eq!(env.last_line(), "npm");

        // A script whose child keeps the pipe open: both are killed at the
        // timeout, and what it said before is kept.
        let scratch = tempfile::tempdir().unwrap();
        let pidfile = scratch.path().join("pid");
        let script = format!(
            "sleep 300 & echo $! > {}; echo started; wait",
            pidfile.display()
        );
        let hung = run("sh", &sh(&script), &dir, &[], Duration::from_millis(300))
            .await
            .unwrap();
        assert!(hung.timed_out && hung.code.is_none() && !hung.ok());
        assert_eq!(hung.last_line(), "started");
        let pid = std::fs::read_to_string(&pidfile).unwrap();
        let stat = format!("/proc/{}/stat", pid.trim());
        // Gone, or a zombie waiting to be reaped: not sleeping on.
        let mut alive = true;
        for _ in 0..100 {
            alive = std::fs::read_to_string(&stat).is_ok_and(|s| {
                !s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            });
            if !alive {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(!alive, "the script's child outlived the timeout");

        assert!(run(
            "/nonexistent/program",
            &[],
            &dir,
            &[],
            Duration::from_secs(1)
        )
        .await
        .is_err());
    }
}
