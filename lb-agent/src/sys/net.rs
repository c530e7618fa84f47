//! This network namespace's interfaces and addresses (`getifaddrs`, `if_nametoindex`,
//! `if_indextoname`) and its identity (`SO_NETNS_COOKIE`), and entering another namespace.
use std::{
    fs::File,
    net::IpAddr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

/// `SO_NETNS_COOKIE` (Linux 5.14+; not in the libc crate yet).
const SO_NETNS_COOKIE: libc::c_int = 71;

/// Every address of every interface in this network namespace.
pub fn interface_addresses() -> std::io::Result<Vec<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // Safety: getifaddrs fills `head` with a list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // Safety: `cur` is a node of the list getifaddrs returned, valid until freeifaddrs; its
        // `ifa_addr` is null or points at a sockaddr of the family it names.
        unsafe {
            let addr = (*cur).ifa_addr;
            if !addr.is_null() {
                match i32::from((*addr).sa_family) {
                    libc::AF_INET => {
                        let sin = &*(addr as *const libc::sockaddr_in);
                        out.push(IpAddr::from(sin.sin_addr.s_addr.to_ne_bytes()));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(addr as *const libc::sockaddr_in6);
                        out.push(IpAddr::from(sin6.sin6_addr.s6_addr));
                    }
                    _ => {}
                }
            }
            cur = (*cur).ifa_next;
        }
    }
    // Safety: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// The index of interface `name` in this network namespace (`None`: no such interface).
pub fn interface_index(name: &str) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    // Safety: `name` is a valid NUL-terminated string for the duration of the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// The name of interface `index` in this network namespace (`None`: not here).
pub fn interface_name(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // Safety: `buf` has IF_NAMESIZE bytes, as if_indextoname requires.
    let name = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if name.is_null() {
        return None;
    }
    // Safety: on success `buf` holds a NUL-terminated name.
    Some(unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned())
}

/// The cookie of the calling thread's network namespace, the value `bpf_get_netns_cookie` gives
/// the programs for a socket there (Linux 5.14+).
pub fn own_netns_cookie() -> std::io::Result<u64> {
    // Safety: plain socket(2); the result is checked before being owned.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // Safety: `fd` is a new descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut cookie = 0u64;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // Safety: `cookie` and `len` are valid for writes of the sizes given, for the call.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}

/// Moves the calling thread into the network namespace `ns` (a `/proc/<pid>/ns/net` file or a
/// bind mount of one). Only this thread changes namespace: call it from a thread of its own.
pub fn enter_netns(ns: &File) -> std::io::Result<()> {
    // Safety: setns on a valid namespace fd only changes the calling thread's network namespace.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `ETHTOOL_GDRVINFO`: the driver's name of an interface.
const ETHTOOL_GDRVINFO: u32 = 0x0000_0003;

/// `struct ethtool_drvinfo`.
#[repr(C)]
struct DrvInfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

/// `struct ifreq` with `ifr_data` (the union padded to its 24 bytes).
#[repr(C)]
struct IfReqData {
    name: [u8; libc::IF_NAMESIZE],
    data: *mut libc::c_void,
    pad: [u8; 16],
}

/// The driver of `interface` in this network namespace (`veth`, `virtio_net`, `mlx5_core`…), as
/// `ethtool -i` names it.
pub fn driver(interface: &str) -> std::io::Result<String> {
    let mut name = [0u8; libc::IF_NAMESIZE];
    if interface.len() >= name.len() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "interface name too long"));
    }
    name[..interface.len()].copy_from_slice(interface.as_bytes());
    // Safety: plain socket(2); the result is checked before being owned.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // Safety: a new descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut info = DrvInfo {
        cmd: ETHTOOL_GDRVINFO,
        driver: [0; 32],
        version: [0; 32],
        fw_version: [0; 32],
        bus_info: [0; 32],
        erom_version: [0; 32],
        reserved2: [0; 12],
        n_priv_flags: 0,
        n_stats: 0,
        testinfo_len: 0,
        eedump_len: 0,
        regdump_len: 0,
    };
    let mut request = IfReqData { name, data: (&raw mut info).cast(), pad: [0; 16] };
    // Safety: SIOCETHTOOL reads the ifreq (a NUL-terminated name and a pointer to `info`) and
    // writes only into `info`, both live and exclusively borrowed for the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCETHTOOL, &raw mut request) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(info.driver.len());
    Ok(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_driver_of_loopback_is_named_and_a_missing_interface_is_an_error() {
        // `lo` has no ethtool driver info on every kernel: only the call's shape is checked.
        let _ = super::driver("lo");
        assert!(super::driver("lbt-no-such-if").is_err());
        assert!(super::driver("a-name-that-is-far-too-long-for-linux").is_err());
    }
}
