//! Raw BPF map syscalls for tests that play an older agent: read the agent's pinned maps, and
//! create, fill and pin maps of another shape or layout in their place (`bpf(2)` directly, as
//! the test binary has no aya).
use std::{
    ffi::CString,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // Safety: `attr` is a valid `union bpf_attr` prefix for `cmd`; every pointer in it points at
    // a live buffer of the size the command expects.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, size_of::<T>()) };
    if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(r) }
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

#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The head of `struct bpf_map_info`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MapInfo {
    pub map_type: u32,
    pub id: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub map_flags: u32,
}

/// A BPF map by fd.
pub struct RawMap {
    pub fd: OwnedFd,
    pub info: MapInfo,
}

fn c_path(path: &Path) -> anyhow::Result<CString> {
    Ok(CString::new(path.as_os_str().as_encoded_bytes())?)
}

impl RawMap {
    /// The map pinned at `path`.
    pub fn from_pin(path: &Path) -> anyhow::Result<Self> {
        let c = c_path(path)?;
        let mut attr = ObjAttr { pathname: c.as_ptr() as u64, ..Default::default() };
        let fd = bpf(BPF_OBJ_GET, &mut attr).map_err(|e| anyhow::anyhow!("open {}: {e}", path.display()))?;
        // Safety: BPF_OBJ_GET returned a new fd nothing else owns.
        Self::from_fd(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    fn from_fd(fd: OwnedFd) -> anyhow::Result<Self> {
        let mut info = MapInfo::default();
        let mut attr = InfoAttr {
            bpf_fd: fd.as_raw_fd() as u32,
            info_len: size_of::<MapInfo>() as u32,
            info: &raw mut info as u64,
        };
        bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
        Ok(Self { fd, info })
    }

    /// A new map (`map_type` as in `enum bpf_map_type`), not pinned yet.
    pub fn create(
        name: &str,
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        flags: u32,
    ) -> anyhow::Result<Self> {
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
        let fd = bpf(BPF_MAP_CREATE, &mut attr)?;
        // Safety: BPF_MAP_CREATE returned a new fd nothing else owns.
        Self::from_fd(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    pub fn pin(&self, path: &Path) -> anyhow::Result<()> {
        let c = c_path(path)?;
        let mut attr =
            ObjAttr { pathname: c.as_ptr() as u64, bpf_fd: self.fd.as_raw_fd() as u32, ..Default::default() };
        bpf(BPF_OBJ_PIN, &mut attr)?;
        Ok(())
    }

    /// Every key (bounded by the capacity).
    pub fn keys(&self) -> anyhow::Result<Vec<Vec<u8>>> {
        let mut keys: Vec<Vec<u8>> = Vec::new();
        let mut next = vec![0u8; self.info.key_size as usize];
        while keys.len() <= self.info.max_entries as usize {
            let mut attr = ElemAttr {
                map_fd: self.fd.as_raw_fd() as u32,
                key: keys.last().map_or(0, |k| k.as_ptr() as u64),
                value: next.as_mut_ptr() as u64,
                ..Default::default()
            };
            match bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) {
                Ok(_) => keys.push(next.clone()),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(keys)
    }

    /// The value of `key` (not for per-CPU maps).
    pub fn lookup(&self, key: &[u8]) -> anyhow::Result<Option<Vec<u8>>> {
        let mut value = vec![0u8; self.info.value_size as usize];
        let mut attr = ElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            key: key.as_ptr() as u64,
            value: value.as_mut_ptr() as u64,
            ..Default::default()
        };
        match bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
            Ok(_) => Ok(Some(value)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub fn update(&self, key: &[u8], value: &[u8]) -> anyhow::Result<()> {
        anyhow::ensure!(key.len() == self.info.key_size as usize, "key size");
        anyhow::ensure!(value.len() == self.info.value_size as usize, "value size");
        let mut attr = ElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            key: key.as_ptr() as u64,
            value: value.as_ptr() as u64,
            ..Default::default()
        };
        bpf(BPF_MAP_UPDATE_ELEM, &mut attr)?;
        Ok(())
    }
}

/// Whether a map with this kernel id still exists.
pub fn map_exists(id: u32) -> bool {
    const BPF_MAP_GET_FD_BY_ID: libc::c_long = 14;
    #[repr(C)]
    #[derive(Default)]
    struct IdAttr {
        id: u32,
        next_id: u32,
        open_flags: u32,
    }
    let mut attr = IdAttr { id, ..Default::default() };
    match bpf(BPF_MAP_GET_FD_BY_ID, &mut attr) {
        Ok(fd) => {
            // Safety: a new fd nothing else owns, closed at once.
            drop(unsafe { OwnedFd::from_raw_fd(fd as i32) });
            true
        }
        Err(_) => false,
    }
}

/// The bytes of a `#[repr(C)]` value made only of integers (no padding holes).
pub fn bytes_of<T: Copy>(v: &T) -> Vec<u8> {
    // Safety: `T` is plain old data with explicit padding (lb-common's rule), so every byte of
    // it is initialised.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
}
