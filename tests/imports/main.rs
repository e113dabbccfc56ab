//! A check of the codebase itself, run as an ordinary test: no crate's
//! modules import each other in a cycle.
//!
//! For every crate root under `crates/*/src` (`lib.rs`, `main.rs`,
//! `bin/*.rs`) the test follows the `mod` declarations to every module file,
//! then reads each file's paths with `syn`: `use` trees, paths in code
//! (`crate::jobs::run(..)`) and the tokens of macro calls. A path that names
//! one of the crate's modules (through `crate::`, `self::`, `super::`, a
//! child module's name, or a name a `use` bound to a module) is an edge from
//! the file it is written in to the file of the longest module prefix it
//! names. The strongly connected components of that graph with more than
//! one file are the cycles.
//!
//! What is not an edge, and why:
//! - `mod child;` itself: declaring a submodule is ownership, not use.
//! - A module's use of its own descendants (`mod.rs` registering
//!   `child::KIND`, re-exporting `pub use child::Thing`): a folder is one
//!   unit whose `mod.rs` is its face, so the beacon registry (`KINDS` in
//!   `beacons/mod.rs`, each kind file using `super::Context`) is not a
//!   cycle. The other direction, `use super::X` from a child, is an edge,
//!   and so is everything between siblings and across folders: a child
//!   that uses its parent while a sibling folder uses the child's parent
//!   back is caught.
//! - `#[cfg(test)]` items (`mod tests`): tests may reach anywhere; the
//!   layering is about the code that ships.
//! - Paths to other crates and to items that are not modules' (a local
//!   variable or type named like nothing in the module tree).

// Test code outside `#[test]` functions (helpers, a bench): a panic is a
// failed test, which is what `unwrap` says here.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use proc_macro2::{TokenStream, TokenTree};
use syn::visit::Visit;

/// Cycles allowed to stay until they are taken apart: none since the
/// master's restructuring (issue 13). A cycle is fixed, not listed; the
/// list exists so a cycle found in a crate taken over from elsewhere can be
/// named while it is taken apart. The test fails when a cycle reaches a file
/// outside its entry (or joins two entries), and when a listed file is no
/// longer in a cycle (take it off then).
const ALLOWED_CYCLES: &[&[&str]] = &[];

/// A module of a crate, by its path from the crate root (`[]` is the root).
type ModPath = Vec<String>;

/// One crate target's module tree.
#[derive(Default)]
struct Crate {
    /// Every module, and the file (relative to the repository) that holds it.
    modules: BTreeMap<ModPath, String>,
    /// Each module's body: its own items, without nested modules' (they are
    /// bodies of their own).
    bodies: Vec<(ModPath, String, Vec<syn::Item>)>,
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the tests crate sits in the repository").to_path_buf()
}

fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|attr| {
        attr.path().is_ident("cfg")
            && attr.meta.require_list().is_ok_and(|list| {
                list.tokens.clone().into_iter().any(|t| matches!(&t, TokenTree::Ident(i) if i == "test"))
            })
    })
}

/// A `#[path = "..."]` on a `mod` declaration.
fn path_attr(attrs: &[syn::Attribute]) -> Option<String> {
    attrs.iter().find(|a| a.path().is_ident("path")).and_then(|a| match &a.meta {
        syn::Meta::NameValue(syn::MetaNameValue {
            value: syn::Expr::Lit(syn::ExprLit { lit: syn::Lit::Str(s), .. }),
            ..
        }) => Some(s.value()),
        _ => None,
    })
}

fn relative(path: &Path) -> String {
    path.strip_prefix(repo()).unwrap_or(path).display().to_string()
}

impl Crate {
    /// Loads the module tree from a crate root file.
    fn load(root: &Path) -> Crate {
        let mut krate = Crate::default();
        let dir = root.parent().expect("a root file has a folder").to_path_buf();
        krate.load_file(root, Vec::new(), &dir);
        krate
    }

    fn load_file(&mut self, file: &Path, module: ModPath, child_dir: &Path) {
        let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
        let parsed = syn::parse_file(&text).unwrap_or_else(|e| panic!("cannot parse {}: {e}", file.display()));
        self.load_items(parsed.items, file, module, child_dir);
    }

    fn load_items(&mut self, items: Vec<syn::Item>, file: &Path, module: ModPath, child_dir: &Path) {
        self.modules.insert(module.clone(), relative(file));
        let mut own = Vec::new();
        for item in items {
            let syn::Item::Mod(declared) = item else {
                own.push(item);
                continue;
            };
            if is_cfg_test(&declared.attrs) {
                continue;
            }
            let name = declared.ident.to_string();
            let mut child = module.clone();
            child.push(name.clone());
            let grandchild_dir = child_dir.join(&name);
            match declared.content {
                Some((_, items)) => self.load_items(items, file, child, &grandchild_dir),
                None => {
                    let path = match path_attr(&declared.attrs) {
                        Some(path) => child_dir.join(path),
                        None => {
                            let flat = child_dir.join(format!("{name}.rs"));
                            if flat.exists() { flat } else { grandchild_dir.join("mod.rs") }
                        }
                    };
                    self.load_file(&path, child, &grandchild_dir);
                }
            }
        }
        self.bodies.push((module, relative(file), own));
    }

    /// Names declared as modules directly inside `module`.
    fn has_child(&self, module: &[String], name: &str) -> bool {
        let mut child = module.to_vec();
        child.push(name.to_owned());
        self.modules.contains_key(&child)
    }

    /// The module a path written in `module` names, if it names one of
    /// this crate's: the longest module prefix of its absolute form.
    fn resolve(&self, module: &[String], aliases: &BTreeMap<String, ModPath>, path: &[String]) -> Option<ModPath> {
        let (first, rest) = path.split_first()?;
        let absolute: ModPath = match first.as_str() {
            "crate" => rest.to_vec(),
            "self" => module.iter().chain(rest).cloned().collect(),
            "super" => {
                let ups = path.iter().take_while(|s| *s == "super").count();
                let base = module.get(..module.len().checked_sub(ups)?)?;
                base.iter().chain(&path[ups..]).cloned().collect()
            }
            name if self.has_child(module, name) => module.iter().chain(path).cloned().collect(),
            name => aliases.get(name)?.iter().chain(rest).cloned().collect(),
        };
        (0..=absolute.len()).rev().map(|n| absolute[..n].to_vec()).find(|p| self.modules.contains_key(p))
    }
}

/// Every path written in one module body, as segment lists.
#[derive(Default)]
struct Paths {
    /// `use` paths: (the name they bind, if they bind one; the full path).
    uses: Vec<(Option<String>, Vec<String>)>,
    /// Paths in code and in macro tokens.
    code: Vec<Vec<String>>,
}

impl Paths {
    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                let name = n.ident.to_string();
                if name == "self" {
                    self.uses.push((prefix.last().cloned(), prefix.clone()));
                } else {
                    let mut full = prefix.clone();
                    full.push(name.clone());
                    self.uses.push((Some(name), full));
                }
            }
            syn::UseTree::Rename(r) => {
                let mut full = prefix.clone();
                if r.ident != "self" {
                    full.push(r.ident.to_string());
                }
                self.uses.push((Some(r.rename.to_string()), full));
            }
            syn::UseTree::Glob(_) => self.uses.push((None, prefix.clone())),
            syn::UseTree::Group(g) => {
                for tree in &g.items {
                    self.use_tree(prefix, tree);
                }
            }
        }
    }

    /// `crate::a::b`, `super::x`, `self::y` and `name::z` sequences in a
    /// macro's tokens (`format!`, `tokio::select!` bodies are not parsed).
    fn tokens(&mut self, tokens: TokenStream) {
        let trees: Vec<TokenTree> = tokens.into_iter().collect();
        let mut i = 0;
        while i < trees.len() {
            match &trees[i] {
                TokenTree::Group(g) => {
                    self.tokens(g.stream());
                    i += 1;
                }
                TokenTree::Ident(ident) => {
                    let mut path = vec![ident.to_string()];
                    let mut j = i + 1;
                    while let (Some(TokenTree::Punct(a)), Some(TokenTree::Punct(b)), Some(TokenTree::Ident(next))) =
                        (trees.get(j), trees.get(j + 1), trees.get(j + 2))
                        && a.as_char() == ':'
                        && b.as_char() == ':'
                    {
                        path.push(next.to_string());
                        j += 3;
                    }
                    if path.len() > 1 {
                        self.code.push(path);
                    }
                    i = j;
                }
                _ => i += 1,
            }
        }
    }
}

impl<'ast> Visit<'ast> for Paths {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        let attrs = match item {
            syn::Item::Fn(i) => &i.attrs,
            syn::Item::Impl(i) => &i.attrs,
            syn::Item::Use(i) => &i.attrs,
            syn::Item::Struct(i) => &i.attrs,
            syn::Item::Enum(i) => &i.attrs,
            syn::Item::Const(i) => &i.attrs,
            syn::Item::Static(i) => &i.attrs,
            syn::Item::Trait(i) => &i.attrs,
            syn::Item::Type(i) => &i.attrs,
            syn::Item::Macro(i) => &i.attrs,
            _ => return syn::visit::visit_item(self, item),
        };
        if !is_cfg_test(attrs) {
            syn::visit::visit_item(self, item);
        }
    }

    fn visit_impl_item_fn(&mut self, item: &'ast syn::ImplItemFn) {
        if !is_cfg_test(&item.attrs) {
            syn::visit::visit_impl_item_fn(self, item);
        }
    }

    fn visit_item_mod(&mut self, _: &'ast syn::ItemMod) {
        // Nested modules are bodies of their own (or tests).
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        if item.leading_colon.is_none() {
            self.use_tree(&mut Vec::new(), &item.tree);
        }
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        if path.leading_colon.is_none() && path.segments.len() > 1 {
            self.code.push(path.segments.iter().map(|s| s.ident.to_string()).collect());
        }
        syn::visit::visit_path(self, path);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        self.tokens(mac.tokens.clone());
        syn::visit::visit_macro(self, mac);
    }
}

/// Edges between files: from → to → the paths that make the edge.
type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

fn graph(krate: &Crate) -> Graph {
    let mut graph = Graph::new();
    for file in krate.modules.values() {
        graph.entry(file.clone()).or_default();
    }
    for (module, file, items) in &krate.bodies {
        let mut paths = Paths::default();
        for item in items {
            paths.visit_item(item);
        }
        let mut aliases = BTreeMap::new();
        for (name, path) in &paths.uses {
            if let (Some(name), Some(target)) = (name, krate.resolve(module, &BTreeMap::new(), path))
                && target.len() + 1 >= path.len()
                && target.last() == path.last()
            {
                aliases.insert(name.clone(), target);
            }
        }
        let written = paths.uses.iter().map(|(_, p)| p).chain(&paths.code);
        for path in written {
            let Some(target) = krate.resolve(module, &aliases, path) else { continue };
            // A module's own descendants are part of it (see the top).
            if target.starts_with(module) {
                continue;
            }
            let to = &krate.modules[&target];
            if to != file {
                graph.entry(file.clone()).or_default().entry(to.clone()).or_default().insert(path.join("::"));
            }
        }
    }
    graph
}

/// Tarjan's strongly connected components with more than one file.
fn cycles(graph: &Graph) -> Vec<BTreeSet<String>> {
    struct State<'g> {
        graph: &'g Graph,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        found: Vec<BTreeSet<String>>,
    }
    fn connect<'g>(s: &mut State<'g>, node: &'g str) {
        let next = s.index.len();
        s.index.insert(node, next);
        s.low.insert(node, next);
        s.stack.push(node);
        s.on_stack.insert(node);
        for to in s.graph.get(node).into_iter().flat_map(BTreeMap::keys) {
            if !s.index.contains_key(to.as_str()) {
                connect(s, to);
                let low = s.low[node].min(s.low[to.as_str()]);
                s.low.insert(node, low);
            } else if s.on_stack.contains(to.as_str()) {
                let low = s.low[node].min(s.index[to.as_str()]);
                s.low.insert(node, low);
            }
        }
        if s.low[node] == s.index[node] {
            let mut component = BTreeSet::new();
            while let Some(member) = s.stack.pop() {
                s.on_stack.remove(member);
                component.insert(member.to_owned());
                if member == node {
                    break;
                }
            }
            if component.len() > 1 {
                s.found.push(component);
            }
        }
    }
    let mut state = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for node in graph.keys() {
        if !state.index.contains_key(node.as_str()) {
            connect(&mut state, node);
        }
    }
    state.found
}

/// Every crate root: `crates/*/src/{lib,main}.rs` and `src/bin/*.rs`.
fn roots() -> Vec<PathBuf> {
    let mut roots = Vec::new();
    let mut crates: Vec<PathBuf> =
        std::fs::read_dir(repo().join("crates")).unwrap().map(|e| e.unwrap().path().join("src")).collect();
    crates.sort();
    for src in crates {
        roots.extend(["lib.rs", "main.rs"].map(|f| src.join(f)).into_iter().filter(|p| p.exists()));
        if let Ok(bins) = std::fs::read_dir(src.join("bin")) {
            roots.extend(bins.map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|x| x == "rs")));
        }
    }
    roots
}

/// A cycle as a reader needs it: its files and the paths that close it.
fn describe(graph: &Graph, component: &BTreeSet<String>) -> String {
    let mut text = String::new();
    for from in component {
        for (to, paths) in &graph[from] {
            if component.contains(to) {
                let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
                text.push_str(&format!("    {from} → {to} ({})\n", paths.join(", ")));
            }
        }
    }
    text
}

#[test]
fn no_crate_has_an_import_cycle() {
    let roots = roots();
    assert!(roots.iter().any(|r| r.ends_with("crates/agent/src/lib.rs")), "no crate roots found: {roots:?}");
    let mut in_cycles = BTreeSet::new();
    let mut problems = Vec::new();
    for root in roots {
        let krate = Crate::load(&root);
        let graph = graph(&krate);
        for component in cycles(&graph) {
            in_cycles.extend(component.iter().cloned());
            let allowed = ALLOWED_CYCLES.iter().any(|files| component.iter().all(|f| files.contains(&f.as_str())));
            if !allowed {
                problems.push(format!(
                    "{} has an import cycle through {} files, not within one ALLOWED_CYCLES entry:\n{}",
                    relative(&root),
                    component.len(),
                    describe(&graph, &component)
                ));
            }
        }
    }
    let healed: Vec<&str> =
        ALLOWED_CYCLES.iter().flat_map(|files| files.iter().copied()).filter(|f| !in_cycles.contains(*f)).collect();
    if !healed.is_empty() {
        problems.push(format!("no longer in a cycle, take them off ALLOWED_CYCLES: {healed:?}"));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The check itself, on a crate made for it: a cycle between siblings is
/// found (through `use`, a path in code, and a macro's tokens), a parent
/// using its child and the child using `super::` is not one, nor is a
/// `#[cfg(test)]` module's import.
#[test]
fn the_check_finds_sibling_cycles_and_not_parent_child_use() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    let write = |name: &str, text: &str| {
        let path = src.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write("lib.rs", "mod a;\nmod b;\nmod c;\nmod kinds;\npub use kinds::KINDS;\n");
    write("a.rs", "use crate::b::B;\npub struct A;\n");
    write("b.rs", "pub struct B;\nfn f() { let _ = crate::c::C; }\n");
    write("c.rs", "pub struct C;\nfn g() { println!(\"{}\", std::any::type_name::<crate::a::A>()); }\n");
    write("kinds/mod.rs", "mod one;\npub struct Context;\npub static KINDS: &[u8] = &[one::KIND];\n");
    write(
        "kinds/one.rs",
        "use super::Context;\npub const KIND: u8 = 1;\n#[cfg(test)]\nmod tests { use crate::a::A; }\n",
    );
    let krate = Crate::load(&src.join("lib.rs"));
    let found: Vec<Vec<String>> = cycles(&graph(&krate))
        .into_iter()
        .map(|c| c.into_iter().map(|f| f.rsplit('/').next().unwrap().to_owned()).collect())
        .collect();
    assert_eq!(found, [["a.rs", "b.rs", "c.rs"]]);
    // The parent → child edge is skipped, the child → parent one is kept.
    let graph = graph(&krate);
    let file = |name: &str| krate.modules.values().find(|f| f.ends_with(name)).unwrap().clone();
    assert!(graph[&file("kinds/one.rs")].contains_key(&file("kinds/mod.rs")));
    assert!(!graph[&file("kinds/mod.rs")].contains_key(&file("kinds/one.rs")));
    assert!(!graph[&file("kinds/one.rs")].contains_key(&file("a.rs")), "a test module's import counted");
}

/// The agent's dependency graph, from Cargo.lock (every package it can
/// reach, dev-dependencies of the workspace's crates included: a lock file
/// does not tell them apart, so this errs on the strict side).
fn reachable_from(root: &str) -> BTreeSet<String> {
    let lock = std::fs::read_to_string(repo().join("Cargo.lock")).unwrap();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for block in lock.split("[[package]]").skip(1) {
        let name = block.lines().find_map(|l| l.strip_prefix("name = ")).unwrap().trim_matches('"').to_owned();
        let deps = block
            .split_once("dependencies = [")
            .map(|(_, rest)| rest.split(']').next().unwrap_or_default())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                l.trim().trim_end_matches(',').trim_matches('"').split_whitespace().next().map(str::to_owned)
            })
            .filter(|d| !d.is_empty());
        edges.entry(name).or_default().extend(deps);
    }
    let mut seen = BTreeSet::new();
    let mut stack = vec![root.to_owned()];
    while let Some(name) = stack.pop() {
        if seen.insert(name.clone()) {
            stack.extend(edges.get(&name).into_iter().flatten().cloned());
        }
    }
    seen
}

/// URL sources are fetched by the master (issue #19): the agent links no
/// HTTP client and no TLS stack, which keeps it in its memory budget.
#[test]
fn the_agent_links_no_http_client() {
    let agent = reachable_from("halite-agent");
    assert!(agent.contains("halite-state") && agent.contains("sha1"), "the walk found the agent's graph: {agent:?}");
    let master = reachable_from("halite-master");
    assert!(master.contains("reqwest"), "the walk sees the master's client");
    let found: Vec<&String> = agent
        .iter()
        .filter(|name| {
            ["reqwest", "hyper", "hyper-util", "rustls", "tokio-rustls", "webpki-roots"].contains(&name.as_str())
        })
        .collect();
    assert!(found.is_empty(), "the agent can reach {found:?}: keep HTTP on the master (server/fetch.rs)");
}
