//! The bpf(2) commands aya does not offer as bytes: pinned objects opened by path, their kernel
//! information, maps read, written and walked as raw bytes (any key and value layout, per-CPU
//! values included), maps created and pinned by hand, and the programs attached to a cgroup.
//!
//! Every other module reaches these commands through this one; `unsafe` stays here.
use std::{
    ffi::CString,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    path::Path,
};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_MAP_GET_FD_BY_ID: libc::c_long = 14;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_ANY: u64 = 0;

/// `enum bpf_map_type` values this layer needs to tell apart.
pub mod map_type {
    pub const HASH: u32 = 1;
    pub const ARRAY: u32 = 2;
    pub const PERCPU_HASH: u32 = 5;
    pub const PERCPU_ARRAY: u32 = 6;
    pub const LRU_HASH: u32 = 9;
    pub const LRU_PERCPU_HASH: u32 = 10;
    pub const LPM_TRIE: u32 = 11;
}

/// `enum bpf_link_type` values the agent creates.
pub mod link_type {
    pub const CGROUP: u32 = 3;
    pub const XDP: u32 = 6;
    pub const TCX: u32 = 11;
}

/// The one entry into bpf(2).
fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // Safety: every caller passes a valid, initialised `union bpf_attr` prefix for `cmd`, and
    // every pointer it carries points at a live buffer of the size the command expects.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, size_of::<T>()) };
    if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(r) }
}

/// A file descriptor a bpf(2) command just returned.
fn owned(fd: libc::c_long) -> OwnedFd {
    // Safety: the command returned a new descriptor that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

fn c_path(path: &Path) -> std::io::Result<CString> {
    CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
}

/// `union bpf_attr` for BPF_OBJ_GET / BPF_OBJ_PIN.
#[repr(C)]
#[derive(Default)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    pad: u32,
}

/// `union bpf_attr` for BPF_OBJ_GET_INFO_BY_FD.
#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// `union bpf_attr` for the element commands.
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// `union bpf_attr` for BPF_MAP_CREATE (up to `map_name`).
#[repr(C)]
#[derive(Default)]
struct CreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

/// `union bpf_attr` for the BPF_MAP_*_BATCH commands.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// `union bpf_attr` for BPF_MAP_GET_FD_BY_ID.
#[repr(C)]
#[derive(Default)]
struct IdAttr {
    id: u32,
    next_id: u32,
    open_flags: u32,
}

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

/// `union bpf_attr` for BPF_PROG_LOAD (up to `expected_attach_type`).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `union bpf_attr` for BPF_PROG_TEST_RUN (up to `duration`; no context, no output buffer).
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
}

/// `union bpf_attr` for BPF_LINK_CREATE (the common head, then room for the per-type part).
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target: u32,
    attach_type: u32,
    flags: u32,
    rest: [u64; 4],
}

/// The head of `struct bpf_map_info`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MapInfo {
    pub map_type: u32,
    pub id: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub map_flags: u32,
    pub name: [u8; 16],
}

impl MapInfo {
    /// Whether the map keeps one value per CPU.
    pub fn percpu(&self) -> bool {
        matches!(self.map_type, map_type::PERCPU_HASH | map_type::PERCPU_ARRAY | map_type::LRU_PERCPU_HASH)
    }

    /// Whether the keys are the indexes `0..max_entries`, all always present.
    pub fn array(&self) -> bool {
        matches!(self.map_type, map_type::ARRAY | map_type::PERCPU_ARRAY)
    }
}

/// The head of `struct bpf_link_info`: type, id, prog_id, then the per-type union at offset 16
/// (cgroup: `cgroup_id: u64, attach_type: u32`; xdp: `ifindex: u32`; tcx: `ifindex: u32,
/// attach_type: u32`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct LinkInfo {
    pub link_type: u32,
    pub id: u32,
    pub prog_id: u32,
    pad: u32,
    pub union: [u64; 4],
}

/// The object (map, link, program) pinned at `path`.
pub fn obj_get(path: &Path) -> std::io::Result<OwnedFd> {
    let c = c_path(path)?;
    let mut attr = ObjAttr { pathname: c.as_ptr() as u64, ..Default::default() };
    bpf(BPF_OBJ_GET, &mut attr).map(owned)
}

/// Pins the object `fd` at `path`.
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> std::io::Result<()> {
    let c = c_path(path)?;
    let mut attr =
        ObjAttr { pathname: c.as_ptr() as u64, bpf_fd: fd.as_raw_fd() as u32, ..Default::default() };
    bpf(BPF_OBJ_PIN, &mut attr).map(|_| ())
}

/// Information about the object `fd` (`MapInfo` for a map, `LinkInfo` for a link): the kernel
/// fills the head of its structure that `T` covers.
pub fn obj_info<T: Default + Info>(fd: BorrowedFd<'_>) -> std::io::Result<T> {
    let mut out = T::default();
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: size_of::<T>() as u32,
        info: &raw mut out as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(out)
}

/// The heads of kernel info structures `obj_info` may fill (plain integers: any bytes the
/// kernel writes make a valid value).
pub trait Info {}
impl Info for MapInfo {}
impl Info for LinkInfo {}

/// Whether a map with this kernel id still exists.
pub fn map_exists(id: u32) -> bool {
    let mut attr = IdAttr { id, ..Default::default() };
    // The fd is closed at once.
    bpf(BPF_MAP_GET_FD_BY_ID, &mut attr).map(owned).is_ok()
}

/// The ids of the programs attached directly to the cgroup `cgroup` at `attach_type` (`enum
/// bpf_attach_type`), at most 64.
pub fn prog_query(cgroup: BorrowedFd<'_>, attach_type: u32) -> std::io::Result<Vec<u32>> {
    let mut ids = [0u32; 64];
    let mut attr = QueryAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_type,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        ..Default::default()
    };
    bpf(BPF_PROG_QUERY, &mut attr)?;
    Ok(ids[..(attr.prog_cnt as usize).min(ids.len())].to_vec())
}

/// Loads a program of `prog_type` (`enum bpf_prog_type`) from raw instructions (8 bytes each,
/// as the kernel reads them). On a verifier refusal the error carries its log.
pub fn prog_load(prog_type: u32, name: &str, insns: &[u64], license: &str) -> std::io::Result<OwnedFd> {
    let license =
        CString::new(license).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut prog_name = [0u8; 16];
    let n = name.len().min(15);
    prog_name[..n].copy_from_slice(&name.as_bytes()[..n]);
    let mut log = vec![0u8; 64 * 1024];
    let mut attr = ProgLoadAttr {
        prog_type,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        prog_name,
        ..Default::default()
    };
    bpf(BPF_PROG_LOAD, &mut attr).map(owned).map_err(|e| {
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        std::io::Error::new(e.kind(), format!("{e}: {}", String::from_utf8_lossy(&log[..end])))
    })
}

/// Runs `prog` on `data` (a packet) `repeat` times in the kernel (BPF_PROG_TEST_RUN): the
/// program's return value and the kernel's mean time per run in nanoseconds.
pub fn prog_test_run(prog: BorrowedFd<'_>, data: &[u8], repeat: u32) -> std::io::Result<(u32, u32)> {
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: data.len() as u32,
        data_in: data.as_ptr() as u64,
        repeat,
        ..Default::default()
    };
    bpf(BPF_PROG_TEST_RUN, &mut attr)?;
    Ok((attr.retval, attr.duration))
}

/// Attaches `prog` to `target` (an ifindex for TCX, an fd for a cgroup) at `attach_type` (`enum
/// bpf_attach_type`) with `flags`; the link holds the attachment until its last fd closes.
pub fn link_create(
    prog: BorrowedFd<'_>,
    target: u32,
    attach_type: u32,
    flags: u32,
) -> std::io::Result<OwnedFd> {
    let mut attr =
        LinkCreateAttr { prog_fd: prog.as_raw_fd() as u32, target, attach_type, flags, ..Default::default() };
    bpf(BPF_LINK_CREATE, &mut attr).map(owned)
}

/// A map read and written as bytes, whatever its key and value types.
pub struct RawMap {
    pub fd: OwnedFd,
    pub info: MapInfo,
    /// Bytes of one value as the element commands move it (per-CPU: one 8-byte aligned copy per
    /// possible CPU).
    pub value_bytes: usize,
    /// Bytes of one CPU's copy within `value_bytes`.
    pub stride: usize,
}

impl RawMap {
    /// The map pinned at `path`.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        Self::from_fd(obj_get(path)?)
    }

    fn from_fd(fd: OwnedFd) -> std::io::Result<Self> {
        let info: MapInfo = obj_info(fd.as_fd())?;
        let (stride, value_bytes) = if info.percpu() {
            let cpus = aya::util::nr_cpus()
                .map_err(|(what, e)| std::io::Error::new(e.kind(), format!("{what}: {e}")))?;
            let stride = (info.value_size as usize).div_ceil(8) * 8;
            (stride, stride * cpus)
        } else {
            (info.value_size as usize, info.value_size as usize)
        };
        Ok(Self { fd, info, value_bytes, stride })
    }

    /// A new map (`map_type` as in `enum bpf_map_type`), not pinned yet.
    pub fn create(
        name: &str,
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        flags: u32,
    ) -> std::io::Result<Self> {
        let mut map_name = [0u8; 16];
        let n = name.len().min(15);
        map_name[..n].copy_from_slice(&name.as_bytes()[..n]);
        let mut attr = CreateAttr {
            map_type,
            key_size,
            value_size,
            max_entries,
            map_flags: flags,
            map_name,
            ..Default::default()
        };
        Self::from_fd(bpf(BPF_MAP_CREATE, &mut attr).map(owned)?)
    }

    pub fn pin(&self, path: &Path) -> std::io::Result<()> {
        obj_pin(self.fd.as_fd(), path)
    }

    fn elem(&self, cmd: libc::c_long, key: &[u8], value: u64, flags: u64) -> std::io::Result<()> {
        if key.len() != self.info.key_size as usize {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "key of the wrong size"));
        }
        let mut attr =
            ElemAttr { map_fd: self.fd.as_raw_fd() as u32, pad: 0, key: key.as_ptr() as u64, value, flags };
        bpf(cmd, &mut attr).map(|_| ())
    }

    /// The value of `key` (`value_bytes` long), or `None`.
    pub fn lookup(&self, key: &[u8]) -> std::io::Result<Option<Vec<u8>>> {
        let mut value = vec![0u8; self.value_bytes];
        match self.elem(BPF_MAP_LOOKUP_ELEM, key, value.as_mut_ptr() as u64, 0) {
            Ok(()) => Ok(Some(value)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates or replaces `key` (`value` is `value_bytes` long).
    pub fn update(&self, key: &[u8], value: &[u8]) -> std::io::Result<()> {
        if value.len() != self.value_bytes {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "value of the wrong size"));
        }
        // The kernel only reads `value` for an update.
        self.elem(BPF_MAP_UPDATE_ELEM, key, value.as_ptr() as u64, BPF_ANY)
    }

    /// Creates or replaces many entries in one command (`BPF_MAP_UPDATE_BATCH`): `keys` and
    /// `values` hold them back to back (`key_size` and `value_bytes` each), in the same order.
    /// The kernel writes them in order and stops at the first that fails: the error comes with
    /// how many were written before it. Hash and array maps take it (Linux 5.6); LPM tries do not.
    pub fn update_batch(&self, keys: &[u8], values: &[u8]) -> Result<(), (usize, std::io::Error)> {
        let key_size = self.info.key_size as usize;
        let invalid = |what| (0, std::io::Error::new(std::io::ErrorKind::InvalidInput, what));
        if key_size == 0 || !keys.len().is_multiple_of(key_size) {
            return Err(invalid("keys of the wrong size"));
        }
        let count = keys.len() / key_size;
        if values.len() != count * self.value_bytes {
            return Err(invalid("values of the wrong size"));
        }
        let Ok(count32) = u32::try_from(count) else { return Err(invalid("too many entries")) };
        if count == 0 {
            return Ok(());
        }
        let mut attr = BatchAttr {
            keys: keys.as_ptr() as u64,
            values: values.as_ptr() as u64,
            count: count32,
            map_fd: self.fd.as_raw_fd() as u32,
            elem_flags: BPF_ANY,
            ..Default::default()
        };
        // The kernel reads `count` keys of `key_size` and values of `value_bytes` (checked above
        // against the map's own sizes) and writes back in `count` how many it wrote.
        match bpf(BPF_MAP_UPDATE_BATCH, &mut attr) {
            Ok(_) => Ok(()),
            Err(e) => Err(((attr.count as usize).min(count), e)),
        }
    }

    /// Every key (arrays: every index), bounded by the capacity plus one for a map written
    /// while it is walked.
    pub fn keys(&self) -> std::io::Result<Vec<Vec<u8>>> {
        if self.info.array() {
            return Ok((0..self.info.max_entries).map(|i| i.to_ne_bytes().to_vec()).collect());
        }
        let mut keys: Vec<Vec<u8>> = Vec::new();
        self.walk(|key| keys.push(key.to_vec()))?;
        Ok(keys)
    }

    /// Entries in the map (arrays: always `max_entries`), counted by walking the keys.
    pub fn entries(&self) -> std::io::Result<u64> {
        if self.info.array() {
            return Ok(u64::from(self.info.max_entries));
        }
        let mut count = 0;
        self.walk(|_| count += 1)?;
        Ok(count)
    }

    /// Calls `each` with every key, at most `max_entries + 1` times.
    fn walk(&self, mut each: impl FnMut(&[u8])) -> std::io::Result<()> {
        let size = self.info.key_size as usize;
        let (mut key, mut next) = (vec![0u8; size], vec![0u8; size]);
        let mut first = true;
        for _ in 0..=self.info.max_entries {
            let mut attr = ElemAttr {
                map_fd: self.fd.as_raw_fd() as u32,
                key: if first { 0 } else { key.as_ptr() as u64 },
                value: next.as_mut_ptr() as u64,
                ..Default::default()
            };
            match bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
                Err(e) => return Err(e),
            }
            first = false;
            std::mem::swap(&mut key, &mut next);
            each(&key);
        }
        Ok(())
    }
}

/// The bytes of a `#[repr(C)]` value made only of integers with explicit padding fields
/// (lb-common's rule for every map type).
pub fn bytes_of<T: aya::Pod>(v: &T) -> Vec<u8> {
    // Safety: `T: aya::Pod` (lb-common implements it for its map types) has no padding holes, so every one of its bytes is initialised.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
}

/// Appends the bytes of `v` (as `bytes_of`) to `out`, for a batch of entries.
pub fn extend_bytes<T: aya::Pod>(out: &mut Vec<u8>, v: &T) {
    // Safety: as in `bytes_of`.
    out.extend_from_slice(unsafe {
        std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>())
    });
}

/// A `#[repr(C)]` plain-old-data value read from the front of `bytes` (`None` when too short).
pub fn read_pod<T: aya::Pod>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < size_of::<T>() {
        return None;
    }
    // Safety: `bytes` holds at least `size_of::<T>()` bytes, read unaligned, and every bit
    // pattern is a valid `T: aya::Pod` (integers and arrays of them).
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}
