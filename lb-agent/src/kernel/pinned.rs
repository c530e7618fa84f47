//! What is pinned under `--bpffs`, as the kernel reports it: each link's program and where it is
//! attached (BPF_OBJ_GET_INFO_BY_FD), and each map's type, fill level and capacity
//! (BPF_MAP_GET_NEXT_KEY), for `lb-agent status`. Works while the agent is down.
use std::{
    collections::HashMap,
    os::fd::{AsFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use lb_common::map_names;
use serde::Serialize;
use thiserror::Error;

use crate::sys::{
    bpf::{self, RawMap, link_type, map_type},
    net,
};

#[derive(Debug, Error)]
pub enum PinnedError {
    #[error("cannot open pin {path}: {source}")]
    Open { path: PathBuf, source: std::io::Error },
    #[error("cannot read the kernel's information about {path}: {source}")]
    Info { path: PathBuf, source: std::io::Error },
    #[error("cannot list {path}: {source}")]
    List { path: PathBuf, source: std::io::Error },
}

fn obj_get(path: &Path) -> Result<OwnedFd, PinnedError> {
    bpf::obj_get(path).map_err(|source| PinnedError::Open { path: path.to_owned(), source })
}

fn info<T: Default + bpf::Info>(fd: &OwnedFd, path: &Path) -> Result<T, PinnedError> {
    bpf::obj_info(fd.as_fd()).map_err(|source| PinnedError::Info { path: path.to_owned(), source })
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
        let raw: bpf::LinkInfo = info(&fd, &path)?;
        let (kind, target) = match raw.link_type {
            link_type::CGROUP => {
                let id = raw.union[0];
                let paths = cgroups.get_or_insert_with(cgroup_paths);
                (
                    "cgroup",
                    paths.get(&id).map_or_else(|| format!("cgroup id {id}"), |p| p.display().to_string()),
                )
            }
            link_type::XDP | link_type::TCX => {
                let ifindex = raw.union[0] as u32;
                (if raw.link_type == link_type::XDP { "xdp" } else { "tcx" }, interface_name(ifindex))
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
    net::interface_name(ifindex)
        .unwrap_or_else(|| format!("ifindex {ifindex} (not in this network namespace)"))
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

fn map_kind(t: u32) -> &'static str {
    match t {
        map_type::HASH => "hash",
        map_type::ARRAY => "array",
        map_type::PERCPU_HASH => "percpu_hash",
        map_type::PERCPU_ARRAY => "percpu_array",
        map_type::LRU_HASH => "lru_hash",
        map_type::LPM_TRIE => "lpm_trie",
        _ => "other",
    }
}

/// The fill level of the map pinned as `bpffs/name`.
pub fn map(bpffs: &Path, name: &'static str) -> Result<MapRow, PinnedError> {
    let path = bpffs.join(name);
    let map = RawMap::open(&path).map_err(|source| PinnedError::Open { path: path.clone(), source })?;
    let entries = map.entries().map_err(|source| PinnedError::Info { path: path.clone(), source })?;
    Ok(MapRow {
        name,
        kind: map_kind(map.info.map_type),
        entries,
        capacity: map.info.max_entries,
        schema: None,
    })
}

/// Every map of `map_names::ALL` pinned under `bpffs` (missing ones are left out), but
/// `LB_SOCK_REVNAT`: socket storage has no capacity and cannot be listed from userspace.
pub fn maps(bpffs: &Path) -> Result<Vec<MapRow>, PinnedError> {
    let recorded = super::migrate::recorded_layouts(bpffs).unwrap_or_default();
    map_names::ALL
        .into_iter()
        .filter(|name| *name != map_names::SOCK_REVNAT && bpffs.join(name).exists())
        .map(|name| {
            let mut row = map(bpffs, name)?;
            row.schema = recorded.get(name).map(|r| r.schema);
            Ok(row)
        })
        .collect()
}
