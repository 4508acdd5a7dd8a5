//! The code map stays true: every module under `src/` says what it is in a `//!` comment, and
//! `ARCHITECTURE.md` names every top-level module.

use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_module_says_what_it_is() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    sources(&root.join("src"), &mut files);
    assert!(files.len() > 20, "{files:?}");
    let undocumented: Vec<String> = files
        .iter()
        .filter(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            !text.lines().find(|l| !l.trim().is_empty()).is_some_and(|l| l.starts_with("//!"))
        })
        .map(|f| f.strip_prefix(root).unwrap().display().to_string())
        .collect();
    assert!(undocumented.is_empty(), "modules without a `//!` comment saying what they are: {undocumented:?}");
}

#[test]
fn the_architecture_names_every_module() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let architecture = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let lib = std::fs::read_to_string(root.join("src/lib.rs")).unwrap();
    let missing: Vec<&str> = lib
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod ").and_then(|m| m.strip_suffix(';')))
        .filter(|module| !architecture.contains(&format!("`{module}`")))
        .collect();
    assert!(missing.is_empty(), "ARCHITECTURE.md does not name {missing:?}");
}

/// The `crate::` modules each top-level module's code uses (comments aside).
fn imports(root: &Path) -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let mut files = Vec::new();
    sources(&root.join("src"), &mut files);
    let mut used: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> = Default::default();
    for file in files {
        let relative = file.strip_prefix(root.join("src")).unwrap();
        let top =
            relative.components().next().unwrap().as_os_str().to_string_lossy().trim_end_matches(".rs").to_string();
        if top == "lib" || top == "main" {
            continue;
        }
        let entry = used.entry(top.clone()).or_default();
        for line in std::fs::read_to_string(&file).unwrap().lines().filter(|l| !l.trim_start().starts_with("//")) {
            for (at, _) in line.match_indices("crate::") {
                let module: String =
                    line[at + "crate::".len()..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
                if !module.is_empty() && module != top {
                    entry.insert(module);
                }
            }
        }
    }
    used
}

/// Every module imports only what `ARCHITECTURE.md`'s table lets it, and the table is layered
/// (each module lists only modules above it), so no import circle can come back unnoticed.
#[test]
fn modules_import_only_what_the_architecture_allows() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let architecture = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let table =
        architecture.split("```imports\n").nth(1).and_then(|t| t.split("```").next()).expect("an imports table");
    let mut allowed: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    let mut above: Vec<String> = Vec::new();
    for line in table.lines().filter(|l| !l.trim().is_empty()) {
        let (module, deps) = line.split_once(':').unwrap_or_else(|| panic!("`{line}` is not `module: deps`"));
        let deps: Vec<String> = match deps.trim() {
            "-" => Vec::new(),
            list => list.split(',').map(|d| d.trim().to_string()).collect(),
        };
        for dep in &deps {
            assert!(
                above.contains(dep),
                "{module} may import {dep}, which is not listed above it: a circle could form"
            );
        }
        above.push(module.trim().to_string());
        allowed.insert(module.trim().to_string(), deps);
    }
    for (module, used) in imports(root) {
        let Some(may) = allowed.get(&module) else {
            panic!("ARCHITECTURE.md's imports table has no line for `{module}`")
        };
        let outside: Vec<&String> = used.iter().filter(|u| !may.contains(u)).collect();
        assert!(outside.is_empty(), "`{module}` imports {outside:?}, which its line in ARCHITECTURE.md does not allow");
    }
}
