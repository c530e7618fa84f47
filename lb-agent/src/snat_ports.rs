//! Keeps the TC programs' SNAT ports (`lb_common::SNAT_PORT_MIN..=SNAT_PORT_MAX`) away from the
//! node's own sockets: a local socket on such a port talking to a backend would have its replies
//! taken for a SNATed flow's. The range lies outside Linux's default ephemeral range, but nodes
//! often widen `ip_local_port_range`; adding it to `ip_local_reserved_ports` (per network
//! namespace, IPv4 and IPv6 alike) keeps the kernel from handing it out, as Cilium does.
use lb_common::{SNAT_PORT_MAX, SNAT_PORT_MIN};

const RESERVED: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";

/// `current` (the sysctl's text) with the SNAT range added; `None` when it is already there.
pub fn with_snat_range(current: &str) -> Option<String> {
    let current = current.trim();
    let range = format!("{SNAT_PORT_MIN}-{SNAT_PORT_MAX}");
    if current.split(',').any(|r| r.trim() == range) {
        return None;
    }
    Some(if current.is_empty() { range } else { format!("{current},{range}") })
}

/// Reserves the SNAT range in this network namespace; a failure is logged, not fatal (explicit
/// binds can still take a reserved port, so this narrows the window rather than closing it).
pub fn reserve() {
    let result = std::fs::read_to_string(RESERVED).and_then(|current| match with_snat_range(&current) {
        Some(new) => std::fs::write(RESERVED, new),
        None => Ok(()),
    });
    match result {
        Ok(()) => tracing::debug!(range = %format!("{SNAT_PORT_MIN}-{SNAT_PORT_MAX}"), "SNAT ports reserved"),
        Err(e) => tracing::warn!(
            error = %e,
            "cannot add the SNAT port range to {RESERVED}: local sockets may take SNAT ports"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::with_snat_range;

    #[test]
    fn adds_the_range_once() {
        assert_eq!(with_snat_range("\n").as_deref(), Some("61000-65535"));
        assert_eq!(with_snat_range("8080,9000-9100\n").as_deref(), Some("8080,9000-9100,61000-65535"));
        assert_eq!(with_snat_range("8080,61000-65535\n"), None);
    }
}
