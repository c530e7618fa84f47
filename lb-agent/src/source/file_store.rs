//! The file source's state between loads: the documents of the last good load, by the hash of
//! their text, and the objects of every Service key as references into them.
//!
//! A load cuts each file into its documents (`yaml_split`), parses only the documents whose
//! text the last load did not have (on two threads when there is much to parse), and compares
//! the objects of each key with the last load's by content. Editing one Service in a file of
//! 20,000 documents parses one document and dirties one key; a document that moves, or appears
//! twice, is not parsed again. Per document only its objects are kept, slices in their compact
//! form (`StoredSlice`), never the text.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    hash::{BuildHasherDefault, Hasher},
    path::Path,
    sync::Arc,
};

use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};

use super::{
    SourceError,
    compact::{SharedTexts, StoredSlice},
    file::{self, Origin, PendingProblem},
    store::ChangeCounts,
    yaml_split,
};
use crate::model::{Located, Problem, ServiceKey, ServiceObjects, SliceTie, unlabelled_slice};

/// Parsing on more threads than this is not worth taking the node's cores from its pods.
const PARSE_THREADS: usize = 2;
/// Below this much text to parse, one thread.
const PARALLEL_BYTES: usize = 256 << 10;

/// The file source's objects, and what each load changed.
#[derive(Default)]
pub struct FileStore {
    /// Two independent keyed hashes of a document's text (128 bits: a collision would hide an
    /// edit); keys chosen at random per process.
    hashers: (ahash::RandomState, ahash::RandomState),
    /// The parsed documents of the last good load, by the hash of their text.
    chunks: ChunkMap,
    /// The last good load's files, in order.
    files: Vec<FileState>,
    keys: BTreeMap<ServiceKey, KeyRefs>,
    counts: ChangeCounts,
}

type TextHash = (u64, u64);

type ChunkMap = HashMap<TextHash, Arc<Chunk>, BuildHasherDefault<Random>>;

/// The hasher of maps keyed by `TextHash`es, which are random already: it keeps them.
#[derive(Default)]
struct Random(u64);

impl Hasher for Random {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = self.0.rotate_left(29) ^ n;
    }
}

/// What one load changed.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The keys whose objects differ from the last good load's.
    pub dirty: BTreeSet<ServiceKey>,
    /// Every problem of the files (objects not read, slices tied to no Service).
    pub problems: Vec<Problem>,
    /// Pieces of text parsed (documents not seen in the last load, or whole files).
    pub parsed: usize,
}

/// The objects of one piece of a file (a document, or comments only, or a whole file that
/// did not cut), origins relative to the piece.
#[derive(Debug, Default)]
struct Chunk {
    /// Documents the parser yielded (empty ones count in origins).
    docs: u32,
    services: Box<[(Origin, ServiceKey, Arc<Service>)]>,
    /// Slices tied to a Service (headless Services' and FQDN slices are never used).
    slices: Box<[(Origin, ServiceKey, StoredSlice)]>,
    nodes: Box<[Arc<Node>]>,
    problems: Box<[PendingProblem]>,
    /// Slices without a `kubernetes.io/service-name` label (reported after every other problem).
    unlabelled: Box<[PendingProblem]>,
}

impl Chunk {
    /// The kept form of some documents' objects (boxed slices: no spare capacity, as a
    /// document usually holds one object).
    fn of(docs: file::Documents) -> Self {
        let services = docs.services.into_iter().map(|(origin, mut service)| {
            // Written by the API server for its own bookkeeping; translation never reads it.
            service.metadata.managed_fields = None;
            let key = ServiceKey::of_service(&service);
            (origin, key, Arc::new(service))
        });
        let mut slices = Vec::new();
        let mut unlabelled = Vec::new();
        // Node names shared within the chunk (chunks are parsed on two threads).
        let mut names = SharedTexts::default();
        for (origin, slice) in docs.slices {
            match SliceTie::of(&slice) {
                SliceTie::Service(key) => slices.push((origin, key, StoredSlice::new(&slice, &mut names))),
                SliceTie::Ignored => {}
                SliceTie::Unlabelled => {
                    let problem =
                        unlabelled_slice(&Located { origin: String::new(), object: Arc::new(slice) });
                    unlabelled.push(PendingProblem {
                        object: problem.object,
                        origin,
                        reason: problem.reason,
                    });
                }
            }
        }
        Self {
            docs: docs.count,
            services: services.collect(),
            slices: slices.into(),
            nodes: docs.nodes.into_iter().map(|(_, n)| Arc::new(n)).collect(),
            problems: docs.problems.into(),
            unlabelled: unlabelled.into(),
        }
    }
}

/// One object of a key: item `item` of the services or slices of `chunk`, piece `pos` of file
/// `file` (indexes into `FileStore::files`).
#[derive(Clone, Debug)]
struct Ref {
    chunk: Arc<Chunk>,
    item: u32,
    file: u32,
    pos: u32,
}

impl Ref {
    fn service(&self) -> &Arc<Service> {
        &self.chunk.services[self.item as usize].2
    }

    fn slice(&self) -> &StoredSlice {
        &self.chunk.slices[self.item as usize].2
    }

    fn place(&self) -> (u32, u32, u32) {
        (self.file, self.pos, self.item)
    }
}

/// The objects of one key, in the order of the files.
#[derive(Clone, Debug, Default)]
struct KeyRefs {
    services: Vec<Ref>,
    slices: Vec<Ref>,
}

impl KeyRefs {
    fn same_services(&self, other: &Self) -> bool {
        self.services.len() == other.services.len()
            && self.services.iter().zip(&other.services).all(|(a, b)| {
                let (a, b) = (a.service(), b.service());
                Arc::ptr_eq(a, b) || a == b
            })
    }

    fn same_slices(&self, other: &Self) -> bool {
        self.slices.len() == other.slices.len()
            && self.slices.iter().zip(&other.slices).all(|(a, b)| {
                let (a, b) = (a.slice(), b.slice());
                std::ptr::eq(a, b) || a == b
            })
    }

    fn is_empty(&self) -> bool {
        self.services.is_empty() && self.slices.is_empty()
    }

    /// No spare capacity (a key usually has one Service and a few slices).
    fn shrink(&mut self) {
        self.services.shrink_to_fit();
        self.slices.shrink_to_fit();
    }
}

/// One file of the last good load.
#[derive(Debug)]
struct FileState {
    name: Arc<str>,
    pieces: Vec<Arc<Chunk>>,
    hashes: Vec<TextHash>,
    /// Documents before each piece.
    bases: Vec<u32>,
}

impl FileState {
    fn new(name: Arc<str>, pieces: Vec<Arc<Chunk>>, hashes: Vec<TextHash>) -> Self {
        let mut base = 0;
        let bases = pieces
            .iter()
            .map(|c| {
                let b = base;
                base += c.docs;
                b
            })
            .collect();
        Self { name, pieces, hashes, bases }
    }

    fn origin(&self, pos: u32, origin: &Origin) -> String {
        Origin { doc: self.bases[pos as usize] + origin.doc, path: origin.path.clone() }.in_file(&self.name)
    }
}

/// Adds the objects of piece `pos` of file `file` to their keys.
fn index(keys: &mut BTreeMap<ServiceKey, KeyRefs>, chunk: &Arc<Chunk>, file: u32, pos: u32) {
    let at = |item: usize| Ref { chunk: Arc::clone(chunk), item: item as u32, file, pos };
    for (item, (_, key, _)) in chunk.services.iter().enumerate() {
        refs_of(keys, key).services.push(at(item));
    }
    for (item, (_, key, _)) in chunk.slices.iter().enumerate() {
        refs_of(keys, key).slices.push(at(item));
    }
}

/// The keys of a piece's objects.
fn keys_of(chunk: &Chunk) -> impl Iterator<Item = &ServiceKey> {
    chunk.services.iter().map(|(_, k, _)| k).chain(chunk.slices.iter().map(|(_, k, _)| k))
}

impl FileStore {
    /// Reads every file under `path` again. A load that fails (a file unreadable or not YAML)
    /// changes nothing: the last good load stays.
    pub fn load(&mut self, path: &Path) -> Result<Loaded, SourceError> {
        let mut chunks = ChunkMap::default();
        let mut files = Vec::new();
        let mut parsed = 0;
        for file in file::files(path)? {
            let text = std::fs::read_to_string(&file)
                .map_err(|source| SourceError::Read { path: file.display().to_string(), source })?;
            let name: Arc<str> = file.display().to_string().into();
            let (pieces, hashes) = self.pieces(&name, &text, &mut chunks, &mut parsed)?;
            files.push(FileState::new(name, pieces, hashes));
        }
        let mut problems = Vec::new();
        let mut unlabelled = Vec::new();
        for file in &files {
            for (chunk, base) in file.pieces.iter().zip(&file.bases) {
                let in_file = |p: &PendingProblem| {
                    PendingProblem {
                        origin: Origin { doc: base + p.origin.doc, ..p.origin.clone() },
                        ..p.clone()
                    }
                    .in_file(&file.name)
                };
                problems.extend(chunk.problems.iter().map(in_file));
                unlabelled.extend(chunk.unlabelled.iter().map(in_file));
            }
        }
        problems.extend(unlabelled);
        // When no piece came or went, only the keys of the pieces that changed in place can
        // differ, and every other object keeps its place.
        let same_shape = self.files.len() == files.len()
            && self
                .files
                .iter()
                .zip(&files)
                .all(|(a, b)| a.name == b.name && a.hashes.len() == b.hashes.len());
        let changed: Option<Vec<(u32, u32)>> = same_shape.then(|| {
            let mut changed = Vec::new();
            for (f, (old, new)) in self.files.iter().zip(&files).enumerate() {
                for (pos, (a, b)) in old.hashes.iter().zip(&new.hashes).enumerate() {
                    if a != b {
                        changed.push((f as u32, pos as u32));
                    }
                }
            }
            changed
        });
        let (dirty, old) = match changed {
            Some(changed) => self.patch(&files, &changed),
            None => self.rebuild(&files),
        };
        let none = KeyRefs::default();
        for key in &dirty {
            let (old, new) = (old.get(key).unwrap_or(&none), self.keys.get(key).unwrap_or(&none));
            self.counts.service_total += u64::from(!old.same_services(new));
            self.counts.endpoint_total += u64::from(!old.same_slices(new));
        }
        (self.chunks, self.files) = (chunks, files);
        Ok(Loaded { dirty, problems, parsed })
    }

    /// The index built again for `files`. The keys whose objects differ from the last load's,
    /// and their refs before.
    fn rebuild(&mut self, files: &[FileState]) -> (BTreeSet<ServiceKey>, BTreeMap<ServiceKey, KeyRefs>) {
        let mut keys = BTreeMap::new();
        for (f, file) in files.iter().enumerate() {
            for (pos, chunk) in file.pieces.iter().enumerate() {
                index(&mut keys, chunk, f as u32, pos as u32);
            }
        }
        keys.values_mut().for_each(KeyRefs::shrink);
        let mut old = std::mem::replace(&mut self.keys, keys);
        let mut dirty: BTreeSet<ServiceKey> =
            old.keys().filter(|k| !self.keys.contains_key(*k)).cloned().collect();
        for (key, new) in &self.keys {
            if !old.get(key).is_some_and(|old| old.same_services(new) && old.same_slices(new)) {
                dirty.insert(key.clone());
            }
        }
        old.retain(|k, _| dirty.contains(k));
        (dirty, old)
    }

    /// The index moved from the last load's files to `files`, which differ from them only in
    /// the pieces at `changed` (file, position): the refs of those places replaced. The keys
    /// whose objects differ now, and their refs before.
    fn patch(
        &mut self,
        files: &[FileState],
        changed: &[(u32, u32)],
    ) -> (BTreeSet<ServiceKey>, BTreeMap<ServiceKey, KeyRefs>) {
        let mut touched: BTreeSet<ServiceKey> = BTreeSet::new();
        for &(f, pos) in changed {
            let (old, new) =
                (&self.files[f as usize].pieces[pos as usize], &files[f as usize].pieces[pos as usize]);
            touched.extend(keys_of(old).chain(keys_of(new)).cloned());
        }
        let mut before: BTreeMap<ServiceKey, KeyRefs> =
            touched.iter().filter_map(|k| self.keys.get(k).map(|r| (k.clone(), r.clone()))).collect();
        let places: BTreeSet<(u32, u32)> = changed.iter().copied().collect();
        for key in &touched {
            if let Some(refs) = self.keys.get_mut(key) {
                refs.services.retain(|r| !places.contains(&(r.file, r.pos)));
                refs.slices.retain(|r| !places.contains(&(r.file, r.pos)));
            }
        }
        for &(f, pos) in changed {
            index(&mut self.keys, &files[f as usize].pieces[pos as usize], f, pos);
        }
        let none = KeyRefs::default();
        let mut dirty = BTreeSet::new();
        for key in touched {
            let now = match self.keys.get_mut(&key) {
                Some(refs) => {
                    refs.services.sort_by_key(Ref::place);
                    refs.slices.sort_by_key(Ref::place);
                    refs.shrink();
                    &*refs
                }
                None => &none,
            };
            let old = before.get(&key).unwrap_or(&none);
            let same = old.same_services(now) && old.same_slices(now);
            if now.is_empty() {
                self.keys.remove(&key);
            }
            if !same {
                dirty.insert(key);
            }
        }
        before.retain(|k, _| dirty.contains(k));
        (dirty, before)
    }

    /// The parsed pieces of one file's `text`, in order: those seen before (in the last load
    /// or this one) reused, the others parsed and added to `seen`. A piece that does not parse
    /// alone has the whole text parsed: its error is the file's, and should the whole parse,
    /// the file is one piece.
    fn pieces(
        &self,
        file: &str,
        text: &str,
        seen: &mut ChunkMap,
        parsed: &mut usize,
    ) -> Result<(Vec<Arc<Chunk>>, Vec<TextHash>), SourceError> {
        let syntax = |reason| SourceError::Syntax { path: file.to_owned(), reason };
        let whole = |seen: &mut ChunkMap, parsed: &mut usize| -> Result<_, SourceError> {
            let hash = self.hash(text);
            let chunk = match self.chunks.get(&hash).or_else(|| seen.get(&hash)) {
                Some(chunk) => Arc::clone(chunk),
                None => {
                    *parsed += 1;
                    Arc::new(Chunk::of(file::parse(text).map_err(syntax)?))
                }
            };
            seen.insert(hash, Arc::clone(&chunk));
            Ok((vec![chunk], vec![hash]))
        };
        let Some(pieces) = yaml_split::documents(text) else { return whole(seen, parsed) };
        let hashes: Vec<TextHash> = pieces.iter().map(|p| self.hash(p)).collect();
        let mut todo: Vec<(TextHash, &str)> = Vec::new();
        let mut queued = BTreeSet::new();
        for (hash, piece) in hashes.iter().zip(&pieces) {
            if let Some(chunk) = self.chunks.get(hash) {
                seen.entry(*hash).or_insert_with(|| Arc::clone(chunk));
            } else if !seen.contains_key(hash) && queued.insert(*hash) {
                todo.push((*hash, piece));
            }
        }
        *parsed += todo.len();
        let mut done = Vec::with_capacity(todo.len());
        for (result, (hash, _)) in parse_all(&todo).into_iter().zip(&todo) {
            match result {
                Ok(chunk) => done.push((*hash, Arc::new(chunk))),
                Err(_) => return whole(seen, parsed),
            }
        }
        seen.extend(done);
        Ok((hashes.iter().map(|h| Arc::clone(&seen[h])).collect(), hashes))
    }

    fn hash(&self, text: &str) -> TextHash {
        (self.hashers.0.hash_one(text), self.hashers.1.hash_one(text))
    }

    /// The objects of `key` now; `None` when it has none.
    pub fn objects(&self, key: &ServiceKey) -> Option<ServiceObjects> {
        let refs = self.keys.get(key)?;
        let origin = |r: &Ref, o: &Origin| self.files[r.file as usize].origin(r.pos, o);
        let services = refs
            .services
            .iter()
            .map(|r| Located {
                origin: origin(r, &r.chunk.services[r.item as usize].0),
                object: Arc::clone(r.service()),
            })
            .collect();
        let slices: Vec<Located<EndpointSlice>> = refs
            .slices
            .iter()
            .map(|r| Located {
                origin: origin(r, &r.chunk.slices[r.item as usize].0),
                object: r.slice().to_slice(),
            })
            .collect();
        Some(ServiceObjects { services, slices })
    }

    /// Every key with objects.
    pub fn keys(&self) -> BTreeSet<ServiceKey> {
        self.keys.keys().cloned().collect()
    }

    /// The Node objects, in the order of the files.
    pub fn nodes(&self) -> Vec<Arc<Node>> {
        self.files.iter().flat_map(|f| f.pieces.iter().flat_map(|c| c.nodes.iter().cloned())).collect()
    }

    /// Services and EndpointSlices (tied to a Service) held.
    pub fn counts(&self) -> (usize, usize) {
        self.keys.values().fold((0, 0), |(s, e), r| (s + r.services.len(), e + r.slices.len()))
    }

    /// kube-proxy's change counts: each load compared with the last (nothing is pending
    /// between loads).
    pub fn change_counts(&self) -> ChangeCounts {
        self.counts
    }
}

fn refs_of<'a>(keys: &'a mut BTreeMap<ServiceKey, KeyRefs>, key: &ServiceKey) -> &'a mut KeyRefs {
    if !keys.contains_key(key) {
        keys.insert(key.clone(), KeyRefs::default());
    }
    keys.get_mut(key).expect("inserted above")
}

/// Each piece parsed and made compact at once (a piece's whole objects never outlive it), in
/// order; on up to `PARSE_THREADS` threads when there is much text.
fn parse_all(pieces: &[(TextHash, &str)]) -> Vec<Result<Chunk, String>> {
    let parse = |part: &[(TextHash, &str)]| {
        part.iter().map(|(_, t)| file::parse(t).map(Chunk::of)).collect::<Vec<_>>()
    };
    let bytes: usize = pieces.iter().map(|(_, t)| t.len()).sum();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(PARSE_THREADS);
    if threads < 2 || bytes < PARALLEL_BYTES || pieces.len() < 2 {
        return parse(pieces);
    }
    // Cut where half of the text is behind.
    let mut behind = 0;
    let cut = pieces
        .iter()
        .position(|(_, t)| {
            behind += t.len();
            behind * 2 >= bytes
        })
        .map_or(pieces.len(), |i| i + 1)
        .min(pieces.len() - 1);
    let (first, second) = pieces.split_at(cut);
    std::thread::scope(|s| {
        let other = s.spawn(|| parse(second));
        let mut out = parse(first);
        match other.join() {
            Ok(rest) => out.extend(rest),
            Err(panic) => std::panic::resume_unwind(panic),
        }
        out
    })
}

#[cfg(test)]
mod tests;
