//! The layering of the crate's top-level modules, checked from the source: no module may depend,
//! directly or through others, on itself; no stage of the data path may name a stage after it
//! (ingest → infer → describe → log → deliver); the small shared modules at the bottom name no
//! stage. See "Architecture" in the README and the crate's documentation.
//!
//! The scan reads `src/**/*.rs` as text, with comments and string literals blanked out, and
//! records for each top-level module every other top-level module it names: `crate::x`, the
//! names in `use crate::{x, y::z}`, and `super::…::x` paths that climb to the crate root. That is
//! every way a module of this crate can reach another (there are no `#[path]` tricks or glob
//! re-exports at the root).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

/// The stages of the data path, in the order data flows through them.
const STAGES: [&str; 5] = ["ingest", "infer", "describe", "log", "deliver"];

#[test]
fn top_level_modules_form_no_cycle() {
    let graph = scan(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    for module in ["config", "describe", "metrics", "infer", "wire"] {
        assert!(graph.contains_key(module), "module {module} not found: {graph:?}");
    }
    if let Some(cycle) = find_cycle(&graph) {
        panic!("module cycle: {}\nThe graph:\n{}", cycle.join(" → "), describe(&graph));
    }
}

#[test]
fn no_stage_names_a_later_stage() {
    let graph = scan(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let rank = |m: &str| STAGES.iter().position(|s| *s == m);
    let backwards: Vec<String> = graph
        .iter()
        .flat_map(|(from, tos)| tos.iter().map(move |to| (from, to)))
        .filter(|(from, to)| matches!((rank(from), rank(to)), (Some(a), Some(b)) if a < b))
        .map(|(from, to)| format!("{from} → {to}"))
        .collect();
    assert!(backwards.is_empty(), "against the data's path: {backwards:?}");
}

#[test]
fn the_shared_modules_at_the_bottom_name_nothing_above_them() {
    let graph = scan(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let bottom = ["pb", "error", "files", "clock", "shutdown", "wire", "config", "fuzz"];
    for module in bottom {
        let above: Vec<&String> = graph
            .get(module)
            .into_iter()
            .flatten()
            .filter(|m| !bottom.contains(&m.as_str()))
            .collect();
        assert!(above.is_empty(), "{module} names {above:?}");
    }
}

#[test]
fn the_scan_sees_every_kind_of_path_and_finds_a_cycle() {
    let modules: BTreeSet<String> = ["a", "b", "c", "d", "e"].map(String::from).into();
    let file = |path: &str, text: &str| (PathBuf::from(path), text.to_string());
    let files = [
        file(
            "a.rs",
            "use crate::{b::X, c};\n// crate::e in a comment\nlet s = \"crate::e\";",
        ),
        file("b/mod.rs", "mod inner;\nfn f() { super::c::g() }"),
        file(
            "b/inner.rs",
            "use super::Y;\nuse super::super::d::Z;\nmod tests { use super::super::Y; }",
        ),
        file("d.rs", "fn f() -> crate::a::T { todo!() }"),
    ];
    let mut graph = Graph::new();
    for (path, text) in &files {
        add_edges(&mut graph, &modules, path, text);
    }
    let names = |m: &str| {
        graph
            .get(m)
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .collect::<Vec<_>>()
    };
    assert_eq!(names("a"), ["b", "c"], "comments and strings are not uses");
    assert_eq!(
        names("b"),
        ["c", "d"],
        "super:: from b/mod.rs is the root, from b/inner.rs it is b"
    );
    assert_eq!(names("d"), ["a"]);
    let cycle = find_cycle(&graph).expect("a → b → d → a");
    assert_eq!(cycle, ["a", "b", "d", "a"]);
}

/// Every top-level module's dependencies on the others.
fn scan(src: &Path) -> Graph {
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("src/lib.rs");
    let modules = declared_modules(&blank(&lib));
    let mut graph = Graph::new();
    let mut files = Vec::new();
    rust_files(src, &mut files);
    for path in files {
        let relative = path.strip_prefix(src).unwrap().to_path_buf();
        if relative == Path::new("lib.rs") || relative == Path::new("main.rs") {
            continue; // the root declares the modules; the binary is a user of the library
        }
        let text = std::fs::read_to_string(&path).unwrap();
        add_edges(&mut graph, &modules, &relative, &text);
    }
    graph
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The names of `mod x;` and `mod x { … }` at the top of the crate root.
fn declared_modules(root: &str) -> BTreeSet<String> {
    let words = words(root);
    let mut modules = BTreeSet::new();
    let mut depth = 0usize;
    for (i, (word, _)) in words.iter().enumerate() {
        match word.as_str() {
            "{" => depth += 1,
            "}" => depth = depth.saturating_sub(1),
            "mod" if depth == 0 => {
                if let Some((name, _)) = words.get(i + 1) {
                    modules.insert(name.clone());
                }
            }
            _ => {}
        }
    }
    modules
}

/// Adds the edges of one file, `path` relative to `src/`.
fn add_edges(graph: &mut Graph, modules: &BTreeSet<String>, path: &Path, text: &str) {
    let parts: Vec<String> = path
        .with_extension("")
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let own = parts[0].clone();
    // How many `super::` climb from this file to the crate root: src/a.rs and src/a/mod.rs are
    // one level down, src/a/b.rs two.
    let file_depth = parts.len() - usize::from(parts.last().is_some_and(|p| p == "mod"));
    let uses = graph.entry(own.clone()).or_default();
    let words = words(&blank(text));
    let mut braces = 0usize;
    // Brace depths at which inline `mod x {` blocks opened: each puts `super::` one level further.
    let mut inline_mods: Vec<usize> = Vec::new();
    let name = |uses: &mut BTreeSet<String>, word: &str| {
        if word != own && modules.contains(word) {
            uses.insert(word.to_string());
        }
    };
    let mut i = 0;
    while i < words.len() {
        let word = words[i].0.as_str();
        match word {
            "{" => braces += 1,
            "}" => {
                braces = braces.saturating_sub(1);
                if inline_mods.last() == Some(&braces) {
                    inline_mods.pop();
                }
            }
            "mod" if words.get(i + 2).is_some_and(|(w, _)| w == "{") => inline_mods.push(braces),
            "crate" | "super" if words.get(i + 1).is_some_and(|(w, _)| w == "::") => {
                // Climb `super::super::…`; a path reaching the root names a module next.
                let mut level = file_depth + inline_mods.len();
                let mut j = i;
                if word == "crate" {
                    level = 0;
                    j += 2;
                } else {
                    while words.get(j).is_some_and(|(w, _)| w == "super")
                        && words.get(j + 1).is_some_and(|(w, _)| w == "::")
                    {
                        level = level.saturating_sub(1);
                        j += 2;
                    }
                }
                if level == 0 {
                    match words.get(j).map(|(w, _)| w.as_str()) {
                        Some("{") => {
                            // A group: every name at its first level.
                            let mut depth = 0usize;
                            let mut first = true;
                            for (w, _) in &words[j..] {
                                match w.as_str() {
                                    "{" => {
                                        depth += 1;
                                        first = true;
                                        continue;
                                    }
                                    "}" => {
                                        depth -= 1;
                                        if depth == 0 {
                                            break;
                                        }
                                    }
                                    "," => first = true,
                                    other if depth == 1 && first => {
                                        name(uses, other);
                                        first = false;
                                    }
                                    _ => first = false,
                                }
                            }
                        }
                        Some(next) => name(uses, next),
                        None => {}
                    }
                }
                i = j;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
}

/// Identifiers, `::`, and single punctuation characters, with their byte offsets.
fn words(text: &str) -> Vec<(String, usize)> {
    let bytes = text.as_bytes();
    let mut words = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_alphanumeric() || c == b'_' {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            words.push((text[start..i].to_string(), start));
        } else if c == b':' && bytes.get(i + 1) == Some(&b':') {
            words.push(("::".into(), i));
            i += 2;
        } else {
            if !c.is_ascii_whitespace() {
                words.push(((c as char).to_string(), i));
            }
            i += 1;
        }
    }
    words
}

/// `text` with comments, string and character literals replaced by spaces (line breaks kept), so
/// that `"crate::x"` or `// see crate::x` is not taken for a use.
fn blank(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let blank_to = |out: &mut String, from: usize, to: usize| {
        for c in &chars[from..to.min(chars.len())] {
            out.push(if *c == '\n' { '\n' } else { ' ' });
        }
    };
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            let end = chars[i..]
                .iter()
                .position(|c| *c == '\n')
                .map_or(chars.len(), |p| i + p);
            blank_to(&mut out, i, end);
            i = end;
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            let mut j = i;
            while j < chars.len() {
                if chars[j] == '/' && chars.get(j + 1) == Some(&'*') {
                    depth += 1;
                    j += 2;
                } else if chars[j] == '*' && chars.get(j + 1) == Some(&'/') {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            blank_to(&mut out, i, j);
            i = j;
        } else if c == 'r'
            && matches!(next, Some('"') | Some('#'))
            && !i
                .checked_sub(1)
                .is_some_and(|p| chars[p].is_alphanumeric() || chars[p] == '_')
        {
            // A raw string r"…" or r#"…"#: it ends at the quote followed by as many hashes.
            let hashes = chars[i + 1..].iter().take_while(|c| **c == '#').count();
            if chars.get(i + 1 + hashes) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            let close = format!("\"{}", "#".repeat(hashes));
            let body = i + 2 + hashes;
            let rest: String = chars[body..].iter().collect();
            let end = rest
                .find(&close)
                .map_or(chars.len(), |p| body + rest[..p].chars().count() + close.len());
            out.push_str("r\"");
            blank_to(&mut out, i + 2, end);
            i = end;
        } else if c == '"' {
            let mut j = i + 1;
            while j < chars.len() && chars[j] != '"' {
                j += if chars[j] == '\\' { 2 } else { 1 };
            }
            out.push('"');
            blank_to(&mut out, i + 1, j + 1);
            i = j + 1;
        } else if c == '\'' && (chars.get(i + 2) == Some(&'\'') || next == Some('\\')) {
            // A character literal ('{', '\n', '\u{7f}'), not a lifetime.
            let from = if next == Some('\\') { i + 3 } else { i + 2 };
            let end = chars[from.min(chars.len())..]
                .iter()
                .position(|c| *c == '\'')
                .map_or(chars.len(), |p| from + p + 1);
            blank_to(&mut out, i, end);
            i = end;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// A cycle, as the modules along it with the first repeated at the end, if there is one.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    fn visit(
        graph: &Graph,
        node: &str,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        marks.insert(node.to_string(), Mark::OnPath);
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            match marks.get(next.as_str()).copied().unwrap_or(Mark::New) {
                Mark::OnPath => {
                    let start = path.iter().position(|m| m == next).unwrap();
                    let mut cycle = path[start..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(cycle) = visit(graph, next, marks, path) {
                        return Some(cycle);
                    }
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks.insert(node.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in graph.keys() {
        if marks.get(node.as_str()).copied().unwrap_or(Mark::New) == Mark::New {
            let mut path = Vec::new();
            if let Some(cycle) = visit(graph, node, &mut marks, &mut path) {
                return Some(cycle);
            }
        }
    }
    None
}

fn describe(graph: &Graph) -> String {
    graph
        .iter()
        .map(|(from, tos)| format!("  {from} → {}", tos.iter().cloned().collect::<Vec<_>>().join(", ")))
        .collect::<Vec<_>>()
        .join("\n")
}
