//! The agent as a child process, with its log captured.
use std::{
    ffi::OsStr,
    io::{BufRead as _, BufReader},
    os::{
        fd::{AsRawFd as _, OwnedFd},
        unix::process::CommandExt as _,
    },
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::guard::Netns;

/// A running `lb-agent run`. Dropping it stops it with SIGTERM (SIGKILL after 3 s).
pub struct Agent {
    child: Mutex<Child>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Agent {
    /// Starts `lb-agent run --source FILE` and waits until it says it is ready; its log is echoed
    /// to stderr (captured by the test harness, shown when a test fails).
    pub fn start(source: &Path, cgroup: &Path, bpffs: &Path) -> anyhow::Result<Self> {
        Self::start_with(source, cgroup, bpffs, true)
    }

    /// As `start`, echoing the agent's log only when `echo` is set.
    pub fn start_with(source: &Path, cgroup: &Path, bpffs: &Path, echo: bool) -> anyhow::Result<Self> {
        let agent = Self::spawn(&[OsStr::new("--source"), source.as_os_str()], cgroup, bpffs, echo)?;
        agent.wait_for_log("agent ready", 1, Duration::from_secs(20))?;
        Ok(agent)
    }

    /// Starts `lb-agent run --source kubernetes --kubeconfig FILE [EXTRA…]` without waiting for it.
    pub fn spawn_kubernetes(
        kubeconfig: &Path,
        cgroup: &Path,
        bpffs: &Path,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let mut args = vec![
            OsStr::new("--source"),
            OsStr::new("kubernetes"),
            OsStr::new("--kubeconfig"),
            kubeconfig.as_os_str(),
        ];
        args.extend(extra.iter().map(OsStr::new));
        Self::spawn(&args, cgroup, bpffs, true)
    }

    /// As `spawn_kubernetes`, with `--min-sync-period PERIOD` (`spawn` passes 20ms) and the log
    /// echoed only when `echo` (the bench).
    pub fn spawn_kubernetes_with(
        kubeconfig: &Path,
        cgroup: &Path,
        bpffs: &Path,
        min_sync_period: &str,
        echo: bool,
    ) -> anyhow::Result<Self> {
        let args = [
            OsStr::new("--source"),
            OsStr::new("kubernetes"),
            OsStr::new("--kubeconfig"),
            kubeconfig.as_os_str(),
        ];
        Self::spawn_impl(None, "node-1", min_sync_period, &args, cgroup, bpffs, echo)
    }

    /// Starts `lb-agent run ARGS --cgroup C --bpffs B --node-name NODE` without waiting (an
    /// empty `NODE` names no node).
    pub fn spawn_named(
        args: &[&OsStr],
        cgroup: &Path,
        bpffs: &Path,
        node_name: &str,
        echo: bool,
    ) -> anyhow::Result<Self> {
        Self::spawn_impl(None, node_name, "20ms", args, cgroup, bpffs, echo)
    }

    /// Starts `lb-agent run ARGS --cgroup C --bpffs B --node-name node-1` without waiting.
    pub fn spawn(args: &[&OsStr], cgroup: &Path, bpffs: &Path, echo: bool) -> anyhow::Result<Self> {
        Self::spawn_named(args, cgroup, bpffs, "node-1", echo)
    }

    /// As `start_with`, but the agent runs inside `netns` as node `node_name`, with `EXTRA` flags
    /// after `--source FILE` (e.g. `--interfaces …`). Waits until it says it is ready; its log is
    /// echoed to stderr.
    pub fn start_in(
        netns: &Netns,
        source: &Path,
        cgroup: &Path,
        bpffs: &Path,
        node_name: &str,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let mut args = vec![OsStr::new("--source"), source.as_os_str()];
        args.extend(extra.iter().map(OsStr::new));
        let agent = Self::spawn_in(netns, &args, cgroup, bpffs, node_name, true)?;
        agent.wait_for_log("agent ready", 1, Duration::from_secs(20))?;
        Ok(agent)
    }

    /// Starts `lb-agent run ARGS --cgroup C --bpffs B --node-name NODE` inside `netns` without
    /// waiting. The child enters the namespace with `setns` before exec (not `ip netns exec`,
    /// which would remount /sys and hide bpffs); its mounts and cgroup stay the test's.
    pub fn spawn_in(
        netns: &Netns,
        args: &[&OsStr],
        cgroup: &Path,
        bpffs: &Path,
        node_name: &str,
        echo: bool,
    ) -> anyhow::Result<Self> {
        Self::spawn_impl(Some(netns.open()?), node_name, "20ms", args, cgroup, bpffs, echo)
    }

    fn spawn_impl(
        netns: Option<OwnedFd>,
        node_name: &str,
        min_sync_period: &str,
        args: &[&OsStr],
        cgroup: &Path,
        bpffs: &Path,
        echo: bool,
    ) -> anyhow::Result<Self> {
        let mut cmd = Command::new(crate::agent_bin());
        cmd.args(["run", "--node-name", node_name, "--min-sync-period", min_sync_period])
            .args(args)
            .arg("--cgroup")
            .arg(cgroup)
            .arg("--bpffs")
            .arg(bpffs)
            // Colour and backtraces are the agent's own choice (none in a pipe), not the harness's.
            .env_remove("NO_COLOR")
            .env("RUST_LOG", "info")
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(ns) = netns {
            // Safety: between fork and exec the closure only calls setns(2) (async-signal-safe)
            // on an fd opened before the fork, which the closure keeps alive.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn()?;
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if echo {
                    eprintln!("[agent] {line}");
                }
                sink.lock().expect("log lock").push(line);
            }
        });
        Ok(Self { child: Mutex::new(child), log })
    }

    pub fn pid(&self) -> u32 {
        self.child.lock().expect("child lock").id()
    }

    /// Log lines so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().expect("log lock").clone()
    }

    /// How many log lines contain `pattern`.
    pub fn count(&self, pattern: &str) -> usize {
        self.log.lock().expect("log lock").iter().filter(|l| l.contains(pattern)).count()
    }

    /// Waits until `count` lines contain `pattern`.
    pub fn wait_for_log(&self, pattern: &str, count: usize, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.count(pattern) >= count {
                return Ok(());
            }
            if let Some(status) = self.child_status() {
                anyhow::bail!(
                    "agent exited ({status}) before logging {pattern:?}:\n{}",
                    self.log().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        anyhow::bail!(
            "agent did not log {pattern:?} {count} times within {timeout:?}:\n{}",
            self.log().join("\n")
        )
    }

    fn child_status(&self) -> Option<std::process::ExitStatus> {
        self.child.lock().expect("child lock").try_wait().ok().flatten()
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn stop(mut self) -> anyhow::Result<std::process::ExitStatus> {
        self.terminate()
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(self) {
        let mut child = self.child.lock().expect("child lock");
        let _ = child.kill();
        let _ = child.wait();
    }

    fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let child = self.child.get_mut().expect("child lock");
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        // Safety: kill(2) of our own child, by pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        child.kill()?;
        let _ = child.wait();
        anyhow::bail!("agent ignored SIGTERM for 3 s and was killed")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.terminate();
    }
}

/// Runs `lb-agent inspect WHAT --bpffs DIR --output json` and parses the JSON.
pub fn inspect(what: &str, bpffs: &Path) -> anyhow::Result<serde_json::Value> {
    let out = Command::new(crate::agent_bin())
        .args(["inspect", what, "--output", "json", "--bpffs"])
        .arg(bpffs)
        .env("RUST_BACKTRACE", "0")
        .output()?;
    anyhow::ensure!(out.status.success(), "inspect {what} failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Runs `lb-agent ARGS… --bpffs DIR --output json` (`inspect services --service web`, `status`…)
/// and parses the JSON.
pub fn cli_json(args: &[&str], bpffs: &Path) -> anyhow::Result<serde_json::Value> {
    let out = Command::new(crate::agent_bin())
        .args(args)
        .args(["--output", "json", "--bpffs"])
        .arg(bpffs)
        .env("RUST_BACKTRACE", "0")
        .output()?;
    anyhow::ensure!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Runs `lb-agent ARGS… --bpffs DIR` and returns what it printed (a table).
pub fn cli_table(args: &[&str], bpffs: &Path) -> anyhow::Result<String> {
    let out = Command::new(crate::agent_bin()).args(args).arg("--bpffs").arg(bpffs).output()?;
    anyhow::ensure!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8(out.stdout)?)
}

/// Runs `lb-agent explain ARGS… --bpffs DIR --output json` (e.g. `--to ADDR:PORT/PROTO --from
/// ADDR:PORT`) and parses the JSON.
pub fn explain(bpffs: &Path, args: &[&str]) -> anyhow::Result<serde_json::Value> {
    cli_json(&[&["explain"], args].concat(), bpffs)
}

/// Runs `lb-agent explain ARGS… --bpffs DIR` and returns what it prints (tables and notes).
pub fn explain_table(bpffs: &Path, args: &[&str]) -> anyhow::Result<String> {
    cli_table(&[&["explain"], args].concat(), bpffs)
}

/// Runs `lb-agent inspect WHAT --bpffs DIR` and returns the table.
pub fn inspect_table(what: &str, bpffs: &Path) -> anyhow::Result<String> {
    let out = Command::new(crate::agent_bin()).args(["inspect", what, "--bpffs"]).arg(bpffs).output()?;
    anyhow::ensure!(out.status.success(), "inspect {what} failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8(out.stdout)?)
}

/// Names of the programs attached to `cgroup`'s socket hooks (`lb-agent attached`), as
/// `hook:name` strings, sorted.
pub fn attached(cgroup: &Path) -> anyhow::Result<Vec<String>> {
    let out = Command::new(crate::agent_bin())
        .args(["attached", "--output", "json", "--cgroup"])
        .arg(cgroup)
        .output()?;
    anyhow::ensure!(out.status.success(), "attached failed: {}", String::from_utf8_lossy(&out.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let mut names: Vec<String> = rows
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| format!("{}:{}", r["hook"].as_str().unwrap_or(""), r["name"].as_str().unwrap_or("")))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    Ok(names)
}

/// Runs `lb-agent cleanup --bpffs DIR --cgroup CG`.
pub fn cleanup(bpffs: &Path, cgroup: &Path) -> anyhow::Result<String> {
    let out = Command::new(crate::agent_bin())
        .args(["cleanup", "--bpffs"])
        .arg(bpffs)
        .arg("--cgroup")
        .arg(cgroup)
        .output()?;
    anyhow::ensure!(out.status.success(), "cleanup failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8(out.stdout)?)
}

/// The HTTP status code of `GET path` on `addr` (0 when nothing answers).
pub fn http_status(addr: std::net::SocketAddr, path: &str) -> u16 {
    http_get(addr, path).0
}

/// `GET path` on `addr`: the status code (0 when nothing answers) and the body.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return (0, String::new());
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if write!(stream, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").is_err() {
        return (0, String::new());
    }
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    let status = reply.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = reply.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

/// A loopback address with a port nobody listens on now.
pub fn free_local_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port")
}
