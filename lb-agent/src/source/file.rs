//! The file source: a YAML file, or a directory of them, holding real Kubernetes objects
//! (`v1/Service`, `discovery.k8s.io/v1/EndpointSlice`, `v1/List`), multi-document files allowed.
//!
//! A file that cannot be read or parsed fails the whole load (the agent keeps what it has
//! programmed); an object that parses as YAML but not as its kind is reported and skipped.
use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use notify::{RecommendedWatcher, RecursiveMode, Watcher as _};
use serde_json::Value;

use super::SourceError;
use crate::model::{Located, Objects, Problem};

/// The YAML files under `path` (itself, or the `.yaml`/`.yml`/`.json` files below it), sorted.
pub(super) fn files(path: &Path) -> Result<Vec<PathBuf>, SourceError> {
    let read_err = |source| SourceError::Read { path: path.display().to_string(), source };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    if !meta.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut out = Vec::new();
    let mut dirs = vec![path.to_owned()];
    while let Some(dir) = dirs.pop() {
        let entries = std::fs::read_dir(&dir)
            .map_err(|source| SourceError::Read { path: dir.display().to_string(), source })?;
        for entry in entries {
            let entry =
                entry.map_err(|source| SourceError::Read { path: dir.display().to_string(), source })?;
            let p = entry.path();
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue; // editors' swap files, `..data` links of ConfigMap volumes
            }
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|e| e == "yaml" || e == "yml" || e == "json") {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Reads every object under `path`.
pub fn load(path: &Path) -> Result<(Objects, Vec<Problem>), SourceError> {
    let mut objects = Objects::default();
    let mut problems = Vec::new();
    for file in files(path)? {
        let text = std::fs::read_to_string(&file)
            .map_err(|source| SourceError::Read { path: file.display().to_string(), source })?;
        parse_into(&file.display().to_string(), &text, &mut objects, &mut problems)?;
    }
    Ok((objects, problems))
}

/// Parser limits sized for cluster dumps (`kubectl get svc,endpointslices -A -o yaml` of a large
/// cluster is one document per object and millions of nodes), keeping the depth and alias
/// limits that guard against hostile input.
fn options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_documents = 10_000_000;
    budget.max_nodes = 200_000_000;
    budget.max_events = 1_000_000_000;
    budget.max_total_scalar_bytes = 4 << 30;
    budget.max_reader_input_bytes = Some(4 << 30);
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options
}

/// Parses one file's text (exposed for tests).
pub fn parse_into(
    file: &str,
    text: &str,
    objects: &mut Objects,
    problems: &mut Vec<Problem>,
) -> Result<(), SourceError> {
    let docs = parse(text).map_err(|reason| SourceError::Syntax { path: file.to_owned(), reason })?;
    fn located<T>(list: Vec<(Origin, T)>, file: &str) -> impl Iterator<Item = Located<T>> {
        list.into_iter().map(move |(o, object)| Located { origin: o.in_file(file), object: Arc::new(object) })
    }
    objects.services.extend(located(docs.services, file));
    objects.slices.extend(located(docs.slices, file));
    objects.nodes.extend(located(docs.nodes, file));
    problems.extend(docs.problems.into_iter().map(|p| p.in_file(file)));
    Ok(())
}

/// Parses a YAML stream (a file, or some of its documents) into its objects, each document
/// turned into its object as soon as the parser yields it, so only one document's generic
/// `Value` exists at a time (a file of 20,000 documents held as values first took ~180 MB).
/// The error is the parser's.
pub(super) fn parse(text: &str) -> Result<Documents, String> {
    serde_saphyr::from_str_multiple_with_options::<Value, Documents>(text, options())
        .map_err(|e| e.to_string())
}

/// Where in a stream an object is: its document (1-based) and, inside a `v1/List`, the path
/// to it (`/items/0`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Origin {
    pub doc: u32,
    pub path: Box<str>,
}

impl Origin {
    /// `file#3/items/0`, the origin the agent reports.
    pub fn in_file(&self, file: &str) -> String {
        format!("{file}#{}{}", self.doc, self.path)
    }

    fn item(&self, i: usize) -> Self {
        Self { doc: self.doc, path: format!("{}/items/{i}", self.path).into() }
    }
}

/// The objects of a stream's documents, in their order, and the problems of those that are not
/// objects the agent reads.
#[derive(Debug, Default)]
pub(super) struct Documents {
    /// Documents the parser yielded (empty ones too: they count in origins).
    pub count: u32,
    pub services: Vec<(Origin, Service)>,
    pub slices: Vec<(Origin, EndpointSlice)>,
    pub nodes: Vec<(Origin, Node)>,
    pub problems: Vec<PendingProblem>,
}

/// A `Problem` whose origin lacks the file name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct PendingProblem {
    /// `Kind namespace/name`.
    pub object: String,
    pub origin: Origin,
    pub reason: String,
}

impl PendingProblem {
    pub fn in_file(&self, file: &str) -> Problem {
        Problem {
            object: format!("{} ({})", self.object, self.origin.in_file(file)),
            reason: self.reason.clone(),
        }
    }
}

impl Extend<Value> for Documents {
    fn extend<I: IntoIterator<Item = Value>>(&mut self, docs: I) {
        for doc in docs {
            self.count += 1;
            let origin = Origin { doc: self.count, path: "".into() };
            self.add(origin, doc);
        }
    }
}

impl Documents {
    fn add(&mut self, origin: Origin, doc: Value) {
        if doc.is_null() {
            return;
        }
        let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_owned();
        let api_version = text(doc.get("apiVersion"));
        let kind = text(doc.get("kind"));
        let name = doc
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .map_or_else(|| "<unnamed>".to_owned(), str::to_owned);
        let namespace =
            doc.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("default").to_owned();
        let object = format!("{kind} {namespace}/{name}");
        let problems = &mut self.problems;
        let mut problem = |reason: String| {
            problems.push(PendingProblem { object: object.clone(), origin: origin.clone(), reason })
        };
        match (api_version.as_str(), kind.as_str()) {
            ("v1", "Service") => match serde_json::from_value::<Service>(doc) {
                Ok(object) => self.services.push((origin, object)),
                Err(e) => problem(format!("not a valid Service: {e}")),
            },
            ("discovery.k8s.io/v1", "EndpointSlice") => match serde_json::from_value::<EndpointSlice>(doc) {
                Ok(object) => self.slices.push((origin, object)),
                Err(e) => problem(format!("not a valid EndpointSlice: {e}")),
            },
            ("v1", "Node") => match serde_json::from_value::<Node>(doc) {
                Ok(object) => self.nodes.push((origin, object)),
                Err(e) => problem(format!("not a valid Node: {e}")),
            },
            ("v1", "List") => {
                let items = match doc {
                    Value::Object(mut map) => match map.remove("items") {
                        Some(Value::Array(items)) => items,
                        _ => Vec::new(),
                    },
                    _ => Vec::new(),
                };
                for (i, item) in items.into_iter().enumerate() {
                    self.add(origin.item(i), item);
                }
            }
            _ => problem(format!(
                "unsupported object {api_version}/{kind}; ignored (v1/Service, discovery.k8s.io/v1/EndpointSlice and v1/Node are read)"
            )),
        }
    }
}

/// Watches `path` and calls `notify` (from the watcher's thread) after any change below it.
/// Keep the returned watcher alive.
pub fn watch(path: &Path, notify: impl Fn() + Send + 'static) -> Result<RecommendedWatcher, SourceError> {
    let watch_err = |source| SourceError::Watch { path: path.display().to_string(), source };
    let source = path.to_owned();
    let is_dir = path.is_dir();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access() && relevant(&source, is_dir, &e.paths)) {
            notify();
        }
    })
    .map_err(watch_err)?;
    // A file is watched through its directory: editors and `kubectl`-style tools replace files
    // by rename, which a watch on the file itself would miss.
    let (target, mode) = if path.is_dir() {
        (path, RecursiveMode::Recursive)
    } else {
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        (parent, RecursiveMode::NonRecursive)
    };
    watcher.watch(target, mode).map_err(watch_err)?;
    Ok(watcher)
}

/// Whether a change to `paths` can change what `source` holds. A file is watched through its
/// directory, whose other files (a log the agent itself writes, say) must not trigger syncs.
/// ConfigMap volumes swap a `..data` link, so `..`-names always count.
fn relevant(source: &Path, is_dir: bool, paths: &[PathBuf]) -> bool {
    paths.iter().any(|p| {
        let name = p.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
        if name.starts_with("..") {
            return true;
        }
        if is_dir {
            let yaml = p.extension().is_some_and(|e| e == "yaml" || e == "yml" || e == "json");
            !name.starts_with('.') && (yaml || p.extension().is_none())
        } else {
            p.file_name() == source.file_name()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{NodeContext, translate};

    fn parse(text: &str) -> Result<(Objects, Vec<Problem>), SourceError> {
        let mut objects = Objects::default();
        let mut problems = Vec::new();
        parse_into("f.yaml", text, &mut objects, &mut problems)?;
        Ok((objects, problems))
    }

    fn names(objects: &Objects) -> (Vec<String>, Vec<String>) {
        let services = objects
            .services
            .iter()
            .map(|l| format!("{} {}", l.origin, l.object.metadata.name.as_deref().unwrap_or_default()))
            .collect();
        let slices = objects
            .slices
            .iter()
            .map(|l| format!("{} {}", l.origin, l.object.metadata.name.as_deref().unwrap_or_default()))
            .collect();
        (services, slices)
    }

    fn shown(problems: &[Problem]) -> Vec<String> {
        problems.iter().map(ToString::to_string).collect()
    }

    const SERVICE_A: &str = "apiVersion: v1
kind: Service
metadata: {name: a, namespace: ns}
spec:
  clusterIP: 10.96.0.1
  ports: [{name: http, port: 80, protocol: TCP}]
";

    const SLICE_A: &str = "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: a-1
  namespace: ns
  labels: {kubernetes.io/service-name: a}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- addresses: [10.244.1.1]
  conditions: {ready: true}
";

    #[test]
    fn multi_document_yaml() {
        let text = format!(
            "---\n{SERVICE_A}---\n{SLICE_A}---\n# a comment\n{}",
            SERVICE_A.replace("name: a,", "name: b,").replace("10.96.0.1", "10.96.0.2")
        );
        let (objects, problems) = parse(&text).expect("valid YAML");
        assert_eq!(shown(&problems), Vec::<String>::new());
        let (services, slices) = names(&objects);
        assert_eq!(services, ["f.yaml#1 a", "f.yaml#3 b"]);
        assert_eq!(slices, ["f.yaml#2 a-1"]);
        let slice = &objects.slices[0].object;
        assert_eq!(slice.endpoints[0].addresses, ["10.244.1.1"]);
        assert_eq!(slice.endpoints[0].conditions.as_ref().and_then(|c| c.ready), Some(true));
        let ports =
            objects.services[0].object.spec.as_ref().and_then(|s| s.ports.clone()).unwrap_or_default();
        assert_eq!((ports[0].port, ports[0].protocol.as_deref()), (80, Some("TCP")));
    }

    #[test]
    fn v1_list_with_items() {
        let text = r#"{"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a", "namespace": "ns"},
             "spec": {"clusterIP": "10.96.0.1", "ports": [{"name": "http", "port": 80}]}},
            {"apiVersion": "v1", "kind": "List", "items": [
                {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                 "metadata": {"name": "a-1", "namespace": "ns"}, "addressType": "IPv4", "endpoints": []}]},
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}}
        ]}"#;
        let (objects, problems) = parse(text).expect("valid YAML");
        let (services, slices) = names(&objects);
        assert_eq!(services, ["f.yaml#1/items/0 a"]);
        assert_eq!(slices, ["f.yaml#1/items/1/items/0 a-1"]);
        assert_eq!(shown(&problems).len(), 1);
        assert!(
            shown(&problems)[0]
                .starts_with("ConfigMap default/cm (f.yaml#1/items/2): unsupported object v1/ConfigMap"),
            "{problems:?}"
        );
    }

    #[test]
    fn unsupported_kind_reported_and_skipped() {
        let text = format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: d, namespace: ns}}\n---\n{SERVICE_A}---\n\
             apiVersion: v1\nkind: Endpoints\nmetadata: {{name: a, namespace: ns}}\n---\n\
             apiVersion: discovery.k8s.io/v1beta1\nkind: EndpointSlice\nmetadata: {{name: old}}\n---\n\
             just a string\n"
        );
        let (objects, problems) = parse(&text).expect("valid YAML");
        assert_eq!(names(&objects), (vec!["f.yaml#2 a".to_owned()], vec![]));
        let problems = shown(&problems);
        assert_eq!(problems.len(), 4, "{problems:#?}");
        assert!(problems[0].starts_with("Deployment ns/d (f.yaml#1): unsupported object apps/v1/Deployment"));
        assert!(problems[1].starts_with("Endpoints ns/a (f.yaml#3): unsupported object v1/Endpoints"));
        assert!(problems[2].contains("unsupported object discovery.k8s.io/v1beta1/EndpointSlice"));
        assert!(problems[3].contains("(f.yaml#5): unsupported object /"), "{}", problems[3]);
    }

    #[test]
    fn wrong_field_type_reported_and_the_rest_loaded() {
        let bad_service = SERVICE_A.replace("name: a,", "name: bad,").replace("port: 80", "port: \"abc\"");
        let bad_slice = SLICE_A
            .replace("name: a-1", "name: bad-1")
            .replace("- addresses: [10.244.1.1]", "- addresses: 5");
        let text = format!("{bad_service}---\n{SERVICE_A}---\n{bad_slice}---\n{SLICE_A}");
        let (objects, problems) = parse(&text).expect("valid YAML");
        let (services, slices) = names(&objects);
        assert_eq!(services, ["f.yaml#2 a"]);
        assert_eq!(slices, ["f.yaml#4 a-1"]);
        let problems = shown(&problems);
        assert_eq!(problems.len(), 2, "{problems:#?}");
        assert!(
            problems[0].starts_with("Service ns/bad (f.yaml#1): not a valid Service:"),
            "{}",
            problems[0]
        );
        assert!(
            problems[1].starts_with("EndpointSlice ns/bad-1 (f.yaml#3): not a valid EndpointSlice:"),
            "{}",
            problems[1]
        );
    }

    #[test]
    fn broken_yaml_fails_the_whole_file() {
        for text in [
            "apiVersion: v1\nkind: Service\nmetadata: {name: a\n",
            "apiVersion: v1\n  kind: Service\n bad indentation: [\n",
            &format!("{SERVICE_A}---\nports: [unclosed\n"),
        ] {
            match parse(text) {
                Err(SourceError::Syntax { path, reason }) => {
                    assert_eq!(path, "f.yaml");
                    assert!(!reason.is_empty());
                }
                other => panic!("{text:?}: expected a syntax error, got {other:?}"),
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2048))]

        /// A damaged file (cut anywhere, a byte replaced, a line dropped, as an editor or a copy
        /// mid-write leaves it) never panics the parser: it is a syntax error for the whole file,
        /// or it parses and whatever is not a usable object is a problem; and what it yields
        /// translates without panicking.
        #[test]
        fn damaged_files_are_refused_or_reported_never_panic(
            cut in 0usize..2000,
            at in 0usize..2000,
            byte in proptest::prelude::any::<u8>(),
            dropped in 0usize..40,
        ) {
            let whole = format!("{SERVICE_A}---\n{SLICE_A}---\n{}", SLICE_A.replace("a-1", "a-2"));
            let mut bytes = whole.as_bytes().to_vec();
            let len = bytes.len();
            bytes[at % len] = byte;
            bytes.truncate(cut % (len + 1));
            let text = String::from_utf8_lossy(&bytes).into_owned();
            let without_line: String = whole
                .lines()
                .enumerate()
                .filter(|(i, _)| *i != dropped)
                .map(|(_, l)| format!("{l}\n"))
                .collect();
            for text in [text, without_line] {
                match parse(&text) {
                    Err(SourceError::Syntax { path, reason }) => {
                        proptest::prop_assert_eq!(path, "f.yaml");
                        proptest::prop_assert!(!reason.is_empty());
                    }
                    Err(other) => proptest::prop_assert!(false, "{text:?}: unexpected error {other}"),
                    Ok((objects, problems)) => {
                        for p in &problems {
                            proptest::prop_assert!(p.object.contains("f.yaml"), "problem without its file: {p}");
                        }
                        let _ = translate(&objects, &NodeContext::named("node-1"));
                    }
                }
            }
        }
    }

    #[test]
    fn empty_file_is_empty() {
        for text in ["", "\n", "# nothing\n", "---\n---\n"] {
            let (objects, problems) = parse(text).expect("valid YAML");
            assert!(
                objects.services.is_empty() && objects.slices.is_empty() && problems.is_empty(),
                "{text:?}"
            );
        }
    }

    #[test]
    fn example_cluster_loads_and_translates() {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/cluster.yaml"));
        let (objects, problems) = load(path).expect("example loads");
        assert_eq!(shown(&problems), Vec::<String>::new());
        assert_eq!((objects.services.len(), objects.slices.len()), (2, 4));
        let (state, problems) = translate(&objects, &NodeContext::named("node-1"));
        assert_eq!(shown(&problems), Vec::<String>::new());
        let frontends: Vec<String> = state
            .groups
            .iter()
            .flat_map(|g| g.frontends.iter().map(move |f| format!("{f} -> {}", g.eligible.len())))
            .collect();
        assert_eq!(
            frontends,
            [
                "10.96.0.10:80/TCP -> 3",
                "[fd00:10:96::10]:80/TCP -> 3",
                "10.96.0.53:53/UDP -> 3",
                "[fd00:10:96::53]:53/UDP -> 3",
                "10.96.0.53:53/TCP -> 3",
                "[fd00:10:96::53]:53/TCP -> 3",
            ]
        );
    }

    #[test]
    fn directory_is_read_recursively_skipping_hidden_and_other_files() {
        let dir = std::env::temp_dir().join(format!("lb-agent-file-source-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).expect("temp dir");
        std::fs::create_dir_all(dir.join(".hidden")).expect("temp dir");
        std::fs::write(dir.join("b.yaml"), SERVICE_A).expect("write");
        std::fs::write(dir.join("sub/a.yml"), SLICE_A).expect("write");
        std::fs::write(dir.join(".swap.yaml"), "not: [valid").expect("write");
        std::fs::write(dir.join(".hidden/x.yaml"), "not: [valid").expect("write");
        std::fs::write(dir.join("notes.txt"), "not: [valid").expect("write");
        let result = load(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        let (objects, problems) = result.expect("loads");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!((objects.services.len(), objects.slices.len()), (1, 1));
        assert!(objects.services[0].origin.ends_with("b.yaml#1"), "{}", objects.services[0].origin);
        assert!(objects.slices[0].origin.ends_with("sub/a.yml#1"), "{}", objects.slices[0].origin);
    }

    #[test]
    fn only_changes_to_the_source_trigger_a_sync() {
        let p = |s: &str| vec![PathBuf::from(s)];
        let file = Path::new("/etc/lb/cluster.yaml");
        assert!(relevant(file, false, &p("/etc/lb/cluster.yaml")));
        assert!(!relevant(file, false, &p("/etc/lb/agent.log")), "a neighbour file");
        assert!(relevant(file, false, &p("/etc/lb/..data")), "ConfigMap swap");
        let dir = Path::new("/etc/lb");
        assert!(relevant(dir, true, &p("/etc/lb/svc/web.yaml")));
        assert!(relevant(dir, true, &p("/etc/lb/svc")), "a directory");
        assert!(!relevant(dir, true, &p("/etc/lb/.web.yaml.swp")));
        assert!(!relevant(dir, true, &p("/etc/lb/agent.log")));
    }

    #[test]
    fn missing_path_is_a_read_error() {
        let err = load(Path::new("/nonexistent/lb-agent/cluster.yaml")).expect_err("missing");
        assert!(matches!(err, SourceError::Read { .. }), "{err}");
    }
}
