//! `switchyard check`'s module lints: each component against the WIT package
//! this host implements (read from its imports and exports, without compiling
//! it), and each module's `describe` against its manifest entry (command
//! topics, subscriptions, emit grants).

use std::collections::BTreeSet;
use std::fmt;

use wasmparser::{ComponentTypeRef, Encoding, Parser, Payload};

use switchyard_model::manifest::ModuleEntry;

/// The interfaces every module imports, whichever world version it was
/// built against (0.2.0 changed only `describe`); its `package` line is the
/// version a module's imports must have.
const WIT_SOURCE: &str = include_str!("../../wit/deps/switchyard-module-0.1.0/switchyard.wit");

/// How bad a finding is: errors make `switchyard check` fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The module will not load, or some of its messages will fail.
    Error,
    /// Works, but probably not as meant (e.g. a grant nobody uses).
    Warning,
}

/// One thing `check` found about a module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// How bad it is.
    pub severity: Severity,
    /// The module's name (the manifest key, or the file for a drop-in).
    pub module: String,
    /// What is wrong and what to do about it.
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{level}: module {}: {}", self.module, self.message)
    }
}

/// The host's WIT package: (`switchyard:module`, `0.1.0`).
pub fn host_package() -> (&'static str, &'static str) {
    WIT_SOURCE
        .lines()
        .find_map(|l| l.trim().strip_prefix("package "))
        .map(|p| p.trim_end_matches(';').trim())
        .and_then(|p| p.split_once('@'))
        .unwrap_or(("switchyard:module", "0.0.0"))
}

/// The interfaces the host's WIT package declares.
fn host_interfaces() -> BTreeSet<&'static str> {
    WIT_SOURCE
        .lines()
        .filter_map(|l| l.trim().strip_prefix("interface "))
        .filter_map(|rest| rest.split_whitespace().next())
        .collect()
}

/// The top-level import and export names of a component.
#[derive(Debug, Default)]
struct Surface {
    imports: Vec<String>,
    exports: Vec<String>,
}

fn surface(bytes: &[u8]) -> Result<Surface, String> {
    let mut out = Surface::default();
    // Nested core modules and components have their own imports: only
    // depth 0 is the component the host links.
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.map_err(|e| format!("not a WebAssembly file: {e}"))? {
            Payload::Version { encoding, .. } if depth == 0 && encoding != Encoding::Component => {
                return Err("a core WebAssembly module, not a component: build it for \
                     wasm32-wasip2 (Rust) or with componentize-py (Python)"
                    .to_string());
            }
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(reader) if depth == 0 => {
                for import in reader {
                    let import = import.map_err(|e| format!("malformed import: {e}"))?;
                    // Types the world `use`s (envelope, ...) are imported by
                    // name too; they are not capabilities.
                    if matches!(import.ty, ComponentTypeRef::Type(_)) {
                        continue;
                    }
                    out.imports.push(import.name.name.to_string());
                }
            }
            Payload::ComponentExportSection(reader) if depth == 0 => {
                for export in reader {
                    let export = export.map_err(|e| format!("malformed export: {e}"))?;
                    out.exports.push(export.name.name.to_string());
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Checks a component's imports and exports against the host's world:
/// `switchyard:module` interfaces of the host's version, WASI 0.2, and the
/// `describe` and `handle` exports.
pub fn world(module: &str, bytes: &[u8]) -> Vec<Finding> {
    let error = |message: String| Finding {
        severity: Severity::Error,
        module: module.to_string(),
        message,
    };
    let surface = match surface(bytes) {
        Ok(s) => s,
        Err(e) => return vec![error(e)],
    };
    let (package, version) = host_package();
    let interfaces = host_interfaces();
    let mut findings = Vec::new();
    let mut other_versions = BTreeSet::new();
    for import in &surface.imports {
        let (path, imported_version) = import.split_once('@').unwrap_or((import, ""));
        let (import_package, interface) = path.split_once('/').unwrap_or((path, ""));
        if import_package == package {
            if imported_version != version {
                other_versions.insert(imported_version.to_string());
            } else if !interfaces.contains(interface) {
                findings.push(error(format!(
                    "imports `{import}`, which {package}@{version} does not declare"
                )));
            }
        } else if import_package.starts_with("wasi:") {
            if !imported_version.starts_with("0.2.") {
                findings.push(error(format!(
                    "imports `{import}`: this host provides WASI 0.2 (wasi:*@0.2.x) only"
                )));
            }
        } else {
            findings.push(error(format!(
                "imports `{import}`, which this host does not provide (it provides {package}@{version} and WASI 0.2)"
            )));
        }
    }
    for other in other_versions {
        findings.push(error(format!(
            "imports interfaces of {package}@{other}, but this host provides those of \
             {package}@{version} (worlds 0.1.0 and 0.2.0 both import them): rebuild the \
             module against this host's wit/ folder"
        )));
    }
    let missing: Vec<&str> = ["describe", "handle"]
        .into_iter()
        .filter(|name| !surface.exports.iter().any(|e| e == name))
        .collect();
    if !missing.is_empty() {
        findings.push(error(format!(
            "does not export {} (exports: [{}]); a module implements world `module` of {package}@{version}",
            missing
                .iter()
                .map(|m| format!("`{m}`"))
                .collect::<Vec<_>>()
                .join(" and "),
            surface.exports.join(", ")
        )));
    }
    findings
}

/// What a module's `describe` declares.
#[derive(Debug, Clone, Default)]
pub struct Declared {
    /// Command topics it handles.
    pub topics: Vec<String>,
    /// Event topics it handles.
    pub subscribes: Vec<String>,
    /// Topics it emits to.
    pub emits: Vec<String>,
}

/// Compares `describe` with the manifest entry: every topic the module
/// handles is routed to it, every topic routed to it is one it handles, and
/// every topic it emits to is granted. A list absent from the entry is taken
/// from `describe`, so it cannot disagree.
pub fn grants(module: &str, declared: &Declared, entry: &ModuleEntry) -> Vec<Finding> {
    let mut findings = Vec::new();
    let mut add = |severity, message: String| {
        findings.push(Finding {
            severity,
            module: module.to_string(),
            message,
        });
    };
    let pairs = [
        ("topics", "command topic", &declared.topics, &entry.topics),
        (
            "subscribes",
            "event topic",
            &declared.subscribes,
            &entry.subscribes,
        ),
    ];
    for (key, what, declared, listed) in pairs {
        let Some(listed) = listed else { continue };
        for topic in declared.iter().filter(|t| !listed.contains(t)) {
            add(
                Severity::Error,
                format!(
                    "describe declares {what} '{topic}' but plugins.toml `{key}` does not list it \
                     (listed: [{}]): its messages never reach the module; add it to `{key}`",
                    listed.join(", ")
                ),
            );
        }
        for topic in listed.iter().filter(|t| !declared.contains(t)) {
            add(
                Severity::Error,
                format!(
                    "plugins.toml `{key}` lists '{topic}' but describe does not declare it \
                     (declared: [{}]): the module has no handler for it",
                    declared.join(", ")
                ),
            );
        }
    }
    if let Some(granted) = &entry.emits {
        for topic in declared.emits.iter().filter(|t| !granted.contains(t)) {
            add(
                Severity::Error,
                format!(
                    "missing grant: describe declares it emits to '{topic}' but plugins.toml `emits` \
                     does not grant it (granted: [{}]): its emit calls will be refused; add it to `emits`",
                    granted.join(", ")
                ),
            );
        }
        for topic in granted.iter().filter(|t| !declared.emits.contains(t)) {
            add(
                Severity::Warning,
                format!("plugins.toml `emits` grants '{topic}', which describe does not declare"),
            );
        }
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_package_comes_from_the_wit() {
        assert_eq!(host_package(), ("switchyard:module", "0.1.0"));
        let interfaces = host_interfaces();
        for i in ["types", "repository", "events", "config", "log", "clock"] {
            assert!(interfaces.contains(i), "{i}: {interfaces:?}");
        }
    }

    #[test]
    fn a_core_module_is_not_a_component() {
        let findings = world("m", b"\0asm\x01\0\0\0");
        assert_eq!(findings.len(), 1);
        assert!(
            findings[0].message.contains("not a component"),
            "{findings:?}"
        );
    }

    fn entry(toml_text: &str) -> ModuleEntry {
        toml::from_str(toml_text).expect("entry")
    }

    #[test]
    fn grants_name_what_is_missing_on_each_side() {
        let declared = Declared {
            topics: vec!["orders".into()],
            subscribes: vec!["inventory.events".into()],
            emits: vec!["orders.events".into(), "audit".into()],
        };
        let e = entry(
            r#"file = "orders.wasm"
topics = ["orders", "shipping"]
emits = ["orders.events", "spare"]"#,
        );
        let findings = grants("orders", &declared, &e);
        let text: Vec<String> = findings.iter().map(ToString::to_string).collect();
        let all = text.join("\n");
        assert!(all.contains("`topics` lists 'shipping'"), "{all}");
        assert!(
            all.contains(
                "error: module orders: missing grant: describe declares it emits to 'audit'"
            ),
            "{all}"
        );
        assert!(
            all.contains("warning: module orders: plugins.toml `emits` grants 'spare'"),
            "{all}"
        );
        // `subscribes` is absent from the entry: describe's list is used.
        assert!(!all.contains("subscribes"), "{all}");
        assert_eq!(findings.len(), 3, "{all}");
    }
}
