//! Service names in the maps: which Service port a backend group serves (`LB_SERVICES`), so the
//! CLI and the metrics can say `default/web:http` next to a group id.
use std::fmt;

use lb_common::{ServiceName, service_scope};
use serde::Serialize;

use crate::model::{BackendGroup, Family, Protocol, Scope};

/// `text` in a NUL-padded field, cut at a character boundary if it does not fit (Kubernetes
/// names always fit).
fn field<const N: usize>(text: &str) -> [u8; N] {
    let mut out = [0u8; N];
    let mut end = text.len().min(N);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    out[..end].copy_from_slice(&text.as_bytes()[..end]);
    out
}

fn text(field: &[u8]) -> String {
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

/// The `LB_SERVICES` value of `group`.
pub fn encode(group: &BackendGroup) -> ServiceName {
    ServiceName {
        namespace: field(&group.service.namespace),
        name: field(&group.service.name),
        port: field(&group.service.port),
        proto: group.service.protocol.number(),
        family: match group.family {
            Family::V4 => 4,
            Family::V6 => 6,
        },
        scope: match group.scope {
            Scope::Internal => service_scope::CLUSTER,
            Scope::External => service_scope::EXTERNAL,
        },
        pad: [0; 5],
    }
}

/// An `LB_SERVICES` value, decoded.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct ServiceLabel {
    pub namespace: String,
    pub name: String,
    /// The Service port's name (empty for a Service's only, unnamed port).
    pub port: String,
    pub protocol: String,
    /// `cluster` (ClusterIP, this node's own traffic) or `external` (NodePort, LoadBalancer,
    /// external IPs).
    pub scope: &'static str,
}

impl ServiceLabel {
    pub fn decode(v: &ServiceName) -> Self {
        Self {
            namespace: text(&v.namespace),
            name: text(&v.name),
            port: text(&v.port),
            protocol: Protocol::from_number(v.proto)
                .map_or_else(|| format!("proto {}", v.proto), |p| p.to_string()),
            scope: if v.scope == service_scope::EXTERNAL { "external" } else { "cluster" },
        }
    }

    /// Whether `filter` names this Service: `namespace/name`, `name`, or either with `:port`.
    pub fn matches(&self, filter: &str) -> bool {
        let (service, port) = match filter.rsplit_once(':') {
            Some((s, p)) => (s, Some(p)),
            None => (filter, None),
        };
        let service_ok = match service.split_once('/') {
            Some((ns, name)) => ns == self.namespace && name == self.name,
            None => service == self.name,
        };
        service_ok && port.is_none_or(|p| p == self.port)
    }
}

impl fmt::Display for ServiceLabel {
    /// `default/web:http`, or `default/web` for an unnamed port.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)?;
        if !self.port.is_empty() {
            write!(f, ":{}", self.port)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_and_cut_at_a_character_boundary() {
        let f: [u8; 4] = field("abcdef");
        assert_eq!(text(&f), "abcd");
        let f: [u8; 4] = field("aé€");
        assert_eq!(text(&f), "aé");
        let f: [u8; 16] = field("http");
        assert_eq!(text(&f), "http");
    }

    #[test]
    fn filters_match_namespace_name_and_port() {
        let label = ServiceLabel {
            namespace: "default".into(),
            name: "web".into(),
            port: "http".into(),
            protocol: "TCP".into(),
            scope: "cluster",
        };
        for (filter, expected) in [
            ("web", true),
            ("default/web", true),
            ("default/web:http", true),
            ("web:http", true),
            ("web:https", false),
            ("kube-system/web", false),
            ("we", false),
        ] {
            assert_eq!(label.matches(filter), expected, "{filter}");
        }
        assert_eq!(label.to_string(), "default/web:http");
    }
}
