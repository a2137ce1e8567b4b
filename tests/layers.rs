//! The layer rules of ARCHITECTURE.md ("Layers"), checked against the source.
//!
//! Reads every file under `src/` as text, takes the crate paths it names
//! (`use crate::x::...`, `use crate::{x, y::z}`, `crate::x::f(...)` inline)
//! and maps each file to its top-level module (`src/sink/http.rs` is `sink`).
//! A file's unit tests (`#[cfg(test)] mod tests`, its last item) are left
//! out: they may build fixtures from any layer. Comments are left out too.
//!
//! Two checks: no module imports one its rule forbids ([`NEVER`]), and the
//! import cycles among the top-level modules are exactly [`KNOWN_CYCLES`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Every stage and assembly module, in the order data flows: what the floor
/// modules never import.
const STAGES: &[&str] = &[
    "classify",
    "enrich",
    "route",
    "sink",
    "source",
    "alert",
    "telemetry",
    "stats",
    "config",
    "pipeline",
    "run",
    "tail",
    "demo",
];

/// Above `stats`: the readers beside the flow, configuration and assembly.
const ABOVE_STATS: &[&str] = &[
    "alert",
    "telemetry",
    "config",
    "pipeline",
    "run",
    "tail",
    "demo",
];

/// (module, the modules it never imports, why).
const NEVER: &[(&str, &[&str], &str)] = &[
    (
        "record",
        STAGES,
        "the record is data: stages fill and read it, it knows none of them",
    ),
    (
        "backoff",
        STAGES,
        "a floor mechanism every stage paces its retries with",
    ),
    (
        "counters",
        STAGES,
        "a floor mechanism: each counter declared once, and the counters every source keeps",
    ),
    (
        "http_client",
        STAGES,
        "a floor mechanism: the one HTTP client, trust roots and redirect policy",
    ),
    (
        "classify",
        // Every stage but classify itself, the first of them.
        STAGES.split_at(1).1,
        "classification reads an envelope into a record and knows nothing downstream",
    ),
    (
        "enrich",
        // Every stage after classify and enrich.
        STAGES.split_at(2).1,
        "enrichment fills names in through a lookup function; it knows no client, source or router",
    ),
    (
        "route",
        // Every stage after route and sink: sources, the readers,
        // configuration and assembly.
        STAGES.split_at(4).1,
        "the router takes batches from any source and offers them to sinks; it knows no source",
    ),
    (
        "source",
        // Every module after source in STAGES: the readers beside the flow,
        // configuration and assembly.
        STAGES.split_at(5).1,
        "a source feeds the router; configuration describes it and the assembly starts it",
    ),
    (
        "sink",
        &[
            "source",
            "route",
            "config",
            "pipeline",
            "run",
            "alert",
            "telemetry",
            "stats",
            "tail",
            "demo",
        ],
        "a sink delivers records; it knows neither where they came from nor who routed them",
    ),
    (
        "config",
        &["pipeline", "run", "tail", "demo"],
        "configuration describes what to build and checks it; the assembly builds and runs it",
    ),
    (
        "stats",
        ABOVE_STATS,
        "the counters the stages keep (route, sink, source, enrich); read by alert and telemetry, never the reverse",
    ),
];

/// Import cycles among the top-level modules that are still there (none
/// since issue 18 removed the last two), each as
/// its sorted members, with what removes it. A new cycle, or one of these
/// growing, fails the test; so does one of these going away (then delete it
/// here, so the list stays true).
const KNOWN_CYCLES: &[(&[&str], &str)] = &[];

/// Each top-level module and the top-level modules it names.
type Graph = BTreeMap<String, BTreeSet<String>>;

#[test]
fn no_module_imports_a_layer_its_rule_forbids() {
    let graph = graph_of(&src());
    let mut broken = Vec::new();
    for (module, never, why) in NEVER {
        let Some(targets) = graph.get(*module) else {
            broken.push(format!(
                "rule for `{module}`, which is not a module of src/"
            ));
            continue;
        };
        for target in targets {
            if never.contains(&target.as_str()) {
                broken.push(format!("{module} imports {target}: {why}"));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "layer rules broken (see ARCHITECTURE.md, Layers):\n{}",
        broken.join("\n")
    );
}

#[test]
fn the_only_import_cycles_are_the_known_ones() {
    let graph = graph_of(&src());
    let found: BTreeSet<Vec<String>> = cycles(&graph).into_iter().collect();
    let known: BTreeSet<Vec<String>> = KNOWN_CYCLES
        .iter()
        .map(|(members, _)| members.iter().map(|m| m.to_string()).collect())
        .collect();
    let new: Vec<_> = found.difference(&known).collect();
    let gone: Vec<_> = known.difference(&found).collect();
    assert!(
        new.is_empty() && gone.is_empty(),
        "import cycles among src/'s top-level modules changed\n\
         new or grown (remove the import that closes it): {new:?}\n\
         gone (delete it from KNOWN_CYCLES): {gone:?}\nthe graph: {graph:#?}"
    );
}

/// The parser itself, on the forms the crate uses.
#[test]
fn crate_paths_are_read_from_use_lines_groups_and_inline_paths() {
    let text = "use crate::record::{Kind, Record};\n\
                use crate::{\n    sink::{self, Chunk},\n    backoff::Backoff,\n};\n\
                // use crate::commented;\n\
                /* crate::blocked */\n\
                let x = crate::route::Router::new(); $crate::not_ours;\n\
                fn f() -> crate::stats::View { todo!() }\n";
    let names = crate_names(&strip_comments(text));
    assert_eq!(
        names,
        ["backoff", "record", "route", "sink", "stats"]
            .map(String::from)
            .into()
    );
    let with_tests = "use crate::record::Record;\n\n#[cfg(test)]\nmod tests {\n    use crate::source::Backoff;\n}\n";
    assert_eq!(
        without_unit_tests(with_tests, "x.rs"),
        "use crate::record::Record;\n\n"
    );
}

fn src() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The import graph of `src/`'s top-level modules (the binary's `main.rs`
/// and the crate root `lib.rs` are not modules of it).
fn graph_of(src: &Path) -> Graph {
    let mut files = Vec::new();
    walk(src, &mut files);
    let modules: BTreeSet<String> = files
        .iter()
        .filter_map(|f| top_module(src, f))
        .chain(["proto".to_string()])
        .collect();
    let mut graph = Graph::new();
    for file in &files {
        let Some(module) = top_module(src, file) else {
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        let code = strip_comments(&without_unit_tests(&text, &file.display().to_string()));
        let targets = graph.entry(module.clone()).or_default();
        for name in crate_names(&code) {
            if name != module && modules.contains(&name) {
                targets.insert(name);
            }
        }
    }
    graph
}

fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/sink/http.rs` → `sink`, `src/record.rs` → `record`; `None` for the
/// crate root and the binary.
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_string())
}

/// The text before the file's unit-test module. That module must be the
/// file's last item (every line after its opening is indented, but the
/// closing brace), so nothing after it escapes the check.
fn without_unit_tests(text: &str, file: &str) -> String {
    let Some(at) = text.find("\n#[cfg(test)]\nmod tests {\n") else {
        return text.to_string();
    };
    let rest: Vec<&str> = text[at + 1..].lines().skip(2).collect();
    let unindented: Vec<&&str> = rest
        .iter()
        .filter(|l| !l.is_empty() && !l.starts_with(char::is_whitespace))
        .collect();
    assert_eq!(
        unindented,
        [&"}"],
        "{file}: `mod tests` must be the file's last item"
    );
    text[..at + 1].to_string()
}

fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("/*") {
            rest = after.find("*/").map_or("", |end| &after[end + 2..]);
        } else if rest.starts_with("//") {
            rest = rest.find('\n').map_or("", |end| &rest[end..]);
        } else {
            let c = rest.chars().next().unwrap();
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// The top-level names after each `crate::`: the first segment, or for a
/// group `crate::{a::b, c}` the first segment of each of its items.
fn crate_names(code: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    for (at, _) in code.match_indices("crate::") {
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        let after = &code[at + "crate::".len()..];
        let Some(group) = after.strip_prefix('{') else {
            names.insert(ident(after));
            continue;
        };
        // Items of the group at depth 1, split on commas.
        let mut depth = 1;
        let mut item_start = true;
        for (i, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 1 => break,
                '}' => depth -= 1,
                ',' if depth == 1 => item_start = true,
                c if c.is_whitespace() => {}
                _ if depth == 1 && item_start => {
                    names.insert(ident(&group[i..]));
                    item_start = false;
                }
                _ => {}
            }
        }
    }
    names.remove("");
    names
}

/// The strongly connected components with more than one module, each sorted
/// (Tarjan's algorithm).
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    struct Walk<'g> {
        graph: &'g Graph,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        found: Vec<Vec<String>>,
    }
    fn visit<'g>(w: &mut Walk<'g>, v: &'g str) {
        let n = w.index.len();
        w.index.insert(v, n);
        w.low.insert(v, n);
        w.stack.push(v);
        for t in w.graph.get(v).into_iter().flatten() {
            let t = t.as_str();
            if !w.index.contains_key(t) {
                visit(w, t);
                let low = w.low[v].min(w.low[t]);
                w.low.insert(v, low);
            } else if w.stack.contains(&t) {
                let low = w.low[v].min(w.index[t]);
                w.low.insert(v, low);
            }
        }
        if w.low[v] == w.index[v] {
            let mut component = Vec::new();
            loop {
                let t = w.stack.pop().unwrap();
                component.push(t.to_string());
                if t == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                w.found.push(component);
            }
        }
    }
    let mut w = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !w.index.contains_key(v.as_str()) {
            visit(&mut w, v);
        }
    }
    w.found
}
