//! `lb-agent cleanup --kube-proxy` against real iptables and nftables rules, and the manifests in
//! deploy/.
//!
//! Every rule these tests create lives in a network namespace the test made (removed in `Drop`),
//! and every iptables, nft and agent command runs through `ip netns exec NS ...`: the host's
//! rules are never read for a decision, let alone changed. The kernel tests never skip: without
//! root or the iptables/nftables tools they fail.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use k8s_openapi::{
    Resource,
    api::{
        apps::v1::DaemonSet,
        core::v1::ServiceAccount,
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
};
use lb_tests::{
    agent_bin,
    guard::{Netns, TempDir},
    require_root,
};

/// What kube-proxy (iptables mode) leaves in IPv4, with the kubelet's chains and rules of the
/// node's own that must survive (`MY-*`, the MASQUERADE for 192.168.100.0/24).
const IPV4_RULES: &str = include_str!("fixtures/kube-proxy-ipv4.rules");

/// The same for IPv6 (ip6tables).
const IPV6_RULES: &str = include_str!("fixtures/kube-proxy-ipv6.rules");

/// A kube-proxy that ran with the legacy (x_tables) backend before the node switched to nft.
const IPV4_LEGACY_RULES: &str = include_str!("fixtures/kube-proxy-ipv4-legacy.rules");

/// kube-proxy's nftables mode (both families) and a table of the node's own.
const NFT_RULES: &str = include_str!("fixtures/kube-proxy.nft");

/// The save tools whose output the tests compare: both backends, both families.
const SAVE_TOOLS: [&str; 4] =
    ["iptables-nft-save", "ip6tables-nft-save", "iptables-legacy-save", "ip6tables-legacy-save"];

/// Everything the tests run inside the namespace; all must be installed (no skipping).
const TOOLS: [&str; 9] = [
    "iptables-nft-restore",
    "ip6tables-nft-restore",
    "iptables-legacy-restore",
    "iptables-nft-save",
    "ip6tables-nft-save",
    "iptables-legacy-save",
    "ip6tables-legacy-save",
    "nft",
    "env",
];

/// Chains with the prefix that belong to the kubelet: the cleanup keeps them.
const KUBELET_CHAINS: [&str; 2] = ["KUBE-KUBELET-CANARY", "KUBE-IPTABLES-HINT"];

fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

fn require_tools() {
    let missing: Vec<&str> = TOOLS.iter().copied().filter(|t| find_tool(t).is_none()).collect();
    assert!(
        missing.is_empty(),
        "missing {missing:?}: install the Debian packages iptables and nftables (`cargo xtask setup` does)"
    );
}

/// Runs `ip netns exec NS PROGRAM ARGS...`, feeding `stdin`.
fn exec_in(ns: &Netns, program: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(program)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ip netns exec");
    if let Some(input) = stdin {
        std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), input.as_bytes())
            .expect("write stdin");
    }
    child.wait_with_output().expect("wait")
}

/// As `exec_in`, failing the test unless it succeeds; returns stdout.
fn ok_in(ns: &Netns, program: &str, args: &[&str], stdin: Option<&str>) -> String {
    let out = exec_in(ns, Path::new(program), args, stdin);
    assert!(
        out.status.success(),
        "{program} {args:?} in {} failed ({}): {}",
        ns.name,
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A namespace holding kube-proxy's leftovers (both iptables backends, both families, nftables)
/// and the node's own rules.
fn namespace_with_leftovers() -> Netns {
    require_root();
    require_tools();
    let ns = Netns::new().expect("netns");
    // The nft backend explicitly (Debian's default `iptables-restore`), whatever the alternatives say.
    ok_in(&ns, "iptables-nft-restore", &["--wait=10"], Some(IPV4_RULES));
    ok_in(&ns, "ip6tables-nft-restore", &["--wait=10"], Some(IPV6_RULES));
    ok_in(&ns, "iptables-legacy-restore", &["--wait=10"], Some(IPV4_LEGACY_RULES));
    ok_in(&ns, "nft", &["-f", "-"], Some(NFT_RULES));
    ns
}

/// The rules as a set of `TABLE LINE` (the same chain name is declared in several tables), without
/// comments (they carry timestamps).
fn saved(ns: &Netns, tool: &str) -> BTreeSet<String> {
    let mut table = String::new();
    let mut lines = BTreeSet::new();
    for line in ok_in(ns, tool, &[], None).lines() {
        if let Some(name) = line.strip_prefix('*') {
            name.clone_into(&mut table);
        } else if !line.starts_with('#') && !line.trim().is_empty() && line != "COMMIT" {
            lines.insert(format!("{table} {line}"));
        }
    }
    lines
}

/// The line of a `saved` entry, without its table.
fn line_of(entry: &str) -> &str {
    entry.split_once(' ').map_or(entry, |(_, line)| line)
}

fn is_kubelet_chain_line(entry: &str) -> bool {
    KUBELET_CHAINS.iter().any(|c| line_of(entry).starts_with(&format!(":{c} ")))
}

/// kube-proxy's lines: declarations of KUBE-* chains (not the kubelet's), rules in them and rules
/// jumping to them.
fn kube_proxy_lines(lines: &BTreeSet<String>) -> BTreeSet<String> {
    lines.iter().filter(|l| l.contains("KUBE-") && !is_kubelet_chain_line(l)).cloned().collect()
}

/// What the cleanup should report for these saved lines: one line per KUBE-* chain and per jump
/// from another chain to one.
fn expected_removals(lines: &BTreeSet<String>) -> usize {
    lines
        .iter()
        .filter(|entry| {
            let l = line_of(entry);
            let declared = l.starts_with(":KUBE-") && !is_kubelet_chain_line(entry);
            let jump = l.starts_with("-A ")
                && !l.starts_with("-A KUBE-")
                && (l.contains(" -j KUBE-") || l.contains(" -g KUBE-"));
            declared || jump
        })
        .count()
}

fn nft_tables(ns: &Netns) -> BTreeSet<String> {
    ok_in(ns, "nft", &["list", "tables"], None).lines().map(str::to_owned).collect()
}

fn cleanup(ns: &Netns) -> Output {
    exec_in(ns, &agent_bin(), &["cleanup", "--kube-proxy"], None)
}

#[test]
fn cleanup_kube_proxy_removes_its_chains_jumps_and_tables_and_nothing_else() {
    let ns = namespace_with_leftovers();
    let before: Vec<BTreeSet<String>> = SAVE_TOOLS.iter().map(|t| saved(&ns, t)).collect();
    // The fixtures loaded as meant: each backend and family holds kube-proxy's chains.
    for (tool, lines) in SAVE_TOOLS.iter().zip(&before) {
        let ours = kube_proxy_lines(lines);
        if *tool == "ip6tables-legacy-save" {
            assert!(ours.is_empty(), "{tool}: {ours:?}");
        } else {
            assert!(ours.len() > 5, "{tool} does not show the loaded rules: {lines:?}");
        }
    }
    let keep_me_before = ok_in(&ns, "nft", &["list", "table", "inet", "keep-me"], None);
    let tables = nft_tables(&ns);
    assert!(tables.contains("table ip kube-proxy") && tables.contains("table ip6 kube-proxy"), "{tables:?}");

    let out = cleanup(&ns);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "cleanup failed ({}):\n{stdout}\n{stderr}", out.status);

    // Every KUBE-* chain and every jump to one is gone; every other line is exactly as before.
    for ((tool, old), new) in SAVE_TOOLS.iter().zip(&before).zip(SAVE_TOOLS.iter().map(|t| saved(&ns, t))) {
        let left = kube_proxy_lines(&new);
        assert!(left.is_empty(), "{tool} still shows kube-proxy's rules: {left:#?}");
        let kept: BTreeSet<String> = old.difference(&kube_proxy_lines(old)).cloned().collect();
        assert_eq!(new, kept, "{tool}: rules other than kube-proxy's changed");
    }
    let ipv4 = saved(&ns, "iptables-nft-save");
    for line in [
        "mangle :KUBE-KUBELET-CANARY - [0:0]",
        "mangle :KUBE-IPTABLES-HINT - [0:0]",
        "filter :KUBE-KUBELET-CANARY - [0:0]",
        "nat :KUBE-KUBELET-CANARY - [0:0]",
        "filter :MY-CHAIN - [0:0]",
        "filter -A INPUT -j MY-CHAIN",
        "filter -A MY-CHAIN -p tcp -m tcp --dport 22 -j ACCEPT",
        "nat -A PREROUTING -j MY-NAT",
        "nat -A MY-NAT -p udp -m udp --dport 5000 -j DNAT --to-destination 192.168.100.5:5000",
        "nat -A POSTROUTING -s 192.168.100.0/24 -o eth0 -j MASQUERADE",
        "mangle -A PREROUTING -j MY-MANGLE",
    ] {
        assert!(ipv4.contains(line), "{line:?} was removed: {ipv4:#?}");
    }
    let legacy = saved(&ns, "iptables-legacy-save");
    assert!(legacy.contains("nat -A LEGACY-KEEP -d 192.0.2.1/32 -j RETURN"), "{legacy:#?}");
    assert!(legacy.contains("nat -A OUTPUT -j LEGACY-KEEP"), "{legacy:#?}");
    let tables = nft_tables(&ns);
    assert!(
        !tables.iter().any(|t| t.ends_with(" kube-proxy")),
        "kube-proxy's nftables tables remain: {tables:?}"
    );
    assert!(tables.contains("table inet keep-me"), "{tables:?}");
    assert_eq!(ok_in(&ns, "nft", &["list", "table", "inet", "keep-me"], None), keep_me_before);

    // One line per thing removed, naming it.
    let removed: Vec<&str> = stdout.lines().filter(|l| l.starts_with("removed ")).collect();
    let expected = before.iter().map(expected_removals).sum::<usize>() + 2;
    assert_eq!(removed.len(), expected, "one line per chain, jump and table:\n{stdout}");
    for line in [
        "removed iptables-nft nat chain KUBE-SERVICES",
        "removed iptables-nft nat chain KUBE-SEP-6E7XQMQ4RAYOWTTM",
        "removed iptables-nft filter chain KUBE-FORWARD",
        "removed iptables-nft mangle chain KUBE-PROXY-CANARY",
        r#"removed iptables-nft nat rule: -A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES"#,
        "removed iptables-nft nat rule: -A MY-NAT -d 10.96.0.0/12 -j KUBE-MARK-MASQ",
        "removed iptables-nft filter rule: -A MY-CHAIN -s 10.0.0.0/8 -j KUBE-FIREWALL",
        "removed ip6tables-nft nat chain KUBE-SVC-6NWQ3ZKH3CGLSGKL",
        "removed ip6tables-nft filter rule: -A INPUT -j KUBE-FIREWALL",
        "removed iptables-legacy nat chain KUBE-SVC-LEGACY0000000000",
        "removed nftables table ip kube-proxy",
        "removed nftables table ip6 kube-proxy",
    ] {
        assert!(removed.contains(&line), "{line:?} not reported:\n{stdout}");
    }
    assert!(!stdout.contains("KUBE-KUBELET-CANARY"), "the kubelet's chain is not kube-proxy's:\n{stdout}");
    // --kube-proxy alone leaves the agent's pins alone (and does not need the bpffs directory).
    assert!(!stdout.contains("/sys/fs/bpf"), "{stdout}");

    // Idempotent: a second run succeeds and removes nothing.
    let after_first: Vec<BTreeSet<String>> = SAVE_TOOLS.iter().map(|t| saved(&ns, t)).collect();
    let out = cleanup(&ns);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "second cleanup failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stdout.contains("removed "), "the second run removed something:\n{stdout}");
    assert!(stdout.contains("no kube-proxy chains, rules or tables to remove"), "{stdout}");
    let after_second: Vec<BTreeSet<String>> = SAVE_TOOLS.iter().map(|t| saved(&ns, t)).collect();
    assert_eq!(after_first, after_second);
    assert!(nft_tables(&ns).contains("table inet keep-me"));
}

#[test]
fn cleanup_kube_proxy_without_the_tools_fails_clearly_and_changes_nothing() {
    let ns = namespace_with_leftovers();
    let before: Vec<BTreeSet<String>> = SAVE_TOOLS.iter().map(|t| saved(&ns, t)).collect();
    let tables_before = nft_tables(&ns);
    let empty = TempDir::new().expect("tempdir");
    let env = find_tool("env").expect("env");
    let path = format!("PATH={}", empty.path.display());
    let agent = agent_bin();
    let agent = agent.to_str().expect("utf-8 path");
    let out = exec_in(&ns, &env, &[&path, agent, "cleanup", "--kube-proxy"], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "cleanup without iptables or nft must fail");
    for expected in ["missing tools", "iptables-save", "ip6tables-save", "nft", "install"] {
        assert!(stderr.contains(expected), "the error does not mention {expected:?}: {stderr}");
    }
    let after: Vec<BTreeSet<String>> = SAVE_TOOLS.iter().map(|t| saved(&ns, t)).collect();
    assert_eq!(before, after, "a failed cleanup changed rules");
    assert_eq!(tables_before, nft_tables(&ns));
}

#[test]
fn cleanup_with_bpffs_and_kube_proxy_does_both_and_an_empty_namespace_is_fine() {
    require_root();
    require_tools();
    let ns = Netns::new().expect("netns");
    let dir = TempDir::new().expect("tempdir");
    let pins = dir.path.join("no-pins-here");
    let pins = pins.to_str().expect("utf-8 path");
    let out = exec_in(&ns, &agent_bin(), &["cleanup", "--kube-proxy", "--bpffs", pins], None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(&format!("nothing to remove under {pins}")), "{stdout}");
    assert!(stdout.contains("no kube-proxy chains, rules or tables to remove"), "{stdout}");
    // Nothing was created either: no table appeared in the namespace.
    assert!(nft_tables(&ns).is_empty(), "{:?}", nft_tables(&ns));
}

// ---- deploy/ ----

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Every YAML file in deploy/, parsed as a JSON value (one object per file).
fn manifests() -> Vec<(PathBuf, serde_json::Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir())
        .expect("deploy/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("read manifest");
            let value: serde_json::Value = serde_saphyr::from_str(&text)
                .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()));
            (path, value)
        })
        .collect()
}

/// The one manifest of type `T`, parsed into it; the parse must keep every field (a misspelt or
/// misplaced field would be dropped by the typed parse and show up as a difference).
fn typed<T: Resource + k8s_openapi::serde::de::DeserializeOwned + k8s_openapi::serde::Serialize>() -> T {
    let all = manifests();
    let mut matching = all.iter().filter(|(_, v)| v["apiVersion"] == T::API_VERSION && v["kind"] == T::KIND);
    let (path, value) =
        matching.next().unwrap_or_else(|| panic!("no {} {} in deploy/", T::API_VERSION, T::KIND));
    assert!(matching.next().is_none(), "more than one {} in deploy/", T::KIND);
    let object: T = serde_json::from_value(value.clone())
        .unwrap_or_else(|e| panic!("{} is not a valid {}: {e}", path.display(), T::KIND));
    let round_trip = serde_json::to_value(&object).expect("serialize");
    assert_eq!(
        &round_trip,
        value,
        "{}: fields unknown to {} (misspelt or misplaced?)",
        path.display(),
        T::KIND
    );
    object
}

#[test]
fn deploy_manifests_are_valid_kubernetes_objects() {
    let all = manifests();
    let kinds: BTreeSet<String> = all
        .iter()
        .map(|(_, v)| {
            format!("{}/{}", v["apiVersion"].as_str().unwrap_or("?"), v["kind"].as_str().unwrap_or("?"))
        })
        .collect();
    assert_eq!(
        kinds,
        BTreeSet::from(
            [
                "apps/v1/DaemonSet",
                "v1/ServiceAccount",
                "rbac.authorization.k8s.io/v1/ClusterRole",
                "rbac.authorization.k8s.io/v1/ClusterRoleBinding"
            ]
            .map(String::from)
        ),
        "deploy/ holds exactly the four manifests"
    );
    let _: DaemonSet = typed();
    let _: ServiceAccount = typed();
    let _: ClusterRole = typed();
    let _: ClusterRoleBinding = typed();
}

#[test]
fn deploy_cluster_role_grants_exactly_read_access_to_services_endpointslices_and_nodes() {
    let role: ClusterRole = typed();
    assert!(role.aggregation_rule.is_none(), "an aggregated role grants whatever it aggregates");
    let mut granted = BTreeSet::new();
    for rule in role.rules.as_deref().unwrap_or_default() {
        let verbs: BTreeSet<&str> = rule.verbs.iter().map(String::as_str).collect();
        assert_eq!(verbs, BTreeSet::from(["get", "list", "watch"]), "{rule:?}");
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none(), "{rule:?}");
        for group in rule.api_groups.as_deref().unwrap_or_default() {
            for resource in rule.resources.as_deref().unwrap_or_default() {
                assert!(
                    granted.insert((group.clone(), resource.clone())),
                    "{group}/{resource} granted twice"
                );
            }
        }
    }
    let expected: BTreeSet<(String, String)> =
        [("", "services"), ("discovery.k8s.io", "endpointslices"), ("", "nodes")]
            .map(|(g, r)| (g.to_owned(), r.to_owned()))
            .into();
    assert_eq!(granted, expected);

    let account: ServiceAccount = typed();
    let binding: ClusterRoleBinding = typed();
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(binding.role_ref.api_group, "rbac.authorization.k8s.io");
    assert_eq!(Some(&binding.role_ref.name), role.metadata.name.as_ref());
    let subjects = binding.subjects.unwrap_or_default();
    assert_eq!(subjects.len(), 1, "{subjects:?}");
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(Some(&subjects[0].name), account.metadata.name.as_ref());
    assert_eq!(subjects[0].namespace, account.metadata.namespace);
}

#[test]
fn deploy_daemonset_runs_the_kubernetes_source_on_every_node_with_named_capabilities() {
    let ds: DaemonSet = typed();
    let account: ServiceAccount = typed();
    assert_eq!(ds.metadata.namespace.as_deref(), Some("kube-system"));
    assert_eq!(account.metadata.namespace.as_deref(), Some("kube-system"));
    let spec = ds.spec.expect("spec");
    let labels = spec.template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
    for (k, v) in spec.selector.match_labels.clone().unwrap_or_default() {
        assert_eq!(labels.get(&k), Some(&v), "the selector does not match the pod template");
    }
    let pod = spec.template.spec.expect("pod spec");
    assert_eq!(pod.service_account_name, account.metadata.name);
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
    assert_eq!(pod.priority_class_name.as_deref(), Some("system-node-critical"));
    let tolerations = pod.tolerations.unwrap_or_default();
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none() && t.effect.is_none()),
        "no toleration for every taint: {tolerations:?}"
    );

    let [container] = pod.containers.as_slice() else { panic!("one container expected") };
    let argv: Vec<&str> = container
        .command
        .iter()
        .flatten()
        .chain(container.args.iter().flatten())
        .map(String::as_str)
        .collect();
    let flag = |name: &str| argv.windows(2).find(|w| w[0] == name).map(|w| w[1]);
    assert_eq!(argv.first(), Some(&"lb-agent"), "{argv:?}");
    assert_eq!(argv.get(1), Some(&"run"), "{argv:?}");
    assert_eq!(flag("--source"), Some("kubernetes"), "{argv:?}");
    assert_eq!(flag("--cgroup"), Some("/sys/fs/cgroup"), "{argv:?}");
    assert_eq!(flag("--bpffs"), Some("/sys/fs/bpf/lb"), "{argv:?}");

    let env = container.env.as_deref().unwrap_or_default();
    let node_name = env.iter().find(|e| e.name == "NODE_NAME").expect("NODE_NAME is set");
    let field =
        node_name.value_from.as_ref().and_then(|v| v.field_ref.as_ref()).map(|f| f.field_path.as_str());
    assert_eq!(field, Some("spec.nodeName"), "NODE_NAME must come from the downward API");

    let security = container.security_context.clone().expect("securityContext");
    assert_eq!(security.privileged, Some(false));
    let caps = security.capabilities.expect("capabilities");
    assert_eq!(caps.drop, Some(vec!["ALL".to_owned()]));
    let added: BTreeSet<&str> = caps.add.iter().flatten().map(String::as_str).collect();
    assert_eq!(
        added,
        BTreeSet::from(["BPF", "NET_ADMIN", "SYS_ADMIN", "PERFMON", "SYS_RESOURCE"]),
        "no CAP_SYS_PTRACE: pods' namespaces are found by their runtime files"
    );
    assert_ne!(pod.host_pid, Some(true), "no hostPID: pods' namespaces are found by their runtime files");
    // Every added capability is justified in a comment naming it.
    let text = std::fs::read_to_string(deploy_dir().join("daemonset.yaml")).expect("daemonset.yaml");
    for cap in &added {
        assert!(text.contains(&format!("# CAP_{cap}: ")), "CAP_{cap} is not explained in daemonset.yaml");
    }

    // Mounts: the host's bpffs (holding --bpffs) and cgroup2 root (= --cgroup), from hostPath.
    let volumes = pod.volumes.unwrap_or_default();
    let host_path = |mount_path: &str| {
        let mount = container
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.mount_path == mount_path)
            .unwrap_or_else(|| panic!("{mount_path} is not mounted"));
        // The API server refuses Bidirectional propagation on an unprivileged container.
        assert_ne!(mount.mount_propagation.as_deref(), Some("Bidirectional"), "{mount:?}");
        let volume = volumes.iter().find(|v| v.name == mount.name).expect("volume");
        volume.host_path.as_ref().map(|h| h.path.clone())
    };
    assert_eq!(host_path("/sys/fs/bpf").as_deref(), Some("/sys/fs/bpf"));
    assert_eq!(host_path("/sys/fs/cgroup").as_deref(), Some("/sys/fs/cgroup"));
    assert_eq!(host_path("/run/netns").as_deref(), Some("/run/netns"));

    // Probes at kube-proxy's healthz port.
    for (probe, path) in [(&container.liveness_probe, "/livez"), (&container.readiness_probe, "/readyz")] {
        let get =
            probe.as_ref().and_then(|p| p.http_get.as_ref()).unwrap_or_else(|| panic!("no {path} probe"));
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(get.port, k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(10256));
    }
    let requests = container.resources.as_ref().and_then(|r| r.requests.clone()).unwrap_or_default();
    assert!(requests.contains_key("cpu") && requests.contains_key("memory"), "{requests:?}");
}

#[test]
fn deploy_dockerfile_builds_the_agent_and_ships_the_cleanup_tools() {
    let text = std::fs::read_to_string(deploy_dir().join("Dockerfile")).expect("deploy/Dockerfile");
    let stages: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(stages.len(), 2, "a build and a runtime stage: {stages:?}");
    assert!(stages[0].contains("rust:") && stages[0].contains("bookworm"), "{stages:?}");
    assert!(stages[1].contains("debian:bookworm-slim"), "{stages:?}");
    let runtime = &text[text.rfind("FROM ").expect("runtime stage")..];
    for package in ["iproute2", "iptables", "nftables"] {
        assert!(runtime.contains(package), "the runtime image lacks {package}");
    }
    assert!(runtime.contains("COPY --from=build"), "the runtime copies the built agent");
    assert!(text.contains("-p lb-agent"), "the build stage builds lb-agent");
}
