//! Kernel-side logging (aya-log), off by default and switched on at run time for one backend
//! group (`lb-agent log on --frontend …` writes its id into `LB_LOG`): the programs then log each
//! new connection or flow of that group and its verdict, and the agent prints the messages. With
//! logging off a new connection costs one array lookup; established flows never look.
use aya_ebpf::{macros::map, maps::Array};

/// Index 0: the backend group whose new connections are logged (0: none).
#[map]
pub static LB_LOG: Array<u32> = Array::pinned(1, 0);

/// Whether new connections of `group` are logged now.
#[inline(always)]
pub fn enabled(group: u32) -> bool {
    matches!(LB_LOG.get(0), Some(g) if *g == group && group != 0)
}

/// An address in `Backend::addr` form (network byte order words) as the bytes aya-log prints as
/// an IPv6 address with `{:i}`.
#[inline(always)]
pub fn ip6_bytes(words: &[u32; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = words[i].to_ne_bytes();
        out[4 * i] = b[0];
        out[4 * i + 1] = b[1];
        out[4 * i + 2] = b[2];
        out[4 * i + 3] = b[3];
        i += 1;
    }
    out
}
