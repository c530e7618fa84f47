//! A second TC program for tests, as a CNI's or a network policy's would be: attached with TCX
//! after the agent's on the same hook, it counts the IPv4 packets it sees by destination address
//! and port and hands every packet on (`TCX_NEXT`). What it counts is what a program after ours
//! is shown.
//!
//! It is a handful of instructions, encoded here and loaded through the agent library's bpf(2)
//! layer (`lb_agent::sys::bpf`), so the tests need no second eBPF object.
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::{AsFd as _, OwnedFd},
};

use lb_agent::sys::bpf::{self, RawMap};

const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;

/// One instruction: opcode, registers, offset, immediate.
const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    let off = off as u16 as u64;
    let imm = imm as u32 as u64;
    code as u64 | ((dst as u64 | ((src as u64) << 4)) << 8) | (off << 16) | (imm << 32)
}

/// `r1 = map` (a 16-byte load of the map's fd, `BPF_PSEUDO_MAP_FD`).
fn load_map(fd: i32) -> [u64; 2] {
    [insn(0x18, 1, 1, 0, fd), insn(0, 0, 0, 0, 0)]
}

/// The program: for an IPv4 frame with room for the ports, `count[(daddr, dport)] += 1`; every
/// frame goes on to the next program (return -1, `TCX_NEXT`).
fn program(map_fd: i32) -> Vec<u64> {
    let mut p = vec![
        insn(0xbf, 6, 1, 0, 0),   // 0: r6 = r1 (the skb)
        insn(0x61, 2, 6, 76, 0),  // 1: r2 = skb->data
        insn(0x61, 3, 6, 80, 0),  // 2: r3 = skb->data_end
        insn(0xbf, 4, 2, 0, 0),   // 3: r4 = r2
        insn(0x07, 4, 0, 0, 38),  // 4: r4 += 38 (Ethernet + IPv4 without options + ports)
        insn(0x2d, 4, 3, 25, 0),  // 5: if r4 > r3 goto out
        insn(0x69, 5, 2, 12, 0),  // 6: r5 = ethertype (as loaded on a little-endian host)
        insn(0x55, 5, 0, 23, 8),  // 7: if r5 != 0x0008 (0x0800, IPv4) goto out
        insn(0x61, 5, 2, 30, 0),  // 8: r5 = daddr
        insn(0x63, 10, 5, -8, 0), // 9: key.addr = r5
        insn(0x69, 5, 2, 36, 0),  // 10: r5 = dport
        insn(0x63, 10, 5, -4, 0), // 11: key.port = r5
    ];
    p.extend(load_map(map_fd)); // 12-13
    p.extend([
        insn(0xbf, 2, 10, 0, 0),   // 14: r2 = r10
        insn(0x07, 2, 0, 0, -8),   // 15: r2 = &key
        insn(0x85, 0, 0, 0, 1),    // 16: call map_lookup_elem
        insn(0x15, 0, 0, 3, 0),    // 17: if r0 == 0 goto insert
        insn(0xb7, 1, 0, 0, 1),    // 18: r1 = 1
        insn(0xdb, 0, 1, 0, 0),    // 19: lock *(u64 *)r0 += r1
        insn(0x05, 0, 0, 10, 0),   // 20: goto out
        insn(0xb7, 1, 0, 0, 1),    // 21 insert: r1 = 1
        insn(0x7b, 10, 1, -16, 0), // 22: value = 1
    ]);
    p.extend(load_map(map_fd)); // 23-24
    p.extend([
        insn(0xbf, 2, 10, 0, 0),  // 25: r2 = r10
        insn(0x07, 2, 0, 0, -8),  // 26: r2 = &key
        insn(0xbf, 3, 10, 0, 0),  // 27: r3 = r10
        insn(0x07, 3, 0, 0, -16), // 28: r3 = &value
        insn(0xb7, 4, 0, 0, 0),   // 29: r4 = BPF_ANY
        insn(0x85, 0, 0, 0, 2),   // 30: call map_update_elem
        insn(0xb7, 0, 0, 0, -1),  // 31 out: r0 = TCX_NEXT
        insn(0x95, 0, 0, 0, 0),   // 32: exit
    ]);
    p
}

/// The observer attached to one hook; detached when dropped (its link's fd closes).
pub struct Observer {
    counts: RawMap,
    _link: OwnedFd,
}

impl Observer {
    /// Attaches after every program on `ifindex`'s ingress (or egress), in the calling thread's
    /// network namespace.
    pub fn attach(ifindex: u32, ingress: bool) -> anyhow::Result<Self> {
        let counts = RawMap::create("lbt_observed", BPF_MAP_TYPE_HASH, 8, 8, 1024, 0)?;
        let prog =
            bpf::prog_load(BPF_PROG_TYPE_SCHED_CLS, "lbt_observer", &program(counts_fd(&counts)), "GPL")?;
        let attach = if ingress { BPF_TCX_INGRESS } else { BPF_TCX_EGRESS };
        // No relative flag: appended after every program already there.
        let link = bpf::link_create(prog.as_fd(), ifindex, attach, 0)?;
        Ok(Self { counts, _link: link })
    }

    /// What it has seen: packets per IPv4 destination address and port.
    pub fn seen(&self) -> anyhow::Result<BTreeMap<SocketAddrV4, u64>> {
        let mut out = BTreeMap::new();
        for key in self.counts.keys()? {
            let Some(value) = self.counts.lookup(&key)? else { continue };
            let addr = Ipv4Addr::new(key[0], key[1], key[2], key[3]);
            let port = u16::from_be_bytes([key[4], key[5]]);
            let count = u64::from_ne_bytes(value[..8].try_into()?);
            out.insert(SocketAddrV4::new(addr, port), count);
        }
        Ok(out)
    }
}

fn counts_fd(map: &RawMap) -> i32 {
    use std::os::fd::AsRawFd as _;
    map.fd.as_raw_fd()
}
