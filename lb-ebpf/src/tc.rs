//! TC programs: per-packet load balancing of traffic that did not pass the socket hooks (from
//! outside the node: NodePort, LoadBalancer IPs, external IPs, and ClusterIPs), kube-proxy's
//! PREROUTING path. The work is `nat`'s, shared with XDP.
//!
//! They also run on the host end of pod interfaces (`--pod-interfaces`), where ingress is a pod's
//! traffic and egress the traffic to it: pods' packets to ClusterIPs when the socket hooks leave
//! pods alone (`--socket-lb-scope host`).
//!
//! `lb_tc_ingress` (on every `--interfaces` device) translates packets to frontends and of
//! tracked flows; `lb_tc_egress` rewrites the replies of local backends (no SNAT), which the
//! stack forwards to the client, back to come from the frontend.
//!
//! What a program after ours on the same hook sees (TCX: a CNI's, a network policy's): every
//! packet we do not own, untouched, and every packet we translate for the stack, in its
//! translated form (to the backend, as netfilter shows a DNATed packet to the filter table):
//! both are handed on with `TCX_NEXT`, never ended with `TC_ACT_OK`. A packet we drop, or send
//! out of a device ourselves (`bpf_redirect*`: towards another node's backend), goes no further.
use aya_ebpf::{
    bindings::TC_ACT_SHOT,
    helpers::{bpf_redirect, bpf_redirect_neigh},
    macros::classifier,
    programs::TcContext,
};
use lb_common::stats;

use crate::nat::{self, Action, Counters, Hook};

/// On to the next program (TCX: `TCX_NEXT`; cls_bpf: `TC_ACT_UNSPEC`, the default action),
/// which for the last one means through the stack.
const NEXT: i32 = -1;

impl Hook for TcContext {
    const WHOLE_ONLY: bool = false;
    const COUNTERS: Counters = Counters {
        translated: stats::TC_TRANSLATED,
        revnat: stats::TC_REVNAT,
        new_flow: stats::TC_NEW_FLOW,
        dropped: stats::TC_DROPPED,
        nat_failed: stats::TC_NAT_FAILED,
        redirected: stats::TC_REDIRECTED,
        source_denied: stats::TC_SOURCE_DENIED,
        service: lb_common::service_stats::TC_NEW_FLOW,
    };

    #[inline(always)]
    fn can_send_out(&self, _ifindex: u32) -> bool {
        true
    }
}

#[classifier]
pub fn lb_tc_ingress(ctx: TcContext) -> i32 {
    verdict(nat::ingress(&ctx))
}

#[classifier]
pub fn lb_tc_egress(ctx: TcContext) -> i32 {
    verdict(nat::egress(&ctx))
}

#[inline(always)]
fn verdict(action: Action) -> i32 {
    if let Some(ifindex) = action.out_device() {
        // Safety: plain helper call with an ifindex from the FIB.
        return unsafe { bpf_redirect(ifindex, 0) as i32 };
    }
    if let Some(ifindex) = action.out_resolve_device() {
        // Safety: a null parameter block asks the kernel to use the packet's destination.
        return unsafe { bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) as i32 };
    }
    // Translated or not ours, the packet goes on through the next program, then the stack.
    if action == Action::DROP { TC_ACT_SHOT } else { NEXT }
}
