//! What is pinned under `--bpffs`, as the kernel reports it: each link's program and where it is
//! attached (BPF_OBJ_GET_INFO_BY_FD), and each map's type, fill level and capacity
//! (BPF_MAP_GET_NEXT_KEY), for `lb-agent status`. Works while the agent is down.
use std::{
    collections::HashMap,
    ffi::CString,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use lb_common::map_names;
use serde::Serialize;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum PinnedError {
    #[error("cannot open pin {path}: {source}")]
    Open { path: PathBuf, source: std::io::Error },
    #[error("cannot read the kernel's information about {path}: {source}")]
    Info { path: PathBuf, source: std::io::Error },
    #[error("cannot list {path}: {source}")]
    List { path: PathBuf, source: std::io::Error },
}

const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// `enum bpf_link_type` values the agent creates.
const LINK_CGROUP: u32 = 3;
const LINK_XDP: u32 = 6;
const LINK_TCX: u32 = 11;

/// `union bpf_attr` for BPF_OBJ_GET.
#[repr(C)]
#[derive(Default)]
struct ObjGetAttr {
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

/// `union bpf_attr` for BPF_MAP_GET_NEXT_KEY.
#[repr(C)]
#[derive(Default)]
struct NextKeyAttr {
    map_fd: u32,
    pad: u32,
    key: u64,
    next_key: u64,
}

/// The head of `struct bpf_link_info`: type, id, prog_id, then the per-type union at offset 16
/// (cgroup: `cgroup_id: u64, attach_type: u32`; xdp: `ifindex: u32`; tcx: `ifindex: u32,
/// attach_type: u32`).
#[repr(C)]
#[derive(Default)]
struct LinkInfoRaw {
    type_: u32,
    id: u32,
    prog_id: u32,
    pad: u32,
    union: [u64; 4],
}

/// The head of `struct bpf_map_info`.
#[repr(C)]
#[derive(Default)]
pub(super) struct MapInfoRaw {
    pub type_: u32,
    pub id: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub map_flags: u32,
    pub name: [u8; 16],
}

pub(super) fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // Safety: `attr` is a valid, initialised `union bpf_attr` prefix for `cmd`, and every pointer
    // it carries points at a live buffer of the size it states.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, size_of::<T>()) };
    if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(r) }
}

pub(super) fn obj_get(path: &Path) -> Result<OwnedFd, PinnedError> {
    let open = |source| PinnedError::Open { path: path.to_owned(), source };
    let c_path = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| open(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
    let mut attr = ObjGetAttr { pathname: c_path.as_ptr() as u64, ..Default::default() };
    let fd = bpf(BPF_OBJ_GET, &mut attr).map_err(open)?;
    // Safety: BPF_OBJ_GET returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

pub(super) fn info<T: Default>(fd: &OwnedFd, path: &Path) -> Result<T, PinnedError> {
    let mut out = T::default();
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: size_of::<T>() as u32,
        info: &mut out as *mut T as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)
        .map_err(|source| PinnedError::Info { path: path.to_owned(), source })?;
    Ok(out)
}

/// One pinned link.
#[derive(Clone, Debug, Serialize)]
pub struct LinkRow {
    /// The pin's name under `links/`.
    pub pin: String,
    pub link_id: u32,
    pub program_id: u32,
    pub program: String,
    /// `cgroup`, `tcx` or `xdp`.
    pub kind: &'static str,
    /// The cgroup's path, or the interface (by name when it exists in this network namespace).
    pub target: String,
    /// The program's size after the verifier's rewrites, in instructions.
    pub instructions: Option<u32>,
    /// Instructions the verifier walked to accept it (its complexity; the limit is 1M).
    pub verified: Option<u32>,
}

/// The links pinned under `bpffs/links`, sorted by pin name.
pub fn links(bpffs: &Path) -> Result<Vec<LinkRow>, PinnedError> {
    let dir = bpffs.join("links");
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(PinnedError::List { path: dir, source }),
    };
    let programs: HashMap<u32, (String, Option<u32>, Option<u32>)> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| {
            let name = p.name_as_str().unwrap_or_default().to_owned();
            // Translated size in 8-byte BPF instructions.
            (p.id(), (name, p.size_translated().map(|b| b / 8), p.verified_instruction_count()))
        })
        .collect();
    let mut cgroups: Option<HashMap<u64, PathBuf>> = None;
    let mut rows = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| PinnedError::List { path: dir.clone(), source })?;
        let path = entry.path();
        let fd = match obj_get(&path) {
            Ok(fd) => fd,
            // Removed or renamed over since the listing (a running agent replacing a link, or
            // dropping a pod interface's): not a link any more.
            Err(PinnedError::Open { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                continue;
            }
            Err(e) => return Err(e),
        };
        let raw: LinkInfoRaw = info(&fd, &path)?;
        let (kind, target) = match raw.type_ {
            LINK_CGROUP => {
                let id = raw.union[0];
                let paths = cgroups.get_or_insert_with(cgroup_paths);
                (
                    "cgroup",
                    paths.get(&id).map_or_else(|| format!("cgroup id {id}"), |p| p.display().to_string()),
                )
            }
            LINK_XDP | LINK_TCX => {
                let ifindex = raw.union[0] as u32;
                (if raw.type_ == LINK_XDP { "xdp" } else { "tcx" }, interface_name(ifindex))
            }
            other => ("other", format!("link type {other}")),
        };
        let (program, instructions, verified) = programs.get(&raw.prog_id).cloned().unwrap_or_default();
        rows.push(LinkRow {
            pin: entry.file_name().to_string_lossy().into_owned(),
            link_id: raw.id,
            program_id: raw.prog_id,
            program,
            kind,
            target,
            instructions,
            verified,
        });
    }
    rows.sort_by(|a, b| a.pin.cmp(&b.pin));
    Ok(rows)
}

/// `ifindex` by name, or as a number when it is not in this network namespace.
fn interface_name(ifindex: u32) -> String {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // Safety: `buf` has IF_NAMESIZE bytes, as if_indextoname requires.
    let name = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if name.is_null() {
        return format!("ifindex {ifindex} (not in this network namespace)");
    }
    // Safety: on success `buf` holds a NUL-terminated name.
    unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned()
}

/// Every cgroup under the cgroup2 mount by id (its directory's inode number), walked breadth
/// first and bounded so a huge hierarchy cannot stall the CLI.
fn cgroup_paths() -> HashMap<u64, PathBuf> {
    use std::os::unix::fs::MetadataExt as _;
    let mut out = HashMap::new();
    let Ok(root) = super::loader::cgroup2_root() else { return out };
    let mut queue = std::collections::VecDeque::from([root]);
    while let Some(dir) = queue.pop_front() {
        if out.len() >= 100_000 {
            break;
        }
        if let Ok(meta) = std::fs::metadata(&dir) {
            out.insert(meta.ino(), dir.clone());
        }
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                queue.push_back(entry.path());
            }
        }
    }
    out
}

/// One pinned map's fill level.
#[derive(Clone, Debug, Serialize)]
pub struct MapRow {
    pub name: &'static str,
    /// `hash`, `lru_hash`, `percpu_hash`, `array`, `percpu_array` or `lpm_trie`.
    pub kind: &'static str,
    /// Entries in the map (arrays always hold `capacity`).
    pub entries: u64,
    pub capacity: u32,
    /// Schema of the agent that created the map, from `LB_META` (none: no record, i.e. schema 1
    /// or `LB_META` itself).
    pub schema: Option<u32>,
}

fn map_kind(t: u32) -> (&'static str, bool) {
    match t {
        1 => ("hash", false),
        2 => ("array", true),
        5 => ("percpu_hash", false),
        6 => ("percpu_array", true),
        9 => ("lru_hash", false),
        11 => ("lpm_trie", false),
        _ => ("other", false),
    }
}

/// Entries of a map, by walking its keys (bounded by its capacity, plus one for a map that
/// changes while it is walked).
fn count_keys(fd: &OwnedFd, key_size: u32, max: u32, path: &Path) -> Result<u64, PinnedError> {
    let mut key = vec![0u8; key_size as usize];
    let mut next = vec![0u8; key_size as usize];
    let mut count = 0u64;
    let mut first = true;
    while count <= u64::from(max) {
        let mut attr = NextKeyAttr {
            map_fd: fd.as_raw_fd() as u32,
            pad: 0,
            key: if first { 0 } else { key.as_ptr() as u64 },
            next_key: next.as_mut_ptr() as u64,
        };
        match bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
            Err(source) => return Err(PinnedError::Info { path: path.to_owned(), source }),
        }
        first = false;
        std::mem::swap(&mut key, &mut next);
        count += 1;
    }
    Ok(count)
}

/// The fill level of the map pinned as `bpffs/name`.
pub fn map(bpffs: &Path, name: &'static str) -> Result<MapRow, PinnedError> {
    let path = bpffs.join(name);
    let fd = obj_get(&path)?;
    let raw: MapInfoRaw = info(&fd, &path)?;
    let (kind, array) = map_kind(raw.type_);
    let entries = if array {
        u64::from(raw.max_entries)
    } else {
        count_keys(&fd, raw.key_size, raw.max_entries, &path)?
    };
    Ok(MapRow { name, kind, entries, capacity: raw.max_entries, schema: None })
}

/// Every map of `map_names::ALL` pinned under `bpffs` (missing ones are left out).
pub fn maps(bpffs: &Path) -> Result<Vec<MapRow>, PinnedError> {
    let recorded = super::migrate::recorded_layouts(bpffs).unwrap_or_default();
    map_names::ALL
        .into_iter()
        .filter(|name| bpffs.join(name).exists())
        .map(|name| {
            let mut row = map(bpffs, name)?;
            row.schema = recorded.get(name).map(|r| r.schema);
            Ok(row)
        })
        .collect()
}
