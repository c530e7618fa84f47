//! kube-proxy's behaviours, one row per rule, in our own words: the repository's list of what a
//! kube-proxy user expects of Service handling. Code and documents cite a behaviour by its id
//! ("rule 39"); tests name the rules they show by these ids (`lb_tests::parity::shown`), and
//! `cargo xtask parity` renders the list with those tests as `docs/PARITY.md`.

/// (id, area, behaviour).
pub const RULES: &[(&str, &str, &str)] = &[
    (
        "1",
        "Service selection",
        "A Service labelled `service.kubernetes.io/service-proxy-name` (another proxy's) is skipped",
    ),
    ("2", "Service selection", "Headless Services (`clusterIP: None` or empty) are skipped"),
    ("3", "Service selection", "`type: ExternalName` is skipped, even with a ClusterIP"),
    (
        "4",
        "Service selection",
        "One ClusterIP per family (`clusterIPs[i]` for `ipFamilies[i]`); no ClusterIP in a family means no frontend of any kind in it",
    ),
    ("5", "Service selection", "Each port is keyed by (namespace/name, port name, protocol)"),
    ("6", "Service selection", "TCP, UDP and SCTP are proxied alike"),
    ("7", "Service selection", "A NodePort frontend exists iff `nodePort != 0`, whatever the type"),
    ("8", "Service selection", "`externalIPs`, filtered by family, on any type"),
    (
        "9",
        "Service selection",
        "LB frontends from `status.loadBalancer.ingress[].ip`; hostname-only and `ipMode: Proxy` ignored",
    ),
    (
        "10",
        "Service selection",
        "`loadBalancerSourceRanges` gate LB VIP traffic only (others dropped); NodePorts are not gated",
    ),
    (
        "11",
        "Traffic policy",
        "Externally accessible = LoadBalancer, NodePort, or ClusterIP with externalIPs; eTP=Local only then",
    ),
    ("12", "Health check", "`healthCheckNodePort` only for LoadBalancer with eTP=Local"),
    (
        "13",
        "Session affinity",
        "`sessionAffinity: ClientIP` with its timeout (default 10800 s) on every frontend of the port",
    ),
    (
        "13a",
        "Session affinity",
        "Affinity keyed on the client IP, timed out, never pins outside the current endpoint set",
    ),
    ("13b", "Session affinity", "`sessionAffinity: None`: no stickiness"),
    ("14", "Topology", "`trafficDistribution` and topology annotations are not read; only slice hints are"),
    ("15", "Endpoint merging", "Slices of the other family, and FQDN slices, are ignored"),
    (
        "16",
        "Endpoint merging",
        "A slice without the `kubernetes.io/service-name` label is ignored; the owner is found by that label only",
    ),
    (
        "17",
        "Endpoint merging",
        "Every slice of a Service is merged; a slice for a missing Service makes no frontend",
    ),
    ("18", "Endpoint merging", "Slice ports match by (name, protocol); nil name or nil/0 port skipped"),
    (
        "19",
        "Endpoint merging",
        "The backend port is the slice port's number; a named targetPort's differing numbers merge",
    ),
    ("20", "Endpoint merging", "An endpoint without addresses is skipped; only `addresses[0]` is used"),
    ("21", "Endpoint merging", "Duplicates by IP:port across slices: the non-terminating copy wins"),
    ("22", "Readiness", "`ready` and `serving` nil mean true, `terminating` nil means false"),
    (
        "23",
        "Endpoint merging",
        "Local = the endpoint's `nodeName` is this node (empty node name: never local)",
    ),
    ("24", "Readiness", "`publishNotReadyAddresses` is not read; `ready` is trusted"),
    ("25", "Readiness", "Cluster set = ready endpoints; if none, serving+terminating ones; not-ready never"),
    ("26", "Readiness", "Local set = local ready; if none, local serving+terminating, decided per node"),
    ("27", "No endpoints", "Any ready or serving+terminating endpoint anywhere decides REJECT vs DROP"),
    ("28", "Health check", "The Service health check counts local ready endpoints only"),
    ("29", "Traffic policy", "ClusterIP frontends use the Local set with iTP=Local, else the Cluster set"),
    ("30", "Traffic policy", "NodePort, externalIP and LB frontends use the Local set with eTP=Local"),
    (
        "31",
        "Traffic policy",
        "eTP=Local short-circuit: the node's own and local pods' traffic to external frontends uses the Cluster set",
    ),
    (
        "32",
        "Traffic policy",
        "Masquerade external traffic with eTP=Cluster; keep the client address with eTP=Local",
    ),
    ("33", "Topology", "Topology filters the Cluster set only, never the Local set"),
    ("34", "Topology", "The node's zone is its Node label; the endpoint's `zone` field is never compared"),
    ("35", "Topology", "Same-zone mode iff every ready endpoint has zone hints and one names this zone"),
    ("36", "Topology", "Same-node hints (`forNodes`) come first"),
    ("37", "Topology", "PreferClose / PreferSameNode act through the slice hints only"),
    ("38", "Topology", "The terminating fallback ignores topology"),
    (
        "39",
        "No endpoints",
        "No usable endpoint anywhere: every frontend rejects (TCP RST / ICMP unreachable)",
    ),
    ("40", "No endpoints", "Endpoints only elsewhere with a Local policy: DROP, not REJECT"),
    ("41", "No endpoints", "A port whose slice port never matches has no endpoints (REJECT)"),
    (
        "42",
        "NodePort addresses",
        "`--nodeport-addresses` CIDRs (or `primary`) choose the NodePort addresses; empty = all local",
    ),
    (
        "43",
        "NodePort addresses",
        "Loopback NodePorts: IPv4 127/8 only with localhost NodePorts on, never `::1`",
    ),
    (
        "44",
        "NodePort addresses",
        "A NodePort matches any NodePort address on its port and the Service port's protocol",
    ),
    (
        "45",
        "Health check",
        "Per-Service health server on `healthCheckNodePort`: 200 iff local ready endpoints, JSON body and headers",
    ),
    ("46", "Health check", "Node healthz server: `/healthz` and `/livez`"),
    ("47", "Health check", "The health check port is served even without local endpoints"),
    (
        "48",
        "UDP cleanup",
        "UDP flows to an endpoint that is no longer serving are cleared (they move to a live one)",
    ),
    ("49", "UDP cleanup", "TCP flows are never flushed: established connections to a removed endpoint drain"),
    ("50", "Watch", "List then watch; a 410 Gone relists, tombstones accepted"),
    ("51", "Watch", "Nothing is programmed until Services and EndpointSlices have both synced"),
    ("52", "Watch", "Only this node's Node object is watched; its zone label change resyncs"),
    ("53", "Watch", "Changes are batched; identical objects cause no change"),
    (
        "54",
        "Masquerade",
        "A pod that reaches its own Service and is picked as the backend (hairpin) is masqueraded back to itself",
    ),
    (
        "55",
        "Health check",
        "`/healthz` answers `lastUpdated`, `currentTime`, `nodeEligible`; 503 while the node is being deleted or tainted `ToBeDeletedByClusterAutoscaler`",
    ),
    (
        "56",
        "Configuration",
        "Its `KubeProxyConfiguration` file (`--config`): bind addresses, hostname override, node port addresses, sync period",
    ),
];
