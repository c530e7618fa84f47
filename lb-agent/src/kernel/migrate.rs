//! Upgrades that change map shapes: an agent whose maps would differ from the pinned ones (a
//! capacity flag, a key or value layout) migrates them without dropping a flow.
//!
//! 1. `prepare` compares every pinned map with what this agent creates: the kernel's shape of
//!    the pin (type, key and value size, capacity, flags) against the embedded object's with the
//!    capacity flags, and the layout recorded in `LB_META` (field names, offsets, sizes; schema
//!    1's built-in layout for a map with no record) against this agent's `layout`. Equal maps
//!    are adopted as they are; the programs keep sharing them across the restart.
//! 2. The maps that differ are created new, pinned under `--bpffs/migrate/` (`pin_paths`, given
//!    to the loader), and `copy` fills them from the old pins: raw when only the capacity
//!    changed, otherwise converted field by field (`convert`: same name and size copied, fields
//!    this agent adds left 0).
//! 3. The agent syncs into the new maps, then attaches its programs beside the old ones, staged
//!    (`loader::Staged`); nothing has switched yet and the old programs keep serving.
//! 4. The switch: `delta` copies what the old programs wrote meanwhile (reverse NAT, conntrack,
//!    affinity), the links of the programs that write per-connection state (connect, sendmsg,
//!    TC) replace the old ones, `delta` runs again (the old writers are gone, so this copy is
//!    complete), then the readers (recvmsg, getpeername) replace theirs.
//! 5. `finish`: the new pins are renamed over the old ones (the old maps are freed with the old
//!    programs) and `LB_META` records the layouts.
//!
//! Any failure before the switch removes the new maps and staged links and leaves the old
//! datapath serving, untouched, with the reason in the error.
use std::{
    collections::HashMap,
    hash::{Hash as _, Hasher as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use aya::maps::{Map, MapData};
use lb_common::{
    AffinityKey, AffinityValue, AgentStatus, Backend, CtKey, CtValue, FieldLayout, Frontend4Key,
    Frontend6Key, FrontendValue, LAYOUT_FIELDS, MapLayout, MetaKey, RevNat4Key, RevNat4Value, RevNat6Key,
    RevNat6Value, SCHEMA_VERSION, ServiceName, ServiceStats, SlotKey, SlotValue, SockRevNat, map_names,
};
use tracing::{info, warn};

use super::loader::{self, Capacities};
use crate::sys::bpf::{RawMap, map_type};

/// Where an upgrade pins its new maps until the switch.
const STAGE_DIR: &str = "migrate";

/// A map's shape as the kernel creates it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

impl Shape {
    fn percpu(&self) -> bool {
        matches!(self.map_type, map_type::PERCPU_HASH | map_type::PERCPU_ARRAY | map_type::LRU_PERCPU_HASH)
    }
}

/// One field of a key or value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub offset: usize,
    pub size: usize,
}

impl Field {
    fn of<S, T>(name: &str, offset: usize, _: fn(&S) -> &T) -> Self {
        Self { name: name.to_owned(), offset, size: size_of::<T>() }
    }

    fn scalar<T>(name: &str) -> Vec<Self> {
        vec![Self { name: name.to_owned(), offset: 0, size: size_of::<T>() }]
    }
}

/// The fields of a map's key and of its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub key: Vec<Field>,
    pub value: Vec<Field>,
}

macro_rules! fields {
    ($t:ty: $($f:ident),+ $(,)?) => {
        vec![$(Field::of::<$t, _>(stringify!($f), core::mem::offset_of!($t, $f), |s: &$t| &s.$f)),+]
    };
}

/// This agent's layout of each pinned map (from the `lb_common` types). `LB_META` has none: its
/// own shape never changes.
///
/// Schema 1 recorded no layouts: a map without an `LB_META` record is taken to have this
/// agent's layout, which schema 1's maps have (`schema_1_layouts_are_frozen` checks it). When a
/// type here changes, that map's schema 1 layout must be kept for this fallback.
pub fn layout(name: &str) -> Option<Layout> {
    let (key, value) = match name {
        map_names::FRONTENDS_V4 => (
            fields!(Frontend4Key: addr, port, proto, pad),
            fields!(FrontendValue: group, count, flags, affinity_timeout, ext_offset, ext_count),
        ),
        map_names::FRONTENDS_V6 => (
            fields!(Frontend6Key: addr, port, proto, pad),
            fields!(FrontendValue: group, count, flags, affinity_timeout, ext_offset, ext_count),
        ),
        map_names::SLOTS => (fields!(SlotKey: group, slot), fields!(SlotValue: backend)),
        map_names::BACKENDS => {
            (Field::scalar::<u32>("id"), fields!(Backend: addr, port, proto, family, state, flags, pad))
        }
        map_names::REVNAT_V4 => (
            fields!(RevNat4Key: cookie, backend_addr, backend_port, pad),
            fields!(RevNat4Value: frontend_addr, frontend_port, pad),
        ),
        map_names::REVNAT_V6 => (
            fields!(RevNat6Key: cookie, backend_addr, backend_port, pad),
            fields!(RevNat6Value: frontend_addr, frontend_port, pad),
        ),
        map_names::STATS => (Field::scalar::<u32>("index"), Field::scalar::<u64>("count")),
        // `epoch` was `pad2` before schema 4, always 0: a schema 1 map read with this layout
        // (see above) holds epoch 0, "not checked yet", which is what it is.
        map_names::CONNTRACK => (
            fields!(CtKey: src, dst, sport, dport, proto, family, dir, pad),
            fields!(CtValue: src, dst, sport, dport, flags, pad, backend, epoch, last_seen),
        ),
        // aya's `lpm_trie::Key<SourceRangeKey>`: the prefix length, then the data.
        map_names::SOURCE_RANGES => (
            vec![
                Field { name: "prefix_len".into(), offset: 0, size: 4 },
                Field { name: "group".into(), offset: 4, size: 4 },
                Field { name: "addr".into(), offset: 8, size: 16 },
            ],
            Field::scalar::<u8>("mark"),
        ),
        map_names::AFFINITY => {
            (fields!(AffinityKey: group, client, kind, pad), fields!(AffinityValue: backend, slot, last_used))
        }
        map_names::SERVICES => (
            Field::scalar::<u32>("group"),
            fields!(ServiceName: namespace, name, port, proto, family, scope, pad),
        ),
        map_names::SERVICE_STATS => (Field::scalar::<u32>("group"), fields!(ServiceStats: counters)),
        map_names::AGENT => (
            Field::scalar::<u32>("index"),
            fields!(
                AgentStatus: schema,
                pid,
                started_ms,
                last_sync_ms,
                last_applied_ms,
                last_sync_us,
                syncs,
                failed_syncs,
                last_result,
                source,
                ready,
                pad
            ),
        ),
        map_names::LOG => (Field::scalar::<u32>("index"), Field::scalar::<u32>("group")),
        // Socket-local storage: the key is the socket's file descriptor (userspace only).
        map_names::SOCK_REVNAT => (Field::scalar::<i32>("fd"), fields!(SockRevNat: entries, next, pad)),
        map_names::CT_GATE => (Field::scalar::<u32>("index"), Field::scalar::<u8>("set")),
        map_names::BACKEND_EPOCH => (Field::scalar::<u32>("index"), Field::scalar::<u32>("epoch")),
        _ => return None,
    };
    Some(Layout { key, value })
}

fn field_record(f: &Field) -> FieldLayout {
    let mut name = [0u8; 20];
    let bytes = f.name.as_bytes();
    name[..bytes.len().min(20)].copy_from_slice(&bytes[..bytes.len().min(20)]);
    FieldLayout { name, offset: f.offset as u16, size: f.size as u16 }
}

fn field_of(r: &FieldLayout) -> Field {
    let end = r.name.iter().position(|&b| b == 0).unwrap_or(r.name.len());
    Field {
        name: String::from_utf8_lossy(&r.name[..end]).into_owned(),
        offset: usize::from(r.offset),
        size: usize::from(r.size),
    }
}

/// `layout` as `LB_META` records it.
pub fn record(schema: u32, layout: &Layout) -> MapLayout {
    let empty = FieldLayout { name: [0; 20], offset: 0, size: 0 };
    let mut r = MapLayout {
        schema,
        key_size: layout.key.iter().map(|f| f.offset + f.size).max().unwrap_or(0) as u32,
        value_size: layout.value.iter().map(|f| f.offset + f.size).max().unwrap_or(0) as u32,
        key_fields: layout.key.len().min(LAYOUT_FIELDS) as u16,
        value_fields: layout.value.len().min(LAYOUT_FIELDS) as u16,
        key: [empty; LAYOUT_FIELDS],
        value: [empty; LAYOUT_FIELDS],
    };
    for (slot, f) in r.key.iter_mut().zip(&layout.key) {
        *slot = field_record(f);
    }
    for (slot, f) in r.value.iter_mut().zip(&layout.value) {
        *slot = field_record(f);
    }
    r
}

/// Value fields renamed without a change of meaning for what an older agent wrote in them, as
/// (map, old name, new name): a recorded layout is read with the new names, so a rename alone
/// migrates nothing.
const RENAMED: [(&str, &str, &str); 1] = [
    // Schema 4: padding, always written 0, became the backends' epoch, where 0 means "not
    // checked yet". (Copying the conntrack map for it would cost an upgrade the whole table.)
    (map_names::CONNTRACK, "pad2", "epoch"),
];

/// `layout`, a recorded layout of map `name`, with `RENAMED`'s new names.
fn renamed(name: &str, mut layout: Layout) -> Layout {
    for (map, old, new) in RENAMED {
        if map == name {
            for f in layout.value.iter_mut().filter(|f| f.name == old) {
                f.name = new.to_owned();
            }
        }
    }
    layout
}

/// The layout an `LB_META` record describes.
pub fn layout_of(r: &MapLayout) -> Layout {
    Layout {
        key: r.key.iter().take(usize::from(r.key_fields)).map(field_of).collect(),
        value: r.value.iter().take(usize::from(r.value_fields)).map(field_of).collect(),
    }
}

pub fn meta_key(name: &str) -> MetaKey {
    let mut key = MetaKey { name: [0; 24] };
    key.name[..name.len().min(24)].copy_from_slice(&name.as_bytes()[..name.len().min(24)]);
    key
}

/// The `LB_META` records pinned under `bpffs`, by map name (none for a set from schema 1).
pub fn recorded_layouts(bpffs: &Path) -> anyhow::Result<HashMap<String, MapLayout>> {
    let path = bpffs.join(map_names::META);
    if !path.exists() {
        return Ok(HashMap::new());
    }
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    let map: aya::maps::HashMap<MapData, MetaKey, MapLayout> =
        Map::from_map_data(data).and_then(aya::maps::HashMap::try_from).context("LB_META is not a hash")?;
    let mut out = HashMap::new();
    for entry in map.iter() {
        let (k, v) = entry.context("reading LB_META")?;
        let end = k.name.iter().position(|&b| b == 0).unwrap_or(k.name.len());
        out.insert(String::from_utf8_lossy(&k.name[..end]).into_owned(), v);
    }
    Ok(out)
}

/// The maps pinned under `bpffs` now (before a load creates the missing ones).
pub fn pinned_maps(bpffs: &Path) -> Vec<&'static str> {
    map_names::ALL.into_iter().filter(|name| bpffs.join(name).exists()).collect()
}

/// Records this agent's layout of every map in `LB_META`, with the schema of the agent that
/// created each map: this one for a map missing from `pinned_before` or in `migrated`, else the
/// earlier record's (1 without one). Called once the pinned maps are this agent's.
pub fn record_layouts(bpffs: &Path, pinned_before: &[&str], migrated: &[&str]) -> anyhow::Result<()> {
    let old = recorded_layouts(bpffs)?;
    let path = bpffs.join(map_names::META);
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    let mut map: aya::maps::HashMap<MapData, MetaKey, MapLayout> =
        Map::from_map_data(data).and_then(aya::maps::HashMap::try_from).context("LB_META is not a hash")?;
    for name in map_names::ALL {
        let Some(layout) = layout(name) else { continue };
        let schema = if migrated.contains(&name) || !pinned_before.contains(&name) {
            SCHEMA_VERSION
        } else {
            old.get(name).map_or(1, |r| r.schema)
        };
        map.insert(meta_key(name), record(schema, &layout), 0)
            .with_context(|| format!("recording the layout of {name} in LB_META"))?;
    }
    Ok(())
}

/// Converts one key or value from the `from` fields to the `to` fields (`size` bytes): a field
/// of the same name and size is copied, any other (new, resized, padding) is 0.
pub fn convert(bytes: &[u8], from: &[Field], to: &[Field], size: usize) -> Vec<u8> {
    let mut out = vec![0u8; size];
    for f in to.iter().filter(|f| !f.name.starts_with("pad")) {
        if let Some(old) = from.iter().find(|o| o.name == f.name && o.size == f.size)
            && old.offset + old.size <= bytes.len()
            && f.offset + f.size <= size
        {
            out[f.offset..f.offset + f.size].copy_from_slice(&bytes[old.offset..old.offset + old.size]);
        }
    }
    out
}

/// The shape of a pinned map as the kernel reports it.
fn shape_of(map: &RawMap) -> Shape {
    let i = map.info;
    Shape {
        map_type: i.map_type,
        key_size: i.key_size,
        value_size: i.value_size,
        max_entries: i.max_entries,
        flags: i.map_flags,
    }
}

/// The map pinned at `path`.
fn open(path: &Path) -> anyhow::Result<RawMap> {
    RawMap::open(path).with_context(|| format!("opening {}", path.display()))
}

fn hash(bytes: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// One map being migrated.
struct Migrated {
    name: &'static str,
    old: Shape,
    new: Shape,
    from: Layout,
    to: Layout,
    /// Why it is migrated, for the log.
    why: String,
    /// What `copy`/`delta` last wrote, by new key: an entry the new programs changed since is
    /// theirs and newer.
    written: HashMap<Vec<u8>, u64>,
    /// Kernel id of the old map, for the log.
    old_id: u32,
    /// The old map, held open: after `switch_pins` its pin names the new map, and the copies after
    /// the switch still read what the old programs wrote.
    old_map: RawMap,
}

impl Migrated {
    /// Programs write these while they run (per connection): copied again at the switch.
    fn written_by_programs(&self) -> bool {
        matches!(
            self.name,
            map_names::REVNAT_V4 | map_names::REVNAT_V6 | map_names::CONNTRACK | map_names::AFFINITY
        )
    }

    fn same_layout(&self) -> bool {
        self.from == self.to
            && self.old.key_size == self.new.key_size
            && self.old.value_size == self.new.value_size
    }

    /// The new value bytes for old `value` bytes.
    fn value(&self, old: &RawMap, new: &RawMap, value: &[u8]) -> Vec<u8> {
        if !self.new.percpu() {
            return if self.same_layout() {
                value.to_vec()
            } else {
                convert(value, &self.from.value, &self.to.value, self.new.value_size as usize)
            };
        }
        let mut out = vec![0u8; new.value_bytes];
        let cpus = new.value_bytes / new.stride;
        for cpu in 0..cpus {
            let chunk = &value[cpu * old.stride..][..old.info.value_size as usize];
            let converted = convert(chunk, &self.from.value, &self.to.value, self.new.value_size as usize);
            out[cpu * new.stride..][..converted.len()].copy_from_slice(&converted);
        }
        out
    }

    /// Copies the old map's entries into the new one. `delta`: only those the new programs did
    /// not write since the last copy. Returns the entries written.
    fn copy(&mut self, new_path: &Path, delta: bool) -> anyhow::Result<usize> {
        let old = &self.old_map;
        let new = open(new_path)?;
        let array = matches!(self.new.map_type, map_type::ARRAY | map_type::PERCPU_ARRAY);
        let keys = old.keys().with_context(|| format!("listing the old {}", self.name))?;
        // An LRU map never refuses an update (it evicts), so a capacity below what the old map
        // holds is checked here, for every hash type alike, before anything is copied.
        if !delta && !array && keys.len() > self.new.max_entries as usize {
            bail!(
                "{} holds more entries than its new capacity {} ({} entries): keeping the old maps \
                 (raise the capacity or remove entries first)",
                self.name,
                self.new.max_entries,
                keys.len()
            );
        }
        let mut written = 0;
        for key in keys {
            let Some(value) = old.lookup(&key).with_context(|| format!("reading the old {}", self.name))?
            else {
                continue; // gone since it was listed
            };
            let new_key = if self.same_layout() {
                key.clone()
            } else {
                convert(&key, &self.from.key, &self.to.key, self.new.key_size as usize)
            };
            if array
                && u32::from_ne_bytes(new_key[..4].try_into().unwrap_or_default()) >= self.new.max_entries
            {
                continue;
            }
            let new_value = self.value(old, &new, &value);
            if delta {
                let now = new.lookup(&new_key).with_context(|| format!("reading {}", new_path.display()))?;
                if let Some(now) = now {
                    // Unchanged since our last copy: take the old programs' newer value. Changed,
                    // or made by the new programs: theirs is newer.
                    let ours = self.written.get(&new_key).is_some_and(|&copied| hash(&now) == copied);
                    if !ours || now == new_value {
                        continue;
                    }
                }
            }
            match new.update(&new_key, &new_value) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::E2BIG) => bail!(
                    "{} holds more entries than its new capacity {}: keeping the old maps (raise the \
                     capacity or remove entries first)",
                    self.name,
                    self.new.max_entries
                ),
                Err(e) => return Err(e).with_context(|| format!("writing {}", new_path.display())),
            }
            if self.written_by_programs() {
                self.written.insert(new_key, hash(&new_value));
            }
            written += 1;
        }
        Ok(written)
    }
}

/// An upgrade in progress: the maps that change shape, their new pins under `migrate/`.
pub struct Migration {
    bpffs: PathBuf,
    stage: PathBuf,
    maps: Vec<Migrated>,
    finished: bool,
    /// The new maps' pins are in place of the old ones (`switch_pins`).
    switched: bool,
}

/// The shape this agent creates each pinned map with: the object's definition, with the
/// capacity flags.
fn wanted_shapes(cap: Capacities) -> anyhow::Result<HashMap<String, Shape>> {
    let object = loader::parsed_object()?;
    let sizes: HashMap<&str, u32> = cap.by_map().into_iter().collect();
    Ok(object
        .maps
        .iter()
        .map(|(name, m)| {
            let shape = Shape {
                map_type: m.map_type(),
                key_size: m.key_size(),
                value_size: m.value_size(),
                max_entries: sizes.get(name.as_str()).copied().unwrap_or_else(|| m.max_entries()),
                flags: m.map_flags(),
            };
            (name.clone(), shape)
        })
        .collect())
}

fn describe(old: &Shape, new: &Shape, layout_changed: bool) -> String {
    let mut why = Vec::new();
    if old.max_entries != new.max_entries {
        why.push(format!("capacity {} → {}", old.max_entries, new.max_entries));
    }
    if old.key_size != new.key_size || old.value_size != new.value_size {
        why.push(format!(
            "key/value size {}/{} → {}/{}",
            old.key_size, old.value_size, new.key_size, new.value_size
        ));
    }
    if old.map_type != new.map_type || old.flags != new.flags {
        why.push(format!("type/flags {}/{:#x} → {}/{:#x}", old.map_type, old.flags, new.map_type, new.flags));
    }
    if layout_changed {
        why.push("field layout".to_owned());
    }
    why.join(", ")
}

impl Migration {
    /// Compares the maps pinned under `bpffs` with those this agent would create with `cap`:
    /// `None` when every pinned map can be adopted as it is.
    pub fn prepare(bpffs: &Path, cap: Capacities) -> anyhow::Result<Option<Self>> {
        let wanted = wanted_shapes(cap)?;
        let recorded = recorded_layouts(bpffs).context("reading the layouts recorded in LB_META")?;
        let mut maps = Vec::new();
        for name in map_names::ALL {
            let (Some(new), Some(to)) = (wanted.get(name), layout(name)) else { continue };
            let path = bpffs.join(name);
            if !path.exists() {
                continue; // created at load
            }
            let old = open(&path)?;
            let old_shape = shape_of(&old);
            let from = recorded.get(name).map_or_else(|| to.clone(), |r| renamed(name, layout_of(r)));
            let layout_changed = from != to;
            if old_shape == *new && !layout_changed {
                continue;
            }
            if name == map_names::SOCK_REVNAT {
                // Socket storage cannot be listed, so it cannot be copied: its layout is frozen
                // (`lb_common::SockRevNat`), a change needs a map of another name.
                bail!(
                    "pinned {name} differs from this agent's ({}): socket storage cannot be migrated; \
                     keeping the old maps",
                    describe(&old_shape, new, layout_changed)
                );
            }
            if old_shape.map_type != new.map_type {
                bail!(
                    "pinned {name} is a map of type {} where this agent has {}: no conversion between \
                     map types; keeping the old maps",
                    old_shape.map_type,
                    new.map_type
                );
            }
            maps.push(Migrated {
                name,
                old: old_shape,
                new: *new,
                why: describe(&old_shape, new, layout_changed),
                from,
                to,
                written: HashMap::new(),
                old_id: old.info.id,
                old_map: old,
            });
        }
        if maps.is_empty() {
            return Ok(None);
        }
        let stage = bpffs.join(STAGE_DIR);
        if stage.exists() {
            // Left by an upgrade that stopped half-way: those maps serve nothing the pins name.
            warn!(dir = %stage.display(), "removing the new maps of an unfinished upgrade");
            remove_pins(&stage)?;
        }
        std::fs::create_dir_all(&stage).with_context(|| format!("creating {}", stage.display()))?;
        for m in &maps {
            info!(map = m.name, change = %m.why, "map changes shape: migrating it");
        }
        Ok(Some(Self { bpffs: bpffs.to_owned(), stage, maps, finished: false, switched: false }))
    }

    /// The loader's pin paths for the new maps.
    pub fn pin_paths(&self) -> Vec<(&'static str, PathBuf)> {
        self.maps.iter().map(|m| (m.name, self.stage.join(m.name))).collect()
    }

    /// Names of the migrated maps.
    pub fn names(&self) -> Vec<&'static str> {
        self.maps.iter().map(|m| m.name).collect()
    }

    /// Where this agent's map `name` is pinned now.
    pub fn path_of(&self, name: &str) -> PathBuf {
        if !self.switched && self.maps.iter().any(|m| m.name == name) {
            self.stage.join(name)
        } else {
            self.bpffs.join(name)
        }
    }

    /// Copies every entry of the old maps into the new ones (before the first sync).
    pub fn copy(&mut self) -> anyhow::Result<()> {
        for m in &mut self.maps {
            let new = self.stage.join(m.name);
            let n = m.copy(&new, false).with_context(|| format!("copying {}", m.name))?;
            info!(map = m.name, entries = n, converted = !m.same_layout(), "entries copied into the new map");
        }
        Ok(())
    }

    /// Copies again what the old programs wrote since the last copy (per-connection state).
    pub fn delta(&mut self) -> anyhow::Result<usize> {
        let mut total = 0;
        let dir = if self.switched { &self.bpffs } else { &self.stage };
        for m in self.maps.iter_mut().filter(|m| m.written_by_programs()) {
            let new = dir.join(m.name);
            total += m.copy(&new, true).with_context(|| format!("copying {} again", m.name))?;
        }
        Ok(total)
    }

    /// Right after the first programs switched to the new maps: the new pins replace the old
    /// ones, so from here on a failure (or a crash) leaves the pins naming the maps the switched
    /// programs use, and the next agent adopts them instead of copying stale old ones again.
    /// The old maps stay open here for the last copies; the kernel frees them with the last old
    /// program and this `Migration`.
    pub fn switch_pins(&mut self) -> anyhow::Result<()> {
        for m in &self.maps {
            let (staged, pin) = (self.stage.join(m.name), self.bpffs.join(m.name));
            std::fs::rename(&staged, &pin)
                .with_context(|| format!("renaming {} over {}", staged.display(), pin.display()))?;
            info!(map = m.name, old_map_id = m.old_id, "old map unpinned; the new one is in its place");
        }
        self.switched = true;
        std::fs::remove_dir(&self.stage).with_context(|| format!("removing {}", self.stage.display()))?;
        Ok(())
    }

    /// After the switch and the last copy.
    pub fn finish(mut self) -> anyhow::Result<()> {
        if !self.switched {
            self.switch_pins()?;
        }
        self.finished = true;
        Ok(())
    }
}

impl Drop for Migration {
    fn drop(&mut self) {
        // Once switched, the new maps are the pinned ones and serve: nothing to undo.
        if !self.finished
            && !self.switched
            && let Err(e) = remove_pins(&self.stage).and_then(|()| {
                std::fs::remove_dir(&self.stage).with_context(|| format!("removing {}", self.stage.display()))
            })
        {
            warn!(error = %e, "cannot remove the new maps of the failed upgrade");
        }
    }
}

fn remove_pins(dir: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    }
    Ok(())
}

/// The socket and TC links whose programs write per-connection state (switched first).
pub fn writes_state(pin: &str) -> bool {
    pin.contains("connect") || pin.contains("sendmsg") || pin.starts_with("tc-")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_value_sizes(name: &str) -> (usize, usize) {
        let l = layout(name).expect("layout");
        let end = |fs: &[Field]| fs.iter().map(|f| f.offset + f.size).max().unwrap_or(0);
        (end(&l.key), end(&l.value))
    }

    #[test]
    fn every_layout_covers_its_type_byte_for_byte() {
        for name in map_names::ALL.into_iter().filter(|n| *n != map_names::META) {
            let l = layout(name).unwrap_or_else(|| panic!("{name} has no layout"));
            for fields in [&l.key, &l.value] {
                assert!(fields.len() <= LAYOUT_FIELDS, "{name}");
                let mut sorted = fields.clone();
                sorted.sort_by_key(|f| f.offset);
                let mut end = 0;
                for f in &sorted {
                    assert_eq!(f.offset, end, "{name}: a gap or overlap before {}", f.name);
                    end += f.size;
                }
            }
        }
    }

    /// Schema 1 wrote no `LB_META`; its maps are read with these layouts. Changing a type means
    /// keeping its schema 1 layout for that fallback (see `layout`).
    #[test]
    fn schema_1_layouts_are_frozen() {
        let sizes: Vec<(&str, (usize, usize))> = map_names::ALL
            .into_iter()
            // Maps schema 1 did not have.
            .filter(|n| {
                ![map_names::META, map_names::SOCK_REVNAT, map_names::CT_GATE, map_names::BACKEND_EPOCH]
                    .contains(n)
            })
            .map(|n| (n, key_value_sizes(n)))
            .collect();
        assert_eq!(
            sizes,
            [
                (map_names::FRONTENDS_V4, (8, 24)),
                (map_names::FRONTENDS_V6, (20, 24)),
                (map_names::SLOTS, (8, 4)),
                (map_names::BACKENDS, (4, 24)),
                (map_names::REVNAT_V4, (16, 8)),
                (map_names::REVNAT_V6, (32, 20)),
                (map_names::STATS, (4, 8)),
                (map_names::CONNTRACK, (40, 56)),
                (map_names::SOURCE_RANGES, (24, 1)),
                (map_names::AFFINITY, (24, 16)),
                (map_names::SERVICES, (4, 152)),
                (map_names::SERVICE_STATS, (4, 80)),
                (map_names::AGENT, (4, 64)),
                (map_names::LOG, (4, 4)),
            ]
        );
    }

    /// A schema 3 conntrack map (its padding named `pad2`) is adopted as it is, not copied.
    #[test]
    fn a_renamed_field_alone_migrates_nothing() {
        let now = layout(map_names::CONNTRACK).expect("conntrack layout");
        let mut schema_3 = now.clone();
        let epoch = schema_3.value.iter_mut().find(|f| f.name == "epoch").expect("epoch field");
        epoch.name = "pad2".to_owned();
        assert_ne!(schema_3, now);
        let recorded = record(3, &schema_3);
        assert_eq!(renamed(map_names::CONNTRACK, layout_of(&recorded)), now);
        // Only that map's field.
        let affinity = layout(map_names::AFFINITY).expect("affinity layout");
        assert_eq!(renamed(map_names::AFFINITY, affinity.clone()), affinity);
    }

    #[test]
    fn a_record_reads_back_as_its_layout() {
        for name in map_names::ALL.into_iter().filter(|n| *n != map_names::META) {
            let l = layout(name).expect("layout");
            assert_eq!(layout_of(&record(SCHEMA_VERSION, &l)), l, "{name}");
        }
    }

    #[test]
    fn conversion_moves_fields_by_name_and_zeroes_new_ones() {
        // An older affinity value: slot first, padding, last_used, backend, padding (24 bytes).
        let old = vec![
            Field { name: "slot".into(), offset: 0, size: 4 },
            Field { name: "pad".into(), offset: 4, size: 4 },
            Field { name: "last_used".into(), offset: 8, size: 8 },
            Field { name: "backend".into(), offset: 16, size: 4 },
            Field { name: "gone".into(), offset: 20, size: 4 },
        ];
        let mut bytes = vec![0u8; 24];
        bytes[0..4].copy_from_slice(&7u32.to_ne_bytes());
        bytes[4..8].copy_from_slice(&[0xff; 4]);
        bytes[8..16].copy_from_slice(&123_456u64.to_ne_bytes());
        bytes[16..20].copy_from_slice(&42u32.to_ne_bytes());
        bytes[20..24].copy_from_slice(&9u32.to_ne_bytes());
        let to = layout(map_names::AFFINITY).expect("layout").value;
        let out = convert(&bytes, &old, &to, 16);
        let v: AffinityValue = crate::sys::bpf::read_pod(&out).expect("a whole value");
        assert_eq!(v, AffinityValue { backend: 42, slot: 7, last_used: 123_456 });
    }
}
