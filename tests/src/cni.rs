//! Real CNI plugins (Debian's `containernetworking-plugins`, in [`PLUGIN_DIR`]) called the way a
//! container runtime calls them: the plugin binary with `CNI_COMMAND`, `CNI_CONTAINERID`,
//! `CNI_NETNS`, `CNI_IFNAME` and `CNI_PATH` in its environment and the network configuration on
//! stdin, each plugin of a list in turn with the previous one's result (`prevResult`) and the
//! `runtimeConfig` of the capabilities it declares (`portMappings`, as kubelet passes hostPorts).
//!
//! A plugin acts on the network namespace it runs in (the bridge, the host ends of the veths,
//! routes, portmap's iptables rules): every plugin runs inside the test's node namespace (through
//! `ip netns exec`), never the host's. host-local IPAM keeps its state under a temporary
//! directory of the [`Network`], never `/var/lib/cni`. An [`Attachment`] (a pod's namespace joined
//! to a network) calls `DEL` through the list in reverse on drop, also when `ADD` failed half way,
//! as the CNI specification asks of a runtime; the IPAM state directory goes when the network and
//! its last attachment are gone.
use std::{
    io::{Read as _, Write as _},
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::guard::{Netns, TempDir, unique_name};

/// Where Debian's `containernetworking-plugins` installs the plugins (`CNI_PATH`).
pub const PLUGIN_DIR: &str = "/usr/lib/cni";
/// The CNI specification version spoken (the highest the plugins of Debian's 1.1.1 know).
pub const CNI_VERSION: &str = "1.0.0";
/// A plugin that runs longer than this is killed and the call fails.
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(20);

/// The path of plugin `name`; fails loudly when it is not installed.
pub fn plugin(name: &str) -> anyhow::Result<PathBuf> {
    let path = Path::new(PLUGIN_DIR).join(name);
    anyhow::ensure!(
        path.is_file(),
        "CNI plugin {} is missing: install Debian's containernetworking-plugins (`cargo xtask setup` does)",
        path.display()
    );
    Ok(path)
}

/// `ip netns exec NS PROGRAM`: PROGRAM runs inside `ns` (with /sys remounted for it; it is not
/// put in any test cgroup, which a plugin does not need).
pub fn command_in(ns: &Netns, program: &Path) -> Command {
    command_in_named(&ns.name, program)
}

/// As [`command_in`], for the namespace named `name`.
fn command_in_named(name: &str, program: &Path) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", name]).arg(program);
    cmd
}

/// A network configuration list (as in a `.conflist`) and the host-local IPAM state of its pods.
pub struct Network {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    plugins: Vec<Value>,
    /// host-local's `dataDir`; removed when the network and its last attachment are dropped.
    state: TempDir,
}

impl Network {
    /// A network `name` of `plugins` (each a plugin's configuration without `name` and
    /// `cniVersion`, which the list gives them). `ipam` of type `host-local` without a `dataDir`
    /// gets the network's own temporary one.
    pub fn new(name: &str, plugins: Vec<Value>) -> anyhow::Result<Self> {
        let state = TempDir::new()?;
        let plugins = plugins
            .into_iter()
            .map(|mut p| {
                plugin(p["type"].as_str().unwrap_or_default())?;
                if p["ipam"]["type"] == "host-local" && p["ipam"].get("dataDir").is_none() {
                    p["ipam"]["dataDir"] = json!(state.path.join("ipam"));
                }
                Ok(p)
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self { inner: Arc::new(Inner { name: name.to_owned(), plugins, state }) })
    }

    /// host-local IPAM handing out one address of each `(subnet, gateway)` range (one range per
    /// family, as a dual-stack node's config has them), with a default route per family.
    pub fn host_local(ranges: &[(&str, &str)]) -> Value {
        let routes: Vec<Value> = ranges
            .iter()
            .map(|(subnet, _)| json!({"dst": if subnet.contains(':') { "::/0" } else { "0.0.0.0/0" }}))
            .collect();
        let ranges: Vec<Value> =
            ranges.iter().map(|(subnet, gateway)| json!([{"subnet": subnet, "gateway": gateway}])).collect();
        json!({"type": "host-local", "ranges": ranges, "routes": routes})
    }

    /// Where host-local keeps its allocations.
    pub fn state_dir(&self) -> &Path {
        &self.inner.state.path
    }

    /// Runs `ADD` through the list in `node` for the pod namespace `pod` (interface `eth0`), with
    /// `runtime_config` (e.g. `{"portMappings": [...]}`) given to the plugins that declare those
    /// capabilities. The returned attachment's drop runs `DEL`; so does an `ADD` failing half way.
    pub fn add(&self, node: &Netns, pod: &Netns, runtime_config: Value) -> anyhow::Result<Attachment> {
        let mut attachment = Attachment {
            network: Arc::clone(&self.inner),
            node: node.name.clone(),
            pod: pod.name.clone(),
            container_id: unique_name(),
            runtime_config,
            result: None,
            deleted: false,
        };
        for conf in &self.inner.plugins {
            let out = attachment.call("ADD", conf)?;
            attachment.result =
                Some(serde_json::from_str(&out).map_err(|e| {
                    anyhow::anyhow!("{} ADD printed no CNI result ({e}): {out}", conf["type"])
                })?);
        }
        Ok(attachment)
    }
}

/// A pod namespace joined to a [`Network`] by `ADD`; `DEL` on drop (or [`Attachment::del`]).
/// The node namespace must still exist then (drop the attachment before the topology).
pub struct Attachment {
    network: Arc<Inner>,
    node: String,
    pod: String,
    container_id: String,
    runtime_config: Value,
    /// The last plugin's result (the list's result).
    result: Option<Value>,
    deleted: bool,
}

/// The interface name in the pod.
const IFNAME: &str = "eth0";

impl Attachment {
    /// The list's result (CNI 1.0.0: `interfaces`, `ips`, `routes`, `dns`).
    pub fn result(&self) -> &Value {
        self.result.as_ref().expect("an attachment exists only after a successful ADD")
    }

    /// The pod's addresses, from the result's `ips`.
    pub fn ips(&self) -> Vec<IpAddr> {
        self.result()["ips"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|ip| ip["address"].as_str()?.split('/').next()?.parse().ok())
            .collect()
    }

    /// The pod's first IPv4 address; panics (the test fails) when the plugin gave none.
    pub fn ipv4(&self) -> IpAddr {
        self.ip(true)
    }

    /// The pod's first address of a family (`v4` or IPv6); panics when the plugin gave none.
    pub fn ip(&self, v4: bool) -> IpAddr {
        self.ips().into_iter().find(|ip| ip.is_ipv4() == v4).unwrap_or_else(|| {
            panic!("no IPv{} address in the CNI result {}", if v4 { 4 } else { 6 }, self.result())
        })
    }

    /// The names of the result's interfaces outside the pod (the bridge, the host end of the veth).
    pub fn host_interfaces(&self) -> Vec<String> {
        self.result()["interfaces"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| i.get("sandbox").is_none_or(|s| s.as_str().unwrap_or_default().is_empty()))
            .filter_map(|i| i["name"].as_str().map(str::to_owned))
            .collect()
    }

    /// The pod's container id (`CNI_CONTAINERID`; portmap names its chains after it).
    pub fn container_id(&self) -> &str {
        &self.container_id
    }

    /// Runs `DEL` through the list in reverse; fails if any plugin failed (all are called).
    pub fn del(mut self) -> anyhow::Result<()> {
        self.deleted = true;
        self.del_all()
    }

    fn del_all(&self) -> anyhow::Result<()> {
        let errors: Vec<String> = self
            .network
            .plugins
            .iter()
            .rev()
            .filter_map(|conf| self.call("DEL", conf).err().map(|e| e.to_string()))
            .collect();
        anyhow::ensure!(errors.is_empty(), "{}", errors.join("; "));
        Ok(())
    }

    /// The configuration one plugin of the list gets: its own, with the list's name and version,
    /// the result so far and the runtime config of the capabilities it declares.
    fn stdin_for(&self, conf: &Value) -> Value {
        let mut conf = conf.clone();
        conf["name"] = json!(self.network.name);
        conf["cniVersion"] = json!(CNI_VERSION);
        if let Some(prev) = &self.result {
            conf["prevResult"] = prev.clone();
        }
        let wanted: serde_json::Map<String, Value> = conf["capabilities"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, on)| on.as_bool() == Some(true))
            .filter_map(|(cap, _)| Some((cap.clone(), self.runtime_config.get(cap)?.clone())))
            .collect();
        if !wanted.is_empty() {
            conf["runtimeConfig"] = Value::Object(wanted);
        }
        conf
    }

    /// Runs one plugin with `command` inside the node namespace; returns its stdout.
    fn call(&self, command: &str, conf: &Value) -> anyhow::Result<String> {
        let kind = conf["type"].as_str().unwrap_or_default();
        let mut child = command_in_named(&self.node, &plugin(kind)?)
            .env_clear()
            // `ip`, and the iptables that portmap runs: the system's.
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &self.container_id)
            .env("CNI_NETNS", format!("/run/netns/{}", self.pod))
            .env("CNI_IFNAME", IFNAME)
            .env("CNI_PATH", PLUGIN_DIR)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let stdin = serde_json::to_vec(&self.stdin_for(conf))?;
        child.stdin.take().expect("piped stdin").write_all(&stdin)?;
        let mut stdout = child.stdout.take().expect("piped stdout");
        let mut stderr = child.stderr.take().expect("piped stderr");
        let reader = std::thread::spawn(move || {
            let (mut out, mut err) = (String::new(), String::new());
            let _ = stdout.read_to_string(&mut out);
            let _ = stderr.read_to_string(&mut err);
            (out, err)
        });
        let deadline = Instant::now() + PLUGIN_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                anyhow::bail!("CNI plugin {kind} {command} still running after {PLUGIN_TIMEOUT:?}: killed");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let (out, err) = reader.join().map_err(|_| anyhow::anyhow!("reader thread panicked"))?;
        anyhow::ensure!(
            status.success(),
            "CNI plugin {kind} {command} for {} failed ({status}): {} {}",
            self.container_id,
            out.trim(),
            err.trim()
        );
        Ok(out)
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        if !self.deleted
            && let Err(e) = self.del_all()
        {
            eprintln!("warning: CNI DEL of {}: {e}", self.container_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{Attachment, Network};

    #[test]
    fn a_missing_plugin_fails_loudly_and_names_the_package() {
        let err = Network::new("n", vec![json!({"type": "no-such-plugin"})]).err().expect("an error");
        assert!(err.to_string().contains("containernetworking-plugins"), "{err}");
    }

    #[test]
    fn each_plugin_gets_the_list_name_the_previous_result_and_only_its_capabilities() {
        let net = Network::new(
            "pods",
            vec![
                json!({"type": "bridge", "ipam": Network::host_local(&[("10.244.1.0/24", "10.244.1.1")])}),
                json!({"type": "portmap", "capabilities": {"portMappings": true, "bandwidth": false}}),
            ],
        )
        .expect("network");
        let plugins = &net.inner.plugins;
        assert_eq!(plugins[0]["ipam"]["dataDir"], json!(net.state_dir().join("ipam")), "never /var/lib/cni");
        let mut attachment = Attachment {
            network: std::sync::Arc::clone(&net.inner),
            node: "node".into(),
            pod: "pod".into(),
            container_id: "c1".into(),
            runtime_config: json!({"portMappings": [{"hostPort": 81}], "bandwidth": {"rate": 1}}),
            result: None,
            // Never run: no DEL on drop.
            deleted: true,
        };
        let first = attachment.stdin_for(&plugins[0]);
        assert_eq!((&first["name"], &first["cniVersion"]), (&json!("pods"), &json!("1.0.0")));
        assert!(first.get("prevResult").is_none() && first.get("runtimeConfig").is_none(), "{first}");
        attachment.result = Some(json!({"ips": [{"address": "10.244.1.2/24"}]}));
        let second = attachment.stdin_for(&plugins[1]);
        assert_eq!(second["prevResult"]["ips"][0]["address"], "10.244.1.2/24");
        assert_eq!(second["runtimeConfig"], json!({"portMappings": [{"hostPort": 81}]}));
        assert_eq!(attachment.ipv4().to_string(), "10.244.1.2");
    }
}
