//! What is attached to a cgroup's socket hooks, as the kernel reports it (BPF_PROG_QUERY), so
//! `cleanup` can tell whether anything of ours is left and tests can count attached programs.
use std::{collections::HashMap, fs::File, os::fd::AsRawFd as _, path::Path};

use anyhow::Context as _;

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

const BPF_PROG_QUERY: libc::c_long = 16;

/// `union bpf_attr` as BPF_PROG_QUERY reads it (the `query` member, kernel ≥ 6.6 layout; older
/// kernels read a prefix of it).
#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    pad: u32,
    prog_attach_flags: u64,
    link_ids: u64,
    link_attach_flags: u64,
    revision: u64,
}

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
        let mut ids = [0u32; 64];
        let mut attr = QueryAttr {
            target_fd: u32::try_from(dir.as_raw_fd()).context("cgroup fd")?,
            attach_type,
            prog_ids: ids.as_mut_ptr() as u64,
            prog_cnt: ids.len() as u32,
            ..Default::default()
        };
        // Safety: `attr` is a valid, initialised query attribute whose `prog_ids` points at
        // `ids`, which outlives the call and has room for `prog_cnt` entries.
        let r = unsafe {
            libc::syscall(libc::SYS_bpf, BPF_PROG_QUERY, &mut attr as *mut QueryAttr, size_of::<QueryAttr>())
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("BPF_PROG_QUERY {hook}"));
        }
        for &id in &ids[..(attr.prog_cnt as usize).min(ids.len())] {
            out.push(Attached { hook, program_id: id, name: names.get(&id).cloned().unwrap_or_default() });
        }
    }
    Ok(out)
}
