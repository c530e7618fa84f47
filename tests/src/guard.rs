//! Guards for kernel state a test makes; each removes what it made in `Drop`.
use std::{
    fs::File,
    os::fd::{AsRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Once,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

const PREFIX: &str = "lbt-";
const BPFFS_ROOT: &str = "/sys/fs/bpf";

static NEXT: AtomicU32 = AtomicU32::new(0);
static LEFTOVERS: Once = Once::new();

/// A fresh unique name `lbt-<pid>-<n>`.
pub fn unique_name() -> String {
    LEFTOVERS.call_once(remove_leftovers);
    format!("{PREFIX}{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output()?;
    anyhow::ensure!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    Ok(())
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The pid in a `lbt-<pid>-<n>` name, if that process is gone.
fn dead_owner(name: &str) -> bool {
    name.strip_prefix(PREFIX)
        .and_then(|rest| rest.split('-').next())
        .and_then(|pid| pid.parse::<u32>().ok())
        .is_some_and(|pid| !pid_alive(pid))
}

/// Removes namespaces, cgroups and bpffs directories left by test runs that crashed.
fn remove_leftovers() {
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or_default();
            if dead_owner(name) {
                eprintln!("removing leftover network namespace {name}");
                let _ = run(Command::new("ip").args(["netns", "del", name]));
            }
        }
    }
    for dir in [PathBuf::from(BPFFS_ROOT), cgroup2_root()] {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if dead_owner(&name) {
                eprintln!("removing leftover {}", entry.path().display());
                if dir == Path::new(BPFFS_ROOT) {
                    let _ = std::fs::remove_dir_all(entry.path());
                } else {
                    remove_cgroup(&entry.path());
                }
            }
        }
    }
}

/// The cgroup2 mount point, from /proc/self/mountinfo.
pub fn cgroup2_root() -> PathBuf {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("reading /proc/self/mountinfo");
    info.lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split_whitespace().nth(4)?;
            (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .expect("no cgroup2 filesystem is mounted")
}

/// A network namespace with `lo` up. Deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new() -> anyhow::Result<Self> {
        let name = unique_name();
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Runs `ip -n NS ARGS...`.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<()> {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// Puts an extra address on the namespace's own `lo` (a test "pod").
    pub fn add_lo_address(&self, addr: std::net::IpAddr) -> anyhow::Result<()> {
        match addr {
            std::net::IpAddr::V4(a) => self.ip(&["addr", "add", &format!("{a}/32"), "dev", "lo"]),
            std::net::IpAddr::V6(a) => {
                self.ip(&["-6", "addr", "add", &format!("{a}/128"), "dev", "lo", "nodad"])
            }
        }
    }

    /// An fd for `setns(fd, CLONE_NEWNET)`.
    pub fn open(&self) -> anyhow::Result<OwnedFd> {
        Ok(File::open(self.path())?.into())
    }

    /// The namespace's file, as `ip netns` bind-mounts it (as container runtimes do theirs).
    pub fn path(&self) -> std::path::PathBuf {
        format!("/run/netns/{}", self.name).into()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = run(Command::new("ip").args(["netns", "del", &self.name])) {
            eprintln!("warning: {e}");
        }
    }
}

/// Moves the calling thread into a network namespace (sockets it opens afterwards live there).
pub fn enter_netns(fd: &OwnedFd) -> std::io::Result<()> {
    // Safety: setns on a valid namespace fd only changes this thread's network namespace.
    if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A child cgroup under the cgroup2 mount. On drop, processes still in it (only ones this harness
/// started go there) are killed and the cgroup is removed.
pub struct Cgroup {
    pub path: PathBuf,
}

impl Cgroup {
    pub fn new() -> anyhow::Result<Self> {
        let path = cgroup2_root().join(unique_name());
        std::fs::create_dir(&path)?;
        Ok(Self { path })
    }

    /// `cgroup.procs`, opened for a child to write "0" into (join) before exec.
    pub fn procs_file(&self) -> anyhow::Result<File> {
        Ok(std::fs::OpenOptions::new().write(true).open(self.path.join("cgroup.procs"))?)
    }
}

fn remove_cgroup(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(3);
    let own = std::process::id() as i32;
    loop {
        // Every process in the test's own cgroup was started by the test. `cgroup.kill` (5.14+)
        // kills them all at once; on older kernels kill them one by one, by pid.
        if std::fs::write(path.join("cgroup.kill"), "1").is_err()
            && let Ok(procs) = std::fs::read_to_string(path.join("cgroup.procs"))
        {
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                if pid <= 0 || pid == own {
                    continue; // never a process group, never ourselves
                }
                // Safety: plain kill(2) of one positive pid found in our own test cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        match std::fs::remove_dir(path) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) if Instant::now() > deadline => {
                eprintln!("warning: cannot remove cgroup {}: {e}", path.display());
                return;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        remove_cgroup(&self.path);
    }
}

/// A directory on bpffs for one agent's pins. On drop every pin below it is removed, which
/// detaches the programs whose links were pinned there.
pub struct Bpffs {
    pub path: PathBuf,
}

impl Bpffs {
    pub fn new() -> anyhow::Result<Self> {
        let mounted = std::fs::read_to_string("/proc/mounts")?.lines().any(|l| {
            l.split_whitespace().nth(1) == Some(BPFFS_ROOT) && l.split_whitespace().nth(2) == Some("bpf")
        });
        anyhow::ensure!(mounted, "bpffs is not mounted at {BPFFS_ROOT} (`cargo xtask setup` mounts it)");
        let path = Path::new(BPFFS_ROOT).join(unique_name());
        Ok(Self { path })
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("warning: cannot remove {}: {e}", self.path.display());
        }
    }
}

/// A temporary directory, removed on drop.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new() -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(unique_name());
        std::fs::create_dir_all(&path)?;
        Ok(Self { path })
    }

    /// Replaces a file atomically (write then rename), as tools that edit manifests do.
    pub fn write(&self, name: &str, content: &str) -> anyhow::Result<PathBuf> {
        let path = self.path.join(name);
        let tmp = self.path.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, content)?;
        std::fs::rename(&tmp, &path)?;
        Ok(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
