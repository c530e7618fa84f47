//! Runs the `lb-probe` client inside a test cgroup and network namespace, the way a pod's process
//! runs: it joins the cgroup first, then the namespace, then execs.
use std::{
    fs::File,
    io::Write as _,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    process::{Child, Command, Output, Stdio},
};

use crate::guard::{Cgroup, Netns};

/// Where a probe runs.
pub struct Place<'a> {
    pub netns: &'a Netns,
    /// `None`: outside the test cgroup (no socket programs apply).
    pub cgroup: Option<&'a Cgroup>,
}

/// Builds a command for `lb-probe ARGS` that runs in `place`.
pub fn command(place: &Place<'_>, args: &[&str]) -> anyhow::Result<Command> {
    build(place, args, true)
}

/// Starts a probe in the background, as `spawn` does, whose process stays in the test's own
/// network namespace while a thread of it works in `place`'s (see `lb-probe`): no process of
/// `place`'s namespace shows in `/proc`, only its file under `/run/netns`.
pub fn spawn_from_thread(place: &Place<'_>, args: &[&str]) -> anyhow::Result<Child> {
    Ok(build(place, args, false)?
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?)
}

/// `lb-probe ARGS` in `place`'s cgroup; in its namespace from the start (`enter`), or from a
/// thread of its own.
fn build(place: &Place<'_>, args: &[&str], enter: bool) -> anyhow::Result<Command> {
    let ns = if enter { Some(place.netns.open()?) } else { None };
    let procs: Option<File> = place.cgroup.map(Cgroup::procs_file).transpose()?;
    let mut cmd = Command::new(crate::sibling_bin("lb-probe"));
    cmd.args(args);
    if !enter {
        cmd.env("LB_PROBE_NETNS_THREAD", place.netns.path());
    }
    // Safety: between fork and exec the closure only makes async-signal-safe syscalls (write,
    // setns) on fds opened before the fork, which the closure keeps alive.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(procs) = &procs {
                // Join the cgroup before the namespace ("0" means the writing process).
                let mut f: &File = procs;
                f.write_all(b"0")?;
            }
            if let Some(ns) = &ns
                && libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(cmd)
}

/// Runs a probe to completion and returns its stdout lines.
pub fn run(place: &Place<'_>, args: &[&str]) -> anyhow::Result<Vec<String>> {
    let Output { status, stdout, stderr } = command(place, args)?.stderr(Stdio::piped()).output()?;
    anyhow::ensure!(status.success(), "lb-probe {args:?} failed: {}", String::from_utf8_lossy(&stderr));
    Ok(String::from_utf8(stdout)?.lines().map(str::to_owned).collect())
}

/// Starts a probe in the background with piped stdin/stdout.
pub fn spawn(place: &Place<'_>, args: &[&str]) -> anyhow::Result<Child> {
    Ok(command(place, args)?.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn()?)
}

/// The backend named by an `ok <backend> ...` line.
pub fn backend_of(line: &str) -> Option<&str> {
    line.strip_prefix("ok ").and_then(|rest| rest.split_whitespace().next())
}

/// `n` probes (`tcp`, `udp`…) from `place` to `to`: every one must be answered; returns the set
/// of addresses (IPs) that answered.
pub fn reached(place: &Place<'_>, mode: &str, to: &str, n: usize) -> std::collections::BTreeSet<String> {
    let lines = run(place, &[mode, to, &n.to_string()]).expect("probe");
    assert_eq!(lines.len(), n, "{mode} to {to}: {lines:?}");
    lines
        .iter()
        .map(|l| {
            let backend = backend_of(l).unwrap_or_else(|| panic!("{mode} to {to} failed: {l}"));
            backend.parse::<std::net::SocketAddr>().expect("backend").ip().to_string()
        })
        .collect()
}
