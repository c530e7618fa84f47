//! The file store against the plain way: every file parsed whole (`file::load`), grouped
//! (`group_objects`) and compared with the last load by content (`changed_keys`).
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::atomic::{AtomicUsize, Ordering},
};

use super::*;
use crate::{model::group_objects, source::store::changed_keys};

/// A directory of its own under the temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "lb-agent-file-store-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One key's objects: the Services' origins and Services, the slices' origins and slices (as
/// the store keeps them).
type KeyView = (Vec<String>, Vec<Service>, Vec<String>, Vec<StoredSlice>);

/// A load as the tests compare it: every key's objects, the problems, the nodes.
#[derive(Debug, PartialEq)]
struct View {
    keys: BTreeMap<ServiceKey, KeyView>,
    problems: Vec<Problem>,
    nodes: Vec<Node>,
}

fn view_of(grouped: &BTreeMap<ServiceKey, ServiceObjects>, problems: Vec<Problem>, nodes: Vec<Node>) -> View {
    let keys = grouped
        .iter()
        .map(|(k, o)| {
            let services = o
                .services
                .iter()
                .map(|l| {
                    let mut s = (*l.object).clone();
                    s.metadata.managed_fields = None;
                    s
                })
                .collect();
            (
                k.clone(),
                (
                    o.services.iter().map(|l| l.origin.clone()).collect(),
                    services,
                    o.slices.iter().map(|l| l.origin.clone()).collect(),
                    o.slices
                        .iter()
                        .map(|l| StoredSlice::new(&l.object, &mut SharedTexts::default()))
                        .collect(),
                ),
            )
        })
        .collect();
    View { keys, problems, nodes }
}

fn store_view(store: &FileStore, problems: Vec<Problem>) -> View {
    let grouped: BTreeMap<ServiceKey, ServiceObjects> = store
        .keys()
        .into_iter()
        .map(|k| (k.clone(), store.objects(&k).expect("a key has objects")))
        .collect();
    view_of(&grouped, problems, store.nodes().iter().map(|n| (**n).clone()).collect())
}

/// The plain way, one load after another.
#[derive(Default)]
struct Plain {
    last: BTreeMap<ServiceKey, ServiceObjects>,
}

impl Plain {
    fn load(&mut self, path: &Path) -> Result<(BTreeSet<ServiceKey>, View), String> {
        let (objects, mut problems) = file::load(path).map_err(|e| e.to_string())?;
        let (grouped, more) = group_objects(&objects);
        problems.extend(more);
        let dirty = changed_keys(&self.last, &grouped);
        let view = view_of(&grouped, problems, objects.nodes.iter().map(|n| (*n.object).clone()).collect());
        self.last = grouped;
        Ok((dirty, view))
    }
}

/// Documents a file may hold: objects, and the YAML that is easy to cut wrong.
const POOL: &[&str] = &[
    "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: ns}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}\n",
    "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: ns}\nspec: {clusterIP: 10.96.0.2, ports: [{port: 80}]}\n",
    "{apiVersion: v1, kind: Service, metadata: {name: b, namespace: ns}, spec: {clusterIP: 10.96.0.3, ports: [{port: 53, protocol: UDP}]}}\n",
    "apiVersion: v1\nkind: Service\nmetadata:\n  name: c\n  namespace: ns\n  annotations:\n    note: |\n      ---\n      ...\n      x\nspec:\n  clusterIP: 10.96.0.4\n  ports: [{port: 80}]\n",
    "apiVersion: v1\nkind: Service\nmetadata:\n  name: c\n  namespace: ns\n  annotations: {note: \"--- a\n    --- b\"}\nspec: {clusterIP: 10.96.0.5, ports: [{port: 80}]}\n",
    "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: a-1\n  namespace: ns\n  labels: {kubernetes.io/service-name: a}\naddressType: IPv4\nendpoints:\n- addresses: [10.244.0.1]\n",
    "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: a-1\n  namespace: ns\n  labels: {kubernetes.io/service-name: a}\naddressType: IPv4\nendpoints:\n- addresses: [10.244.0.2]\n  conditions: {ready: false}\n",
    "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: a-2\n  namespace: ns\n  labels: {kubernetes.io/service-name: a}\naddressType: IPv4\nendpoints:\n- addresses: [10.244.0.3]\n",
    "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: b-1\n  namespace: ns\n  labels: {kubernetes.io/service-name: b}\naddressType: IPv4\nendpoints:\n- addresses: [10.244.1.1]\n",
    "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: loose, namespace: ns}\naddressType: IPv4\nendpoints: []\n",
    "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: h-1\n  namespace: ns\n  labels: {kubernetes.io/service-name: h, service.kubernetes.io/headless: \"\"}\naddressType: IPv4\nendpoints: []\n",
    "{\"apiVersion\": \"v1\", \"kind\": \"List\", \"items\": [\n  {\"apiVersion\": \"v1\", \"kind\": \"Service\", \"metadata\": {\"name\": \"b\", \"namespace\": \"ns\"}, \"spec\": {\"clusterIP\": \"10.96.0.9\", \"ports\": [{\"port\": 80}]}},\n  {\"apiVersion\": \"v1\", \"kind\": \"ConfigMap\", \"metadata\": {\"name\": \"cm\"}}]}\n",
    "apiVersion: v1\nkind: Node\nmetadata: {name: node-1, labels: {topology.kubernetes.io/zone: z1}}\n",
    "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm, namespace: ns}\n",
    "apiVersion: v1\nkind: Service\nmetadata: {name: bad, namespace: ns}\nspec: {ports: [{port: \"abc\"}]}\n",
    "# only a comment\n",
    "",
    "|\n  a root block scalar\n  over lines\n",
    "just a string\n",
    "|\nat column 0\n  and indented\n",
    "\"a quoted\nstring at column 0\"\n",
    "- a\n- b\n",
    "apiVersion: v1\nkind: Service\nmetadata: {name: d, namespace: ns}\nspec: {clusterIP: 10.96.0.6, ports: [{port: 80}]}\n...\n",
    "a: [unclosed\n",
];

/// How a document is written into its file.
fn written(docs: &[(usize, u8)]) -> String {
    let mut out = String::new();
    for (i, &(doc, style)) in docs.iter().enumerate() {
        let text = POOL[doc];
        match style % 4 {
            // The first document may go without a marker.
            0 if i == 0 => out.push_str(text),
            // `--- ` and the document's first line on one line.
            1 if !text.starts_with('#') && !text.is_empty() => {
                out.push_str("--- ");
                out.push_str(text);
            }
            2 => {
                out.push_str("---\r\n");
                out.push_str(&text.replace('\n', "\r\n"));
            }
            _ => {
                out.push_str("---\n");
                out.push_str(text);
            }
        }
    }
    out
}

/// Both ways agree on whether a load fails, and on every key's objects, the problems, the
/// nodes and the dirty keys after it.
fn compare(
    store: &mut FileStore,
    plain: &mut Plain,
    path: &Path,
) -> Result<(), proptest::test_runner::TestCaseError> {
    let expected = plain.load(path);
    let got = store.load(path);
    match (expected, got) {
        (Err(_), Err(SourceError::Syntax { .. })) => {}
        (Ok((dirty, view)), Ok(loaded)) => {
            proptest::prop_assert_eq!(&loaded.dirty, &dirty);
            proptest::prop_assert_eq!(store_view(store, loaded.problems), view);
        }
        (expected, got) => proptest::prop_assert!(false, "plain {expected:?}, store {got:?}"),
    }
    Ok(())
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

    /// Two files edited step by step (a document inserted, removed, replaced, moved or
    /// repeated): after every load the store holds what parsing everything again holds, with
    /// the same origins and problems, and dirties the keys the content comparison of two whole
    /// loads names.
    #[test]
    fn every_load_equals_a_whole_parse(
        start in proptest::collection::vec((0usize..2, 0..POOL.len(), proptest::prelude::any::<u8>()), 0..12),
        edits in proptest::collection::vec(
            (0usize..2, 0u8..5, proptest::prelude::any::<usize>(), proptest::prelude::any::<usize>(), 0..POOL.len(), proptest::prelude::any::<u8>()),
            1..12,
        ),
    ) {
        let dir = TempDir::new();
        let mut files: [Vec<(usize, u8)>; 2] = Default::default();
        for (f, doc, style) in start {
            files[f].push((doc, style));
        }
        let write = |files: &[Vec<(usize, u8)>; 2]| {
            for (i, docs) in files.iter().enumerate() {
                std::fs::write(dir.0.join(format!("{i}.yaml")), written(docs)).expect("write");
            }
        };
        let (mut store, mut plain) = (FileStore::default(), Plain::default());
        write(&files);
        compare(&mut store, &mut plain, &dir.0)?;
        for (f, op, a, b, doc, style) in edits {
            let docs = &mut files[f];
            let len = docs.len();
            match op {
                0 => docs.insert(a % (len + 1), (doc, style)),
                1 if len > 0 => { docs.remove(a % len); }
                2 if len > 0 => docs[a % len] = (doc, style),
                3 if len > 0 => { let d = docs.remove(a % len); docs.insert(b % len, d); }
                4 if len > 0 => { let d = docs[a % len]; docs.insert(b % (len + 1), d); }
                _ => docs.push((doc, style)),
            }
            write(&files);
            compare(&mut store, &mut plain, &dir.0)?;
        }
    }
}

/// `count` Services, each with one slice: a cluster dump's shape.
fn cluster(count: usize, changed: Option<(usize, &str)>) -> String {
    let mut out = String::new();
    for i in 0..count {
        let ip = match changed {
            Some((c, ip)) if c == i => ip.to_owned(),
            _ => format!("10.244.{}.{}", i / 250, i % 250 + 1),
        };
        out.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: ns}}\nspec: {{clusterIP: 10.96.{}.{}, ports: [{{port: 80}}]}}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: s{i}-1, namespace: ns, labels: {{kubernetes.io/service-name: s{i}}}}}\naddressType: IPv4\nendpoints: [{{addresses: ['{ip}']}}]\n",
            i / 250,
            i % 250 + 1
        ));
    }
    out
}

#[test]
fn editing_one_slice_of_twenty_thousand_documents_parses_and_dirties_only_it() {
    let dir = TempDir::new();
    let path = dir.0.join("cluster.yaml");
    std::fs::write(&path, cluster(10_000, None)).expect("write");
    let mut store = FileStore::default();
    let first = store.load(&path).expect("loads");
    assert_eq!((first.dirty.len(), first.parsed, store.counts()), (10_000, 20_000, (10_000, 10_000)));
    // The same file again: nothing parsed, nothing dirty.
    let again = store.load(&path).expect("loads");
    assert_eq!((again.dirty.len(), again.parsed), (0, 0));
    std::fs::write(&path, cluster(10_000, Some((4321, "10.0.0.7")))).expect("write");
    let edited = store.load(&path).expect("loads");
    assert_eq!(edited.dirty, BTreeSet::from([ServiceKey::new("ns", "s4321")]));
    assert_eq!(edited.parsed, 1);
    let objects = store.objects(&ServiceKey::new("ns", "s4321")).expect("objects");
    assert_eq!(objects.slices[0].object.endpoints[0].addresses, ["10.0.0.7"]);
    assert_eq!(objects.slices[0].origin, format!("{}#8644", path.display()));
    let counts = store.change_counts();
    assert_eq!((counts.service_total, counts.endpoint_total), (10_000, 10_001));
}

#[test]
fn a_moved_document_is_not_parsed_again_and_changes_nothing() {
    let dir = TempDir::new();
    let path = dir.0.join("cluster.yaml");
    std::fs::write(&path, cluster(3, None)).expect("write");
    let mut store = FileStore::default();
    store.load(&path).expect("loads");
    // Service s0's document moved to the end: origins follow, nothing is dirty.
    let text = cluster(3, None);
    let (s0, rest) = text.split_at(text[4..].find("---\n").expect("second document") + 4);
    std::fs::write(&path, format!("{rest}{s0}")).expect("write");
    let moved = store.load(&path).expect("loads");
    assert_eq!((moved.dirty.len(), moved.parsed), (0, 0));
    let objects = store.objects(&ServiceKey::new("ns", "s0")).expect("objects");
    assert_eq!(objects.services[0].origin, format!("{}#6", path.display()));
}

#[test]
fn a_broken_edit_keeps_the_last_good_load() {
    let dir = TempDir::new();
    let path = dir.0.join("cluster.yaml");
    std::fs::write(&path, cluster(2, None)).expect("write");
    let mut store = FileStore::default();
    store.load(&path).expect("loads");
    let broken = format!("{}---\nports: [unclosed\n", cluster(2, Some((0, "10.0.0.9"))));
    std::fs::write(&path, &broken).expect("write");
    match store.load(&path) {
        // The error is the whole file's (its line numbers are the file's).
        Err(SourceError::Syntax { path: p, reason }) => {
            assert_eq!(p, path.display().to_string());
            assert_eq!(Err(reason), file::parse(&broken).map(|_| ()));
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }
    let objects = store.objects(&ServiceKey::new("ns", "s0")).expect("objects");
    assert_eq!(objects.slices[0].object.endpoints[0].addresses, ["10.244.0.1"], "the last good load");
    // Fixed: only the slice that differs from the last good load is dirty.
    std::fs::write(&path, cluster(2, Some((0, "10.0.0.9")))).expect("write");
    let fixed = store.load(&path).expect("loads");
    assert_eq!(fixed.dirty, BTreeSet::from([ServiceKey::new("ns", "s0")]));
}

#[test]
fn a_file_with_directives_is_parsed_whole_and_once() {
    let dir = TempDir::new();
    let path = dir.0.join("cluster.yaml");
    std::fs::write(&path, format!("%YAML 1.2\n{}", cluster(2, None))).expect("write");
    let mut store = FileStore::default();
    let first = store.load(&path).expect("loads");
    assert_eq!((first.dirty.len(), first.parsed, store.counts()), (2, 1, (2, 2)));
    let again = store.load(&path).expect("loads");
    assert_eq!((again.dirty.len(), again.parsed), (0, 0));
}
