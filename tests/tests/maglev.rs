//! Maglev in the kernel: 10,000 synthetic flows (SYNs from varied client addresses and ports) run
//! through `lb_tc_ingress` with BPF_PROG_TEST_RUN (`lb-agent trace --batch`), against agents with
//! `--lb-algorithm maglev` and a Service (external IP) of five endpoints. What each flow's SYN is
//! rewritten to is the backend the kernel chose, from the flow hash and the Maglev table the
//! agent wrote into the slot map.
//!
//! Three agents, each with its own fresh maps (a flow already in conntrack would keep its backend
//! whatever the table says, so each measurement starts empty):
//! - A: five endpoints;
//! - B: the same five listed in another order, as another node might receive them: every flow
//!   picks the same backend (nodes agree without talking to each other);
//! - C: one endpoint removed: its flows move, and of the others only a few percent do.
//!
//! The userspace half (the table builder alone) is `lb-agent`'s `datapath::maglev` unit tests.
use std::{collections::BTreeMap, time::Duration};

use lb_tests::{
    node::PinnedAgent,
    packet::{Packet, TCP_SYN, trace_batch, tuple},
    require_root,
};

const FRONTEND: &str = "203.0.113.50:80";
const FLOWS: u32 = 10_000;

fn pod(i: usize) -> String {
    format!("10.244.1.{}", 10 + i)
}

fn cluster(pods: &[usize]) -> String {
    let endpoints: String = pods
        .iter()
        .map(|&i| format!("- {{addresses: ['{}'], nodeName: node-1, conditions: {{ready: true}}}}\n", pod(i)))
        .collect();
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  type: ClusterIP
  clusterIP: 10.96.0.50
  externalIPs: ['203.0.113.50']
  ports:
  - {{name: http, port: 80, targetPort: 8080, protocol: TCP}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-1, namespace: default, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints:
{endpoints}"
    )
}

/// The SYN of flow `i`: clients spread over 198.18.0.0/15, ports over 1024..65535.
fn syn(i: u32) -> Vec<u8> {
    let h = i.wrapping_mul(0x9e37_79b9).rotate_left(13) ^ i;
    let client = format!(
        "198.{}.{}.{}:{}",
        18 + (h >> 24) % 2,
        (h >> 16) & 0xff,
        (h >> 8) & 0xff,
        1024 + i * 6 % 64_000
    );
    Packet::tcp(&client, FRONTEND, TCP_SYN).frame()
}

/// The backend address each flow's SYN is translated to by a fresh agent serving `pods`.
fn picks(pods: &[usize], frames: &[Vec<u8>]) -> Vec<String> {
    let agent =
        PinnedAgent::start(&cluster(pods), &["--lb-algorithm", "maglev"], Duration::from_secs(20), true)
            .expect("agent");
    let traced = trace_batch(&agent.bpffs.path, "ingress", frames).expect("trace --batch");
    traced
        .iter()
        .map(|t| {
            assert_eq!(t.verdict, -1, "every flow is translated and handed on: {:#}", t.json);
            tuple(&t.output).2.ip().to_string()
        })
        .collect()
}

#[test]
fn maglev_in_the_kernel_agrees_across_nodes_and_moves_only_the_removed_backends_flows() {
    require_root();
    let frames: Vec<Vec<u8>> = (0..FLOWS).map(syn).collect();
    let a = picks(&[0, 1, 2, 3, 4], &frames);
    let b = picks(&[3, 1, 4, 0, 2], &frames);
    let c = picks(&[0, 1, 3, 4], &frames);

    let mut share: BTreeMap<&str, u32> = BTreeMap::new();
    for p in &a {
        *share.entry(p).or_default() += 1;
    }
    eprintln!("kernel Maglev, {FLOWS} flows over 5 backends: {share:?}");
    assert_eq!(share.len(), 5, "{share:?}");
    for (backend, n) in &share {
        // 2,000 expected each; Maglev's table balance (16381 entries) and the hash keep it near.
        assert!((1_600..=2_400).contains(n), "{backend} got {n} of {FLOWS}: {share:?}");
    }

    let disagree = a.iter().zip(&b).filter(|(x, y)| x != y).count();
    assert_eq!(disagree, 0, "another node with the same endpoints in another order picks the same backends");

    let removed = pod(2);
    let on_removed = a.iter().filter(|p| **p == removed).count();
    assert!(c.iter().all(|p| *p != removed), "no flow goes to the removed backend");
    let others_moved = a.iter().zip(&c).filter(|(x, y)| **x != removed && x != y).count();
    let kept = FLOWS as usize - on_removed;
    let percent = others_moved as f64 * 100.0 / kept as f64;
    eprintln!(
        "removing 1 of 5: {on_removed} flows of the removed backend moved; {others_moved} of the other {kept} \
         ({percent:.2}%) moved too"
    );
    assert!(percent <= 5.0, "{percent:.2}% of the flows of the remaining backends moved");
}
