//! The library's layers, read from its source: a stream's session
//! (`src/session/`) and the wire's pure functions (`src/protocol/`) never
//! reach the transport (`src/transport/`), and no modules import one
//! another in a loop but the front doors (connector, listener, stream).
//!
//! Imports are read from `crate::`, `super::` and `self::` paths and a
//! parent's uses of its own submodules, outside comments and unit tests.
//! No broker is needed.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The modules that may import one another: `std::net`'s shapes, each
/// handing out the others (a listener's accepted streams, a connector's).
const FRONT_DOORS: [&str; 3] = ["connector", "listener", "stream"];

type Graph = BTreeMap<String, BTreeSet<String>>;

#[test]
fn the_session_and_the_protocol_never_reach_the_transport() {
    let graph = library_imports();
    for (module, reached) in reachable(&graph) {
        let lower = module.starts_with("session") || module.starts_with("protocol");
        let into_transport: Vec<_> = reached
            .iter()
            .filter(|other| other.starts_with("transport"))
            .collect();
        assert!(
            !lower || into_transport.is_empty(),
            "{module} reaches the transport: {into_transport:?}"
        );
        let into_session: Vec<_> = reached
            .iter()
            .filter(|other| other.starts_with("session"))
            .collect();
        assert!(
            !module.starts_with("protocol") || into_session.is_empty(),
            "{module} reaches the session: {into_session:?}"
        );
    }
}

#[test]
fn no_modules_import_one_another_in_a_loop_but_the_front_doors() {
    let graph = library_imports();
    assert!(graph.len() > 40, "only {} modules read", graph.len());
    for cycle in strongly_connected(&graph) {
        assert!(
            cycle
                .iter()
                .all(|module| FRONT_DOORS.contains(&module.as_str())),
            "modules importing one another in a loop: {cycle:?}"
        );
    }
}

#[test]
fn the_reader_finds_a_loop_and_a_layer_breach() {
    // The reader itself, on a made-up library: a loop through a child
    // module, and a session module that imports the transport.
    let mut graph = Graph::new();
    let files = [
        ("transport/worker", "mod engine;\nuse engine::Bell;\n"),
        ("transport/worker/engine", "use super::{Ends, Role};\n"),
        (
            "session/shared",
            "// crate::transport in a comment\nuse crate::transport::worker::engine::Bell;\n",
        ),
        ("session", "mod shared;\n"),
    ];
    let modules: BTreeSet<String> = files.iter().map(|(m, _)| m.to_string()).collect();
    for (module, source) in files {
        graph.insert(module.to_string(), imports(module, source, &modules));
    }
    assert_eq!(
        strongly_connected(&graph),
        vec![vec![
            "transport/worker".to_string(),
            "transport/worker/engine".to_string()
        ]]
    );
    assert!(reachable(&graph)["session/shared"].contains("transport/worker/engine"));
}

/// Every library module (`src/`, without the binaries) and the modules it
/// imports.
fn library_imports() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let sources: BTreeMap<String, String> = files
        .iter()
        .map(|file| (module_of(&src, file), fs::read_to_string(file).unwrap()))
        .collect();
    let modules: BTreeSet<String> = sources.keys().cloned().collect();
    sources
        .iter()
        .map(|(module, source)| (module.clone(), imports(module, source, &modules)))
        .collect()
}

fn rust_files(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if path.file_name().is_some_and(|name| name != "bin") {
                rust_files(&path, files);
            }
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
}

/// `src/transport/mux/mod.rs` → `transport/mux`; `src/lib.rs` → `crate`.
fn module_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).unwrap().with_extension("");
    let module = relative.to_string_lossy().replace('\\', "/");
    match module.as_str() {
        "lib" => "crate".to_string(),
        _ => module.strip_suffix("/mod").unwrap_or(&module).to_string(),
    }
}

/// The modules `module` imports, read from `source`.
fn imports(module: &str, source: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    // Unit tests (`mod tests {` and what follows) import what they test.
    let code = without_comments(source.split("\nmod tests {").next().unwrap());
    let parent = match module.rsplit_once('/') {
        Some((parent, _)) => parent.to_string(),
        None if module == "crate" => String::new(),
        None => "crate".to_string(),
    };
    let own = if module == "crate" {
        String::new()
    } else {
        module.to_string()
    };
    let mut found = BTreeSet::new();
    let mut resolve = |base: &str, path: &str| {
        // The longest prefix of `base/path` that is a module, else `base`.
        let mut segments: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
        while !segments.is_empty() {
            let candidate = join(base, &segments.join("/"));
            if modules.contains(&candidate) {
                found.insert(candidate);
                return;
            }
            segments.pop();
        }
        if !base.is_empty() {
            found.insert(base.to_string());
        }
    };
    for (prefix, base) in [
        ("crate::", ""),
        ("super::", parent.as_str()),
        ("self::", own.as_str()),
    ] {
        for path in paths_after(&code, prefix) {
            resolve(base, &path);
        }
    }
    // A parent's uses of its own submodules (`mod engine;` ... `engine::`).
    for line in code.lines() {
        let declared = line
            .trim()
            .trim_start_matches("pub(crate) ")
            .trim_start_matches("pub ");
        let child = declared
            .strip_prefix("mod ")
            .and_then(|rest| rest.strip_suffix(';'));
        if let Some(child) =
            child.filter(|child| !paths_after(&code, &format!("{child}::")).is_empty())
        {
            resolve(&own, child);
        }
    }
    found.remove(module);
    found
}

fn join(base: &str, path: &str) -> String {
    match (base.is_empty(), path.is_empty()) {
        (true, _) => path.to_string(),
        (_, true) => base.to_string(),
        _ => format!("{base}/{path}"),
    }
}

/// The paths written after `prefix` where it starts a path (not inside a
/// longer name): `crate::a::b::C` gives `a::b::C`; a group
/// `crate::{a::B, c}` gives `a::B` and `c`.
fn paths_after(code: &str, prefix: &str) -> Vec<String> {
    let mut paths = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find(prefix) {
        let before = rest[..at].chars().next_back();
        let after = &rest[at + prefix.len()..];
        rest = after;
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        if let Some(group) = after.strip_prefix('{') {
            let inner = &group[..group.find('}').unwrap_or(group.len())];
            paths.extend(inner.split(',').map(|path| path_prefix(path.trim())));
        } else {
            paths.push(path_prefix(after));
        }
    }
    paths
}

/// The `a::b::c` at the start of `text`.
fn path_prefix(text: &str) -> String {
    let end = text
        .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(text.len());
    text[..end].to_string()
}

/// `source` without its `//` comments (doc comments' links are no imports).
fn without_comments(source: &str) -> String {
    source
        .lines()
        .map(|line| match line.find("//") {
            Some(at) if !line[..at].contains('"') => &line[..at],
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every module and the modules it reaches through its imports.
fn reachable(graph: &Graph) -> BTreeMap<String, BTreeSet<String>> {
    graph
        .keys()
        .map(|start| {
            let mut seen = BTreeSet::new();
            let mut next = vec![start.clone()];
            while let Some(module) = next.pop() {
                for other in graph.get(&module).into_iter().flatten() {
                    if seen.insert(other.clone()) {
                        next.push(other.clone());
                    }
                }
            }
            (start.clone(), seen)
        })
        .collect()
}

/// The groups of two or more modules that reach one another, each sorted.
fn strongly_connected(graph: &Graph) -> Vec<Vec<String>> {
    let reached = reachable(graph);
    let mut groups: BTreeSet<Vec<String>> = BTreeSet::new();
    for (module, from_it) in &reached {
        let group: Vec<String> = from_it
            .iter()
            .filter(|other| *other != module && reached[*other].contains(module))
            .chain(std::iter::once(module))
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if group.len() > 1 {
            groups.insert(group);
        }
    }
    groups.into_iter().collect()
}
