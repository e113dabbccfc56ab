//! A check of the codebase itself, run as an ordinary test: the daemons'
//! async code does no blocking file I/O.
//!
//! A blocking call on a runtime thread stalls every task queued behind it
//! (the master's link, sessions and reactors; the agent's link and outbox):
//! async code reads and writes files through `tokio::fs`, or hands the work
//! to `tokio::task::spawn_blocking` (the store's own thread, the job runner
//! and the beacons' threads are sync code and may block).
//!
//! Clippy's `disallowed-methods` cannot tell async code from sync code, so
//! a ban there would flag every legitimate blocking call (start-up, the
//! CLI, tests, threads of their own) and need an `allow` on each. This test
//! can: for every source file of the master and the agent (`#[cfg(test)]`
//! items left out) it walks each `async fn` and `async` block with `syn`
//! and fails on a direct call of a blocking file function written in it:
//! `std::fs::*` (`fs::*` unless the file imports `tokio::fs`), `File::open`
//! and `File::create`, and `halite_fs::*` (descriptor-based and fsyncing,
//! hence blocking; not `halite_fs::hops`, whose marks go to memory). A closure given to `spawn_blocking`, `block_in_place`
//! or a thread's `spawn` is sync code and is not looked into.
//!
//! A second check, `the_salt_render_reads_no_file`, covers halite-state's
//! Salt render, which the master calls from async code through sync
//! methods this check cannot follow (see [`SALT_DIR`]).
//!
//! What it cannot see, and why that is accepted: a call through a sync
//! helper (an async fn calling `fn load()` that reads a file) and a method
//! on a path (`path.exists()`). Types are not known to `syn`; the helpers
//! are named for what they do (`load`, `read`, `save`), which a reviewer
//! sees, and the direct call is where the mistake is usually made.

// Test code outside `#[test]` functions (helpers, a bench): a panic is a
// failed test, which is what `unwrap` says here.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use syn::spanned::Spanned;
use syn::visit::Visit;

/// The crates whose async code runs on a runtime shared by everything the
/// daemon does.
const CRATES: &[&str] = &["crates/master/src", "crates/agent/src"];

/// Blocking functions of `std::fs` (called as `std::fs::NAME` or `fs::NAME`).
const STD_FS: &[&str] = &[
    "read",
    "read_to_string",
    "write",
    "metadata",
    "symlink_metadata",
    "read_dir",
    "read_link",
    "canonicalize",
    "remove_file",
    "remove_dir",
    "remove_dir_all",
    "rename",
    "copy",
    "create_dir",
    "create_dir_all",
    "set_permissions",
    "hard_link",
];

/// Functions whose closure argument runs off the runtime's threads.
const SYNC_HANDOFFS: &[&str] = &["spawn_blocking", "block_in_place", "spawn"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the tests crate sits in the repository").to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display())) {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|attr| {
        attr.path().is_ident("cfg")
            && attr
                .meta
                .require_list()
                .is_ok_and(|list| list.tokens.to_string().split_whitespace().any(|t| t == "test"))
    })
}

/// Whether the file imports `tokio::fs` (then `fs::read` is tokio's).
fn imports_tokio_fs(file: &syn::File) -> bool {
    file.items.iter().any(|item| match item {
        syn::Item::Use(u) => {
            let text = quote_use(&u.tree);
            text.contains("tokio::fs") && !text.contains("tokio::fs::")
        }
        _ => false,
    })
}

fn quote_use(tree: &syn::UseTree) -> String {
    match tree {
        syn::UseTree::Path(p) => format!("{}::{}", p.ident, quote_use(&p.tree)),
        syn::UseTree::Name(n) => n.ident.to_string(),
        syn::UseTree::Rename(r) => format!("{} as {}", r.ident, r.rename),
        syn::UseTree::Glob(_) => "*".into(),
        syn::UseTree::Group(g) => g.items.iter().map(quote_use).collect::<Vec<_>>().join(","),
    }
}

/// Why a call path is blocking file I/O, if it is.
fn blocking(path: &syn::Path, tokio_fs: bool) -> Option<String> {
    let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
    let shown = segments.join("::");
    match segments.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["tokio", ..] => None,
        // Hop marks go to memory; a thread of their own writes them out.
        ["halite_fs", "hops", ..] => None,
        ["halite_fs", ..] => Some(shown),
        [.., "File", "open" | "create"] => Some(shown),
        ["std", "fs", name] if STD_FS.contains(name) => Some(shown),
        ["fs", name] if !tokio_fs && STD_FS.contains(name) => Some(shown),
        _ => None,
    }
}

/// A function, module or impl under `#[cfg(test)]`: not scanned.
fn is_test_item(item: &syn::Item) -> bool {
    match item {
        syn::Item::Fn(f) => is_cfg_test(&f.attrs),
        syn::Item::Mod(m) => is_cfg_test(&m.attrs),
        syn::Item::Impl(i) => is_cfg_test(&i.attrs),
        _ => false,
    }
}

struct Finder<'a> {
    file: &'a str,
    tokio_fs: bool,
    /// Inside an `async fn` or `async` block (and not in a sync hand-off).
    in_async: bool,
    found: Vec<String>,
}

impl Finder<'_> {
    fn with_async(&mut self, in_async: bool, visit: impl FnOnce(&mut Self)) {
        let outer = std::mem::replace(&mut self.in_async, in_async);
        visit(self);
        self.in_async = outer;
    }
}

impl<'ast> Visit<'ast> for Finder<'_> {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        if !is_test_item(item) {
            syn::visit::visit_item(self, item);
        }
    }

    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        self.with_async(f.sig.asyncness.is_some(), |me| syn::visit::visit_item_fn(me, f));
    }

    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        if !is_cfg_test(&f.attrs) {
            self.with_async(f.sig.asyncness.is_some(), |me| syn::visit::visit_impl_item_fn(me, f));
        }
    }

    fn visit_expr_async(&mut self, block: &'ast syn::ExprAsync) {
        self.with_async(true, |me| syn::visit::visit_expr_async(me, block));
    }

    fn visit_expr_call(&mut self, call: &'ast syn::ExprCall) {
        if let syn::Expr::Path(path) = &*call.func {
            let last = path.path.segments.last().map(|s| s.ident.to_string()).unwrap_or_default();
            if SYNC_HANDOFFS.contains(&last.as_str()) {
                // `spawn_blocking(move || …)`: the closure is sync code.
                self.visit_expr(&call.func);
                for arg in &call.args {
                    let sync = matches!(arg, syn::Expr::Closure(c) if c.asyncness.is_none());
                    self.with_async(self.in_async && !sync, |me| me.visit_expr(arg));
                }
                return;
            }
            if self.in_async
                && let Some(what) = blocking(&path.path, self.tokio_fs)
            {
                let line = call.span().start().line;
                self.found.push(format!("{}:{line}: `{what}` in async code", self.file));
            }
        }
        syn::visit::visit_expr_call(self, call);
    }

    fn visit_expr_method_call(&mut self, call: &'ast syn::ExprMethodCall) {
        // `std::thread::Builder::new().spawn(move || …)`.
        if call.method == "spawn" {
            self.visit_expr(&call.receiver);
            for arg in &call.args {
                let sync = matches!(arg, syn::Expr::Closure(c) if c.asyncness.is_none());
                self.with_async(self.in_async && !sync, |me| me.visit_expr(arg));
            }
            return;
        }
        syn::visit::visit_expr_method_call(self, call);
    }
}

/// Blocking calls in async code, as `file:line: what`.
fn find(relative: &str, source: &str) -> Vec<String> {
    let file = syn::parse_file(source).unwrap_or_else(|e| panic!("{relative}: {e}"));
    let mut finder = Finder { file: relative, tokio_fs: imports_tokio_fs(&file), in_async: false, found: Vec::new() };
    finder.visit_file(&file);
    finder.found
}

#[test]
fn async_code_does_no_blocking_file_io() {
    let repo = repo();
    let mut found = Vec::new();
    for dir in CRATES {
        let mut files = Vec::new();
        rust_files(&repo.join(dir), &mut files);
        assert!(!files.is_empty(), "no source files under {dir}");
        for path in files {
            let relative = path.strip_prefix(&repo).expect("under the repository").display().to_string();
            let source = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {relative}: {e}"));
            found.extend(find(&relative, &source));
        }
    }
    assert!(
        found.is_empty(),
        "blocking file I/O in async code (use tokio::fs, or move it into spawn_blocking):\n{}",
        found.join("\n")
    );
}

/// halite-state's Salt modules, which the master calls from async code (a
/// reactor's restore, a start-up apply, `apply`, a reload's re-apply all
/// render an agent's tree through `StateTree::calls_for`/`states_for`).
/// syn cannot follow that call from the master's async fn into this crate,
/// so the check is made from the other side: in these modules only the
/// functions listed in [`SALT_LOAD_TIME`] touch the file system. The tree
/// loads off the runtime (`reload` uses `spawn_blocking`), and a render
/// reads the texts kept then (salt/preread.rs); a read added anywhere else
/// in the render path fails here.
const SALT_DIR: &str = "crates/state/src/salt";

/// `(file, fn)` of the Salt modules that may read files, and why: each
/// runs when the tree loads (sync code, off the master's runtime), or
/// without kept texts (`halite-agent apply --local`, tests: sync code).
const SALT_LOAD_TIME: &[(&str, &str)] = &[
    // Discovery and name resolution, when the tree loads.
    ("layout.rs", "walk"),
    ("layout.rs", "resolve_sls"),
    // Top files and the pillar tree, read when the tree loads.
    ("top.rs", "load_targeted"),
    ("pillar.rs", "load"),
    // The texts kept for rendering, read when the tree loads.
    ("preread.rs", "read"),
    ("preread.rs", "walk"),
    // The disk loader of a render without kept texts (`apply --local`).
    ("render.rs", "read_tree_text"),
    ("render.rs", "tree_text"),
];

/// Calls that read the tree's files, beside `std::fs`'s.
const TREE_READS: &[&str] =
    &["read_tree_file", "in_tree", "read_tree_text", "resolve_sls", "load_targeted", "discover", "read_to_string"];

/// Methods (of `Path`, mostly) that ask the file system.
const FS_METHODS: &[&str] =
    &["is_file", "is_dir", "exists", "metadata", "symlink_metadata", "read_dir", "canonicalize"];

/// File system access in the Salt modules outside [`SALT_LOAD_TIME`].
struct SaltReads<'a> {
    file: &'a str,
    function: String,
    found: Vec<String>,
}

impl SaltReads<'_> {
    fn allowed(&self) -> bool {
        let name = Path::new(self.file).file_name().and_then(|n| n.to_str()).unwrap_or_default();
        SALT_LOAD_TIME.iter().any(|(file, function)| *file == name && *function == self.function)
    }

    fn report(&mut self, what: String, line: usize) {
        if !self.allowed() {
            self.found.push(format!("{}:{line}: `{what}` in `{}`", self.file, self.function));
        }
    }

    fn in_function(&mut self, name: String, visit: impl FnOnce(&mut Self)) {
        let outer = std::mem::replace(&mut self.function, name);
        visit(self);
        self.function = outer;
    }
}

impl<'ast> Visit<'ast> for SaltReads<'_> {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        if !is_test_item(item) {
            syn::visit::visit_item(self, item);
        }
    }

    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        self.in_function(f.sig.ident.to_string(), |me| syn::visit::visit_item_fn(me, f));
    }

    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        if !is_cfg_test(&f.attrs) {
            self.in_function(f.sig.ident.to_string(), |me| syn::visit::visit_impl_item_fn(me, f));
        }
    }

    fn visit_expr_call(&mut self, call: &'ast syn::ExprCall) {
        if let syn::Expr::Path(path) = &*call.func {
            let last = path.path.segments.last().map(|s| s.ident.to_string()).unwrap_or_default();
            let line = call.span().start().line;
            if let Some(what) = blocking(&path.path, false) {
                self.report(what, line);
            } else if TREE_READS.contains(&last.as_str()) {
                self.report(last, line);
            }
        }
        syn::visit::visit_expr_call(self, call);
    }

    fn visit_expr_method_call(&mut self, call: &'ast syn::ExprMethodCall) {
        let method = call.method.to_string();
        if FS_METHODS.contains(&method.as_str()) {
            self.report(format!(".{method}()"), call.method.span().start().line);
        }
        syn::visit::visit_expr_method_call(self, call);
    }
}

/// File system access in a Salt module outside its load-time functions.
fn find_salt_reads(relative: &str, source: &str) -> Vec<String> {
    let file = syn::parse_file(source).unwrap_or_else(|e| panic!("{relative}: {e}"));
    let mut finder = SaltReads { file: relative, function: String::new(), found: Vec::new() };
    finder.visit_file(&file);
    finder.found
}

#[test]
fn the_salt_render_reads_no_file() {
    let repo = repo();
    let mut files = Vec::new();
    rust_files(&repo.join(SALT_DIR), &mut files);
    assert!(files.len() >= 10, "the Salt modules: {files:?}");
    let mut found = Vec::new();
    // `tree_tests.rs` is a test module (`#[cfg(test)] mod tree_tests;`).
    for path in files.into_iter().filter(|p| !p.to_string_lossy().ends_with("_tests.rs")) {
        let relative = path.strip_prefix(&repo).expect("under the repository").display().to_string();
        let source = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {relative}: {e}"));
        found.extend(find_salt_reads(&relative, &source));
    }
    assert!(
        found.is_empty(),
        "file system access in the Salt render path (read it when the tree loads, salt/preread.rs, or list a load-time function in SALT_LOAD_TIME with why):\n{}",
        found.join("\n")
    );
    // The check itself.
    let caught = [
        "fn render_in() { let _ = std::fs::read_to_string(\"x\"); }",
        "impl T { fn for_agent(&self) { let _ = crate::paths::read_tree_file(p); } }",
        "fn get(p: &Path) -> bool { p.is_file() }",
    ];
    for source in caught {
        assert_eq!(find_salt_reads("crates/state/src/salt/render.rs", source).len(), 1, "not caught: {source}");
    }
    let passed = [
        "fn read_tree_text() { let _ = crate::paths::in_tree(r, n); }",
        "#[cfg(test)]\nmod tests { fn f() { std::fs::write(\"x\", \"y\"); } }",
    ];
    for source in passed {
        assert!(find_salt_reads("crates/state/src/salt/render.rs", source).is_empty(), "flagged: {source}");
    }
}

/// The check itself: what it must catch and what it must let through.
#[test]
fn the_check_tells_async_from_sync() {
    let caught = [
        "async fn f() { let _ = std::fs::read_to_string(\"x\"); }",
        "async fn f() { let _ = fs::write(\"x\", \"y\"); }",
        "fn f() { let _ = async { std::fs::metadata(\"x\") }; }",
        "impl S { async fn f(&self) { let _ = File::open(\"x\"); } }",
        "async fn f() { let _ = halite_fs::write_atomic(p, b, 0o600); }",
        "async fn f() { let _ = spawn_blocking(|| ()).await; std::fs::remove_file(\"x\"); }",
    ];
    for source in caught {
        assert_eq!(find("t.rs", source).len(), 1, "not caught: {source}");
    }
    let passed = [
        "fn f() { let _ = std::fs::read(\"x\"); }",
        "async fn f() { let _ = tokio::fs::read(\"x\").await; }",
        "use tokio::fs;\nasync fn f() { let _ = fs::read(\"x\").await; }",
        "async fn f() { tokio::task::spawn_blocking(move || std::fs::write(\"x\", \"y\")).await; }",
        "async fn f() { std::thread::Builder::new().spawn(move || std::fs::read(\"x\")); }",
        "#[cfg(test)]\nmod tests { async fn f() { std::fs::read(\"x\"); } }",
        "async fn f() { halite_fs::hops::mark(\"agent.sent\", 1); }",
    ];
    for source in passed {
        assert_eq!(find("t.rs", source), Vec::<String>::new(), "flagged: {source}");
    }
}
