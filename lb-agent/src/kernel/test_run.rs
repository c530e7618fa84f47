//! Running the TC or XDP datapath on frames without attaching it: the program is loaded from the
//! embedded object against the maps an agent pinned and run with `BPF_PROG_TEST_RUN` (what
//! `lb-agent trace` does, and what a test can do in-process).
//!
//! Nothing is attached and the packet goes nowhere (a redirect verdict is only a return code),
//! but the run is real for the maps: a new flow to a frontend creates conntrack entries, a packet
//! of a tracked flow refreshes them, and the datapath counters move.
use std::{
    collections::BTreeMap,
    path::Path,
    sync::{Arc, Mutex},
};

use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::DevMapHash,
    programs::{SchedClassifier, TestRun as _, TestRunOptions, Xdp},
};
use aya_log::EbpfLogger;

use crate::{
    kernel::{loader, maps::PinnedMaps},
    readback::frame::{ETH_HLEN, ETH_P_IP, ETH_P_IPV6, be16},
};

/// Which program runs (`trace --direction`; plain comments, so the help stays as it is).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Direction {
    // `lb_tc_ingress`: packets arriving on an interface.
    Ingress,
    // `lb_tc_egress`: packets leaving it (e.g. a local backend's reply).
    Egress,
    // `lb_xdp`: the fast path in front of `lb_tc_ingress` with `--xdp`.
    Xdp,
}

impl Direction {
    /// The program's name in the object.
    pub fn program(self) -> &'static str {
        match self {
            Self::Ingress => loader::TC_INGRESS,
            Self::Egress => loader::TC_EGRESS,
            Self::Xdp => loader::XDP,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
            Self::Xdp => "xdp",
        }
    }
}

/// What one run did.
#[derive(Clone, Debug)]
pub struct RunResult {
    /// The program's return value (`TC_ACT_*`, -1 being TC_ACT_UNSPEC; `XDP_*` for XDP).
    pub return_code: i32,
    /// The frame as the program left it.
    pub output: Vec<u8>,
    /// Datapath counters that moved during the run (`inspect stats` names). On a node with
    /// traffic, other packets count too.
    pub counters: BTreeMap<&'static str, u64>,
    /// The kernel's mean time per run, in nanoseconds.
    pub duration_ns: u64,
    /// What the program logged during the run (empty when kernel logging is off for the frontend).
    pub kernel_log: Vec<String>,
}

/// Collects the kernel log records of a run (aya-log) as lines.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<String>>>);

impl log::Log for Captured {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        if let Ok(mut lines) = self.0.lock() {
            lines.push(record.args().to_string());
        }
    }
    fn flush(&self) {}
}

/// One program, loaded once against the pinned maps, that frames run through.
pub struct TestRunner {
    ebpf: Ebpf,
    direction: Direction,
    /// The interface the packets are on (`None`: the kernel's default, `lo`).
    index: Option<u32>,
    stats: PinnedMaps,
    kernel_log: EbpfLogger<Captured>,
    captured: Captured,
}

impl TestRunner {
    /// Loads `direction`'s program against the maps pinned under `bpffs` (the pins must exist:
    /// nothing is created). `interface`: the interface the packets are on (in this network
    /// namespace), so the program's FIB lookups route as they would for it; with XDP it must
    /// have native XDP attached. XDP may send packets out of the interfaces the agent attached
    /// it to (read from its pinned links) and `interface`.
    pub fn load(bpffs: &Path, direction: Direction, interface: Option<&str>) -> anyhow::Result<Self> {
        let index = interface.map(loader::interface_index).transpose()?;
        let mut ebpf = loader::load_pinned(bpffs)?;
        let stats = PinnedMaps::open(bpffs).context("opening the pinned maps")?;
        let captured = Captured::default();
        let kernel_log = aya_log::EbpfLogger::init_with_logger(&mut ebpf, captured.clone())
            .context("reading the kernel log")?;
        let name = direction.program();
        if direction == Direction::Xdp {
            let mut ports: DevMapHash<_> = ebpf
                .map_mut("LB_XDP_PORTS")
                .context("map LB_XDP_PORTS is missing from the eBPF object")?
                .try_into()
                .context("map LB_XDP_PORTS is not a DEVMAP_HASH")?;
            for port in loader::xdp_interfaces(bpffs)?.into_iter().chain(index) {
                ports.insert(port, port, None, 0).context("filling LB_XDP_PORTS")?;
            }
        }
        let program = ebpf
            .program_mut(name)
            .with_context(|| format!("program {name} is missing from the eBPF object"))?;
        match direction {
            Direction::Xdp => {
                let program: &mut Xdp =
                    program.try_into().with_context(|| format!("{name} is not an XDP program"))?;
                program.load().with_context(|| format!("verifier rejected {name}"))?;
            }
            _ => {
                let program: &mut SchedClassifier =
                    program.try_into().with_context(|| format!("{name} is not a TC classifier"))?;
                program.load().with_context(|| format!("verifier rejected {name}"))?;
            }
        }
        Ok(Self { ebpf, direction, index, stats, kernel_log, captured })
    }

    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// Runs `frame` (an Ethernet frame) `repeat` times through the program (the runs share one
    /// buffer: from the second run on, the frame is the rewritten one) and reports what it did.
    pub fn run(&mut self, frame: &[u8], repeat: u32) -> anyhow::Result<RunResult> {
        let before = self.stats.stats().context("reading the counters")?;
        let (return_code, out, duration) = self.execute(frame, repeat)?;
        let after = self.stats.stats().context("reading the counters")?;
        let counters = after
            .iter()
            .zip(&before)
            .filter(|((_, a), (_, b))| a != b)
            .map(|((name, a), (_, b))| (*name, a.wrapping_sub(*b)))
            .collect();
        self.kernel_log.flush();
        let kernel_log = self.captured.0.lock().map(|mut l| std::mem::take(&mut *l)).unwrap_or_default();
        Ok(RunResult {
            return_code,
            output: out,
            counters,
            duration_ns: u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX),
            kernel_log,
        })
    }

    /// Runs `frame` once and returns only the program's return value and the frame as it left
    /// it: no counters read, no log collected (for volumes of frames).
    pub fn pass(&mut self, frame: &[u8]) -> anyhow::Result<(i32, Vec<u8>)> {
        let (return_code, out, _) = self.execute(frame, 1)?;
        Ok((return_code, out))
    }

    /// One BPF_PROG_TEST_RUN: the return value (the kernel reports the program's `int` as a
    /// `u32`), the output frame and the kernel's mean time per run.
    fn execute(&mut self, frame: &[u8], repeat: u32) -> anyhow::Result<(i32, Vec<u8>, std::time::Duration)> {
        let direction = self.direction;
        let name = direction.program();
        let ctx_in = context(direction, self.index, frame.len());
        // The programs never grow a packet; the slack only turns a surprise into a clear ENOSPC.
        let mut out = vec![0u8; frame.len() + 256];
        let options = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: ctx_in.as_deref(),
            repeat,
            ..TestRunOptions::new()
        };
        let program = self
            .ebpf
            .program_mut(name)
            .with_context(|| format!("program {name} is missing from the eBPF object"))?;
        let result = match direction {
            Direction::Xdp => {
                let program: &mut Xdp =
                    program.try_into().with_context(|| format!("{name} is not an XDP program"))?;
                program.test_run(options)
            }
            _ => {
                let program: &mut SchedClassifier =
                    program.try_into().with_context(|| format!("{name} is not a TC classifier"))?;
                program.test_run(options)
            }
        }
        .with_context(|| {
            let short_ip = match be16(frame, 12) {
                Some(ETH_P_IP) => frame.len() < ETH_HLEN + 20,
                Some(ETH_P_IPV6) => frame.len() < ETH_HLEN + 40,
                _ => false,
            };
            if short_ip {
                format!(
                    "BPF_PROG_TEST_RUN of {name} (recent kernels refuse an IP frame shorter than its \
                     IP header before the program runs)"
                )
            } else {
                format!("BPF_PROG_TEST_RUN of {name}")
            }
        })?;
        out.truncate(usize::try_from(result.data_size_out).unwrap_or(usize::MAX).min(out.len()));
        Ok((result.return_value as i32, out, result.duration))
    }
}

/// Offset of `ifindex` in `struct __sk_buff` (after len, pkt_type, mark, queue_mapping, protocol,
/// vlan_present, vlan_tci, vlan_proto, priority, ingress_ifindex: ten `__u32`), UAPI-stable.
const SKB_IFINDEX_OFFSET: usize = 40;

/// The context a run passes in: the packet's interface (`None`: the kernel's default).
fn context(direction: Direction, index: Option<u32>, frame_len: usize) -> Option<Vec<u8>> {
    match (direction, index) {
        // `struct xdp_md`: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex (`__u32` each); the kernel wants data_end to be the frame's length.
        (Direction::Xdp, Some(index)) => {
            let mut ctx = vec![0u8; 24];
            ctx[4..8].copy_from_slice(&u32::try_from(frame_len).unwrap_or(u32::MAX).to_ne_bytes());
            ctx[12..16].copy_from_slice(&index.to_ne_bytes());
            Some(ctx)
        }
        // `struct __sk_buff` up to `ifindex` (offset 40), the only field set: BPF_PROG_TEST_RUN
        // accepts a shorter context and takes the rest as zero.
        (_, Some(index)) => {
            let mut ctx = vec![0u8; SKB_IFINDEX_OFFSET + 4];
            ctx[SKB_IFINDEX_OFFSET..].copy_from_slice(&index.to_ne_bytes());
            Some(ctx)
        }
        (_, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_context_names_the_interface() {
        assert_eq!(context(Direction::Ingress, None, 60), None);
        let skb = context(Direction::Egress, Some(7), 60).expect("ctx");
        assert_eq!(skb.len(), 44);
        assert_eq!(skb[40..], 7u32.to_ne_bytes());
        let xdp = context(Direction::Xdp, Some(7), 60).expect("ctx");
        assert_eq!(xdp[4..8], 60u32.to_ne_bytes(), "data_end");
        assert_eq!(xdp[12..16], 7u32.to_ne_bytes(), "ingress_ifindex");
    }
}
