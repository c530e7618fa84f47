//! What is attached to a cgroup's socket hooks, as the kernel reports it (BPF_PROG_QUERY), so
//! `cleanup` can tell whether anything of ours is left and tests can count attached programs.
use std::{collections::HashMap, fs::File, os::fd::AsFd as _, path::Path};

use anyhow::Context as _;

use crate::sys::bpf;

/// The socket hooks the agent uses: (attach type number from `enum bpf_attach_type`, name).
pub const SOCK_HOOKS: [(u32, &str); 8] = [
    (10, "connect4"),
    (11, "connect6"),
    (14, "sendmsg4"),
    (15, "sendmsg6"),
    (19, "recvmsg4"),
    (20, "recvmsg6"),
    (29, "getpeername4"),
    (30, "getpeername6"),
];

/// One attached program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attached {
    pub hook: &'static str,
    pub program_id: u32,
    pub name: String,
}

/// Programs attached directly to `cgroup` at the socket hooks the agent uses.
pub fn attached_programs(cgroup: &Path) -> anyhow::Result<Vec<Attached>> {
    let dir = File::open(cgroup).with_context(|| format!("opening cgroup {}", cgroup.display()))?;
    let names: HashMap<u32, String> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| (p.id(), p.name_as_str().unwrap_or_default().to_owned()))
        .collect();
    let mut out = Vec::new();
    for (attach_type, hook) in SOCK_HOOKS {
        let ids =
            bpf::prog_query(dir.as_fd(), attach_type).with_context(|| format!("BPF_PROG_QUERY {hook}"))?;
        for id in ids {
            out.push(Attached { hook, program_id: id, name: names.get(&id).cloned().unwrap_or_default() });
        }
    }
    Ok(out)
}
