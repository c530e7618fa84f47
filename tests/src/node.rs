//! Test "nodes": `Node` (namespace, cgroup, bpffs pins, backend servers, a source file and the
//! agent) for the socket-level tests, and `PinnedAgent` (an agent, its pins and cgroup, no
//! namespace) for the packet tests that go through `lb-agent trace`.
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use crate::{
    agent::Agent,
    guard::{Bpffs, Cgroup, Netns, TempDir},
    probe::{self, Place},
    require_root,
    servers::Servers,
};

/// One test "node": namespace, cgroup, bpffs pins, backends, a source file and the agent.
/// Fields drop in order: the agent stops, servers stop, pins go (detaching the programs), then
/// the cgroup, the namespace and the files.
pub struct Node {
    pub agent: Option<Agent>,
    pub servers: Servers,
    pub bpffs: Bpffs,
    pub cgroup: Cgroup,
    pub netns: Netns,
    pub dir: TempDir,
}

impl Node {
    pub fn new(backends: &[&str], source: &str) -> Self {
        Self::with_args(backends, source, &[])
    }

    /// As `new`, the agent started with `extra` flags after `--source FILE`.
    pub fn with_args(backends: &[&str], source: &str, extra: &[&str]) -> Self {
        require_root();
        let netns = Netns::new().expect("netns");
        let cgroup = Cgroup::new().expect("cgroup");
        let bpffs = Bpffs::new().expect("bpffs");
        let dir = TempDir::new().expect("tempdir");
        let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.parse().expect("backend addr")).collect();
        let servers = Servers::start(&netns, &addrs).expect("servers");
        dir.write("cluster.yaml", source).expect("source");
        let mut node = Self { agent: None, servers, bpffs, cgroup, netns, dir };
        node.start_agent_with(extra);
        node
    }

    /// Starts the agent with `extra` flags after `--source FILE` and waits until it is ready.
    pub fn start_agent_with(&mut self, extra: &[&str]) {
        let source = self.source();
        let mut args = vec![std::ffi::OsStr::new("--source"), source.as_os_str()];
        args.extend(extra.iter().map(std::ffi::OsStr::new));
        let agent = Agent::spawn(&args, &self.cgroup.path, &self.bpffs.path, true).expect("agent");
        agent.wait_for_log("agent ready", 1, Duration::from_secs(20)).expect("agent ready");
        self.agent = Some(agent);
    }

    pub fn source(&self) -> std::path::PathBuf {
        self.dir.path.join("cluster.yaml")
    }

    pub fn start_agent(&mut self) {
        self.agent = Some(Agent::start(&self.source(), &self.cgroup.path, &self.bpffs.path).expect("agent"));
    }

    pub fn agent(&self) -> &Agent {
        self.agent.as_ref().expect("agent running")
    }

    /// Rewrites the source and waits for the agent to apply it.
    pub fn update(&self, source: &str) -> Duration {
        let before = self.agent().count("sync applied");
        let started = Instant::now();
        self.dir.write("cluster.yaml", source).expect("source");
        self.agent().wait_for_log("sync applied", before + 1, Duration::from_secs(5)).expect("sync");
        started.elapsed()
    }

    pub fn inside(&self) -> Place<'_> {
        Place { netns: &self.netns, cgroup: Some(&self.cgroup) }
    }

    pub fn probe(&self, args: &[&str]) -> Vec<String> {
        probe::run(&self.inside(), args).expect("probe")
    }
}

/// An agent serving a YAML source, its maps pinned in a test bpffs directory and its socket
/// programs on a test cgroup; no namespace of its own (packets go through `lb-agent trace`).
/// Fields drop in order: the agent stops, the pins go, then the cgroup and the files.
pub struct PinnedAgent {
    pub agent: Agent,
    pub bpffs: Bpffs,
    pub cgroup: Cgroup,
    pub dir: TempDir,
    /// The source file, to rewrite.
    pub source: std::path::PathBuf,
}

impl PinnedAgent {
    /// Starts `lb-agent run --source FILE EXTRA…` on `yaml` and waits (up to `ready_within`)
    /// until it is ready; its log is echoed when `echo`.
    pub fn start(yaml: &str, extra: &[&str], ready_within: Duration, echo: bool) -> anyhow::Result<Self> {
        require_root();
        let dir = TempDir::new()?;
        let source = dir.write("cluster.yaml", yaml)?;
        let cgroup = Cgroup::new()?;
        let bpffs = Bpffs::new()?;
        let mut args = vec![std::ffi::OsStr::new("--source"), source.as_os_str()];
        args.extend(extra.iter().map(std::ffi::OsStr::new));
        let agent = Agent::spawn(&args, &cgroup.path, &bpffs.path, echo)?;
        agent.wait_for_log("agent ready", 1, ready_within)?;
        Ok(Self { agent, bpffs, cgroup, dir, source })
    }
}
