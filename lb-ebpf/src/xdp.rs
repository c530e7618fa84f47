//! XDP program (`--xdp`): the fast path of `lb_tc_ingress` for flows to remote backends. It runs
//! the same `nat` code before the stack sees the packet and finishes only the flows it can send
//! out itself (SNAT to another node's backend, and the replies of those flows): rewritten, MACs
//! set from the FIB, and sent with XDP_TX (same device) or XDP_REDIRECT through `LB_XDP_PORTS`.
//! Everything else passes untouched, with no state made, to TC and the stack.
use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    macros::{map, xdp},
    maps::DevMapHash,
    programs::XdpContext,
};
use lb_common::stats;

use crate::{
    nat::{self, Action, Counters, Hook},
    packet::Packet,
};

/// The devices XDP may send packets out of (ifindex → ifindex), and whose packets it may finish
/// itself: those the agent attached this program to natively and trusts (not a veth, whose frames
/// may carry unfinished checksums, unless `--xdp-on-veth`). A redirect to a device without XDP
/// support would be dropped by the kernel, so anything else is left to TC. Kernel-internal,
/// filled at attach time.
#[map]
static LB_XDP_PORTS: DevMapHash = DevMapHash::with_max_entries(64, 0);

impl Hook for XdpContext {
    const WHOLE_ONLY: bool = true;
    const COUNTERS: Counters = Counters {
        translated: stats::XDP_TRANSLATED,
        revnat: stats::XDP_REVNAT,
        new_flow: stats::XDP_NEW_FLOW,
        dropped: stats::XDP_DROPPED,
        nat_failed: stats::XDP_NAT_FAILED,
        redirected: stats::XDP_REDIRECTED,
        source_denied: stats::XDP_SOURCE_DENIED,
        service: lb_common::service_stats::XDP_NEW_FLOW,
    };

    /// Only from a trusted device (its frames' checksums are complete), and to one.
    #[inline(always)]
    fn can_send_out(&self, ifindex: u32) -> bool {
        let from = self.ifindex();
        LB_XDP_PORTS.get_ifindex(from).is_some()
            && (ifindex == from || LB_XDP_PORTS.get_ifindex(ifindex).is_some())
    }
}

#[xdp]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    let action = nat::ingress(&ctx);
    if let Some(ifindex) = action.out_device() {
        if ifindex == ctx.ifindex() {
            return XDP_TX;
        }
        // The packet is rewritten already: a failed redirect cannot pass it on.
        return LB_XDP_PORTS.redirect(ifindex, 0).unwrap_or(XDP_DROP);
    }
    // `out_resolve` is never produced at XDP (`WHOLE_ONLY` needs a resolved next hop), and the
    // packet would be rewritten already: it cannot be passed on.
    if action == Action::DROP || action.out_resolve_device().is_some() {
        return XDP_DROP;
    }
    XDP_PASS
}
