//! Small builders for the Kubernetes objects tests write into the agent's source file.
use std::fmt::Write as _;

/// A Service port: (name, port, protocol, targetPort).
pub struct Port<'a>(pub &'a str, pub u16, pub &'a str, pub u16);

/// A `v1/Service` of type ClusterIP.
pub fn service(namespace: &str, name: &str, cluster_ips: &[&str], ports: &[Port<'_>]) -> String {
    let mut s = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  type: ClusterIP\n  clusterIP: \"{}\"\n  clusterIPs: [{}]\n  ipFamilies: [{}]\n  ports:\n",
        cluster_ips[0],
        cluster_ips.iter().map(|ip| format!("\"{ip}\"")).collect::<Vec<_>>().join(", "),
        cluster_ips
            .iter()
            .map(|ip| if ip.contains(':') { "IPv6" } else { "IPv4" })
            .collect::<Vec<_>>()
            .join(", ")
    );
    for Port(port_name, port, proto, target) in ports {
        writeln!(s, "  - {{name: \"{port_name}\", port: {port}, protocol: {proto}, targetPort: {target}}}")
            .expect("write");
    }
    s
}

/// An endpoint: address and its `ready`, `serving`, `terminating` conditions.
pub struct Ep<'a>(pub &'a str, pub bool, pub bool, pub bool);

impl<'a> Ep<'a> {
    pub fn ready(addr: &'a str) -> Self {
        Self(addr, true, true, false)
    }
}

/// A `discovery.k8s.io/v1` EndpointSlice of `service`; ports are (name, port, protocol).
pub fn slice(
    namespace: &str,
    name: &str,
    service: &str,
    address_type: &str,
    ports: &[(&str, u16, &str)],
    endpoints: &[Ep<'_>],
) -> String {
    let mut s = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  namespace: {namespace}\n  labels: {{kubernetes.io/service-name: {service}}}\naddressType: {address_type}\nports:\n"
    );
    for (port_name, port, proto) in ports {
        writeln!(s, "- {{name: \"{port_name}\", port: {port}, protocol: {proto}}}").expect("write");
    }
    s.push_str("endpoints:\n");
    if endpoints.is_empty() {
        s.truncate(s.len() - 1);
        s.push_str(" []\n");
    }
    for Ep(addr, ready, serving, terminating) in endpoints {
        writeln!(
            s,
            "- {{addresses: [\"{addr}\"], conditions: {{ready: {ready}, serving: {serving}, terminating: {terminating}}}, nodeName: node-1}}"
        )
        .expect("write");
    }
    s
}

/// Joins objects into one multi-document YAML file.
pub fn documents(objects: &[String]) -> String {
    objects.join("---\n")
}
