//! `--config FILE`: kube-proxy's own configuration (`KubeProxyConfiguration`,
//! `kubeproxy.config.k8s.io/v1alpha1`, the document kubeadm keeps in the `kube-system/kube-proxy`
//! ConfigMap), so an operator swapping kube-proxy for the agent changes no configuration.
//!
//! Every field that means the same thing here is honoured, and a flag given on the command line
//! (or through its environment variable) wins over the file:
//! `hostnameOverride` (node name), `clientConnection.kubeconfig`, `metricsBindAddress`,
//! `healthzBindAddress` (empty: kube-proxy's defaults `127.0.0.1:10249` and `0.0.0.0:10256`),
//! `nodePortAddresses`, `minSyncPeriod` (or the mode's `iptables`/`nftables`/`ipvs.minSyncPeriod`),
//! `logging.format`.
//!
//! Fields that configure what the agent does not have a use for (the proxy `mode`, `ipvs.*`,
//! `syncPeriod`, `clusterCIDR` and local-traffic detection, which the agent does not need…) are
//! named in one warning. A field set to a value that would ask for behaviour the agent does not
//! have (`masqueradeAll`, a `portRange`, kernel conntrack tuning, NodePorts on localhost) is an
//! error, as is a field kube-proxy does not know: never silently ignored.
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde_json::Value;
use thiserror::Error;

/// What the file asks of the agent (each `None` when the file leaves it to the default).
#[derive(Debug, Default, PartialEq)]
pub struct FromFile {
    pub node_name: Option<String>,
    pub kubeconfig: Option<PathBuf>,
    pub metrics_addr: Option<String>,
    pub healthz_addr: Option<String>,
    pub nodeport_addresses: Option<String>,
    pub min_sync_period: Option<Duration>,
    pub json_logs: bool,
    /// Fields set that do not apply to the agent, for the one warning.
    pub not_applicable: Vec<String>,
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("{0}: not a KubeProxyConfiguration: {1}")]
    Syntax(PathBuf, String),
    #[error("{path}: {problems}")]
    Refused { path: PathBuf, problems: String },
}

/// kube-proxy's defaults for an empty bind address.
const DEFAULT_METRICS: &str = "127.0.0.1:10249";
const DEFAULT_HEALTHZ: &str = "0.0.0.0:10256";

/// Whether a value is unset in kubeadm's sense: null, empty, zero, false, `0s`, or an object of
/// only such values.
fn unset(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty() || parse_go_duration(s) == Some(Duration::ZERO),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.values().all(unset),
    }
}

/// A Go duration (`1m30s`, `500ms`, `0s`, `2h`).
pub fn parse_go_duration(text: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let nanos = match &rest[..unit] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total += Duration::from_nanos((number * nanos) as u64);
        rest = &rest[unit..];
    }
    Some(total)
}

/// Top-level fields: how each is taken.
enum Use {
    /// Read into `FromFile` (below).
    Honoured,
    /// Configures nothing the agent has: named in the warning when set.
    NotApplicable,
    /// Set, it would ask for behaviour the agent lacks: an error, with why.
    Refused(&'static str),
    /// A section whose fields are sorted one by one (`section`).
    Section,
}

fn top_level(key: &str) -> Option<Use> {
    Some(match key {
        "apiVersion" | "kind" | "hostnameOverride" | "metricsBindAddress" | "healthzBindAddress"
        | "nodePortAddresses" | "minSyncPeriod" => Use::Honoured,
        "bindAddress"
        | "bindAddressHardFail"
        | "clusterCIDR"
        | "configSyncPeriod"
        | "detectLocalMode"
        | "enableProfiling"
        | "featureGates"
        | "mode"
        | "oomScoreAdj"
        | "showHiddenMetricsForVersion"
        | "syncPeriod"
        | "winkernel"
        | "detectLocal"
        | "ipvs" => Use::NotApplicable,
        "portRange" => Use::Refused("the agent does not reserve a port range for proxying"),
        "clientConnection" | "conntrack" | "iptables" | "nftables" | "logging" => Use::Section,
        _ => return None,
    })
}

/// Fields inside the sections.
fn in_section(section: &str, key: &str) -> Option<Use> {
    Some(match (section, key) {
        ("clientConnection", "kubeconfig") => Use::Honoured,
        ("clientConnection", "acceptContentTypes" | "contentType" | "qps" | "burst") => Use::NotApplicable,
        (
            "conntrack",
            "maxPerCore"
            | "min"
            | "tcpEstablishedTimeout"
            | "tcpCloseWaitTimeout"
            | "udpTimeout"
            | "udpStreamTimeout"
            | "tcpBeLiberal",
        ) => Use::Refused(
            "it tunes the kernel's netfilter conntrack (sysctls), which the agent does not manage: \
                 set the sysctl on the node, or leave it unset",
        ),
        ("iptables" | "nftables", "minSyncPeriod") => Use::Honoured,
        ("iptables" | "nftables", "syncPeriod" | "masqueradeBit") => Use::NotApplicable,
        ("iptables" | "nftables", "masqueradeAll") => Use::Refused(
            "the agent SNATs only traffic towards other nodes' backends and hairpins, not all of it",
        ),
        ("iptables", "localhostNodePorts") => {
            Use::Refused("the agent does not serve NodePorts on 127.0.0.1 (set false or leave it unset)")
        }
        ("logging", "format") => Use::Honoured,
        ("logging", "flushFrequency" | "verbosity" | "vmodule" | "options") => Use::NotApplicable,
        _ => return None,
    })
}

/// Reads `path`.
pub fn load(path: &std::path::Path) -> Result<FromFile, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.to_owned(), e))?;
    parse(&text).map_err(|e| match e {
        ParseError::Syntax(why) => ConfigError::Syntax(path.to_owned(), why),
        ParseError::Refused(problems) => {
            ConfigError::Refused { path: path.to_owned(), problems: problems.join("; ") }
        }
    })
}

#[derive(Debug)]
pub enum ParseError {
    Syntax(String),
    Refused(Vec<String>),
}

/// Parses a KubeProxyConfiguration document.
pub fn parse(text: &str) -> Result<FromFile, ParseError> {
    let doc: Value = serde_saphyr::from_str(text).map_err(|e| ParseError::Syntax(e.to_string()))?;
    let Value::Object(fields) = &doc else { return Err(ParseError::Syntax("not a mapping".into())) };
    let str_of = |v: &Value| v.as_str().map(str::to_owned);
    if fields.get("kind").and_then(Value::as_str) != Some("KubeProxyConfiguration")
        || !fields
            .get("apiVersion")
            .and_then(Value::as_str)
            .is_some_and(|v| v.starts_with("kubeproxy.config.k8s.io/"))
    {
        return Err(ParseError::Syntax(
            "kind must be KubeProxyConfiguration, apiVersion kubeproxy.config.k8s.io/v1alpha1".into(),
        ));
    }
    let mut out = FromFile::default();
    let mut refused = Vec::new();
    let mut mode_sync: Option<Duration> = None;
    let mode = fields.get("mode").and_then(Value::as_str).unwrap_or_default();
    for (key, value) in fields {
        match top_level(key) {
            None => refused.push(format!("unknown field {key}")),
            // kube-proxy's own default bind address, as kubeadm writes it, asks for nothing.
            Some(Use::NotApplicable)
                if key == "bindAddress" && matches!(value.as_str(), Some("0.0.0.0" | "::")) => {}
            Some(Use::NotApplicable) if !unset(value) => out.not_applicable.push(key.clone()),
            Some(Use::Refused(why)) if !unset(value) => refused.push(format!("{key}: {why}")),
            Some(Use::Section) => {
                let Value::Object(inner) = value else {
                    if !value.is_null() {
                        refused.push(format!("{key} must be a mapping"));
                    }
                    continue;
                };
                for (field, v) in inner {
                    let name = format!("{key}.{field}");
                    match in_section(key, field) {
                        None => refused.push(format!("unknown field {name}")),
                        Some(Use::NotApplicable) if !unset(v) => out.not_applicable.push(name),
                        Some(Use::Refused(why)) if !unset(v) => refused.push(format!("{name}: {why}")),
                        Some(Use::Honoured) => match (key.as_str(), field.as_str()) {
                            ("clientConnection", "kubeconfig") => {
                                out.kubeconfig = str_of(v).filter(|s| !s.is_empty()).map(PathBuf::from);
                            }
                            (section, "minSyncPeriod")
                                if !unset(v) && (section == mode || mode.is_empty()) =>
                            {
                                mode_sync = Some(duration(v, &name, &mut refused));
                            }
                            ("logging", "format") => out.json_logs = v.as_str() == Some("json"),
                            _ => {}
                        },
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    out.node_name = fields.get("hostnameOverride").and_then(str_of).filter(|s| !s.is_empty());
    let bind = |key: &str, default: &str| {
        let text = fields.get(key).and_then(Value::as_str).unwrap_or_default();
        // kube-proxy also takes a bare IP (its default port) for these.
        let port = default.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(0);
        Some(match text.parse::<std::net::IpAddr>() {
            _ if text.is_empty() => default.to_owned(),
            Ok(ip) => SocketAddr::new(ip, port).to_string(),
            Err(_) => text.to_owned(),
        })
    };
    out.metrics_addr = bind("metricsBindAddress", DEFAULT_METRICS);
    out.healthz_addr = bind("healthzBindAddress", DEFAULT_HEALTHZ);
    out.nodeport_addresses = match fields.get("nodePortAddresses") {
        Some(Value::Array(list)) if !list.is_empty() => {
            Some(list.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(","))
        }
        _ => None,
    };
    out.min_sync_period = match fields.get("minSyncPeriod") {
        Some(v) if !v.is_null() && v.as_str().is_some_and(|s| !s.is_empty()) => {
            Some(duration(v, "minSyncPeriod", &mut refused))
        }
        _ => mode_sync,
    };
    if !refused.is_empty() {
        return Err(ParseError::Refused(refused));
    }
    Ok(out)
}

fn duration(v: &Value, name: &str, refused: &mut Vec<String>) -> Duration {
    let text = v.as_str().unwrap_or_default();
    parse_go_duration(text).unwrap_or_else(|| {
        refused.push(format!("{name}: {text:?} is not a duration"));
        Duration::ZERO
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The document kubeadm writes (v1.31), with a few fields set.
    pub const KUBEADM: &str = include_str!("kube_proxy_config/kubeadm.yaml");

    #[test]
    fn kubeadms_document_is_honoured_and_what_does_not_apply_is_named() {
        let f = parse(KUBEADM).expect("kubeadm's document");
        assert_eq!(f.node_name.as_deref(), Some("node-from-config"));
        assert_eq!(f.kubeconfig, Some(PathBuf::from("/var/lib/kube-proxy/kubeconfig.conf")));
        assert_eq!(f.metrics_addr.as_deref(), Some("0.0.0.0:10249"));
        assert_eq!(f.healthz_addr.as_deref(), Some("0.0.0.0:10256"), "empty: kube-proxy's default");
        assert_eq!(f.min_sync_period, Some(Duration::from_secs(1)));
        assert_eq!(f.not_applicable, ["clusterCIDR", "mode"]);
        assert!(!f.json_logs);
    }

    #[test]
    fn behaviour_the_agent_lacks_and_unknown_fields_are_refused() {
        for (doc, says) in [
            (KUBEADM.replace("portRange: \"\"", "portRange: 30000-32767"), "portRange"),
            (format!("{KUBEADM}iptablez: {{}}\n"), "unknown field iptablez"),
            (
                KUBEADM.replace("  localhostNodePorts: null", "  localhostNodePorts: true"),
                "localhostNodePorts",
            ),
        ] {
            let extra = says;
            match parse(&doc) {
                Err(ParseError::Refused(problems)) => {
                    assert!(problems.iter().any(|p| p.contains(says)), "{extra}: {problems:?}");
                }
                other => panic!("{extra}: {other:?}"),
            }
        }
        let masquerade = KUBEADM.replace("  masqueradeAll: false", "  masqueradeAll: true");
        assert!(
            matches!(parse(&masquerade), Err(ParseError::Refused(p)) if p.iter().any(|p| p.contains("masqueradeAll")))
        );
        let conntrack = KUBEADM.replace("  maxPerCore: null", "  maxPerCore: 32768");
        assert!(
            matches!(parse(&conntrack), Err(ParseError::Refused(p)) if p.iter().any(|p| p.contains("conntrack.maxPerCore")))
        );
        assert!(matches!(parse("kind: Pod\napiVersion: v1\n"), Err(ParseError::Syntax(_))));
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_go_duration("0s"), Some(Duration::ZERO));
        assert_eq!(parse_go_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_go_duration("10"), None);
        assert_eq!(parse_go_duration("abc"), None);
    }
}
