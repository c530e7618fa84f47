//! `cargo xtask demo`: the load balancer on the bundled example (`examples/cluster.yaml`), in a
//! throw-away network namespace "node" with three backend "pods". Removes everything it made.
use std::{net::SocketAddr, time::Duration};

use lb_tests::{
    agent::{Agent, inspect_table},
    guard::{Bpffs, Cgroup, Netns, TempDir},
    probe::{self, Place},
    require_root,
    servers::Servers,
};

const EXAMPLE: &str = include_str!("../../../examples/cluster.yaml");

fn main() -> anyhow::Result<()> {
    require_root();
    let netns = Netns::new()?;
    let cgroup = Cgroup::new()?;
    let bpffs = Bpffs::new()?;
    let dir = TempDir::new()?;
    let mut pods: Vec<SocketAddr> = Vec::new();
    for i in 1..=3 {
        for ip in [format!("10.244.1.{i}"), format!("[fd00:10:244:1::{i}]")] {
            for port in [8080, 5353] {
                pods.push(format!("{ip}:{port}").parse()?);
            }
        }
    }
    let servers = Servers::start(&netns, &pods)?;
    let source = dir.write("cluster.yaml", EXAMPLE)?;
    println!(
        "node: network namespace {}, cgroup {}, pins {}",
        netns.name,
        cgroup.path.display(),
        bpffs.path.display()
    );
    println!("pods: 10.244.1.1-3 and fd00:10:244:1::1-3 (TCP 8080, TCP+UDP 5353)\n");

    let agent = Agent::start_with(&source, &cgroup.path, &bpffs.path, false)?;
    let inside = Place { netns: &netns, cgroup: Some(&cgroup) };
    for (what, args) in [
        ("TCP  web  10.96.0.10:80", ["tcp", "10.96.0.10:80", "6"]),
        ("TCP  web  [fd00:10:96::10]:80", ["tcp", "[fd00:10:96::10]:80", "6"]),
        ("UDP  dns  10.96.0.53:53", ["udp", "10.96.0.53:53", "6"]),
        ("UDP  dns  [fd00:10:96::53]:53", ["udp", "[fd00:10:96::53]:53", "6"]),
        ("TCP  dns  10.96.0.53:53", ["tcp", "10.96.0.53:53", "3"]),
    ] {
        println!("{what}");
        for line in probe::run(&inside, &args)? {
            let answer = line.strip_prefix("ok ").unwrap_or(&line);
            println!("    answered by {answer}");
        }
    }
    let outside = Place { netns: &netns, cgroup: None };
    let line = probe::run(&outside, &["tcp", "10.96.0.10:80", "1"])?.join("");
    println!("\nthe same connect from outside the agent's cgroup is not translated: {line}\n");

    println!("lb-agent inspect services (read from the pinned maps):");
    println!("{}", inspect_table("services", &bpffs.path)?);
    println!("lb-agent inspect stats:");
    println!("{}", inspect_table("stats", &bpffs.path)?);
    let hits = servers.counts();
    println!("requests seen by each pod: {hits:?}");
    std::thread::sleep(Duration::from_millis(50));
    drop(agent);
    println!("\ndemo done; namespace, cgroup and pins are removed");
    Ok(())
}
