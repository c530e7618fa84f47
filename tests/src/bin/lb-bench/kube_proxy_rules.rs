//! The rule sets kube-proxy would write for the bench's Services, in its iptables and nftables
//! modes, and the time their loaders take inside a network namespace.
use std::{fmt::Write as _, process::Command, time::Instant};

use anyhow::{Context as _, ensure};
use lb_tests::guard::Netns;

use crate::cluster::ip;

/// kube-proxy's iptables-mode rule set for the bench's Services: the
/// KUBE-SERVICES jump per ClusterIP, a KUBE-SVC chain picking an endpoint with `statistic` random
/// probabilities, and a KUBE-SEP chain per endpoint with the masquerade mark and the DNAT; the
/// nat table's PREROUTING and OUTPUT jump to KUBE-SERVICES and POSTROUTING to KUBE-POSTROUTING,
/// as kube-proxy installs them.
pub fn iptables_rules(services: u32, endpoints: u32) -> String {
    let mut out = String::from(
        "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-POSTROUTING - [0:0]\n\
         -A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n\
         -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n\
         -A KUBE-POSTROUTING -j MASQUERADE --random-fully\n\
         -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n",
    );
    let mut rules = String::new();
    for i in 0..services {
        let svc = format!("KUBE-SVC-{i:016X}");
        let _ = writeln!(out, ":{svc} - [0:0]");
        let _ = writeln!(
            rules,
            "-A KUBE-SERVICES -d {}/32 -p tcp -m comment --comment \"bench/svc-{i}:http cluster IP\" -m tcp --dport 80 -j {svc}",
            ip([10, 96, 0, 0], i + 1)
        );
        for j in 0..endpoints {
            let sep = format!("KUBE-SEP-{:016X}", u64::from(i) << 8 | u64::from(j));
            let ep = ip([10, 128, 0, 0], i * endpoints + j);
            let _ = writeln!(out, ":{sep} - [0:0]");
            let left = endpoints - j;
            if left > 1 {
                let _ = writeln!(
                    rules,
                    "-A {svc} -m comment --comment \"bench/svc-{i}:http -> {ep}:8080\" -m statistic --mode random --probability {:.10} -j {sep}",
                    1.0 / f64::from(left)
                );
            } else {
                let _ = writeln!(
                    rules,
                    "-A {svc} -m comment --comment \"bench/svc-{i}:http -> {ep}:8080\" -j {sep}"
                );
            }
            let _ = writeln!(
                rules,
                "-A {sep} -s {ep}/32 -m comment --comment bench/svc-{i}:http -j KUBE-MARK-MASQ"
            );
            let _ = writeln!(
                rules,
                "-A {sep} -p tcp -m comment --comment bench/svc-{i}:http -m tcp -j DNAT --to-destination {ep}:8080"
            );
        }
    }
    out.push_str(&rules);
    out.push_str("COMMIT\n");
    out
}

/// kube-proxy's nftables-mode layout: a `service-ips` verdict map from
/// address . protocol . port to a per-service chain, which picks an endpoint chain with `numgen
/// random mod N`, which DNATs; the nat hooks at prerouting and output jump to the service map,
/// and postrouting masquerades marked packets.
pub fn nft_rules(services: u32, endpoints: u32) -> String {
    let mut out = String::from("table ip kube-proxy {\n");
    let mut elements = Vec::new();
    for i in 0..services {
        let _ = writeln!(out, "  chain service-{i}-bench-svc-{i}-tcp-http {{");
        let targets: Vec<String> = (0..endpoints).map(|j| format!("{j} : goto endpoint-{i}-{j}")).collect();
        let _ = writeln!(out, "    numgen random mod {endpoints} vmap {{ {} }}\n  }}", targets.join(", "));
        for j in 0..endpoints {
            let ep = ip([10, 128, 0, 0], i * endpoints + j);
            let _ = writeln!(
                out,
                "  chain endpoint-{i}-{j} {{\n    ip saddr {ep} jump mark-for-masquerade\n    meta l4proto tcp dnat to {ep}:8080\n  }}"
            );
        }
        elements.push(format!(
            "{} . tcp . 80 : goto service-{i}-bench-svc-{i}-tcp-http",
            ip([10, 96, 0, 0], i + 1)
        ));
    }
    out.push_str("  chain mark-for-masquerade {\n    mark set mark or 0x4000\n  }\n");
    let _ = writeln!(
        out,
        "  map service-ips {{\n    type ipv4_addr . inet_proto . inet_service : verdict\n    elements = {{ {} }}\n  }}",
        elements.join(", ")
    );
    out.push_str(
        "  chain services {\n    ip daddr . meta l4proto . th dport vmap @service-ips\n  }\n  \
         chain nat-prerouting {\n    type nat hook prerouting priority -100; policy accept;\n    jump services\n  }\n  \
         chain nat-output {\n    type nat hook output priority -100; policy accept;\n    jump services\n  }\n  \
         chain masquerading {\n    mark and 0x4000 == 0 return\n    mark set mark xor 0x4000\n    masquerade fully-random\n  }\n  \
         chain nat-postrouting {\n    type nat hook postrouting priority 100; policy accept;\n    jump masquerading\n  }\n}\n",
    );
    out
}

/// Time `program args < input` takes inside `netns`.
pub fn timed_load(netns: &Netns, program: &str, args: &[&str], input: &str) -> anyhow::Result<f64> {
    use std::io::Write as _;
    let started = Instant::now();
    let mut child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", netns.name))
        .arg(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    child.stdin.take().context("stdin")?.write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(out.status.success(), "{program} failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(started.elapsed().as_secs_f64() * 1000.0)
}
