//! cgroup `sock_addr` hooks: socket-level load balancing.
//!
//! `connect*` and `sendmsg*` rewrite a frontend destination to a backend (or refuse it with
//! ECONNREFUSED when the frontend has no usable backend) and remember, with the socket
//! (`LB_SOCK_REVNAT`, socket-local storage freed with the socket), which frontend the application
//! asked for. `recvmsg*` and `getpeername*` use that memory to show the frontend again, so a UDP
//! client sees replies come from the ClusterIP it addressed. A socket keeps its last
//! `SOCK_REVNAT_ENTRIES` backends; one pushed out of them (an unconnected UDP socket sending to
//! more backends than that) goes to the LRU `LB_REVNAT_V4/V6` by socket cookie, which the reply
//! side reads when the socket's own storage has no match (as it does for what older programs
//! wrote there). A connected UDP socket's translation is copied there too: it is the agent's
//! index of the sockets to destroy when their backend goes away.
//!
//! The context holds addresses and ports in network byte order, as do the maps.
use aya_ebpf::{
    EbpfContext,
    bindings::bpf_sock_addr,
    helpers::{bpf_get_netns_cookie, bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_set_retval},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use aya_log_ebpf::info;
use lb_common::{
    Frontend4Key, Frontend6Key, RevNat4Key, RevNat4Value, RevNat6Key, RevNat6Value, SOCK_REVNAT_ENTRIES,
    SockRevNatEntry, affinity_kind, service_stats, stats,
};

use crate::{
    lb::{Client, Path, Resolved, Verdict, resolve},
    log,
    maps::{LB_FRONTENDS_V4, LB_FRONTENDS_V6, LB_REVNAT_V4, LB_REVNAT_V6, LB_SOCK_REVNAT, LB_SOCKET_SCOPE},
    stats::{bump, bump_service},
};

/// Let the syscall go on (with whatever address the program left in the context).
const ALLOW: i32 = 1;
/// Fail the syscall; the error is the one set with `bpf_set_retval`.
const REJECT: i32 = 0;
const ECONNREFUSED: i32 = 111;
const EHOSTUNREACH: i32 = 113;

/// A random number for the slot choice (a socket has no flow hash yet at connect time).
#[inline(always)]
fn random() -> u32 {
    // Safety: bpf_get_prandom_u32 has no preconditions.
    unsafe { bpf_get_prandom_u32() }
}

/// The client for session affinity: the socket's network namespace. The source address is not
/// known yet at connect time; the namespace stands for the pod (its processes share it, as they
/// share the pod's IP).
#[inline(always)]
fn netns_client(ctx: &SockAddrContext) -> Client {
    // Safety: bpf_get_netns_cookie is allowed for sock_addr programs and reads the socket's netns.
    let cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    Client { id: [cookie as u32, (cookie >> 32) as u32, 0, 0], kind: affinity_kind::NETNS }
}

/// Whether `--socket-lb-scope` lets this socket be translated: always with `all`; with `host`
/// only in the host's network namespace (a pod's connect goes out untranslated, so a sidecar's
/// iptables redirect in the pod still sees the ClusterIP, and TC on the pod's interface
/// translates the packets). One array lookup. The reply-side hooks do not check it: they rewrite
/// only what a connect/send of this socket translated (by socket cookie).
#[inline(always)]
fn in_scope(ctx: &SockAddrContext) -> bool {
    match LB_SOCKET_SCOPE.get(0) {
        Some(&host) if host != lb_common::socket_scope::ALL => {
            // Safety: as in `netns_client`.
            unsafe { bpf_get_netns_cookie(ctx.as_ptr()) == host }
        }
        _ => true,
    }
}

#[cgroup_sock_addr(connect4)]
pub fn lb_connect4(ctx: SockAddrContext) -> i32 {
    forward4(&ctx, Hook::Connect)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn lb_sendmsg4(ctx: SockAddrContext) -> i32 {
    forward4(&ctx, Hook::Sendmsg)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn lb_recvmsg4(ctx: SockAddrContext) -> i32 {
    reverse4(&ctx);
    ALLOW
}

#[cgroup_sock_addr(getpeername4)]
pub fn lb_getpeername4(ctx: SockAddrContext) -> i32 {
    reverse4(&ctx);
    ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn lb_connect6(ctx: SockAddrContext) -> i32 {
    forward6(&ctx, Hook::Connect)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn lb_sendmsg6(ctx: SockAddrContext) -> i32 {
    forward6(&ctx, Hook::Sendmsg)
}

/// Which forward hook runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Hook {
    Connect,
    Sendmsg,
}

#[cgroup_sock_addr(recvmsg6)]
pub fn lb_recvmsg6(ctx: SockAddrContext) -> i32 {
    reverse6(&ctx);
    ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn lb_getpeername6(ctx: SockAddrContext) -> i32 {
    reverse6(&ctx);
    ALLOW
}

#[inline(always)]
fn fail(errno: i32) -> i32 {
    // Safety: bpf_set_retval is allowed for connect and sendmsg hooks; with it the kernel fails
    // the syscall with this error instead of EPERM when we return REJECT.
    unsafe { bpf_set_retval(-errno) };
    REJECT
}

#[inline(always)]
fn cookie(ctx: &SockAddrContext) -> u64 {
    // Safety: the context is a valid bpf_sock_addr for the helper.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

/// What a connect/send to an IPv4 destination becomes.
enum Translation {
    /// Not a frontend: leave it alone.
    Pass,
    /// Send it here (address and port in network byte order).
    To(u32, u16),
    /// Fail the syscall with this errno.
    Fail(i32),
}

/// Looks an IPv4 destination up, picks a backend and remembers the frontend for the replies.
/// Shared by `connect4`/`sendmsg4` and v4-mapped destinations of the IPv6 hooks.
#[inline(always)]
fn translate4(ctx: &SockAddrContext, hook: Hook, addr: u32, port: u16, proto: u8) -> Translation {
    let key = Frontend4Key { addr, port, proto, pad: 0 };
    // Safety: plain-old-data value, copied out at once; see `lb::backend_at`.
    let lookup = || unsafe { LB_FRONTENDS_V4.get(key) }.copied();
    let Some(Resolved { group, verdict }) = resolve(lookup, random, Path::Socket, || netns_client(ctx))
    else {
        return Translation::Pass;
    };
    match verdict {
        Verdict::Backend(_, backend) => {
            remember(
                ctx,
                indexed(hook, proto),
                SockRevNatEntry {
                    backend_addr: [backend.addr[0], 0, 0, 0],
                    frontend_addr: [addr, 0, 0, 0],
                    backend_port: backend.port,
                    frontend_port: port,
                    family: 4,
                    pad: [0; 3],
                },
            );
            bump(stats::TRANSLATED);
            bump_service(group, service_stats::SOCKET_TRANSLATED);
            if log::enabled(group) {
                info!(
                    ctx,
                    "socket: group {} {:i}:{} proto {} -> backend {:i}:{}",
                    group,
                    u32::from_be(addr),
                    u16::from_be(port),
                    proto,
                    u32::from_be(backend.addr[0]),
                    u16::from_be(backend.port)
                );
            }
            Translation::To(backend.addr[0], backend.port)
        }
        Verdict::Reject => {
            bump(stats::NO_BACKEND);
            bump_service(group, service_stats::SOCKET_NO_BACKEND);
            if log::enabled(group) {
                info!(
                    ctx,
                    "socket: group {} {:i}:{} proto {}: no endpoint, refused",
                    group,
                    u32::from_be(addr),
                    u16::from_be(port),
                    proto
                );
            }
            Translation::Fail(ECONNREFUSED)
        }
        Verdict::Unreachable => {
            bump(stats::NO_BACKEND);
            bump_service(group, service_stats::SOCKET_NO_BACKEND);
            if log::enabled(group) {
                info!(
                    ctx,
                    "socket: group {} {:i}:{} proto {}: no local endpoint, unreachable",
                    group,
                    u32::from_be(addr),
                    u16::from_be(port),
                    proto
                );
            }
            Translation::Fail(EHOSTUNREACH)
        }
    }
}

#[inline(always)]
fn forward4(ctx: &SockAddrContext, hook: Hook) -> i32 {
    if !in_scope(ctx) {
        return ALLOW;
    }
    let sa: *mut bpf_sock_addr = ctx.sock_addr;
    // Safety: `sa` is the kernel-provided context, valid for the whole program run; the fields
    // read and written here are the ones the verifier allows for connect4/sendmsg4.
    let (addr, port, proto) = unsafe { ((*sa).user_ip4, (*sa).user_port as u16, (*sa).protocol as u8) };
    match translate4(ctx, hook, addr, port, proto) {
        Translation::Pass => ALLOW,
        Translation::To(backend_addr, backend_port) => {
            // Safety: as above; user_ip4/user_port are writable in connect4/sendmsg4.
            unsafe {
                (*sa).user_ip4 = backend_addr;
                (*sa).user_port = u32::from(backend_port);
            }
            ALLOW
        }
        Translation::Fail(errno) => fail(errno),
    }
}

#[inline(always)]
fn reverse4(ctx: &SockAddrContext) {
    let sa: *mut bpf_sock_addr = ctx.sock_addr;
    // Safety: valid context; user_ip4/user_port are readable and writable in recvmsg4/getpeername4.
    let (addr, port) = unsafe { ((*sa).user_ip4, (*sa).user_port as u16) };
    if let Some((frontend_addr, frontend_port)) = recall(ctx, 4, &[addr, 0, 0, 0], port) {
        // Safety: as above.
        unsafe {
            (*sa).user_ip4 = frontend_addr[0];
            (*sa).user_port = u32::from(frontend_port);
        }
        bump(stats::REVNAT);
    }
}

/// Whether a translation is also written to the LRU by socket cookie: a connected UDP socket's,
/// because the agent finds the connected UDP sockets to destroy after a backend goes away
/// (`kernel/udp_sockets.rs`) by their cookies there (socket storage cannot be listed). The reply
/// side never needs that copy: it reads the socket's storage first.
#[inline(always)]
fn indexed(hook: Hook, proto: u8) -> bool {
    hook == Hook::Connect && proto == lb_common::proto::UDP
}

/// Records with the socket that it was sent to `entry`'s backend for its frontend: over the
/// entry for that backend if the socket has one, else in the next of its slots (round robin).
/// What that pushes out, or the whole entry when the socket has no storage (the kernel could not
/// allocate it) or is `indexed`, goes to the LRU by socket cookie.
#[inline(always)]
fn remember(ctx: &SockAddrContext, indexed: bool, entry: SockRevNatEntry) {
    let Some(value) = LB_SOCK_REVNAT.get(ctx, true) else {
        spill(ctx, &entry);
        return;
    };
    if indexed {
        spill(ctx, &entry);
    }
    let mut found = SOCK_REVNAT_ENTRIES;
    for i in 0..SOCK_REVNAT_ENTRIES {
        // Safety: `value` points to this socket's storage (a `SockRevNat`), valid for the whole
        // program run; `i` is within `entries`. Two CPUs sending on one socket at once may write
        // it together: the worst is a torn entry, which only loses a reply rewrite.
        let e = unsafe { &(*value).entries[i] };
        if same_backend(e, entry.family, &entry.backend_addr, entry.backend_port) {
            found = i;
            break;
        }
    }
    // Safety: as above.
    unsafe {
        let i = if found < SOCK_REVNAT_ENTRIES {
            found
        } else {
            let next = (*value).next;
            (*value).next = next.wrapping_add(1);
            let i = next as usize & (SOCK_REVNAT_ENTRIES - 1);
            let old = (*value).entries[i];
            if old.family != 0 {
                spill(ctx, &old);
            }
            i
        };
        (*value).entries[i & (SOCK_REVNAT_ENTRIES - 1)] = entry;
    }
}

const _: () = assert!(SOCK_REVNAT_ENTRIES.is_power_of_two());

#[inline(always)]
fn same_backend(e: &SockRevNatEntry, family: u8, addr: &[u32; 4], port: u16) -> bool {
    // Word by word: an array comparison could become a `memcmp` call, which BPF has not.
    e.family == family
        && e.backend_port == port
        && e.backend_addr[0] == addr[0]
        && e.backend_addr[1] == addr[1]
        && e.backend_addr[2] == addr[2]
        && e.backend_addr[3] == addr[3]
}

/// A translation the socket's storage cannot hold, into the LRU by socket cookie. A full LRU
/// evicts its oldest entry; an error here only loses the reply rewrite.
#[inline(always)]
fn spill(ctx: &SockAddrContext, e: &SockRevNatEntry) {
    if e.family == 4 {
        let key = RevNat4Key {
            cookie: cookie(ctx),
            backend_addr: e.backend_addr[0],
            backend_port: e.backend_port,
            pad: 0,
        };
        let value =
            RevNat4Value { frontend_addr: e.frontend_addr[0], frontend_port: e.frontend_port, pad: 0 };
        let _ = LB_REVNAT_V4.insert(key, value, 0);
    } else {
        let key = RevNat6Key {
            cookie: cookie(ctx),
            backend_addr: e.backend_addr,
            backend_port: e.backend_port,
            pad: [0; 6],
        };
        let value = RevNat6Value { frontend_addr: e.frontend_addr, frontend_port: e.frontend_port, pad: 0 };
        let _ = LB_REVNAT_V6.insert(key, value, 0);
    }
}

/// The frontend this socket addressed when it was sent to backend `addr`:`port` (family 4: the
/// address in `[0]`): from the socket's storage, else from the LRU (spilled entries, and those
/// programs before socket storage wrote). `None`: not a translated peer of this socket.
#[inline(always)]
fn recall(ctx: &SockAddrContext, family: u8, addr: &[u32; 4], port: u16) -> Option<([u32; 4], u16)> {
    if let Some(value) = LB_SOCK_REVNAT.get(ctx, false) {
        for i in 0..SOCK_REVNAT_ENTRIES {
            // Safety: as in `remember`.
            let e = unsafe { &(*value).entries[i] };
            if same_backend(e, family, addr, port) {
                return Some((e.frontend_addr, e.frontend_port));
            }
        }
    }
    if family == 4 {
        let key = RevNat4Key { cookie: cookie(ctx), backend_addr: addr[0], backend_port: port, pad: 0 };
        // Safety: plain-old-data value, copied out at once.
        let rev = unsafe { LB_REVNAT_V4.get(key) }?;
        Some(([rev.frontend_addr, 0, 0, 0], rev.frontend_port))
    } else {
        let key = RevNat6Key { cookie: cookie(ctx), backend_addr: *addr, backend_port: port, pad: [0; 6] };
        // Safety: plain-old-data value, copied out at once.
        let rev = unsafe { LB_REVNAT_V6.get(key) }?;
        Some((rev.frontend_addr, rev.frontend_port))
    }
}

#[inline(always)]
fn read_ip6(sa: *mut bpf_sock_addr) -> [u32; 4] {
    // Safety: valid context; each word is read with its own 4-byte load, which the verifier
    // accepts for user_ip6 in every IPv6 sock_addr hook.
    unsafe {
        [
            core::ptr::read_volatile(&(*sa).user_ip6[0]),
            core::ptr::read_volatile(&(*sa).user_ip6[1]),
            core::ptr::read_volatile(&(*sa).user_ip6[2]),
            core::ptr::read_volatile(&(*sa).user_ip6[3]),
        ]
    }
}

#[inline(always)]
fn write_ip6(sa: *mut bpf_sock_addr, addr: &[u32; 4], port: u16) {
    // Safety: valid context; user_ip6 and user_port are writable in the IPv6 hooks we attach to.
    unsafe {
        core::ptr::write_volatile(&mut (*sa).user_ip6[0], addr[0]);
        core::ptr::write_volatile(&mut (*sa).user_ip6[1], addr[1]);
        core::ptr::write_volatile(&mut (*sa).user_ip6[2], addr[2]);
        core::ptr::write_volatile(&mut (*sa).user_ip6[3], addr[3]);
        (*sa).user_port = u32::from(port);
    }
}

/// `::ffff:0:0/96` in network byte order: an IPv4 address used through an IPv6 socket.
#[inline(always)]
fn v4_mapped(addr: &[u32; 4]) -> bool {
    addr[0] == 0 && addr[1] == 0 && addr[2] == 0xffff_u32.to_be()
}

#[inline(always)]
fn forward6(ctx: &SockAddrContext, hook: Hook) -> i32 {
    if !in_scope(ctx) {
        return ALLOW;
    }
    let sa: *mut bpf_sock_addr = ctx.sock_addr;
    let addr = read_ip6(sa);
    // Safety: valid context; readable fields.
    let (port, proto) = unsafe { ((*sa).user_port as u16, (*sa).protocol as u8) };
    if v4_mapped(&addr) {
        return forward_mapped(ctx, hook, sa, addr[3], port, proto);
    }
    let key = Frontend6Key { addr, port, proto, pad: 0 };
    // Safety: plain-old-data value, copied out at once.
    let lookup = || unsafe { LB_FRONTENDS_V6.get(key) }.copied();
    let Some(Resolved { group, verdict }) = resolve(lookup, random, Path::Socket, || netns_client(ctx))
    else {
        return ALLOW;
    };
    match verdict {
        Verdict::Backend(_, backend) => {
            remember(
                ctx,
                indexed(hook, proto),
                SockRevNatEntry {
                    backend_addr: backend.addr,
                    frontend_addr: addr,
                    backend_port: backend.port,
                    frontend_port: port,
                    family: 6,
                    pad: [0; 3],
                },
            );
            bump(stats::TRANSLATED);
            bump_service(group, service_stats::SOCKET_TRANSLATED);
            if log::enabled(group) {
                info!(
                    ctx,
                    "socket: group {} [{:i}]:{} proto {} -> backend [{:i}]:{}",
                    group,
                    log::ip6_bytes(&addr),
                    u16::from_be(port),
                    proto,
                    log::ip6_bytes(&backend.addr),
                    u16::from_be(backend.port)
                );
            }
            write_ip6(sa, &backend.addr, backend.port);
            ALLOW
        }
        Verdict::Reject => {
            bump(stats::NO_BACKEND);
            bump_service(group, service_stats::SOCKET_NO_BACKEND);
            if log::enabled(group) {
                info!(
                    ctx,
                    "socket: group {} [{:i}]:{} proto {}: no endpoint, refused",
                    group,
                    log::ip6_bytes(&addr),
                    u16::from_be(port),
                    proto
                );
            }
            fail(ECONNREFUSED)
        }
        Verdict::Unreachable => {
            bump(stats::NO_BACKEND);
            bump_service(group, service_stats::SOCKET_NO_BACKEND);
            if log::enabled(group) {
                info!(
                    ctx,
                    "socket: group {} [{:i}]:{} proto {}: no local endpoint, unreachable",
                    group,
                    log::ip6_bytes(&addr),
                    u16::from_be(port),
                    proto
                );
            }
            fail(EHOSTUNREACH)
        }
    }
}

/// An IPv4 frontend dialled through a dual-stack IPv6 socket (`::ffff:10.96.0.10`, as Java and
/// other runtimes do): the IPv4 maps decide, the address stays v4-mapped.
#[inline(always)]
fn forward_mapped(
    ctx: &SockAddrContext,
    hook: Hook,
    sa: *mut bpf_sock_addr,
    addr: u32,
    port: u16,
    proto: u8,
) -> i32 {
    match translate4(ctx, hook, addr, port, proto) {
        Translation::Pass => ALLOW,
        Translation::To(backend_addr, backend_port) => {
            write_ip6(sa, &[0, 0, 0xffff_u32.to_be(), backend_addr], backend_port);
            ALLOW
        }
        Translation::Fail(errno) => fail(errno),
    }
}

#[inline(always)]
fn reverse6(ctx: &SockAddrContext) {
    let sa: *mut bpf_sock_addr = ctx.sock_addr;
    let addr = read_ip6(sa);
    // Safety: valid context.
    let port = unsafe { (*sa).user_port as u16 };
    if v4_mapped(&addr) {
        if let Some((frontend_addr, frontend_port)) = recall(ctx, 4, &[addr[3], 0, 0, 0], port) {
            write_ip6(sa, &[0, 0, 0xffff_u32.to_be(), frontend_addr[0]], frontend_port);
            bump(stats::REVNAT);
        }
        return;
    }
    if let Some((frontend_addr, frontend_port)) = recall(ctx, 6, &addr, port) {
        write_ip6(sa, &frontend_addr, frontend_port);
        bump(stats::REVNAT);
    }
}
