//! The file source: a YAML file, or a directory of them, holding real Kubernetes objects
//! (`v1/Service`, `discovery.k8s.io/v1/EndpointSlice`, `v1/List`), multi-document files allowed.
//!
//! A file that cannot be read or parsed fails the whole load (the agent keeps what it has
//! programmed); an object that parses as YAML but not as its kind is reported and skipped.
use std::path::{Path, PathBuf};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use notify::{RecommendedWatcher, RecursiveMode, Watcher as _};
use serde_json::Value;

use super::SourceError;
use crate::model::{Located, Objects, Problem};

/// The YAML files under `path` (itself, or the `.yaml`/`.yml`/`.json` files below it), sorted.
fn files(path: &Path) -> Result<Vec<PathBuf>, SourceError> {
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
            let entry = entry.map_err(|source| SourceError::Read { path: dir.display().to_string(), source })?;
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

/// Parses one file's text (exposed for tests).
pub fn parse_into(
    file: &str,
    text: &str,
    objects: &mut Objects,
    problems: &mut Vec<Problem>,
) -> Result<(), SourceError> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text)
        .map_err(|e| SourceError::Syntax { path: file.to_owned(), reason: e.to_string() })?;
    for (index, doc) in docs.into_iter().enumerate() {
        add_document(&format!("{file}#{}", index + 1), doc, objects, problems);
    }
    Ok(())
}

fn add_document(origin: &str, doc: Value, objects: &mut Objects, problems: &mut Vec<Problem>) {
    if doc.is_null() {
        return;
    }
    let api_version = doc.get("apiVersion").and_then(Value::as_str).unwrap_or_default().to_owned();
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default().to_owned();
    let name = doc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .map_or_else(|| "<unnamed>".to_owned(), str::to_owned);
    let namespace = doc.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("default").to_owned();
    let object = format!("{kind} {namespace}/{name} ({origin})");
    match (api_version.as_str(), kind.as_str()) {
        ("v1", "Service") => match serde_json::from_value::<Service>(doc) {
            Ok(object) => objects.services.push(Located { origin: origin.to_owned(), object }),
            Err(e) => problems.push(Problem { object, reason: format!("not a valid Service: {e}") }),
        },
        ("discovery.k8s.io/v1", "EndpointSlice") => match serde_json::from_value::<EndpointSlice>(doc) {
            Ok(object) => objects.slices.push(Located { origin: origin.to_owned(), object }),
            Err(e) => problems.push(Problem { object, reason: format!("not a valid EndpointSlice: {e}") }),
        },
        ("v1", "List") => {
            let items = match doc {
                Value::Object(mut map) => map.remove("items"),
                _ => None,
            };
            for (i, item) in items.and_then(|v| v.as_array().cloned()).unwrap_or_default().into_iter().enumerate() {
                add_document(&format!("{origin}/items/{i}"), item, objects, problems);
            }
        }
        _ => problems.push(Problem {
            object,
            reason: format!("unsupported object {api_version}/{kind}; ignored (v1/Service and discovery.k8s.io/v1/EndpointSlice are read)"),
        }),
    }
}

/// Watches `path` and calls `notify` (from the watcher's thread) after any change below it.
/// Keep the returned watcher alive.
pub fn watch(path: &Path, notify: impl Fn() + Send + 'static) -> Result<RecommendedWatcher, SourceError> {
    let watch_err = |source| SourceError::Watch { path: path.display().to_string(), source };
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access()) {
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
