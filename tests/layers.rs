//! The shape of the source tree, checked: no file-level import cycle in `src/`, lower layers
//! never import upper ones, `anyhow` only in the binary, and no `println!`/`eprintln!` outside
//! the command-line code. `SPARQ_PRINT_GRAPH=1 cargo test --test layers -- --nocapture` prints
//! the file graph.
//!
//! A file depends on the file that defines each item it names (`use crate::…`, `use super::…`,
//! or a path written inline), following `pub use` re-exports to the definition; a module's own
//! `mod` and `pub use` lines are not dependencies. Test modules are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One source file: its module path and what it defines, re-exports and names.
struct File {
    module: Vec<String>,
    defines: BTreeSet<String>,
    reexports: BTreeMap<String, Vec<String>>,
    uses: Vec<Vec<String>>,
    text: String,
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts
}

/// The code outside `#[cfg(test)]` modules, without comments.
fn code_of(text: &str) -> String {
    let mut out = String::new();
    let mut skip_depth: Option<i32> = None;
    let mut depth = 0i32;
    let mut pending_test = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("//") {
            continue;
        }
        let line = line.split(" // ").next().unwrap_or(line);
        if trimmed.starts_with("#[cfg(test)]") {
            pending_test = true;
            continue;
        }
        let opens = line.matches('{').count() as i32;
        let closes = line.matches('}').count() as i32;
        if pending_test && skip_depth.is_none() {
            skip_depth = Some(depth);
            pending_test = false;
        }
        depth += opens - closes;
        if let Some(d) = skip_depth {
            if depth <= d && (opens > 0 || closes > 0) {
                skip_depth = None;
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn ident(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// Expands `a::b::{c, d::{e, f}}` into paths.
fn expand(tree: &str) -> Vec<Vec<String>> {
    let tree: String = tree.chars().filter(|c| !c.is_whitespace()).collect();
    fn go(prefix: &[String], s: &str, out: &mut Vec<Vec<String>>) {
        if let Some(open) = s.find('{') {
            let head: Vec<String> = s[..open]
                .split("::")
                .filter(|p| !p.is_empty())
                .map(str::to_string)
                .collect();
            let inner = &s[open + 1..s.rfind('}').unwrap_or(s.len())];
            let mut items = Vec::new();
            let (mut level, mut start) = (0, 0);
            for (i, c) in inner.char_indices() {
                match c {
                    '{' => level += 1,
                    '}' => level -= 1,
                    ',' if level == 0 => {
                        items.push(&inner[start..i]);
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            items.push(&inner[start..]);
            let base: Vec<String> = prefix.iter().cloned().chain(head).collect();
            for item in items.into_iter().filter(|i| !i.is_empty()) {
                go(&base, item, out);
            }
        } else {
            let mut path: Vec<String> = prefix.to_vec();
            for p in s.split("::").filter(|p| !p.is_empty()) {
                path.push(ident(p.split(" as ").next().unwrap_or(p)));
            }
            if path.last().is_some_and(|l| l == "self") {
                path.pop();
            }
            out.push(path);
        }
    }
    let mut out = Vec::new();
    go(&[], &tree.replace("as", " as "), &mut out);
    out
}

fn read_files() -> BTreeMap<PathBuf, File> {
    let mut files = BTreeMap::new();
    let mut stack = vec![src()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src()).unwrap().to_path_buf();
            if rel == Path::new("main.rs") {
                continue; // The binary: it may use anything.
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let code = code_of(&text);
            let module = module_of(&rel);
            let mut defines = BTreeSet::new();
            let mut reexports = BTreeMap::new();
            let mut uses = Vec::new();
            // Statements at column 0, joined across lines.
            let mut statement = String::new();
            for line in code.lines() {
                if !statement.is_empty() {
                    statement.push_str(line);
                    if line.contains(';') {
                        uses_of(&statement, &module, &mut reexports, &mut uses);
                        statement.clear();
                    }
                    continue;
                }
                let l = line.strip_prefix("pub(crate) ").unwrap_or(line);
                let l = l.strip_prefix("pub ").unwrap_or(l);
                if l.starts_with("use ") {
                    if line.contains(';') {
                        uses_of(line, &module, &mut reexports, &mut uses);
                    } else {
                        statement = line.to_string();
                    }
                    continue;
                }
                for kw in [
                    "fn ",
                    "async fn ",
                    "unsafe fn ",
                    "struct ",
                    "enum ",
                    "trait ",
                    "const ",
                    "static ",
                    "type ",
                    "mod ",
                    "union ",
                ] {
                    if let Some(rest) = l.strip_prefix(kw) {
                        defines.insert(ident(rest));
                    }
                }
                if let Some(rest) = l.strip_prefix("macro_rules! ") {
                    defines.insert(ident(rest));
                }
            }
            // Paths written inline: `crate::a::b(...)`, `super::x::Y`.
            for start in ["crate::", "super::"] {
                for (i, _) in code.match_indices(start) {
                    let before = code[..i].chars().last();
                    if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                        continue;
                    }
                    let line_start = code[..i].rfind('\n').map_or(0, |n| n + 1);
                    let line = &code[line_start..];
                    if line.trim_start().starts_with("use ")
                        || line.trim_start().starts_with("pub use ")
                        || line.trim_start().starts_with("pub(crate) use ")
                    {
                        continue;
                    }
                    let path: String = code[i..]
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                        .collect();
                    let parts: Vec<String> = path
                        .split("::")
                        .filter(|p| !p.is_empty())
                        .map(str::to_string)
                        .collect();
                    uses.push(absolute(&module, &parts));
                }
            }
            files.insert(
                rel,
                File {
                    module,
                    defines,
                    reexports,
                    uses,
                    text,
                },
            );
        }
    }
    files
}

/// `crate::a::b` or `super::x` relative to `module`, as a path from the crate root.
fn absolute(module: &[String], parts: &[String]) -> Vec<String> {
    let mut base: Vec<String> = module.to_vec();
    let mut rest = parts;
    match rest.first().map(String::as_str) {
        Some("crate") => {
            base.clear();
            rest = &rest[1..];
        }
        Some("super") => {
            while rest.first().is_some_and(|p| p == "super") {
                base.pop();
                rest = &rest[1..];
            }
        }
        Some("self") => rest = &rest[1..],
        _ => return Vec::new(), // An external crate.
    }
    base.extend(rest.iter().cloned());
    base
}

fn uses_of(
    statement: &str,
    module: &[String],
    reexports: &mut BTreeMap<String, Vec<String>>,
    uses: &mut Vec<Vec<String>>,
) {
    let s = statement.trim();
    let is_reexport = s.starts_with("pub use ") || s.starts_with("pub(crate) use ");
    let tree = s
        .trim_start_matches("pub(crate) ")
        .trim_start_matches("pub ")
        .trim_start_matches("use ")
        .trim_end_matches(';');
    for path in expand(tree) {
        let path = absolute(module, &path);
        if path.is_empty() {
            continue;
        }
        if is_reexport {
            if let Some(name) = path.last() {
                reexports.insert(name.clone(), path.clone());
            }
        } else {
            uses.push(path);
        }
    }
}

/// The file defining the item at `path` (following re-exports), if it is in `src/`.
fn resolve(
    files: &BTreeMap<PathBuf, File>,
    by_module: &BTreeMap<Vec<String>, PathBuf>,
    path: &[String],
    depth: usize,
) -> Option<PathBuf> {
    if depth > 16 {
        return None;
    }
    // The longest prefix that is a module file.
    let mut module_len = 0;
    for n in (0..=path.len()).rev() {
        if by_module.contains_key(&path[..n]) {
            module_len = n;
            break;
        }
    }
    let file = by_module.get(&path[..module_len])?;
    let Some(item) = path.get(module_len) else {
        return Some(file.clone()); // The module itself.
    };
    let f = &files[file];
    if f.defines.contains(item) {
        return Some(file.clone());
    }
    if let Some(target) = f.reexports.get(item) {
        let mut full = target.clone();
        full.extend(path[module_len + 1..].iter().cloned());
        return resolve(files, by_module, &full, depth + 1);
    }
    Some(file.clone())
}

fn graph() -> (
    BTreeMap<PathBuf, File>,
    BTreeMap<PathBuf, BTreeSet<PathBuf>>,
) {
    let files = read_files();
    let by_module: BTreeMap<Vec<String>, PathBuf> = files
        .iter()
        .map(|(p, f)| (f.module.clone(), p.clone()))
        .collect();
    let mut edges: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
    for (path, f) in &files {
        let entry = edges.entry(path.clone()).or_default();
        for used in &f.uses {
            if let Some(target) = resolve(&files, &by_module, used, 0) {
                if target != *path {
                    entry.insert(target);
                }
            }
        }
    }
    (files, edges)
}

/// Strongly connected components with more than one file (Tarjan).
fn cycles(edges: &BTreeMap<PathBuf, BTreeSet<PathBuf>>) -> Vec<Vec<PathBuf>> {
    struct State<'a> {
        edges: &'a BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        index: BTreeMap<&'a PathBuf, usize>,
        low: BTreeMap<&'a PathBuf, usize>,
        stack: Vec<&'a PathBuf>,
        on: BTreeSet<&'a PathBuf>,
        next: usize,
        out: Vec<Vec<PathBuf>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a PathBuf) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on.insert(v);
        for w in s.edges.get(v).into_iter().flatten() {
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low[v];
                s.low.insert(v, lv.min(lw));
            } else if s.on.contains(w) {
                let iw = s.index[w];
                let lv = s.low[v];
                s.low.insert(v, lv.min(iw));
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on.remove(w);
                comp.push(w.clone());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                s.out.push(comp);
            }
        }
    }
    let mut s = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.out
}

#[test]
fn no_file_level_import_cycle() {
    let (_, edges) = graph();
    if std::env::var_os("SPARQ_PRINT_GRAPH").is_some() {
        for (from, to) in &edges {
            let to: Vec<String> = to.iter().map(|p| p.display().to_string()).collect();
            println!("{} -> {}", from.display(), to.join(", "));
        }
    }
    let found = cycles(&edges);
    let text: Vec<String> = found
        .iter()
        .map(|c| {
            c.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" <-> ")
        })
        .collect();
    assert!(found.is_empty(), "import cycles:\n{}", text.join("\n"));
}

/// The layers, lowest first (DESIGN.md): a file may import its own layer and those below.
const LAYERS: [&[&str]; 6] = [
    &["types.rs"],
    &["io/", "model/"],
    &["encode/"],
    &["job/"],
    &["coord/", "eval/", "export/", "mine/", "train/"],
    &["serve/", "cli/", "lib.rs"],
];

fn layer_of(path: &Path) -> Option<usize> {
    let p = path.to_string_lossy();
    LAYERS
        .iter()
        .position(|l| l.iter().any(|prefix| p.starts_with(prefix)))
}

#[test]
fn lower_layers_never_import_upper_ones() {
    let (_, edges) = graph();
    let mut wrong = Vec::new();
    for (from, to) in &edges {
        let Some(lf) = layer_of(from) else {
            wrong.push(format!("{} is in no layer", from.display()));
            continue;
        };
        for t in to {
            if layer_of(t).is_some_and(|lt| lt > lf) {
                wrong.push(format!("{} imports {}", from.display(), t.display()));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn anyhow_and_printing_stay_in_the_command_line_code() {
    let files = read_files();
    let mut wrong = Vec::new();
    for (path, f) in &files {
        let code = code_of(&f.text);
        let p = path.to_string_lossy();
        if code.contains("anyhow") {
            wrong.push(format!("{p} uses anyhow (only main.rs may)"));
        }
        // The command line's own code, and progress displays, print.
        let cli = p.starts_with("cli/") || p.ends_with("progress.rs");
        for mac in ["println!", "eprintln!", "print!(", "eprint!("] {
            if !cli && code.contains(mac) {
                wrong.push(format!("{p} calls {mac} (library code logs with tracing)"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
