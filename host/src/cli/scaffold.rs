//! `switchyard new NAME [--lang rust|python]`: a module from a template,
//! added to the manifest with its build command (and, for Rust, to the
//! modules' cargo workspace).

use std::path::Path;

use anyhow::Context;
use clap::ValueEnum;

use switchyard_model::manifest::Manifest;

const TEMPLATE_LIB: &str = include_str!("../../templates/module_lib.rs");
const TEMPLATE_PY_APP: &str = include_str!("../../templates/python/app.py");
const TEMPLATE_PY_TEST: &str = include_str!("../../templates/python/test_app.py");
const TEMPLATE_CARGO: &str = include_str!("../../templates/module_Cargo.toml");

/// A new module's language.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Lang {
    Rust,
    Python,
}

/// `switchyard new`: the module's files (Rust: a crate in the workspace),
/// and its manifest entry with its build command.
pub fn scaffold(manifest: &Manifest, name: &str, dir: &Path, lang: Lang) -> anyhow::Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_lowercase()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    // No '-': cargo would name the artifact with '_' instead.
    anyhow::ensure!(
        valid,
        "module name {name:?} must be 1 to 64 of [a-z0-9_], starting with a letter"
    );
    anyhow::ensure!(
        !manifest.modules.contains_key(name),
        "plugins.toml already has [modules.{name}]"
    );
    let workspace = manifest.dir.join(dir);
    let crate_dir = workspace.join(name);
    anyhow::ensure!(
        !crate_dir.exists(),
        "{} already exists",
        crate_dir.display()
    );
    let entry = match lang {
        Lang::Rust => rust(name, dir, &workspace, &crate_dir)?,
        Lang::Python => python(name, dir, &workspace, &crate_dir)?,
    };
    let mut manifest_text = std::fs::read_to_string(&manifest.path)?;
    manifest_text.push_str(&entry);
    std::fs::write(&manifest.path, manifest_text)?;
    Ok(())
}

/// `app.py` on the Python SDK and its pytest tests; its entry.
fn python(name: &str, dir: &Path, workspace: &Path, module_dir: &Path) -> anyhow::Result<String> {
    let sdk = workspace.join("sdk-py");
    anyhow::ensure!(
        sdk.join("switchyard_sdk").is_dir(),
        "{} has no Python SDK (sdk-py/switchyard_sdk): a Python module is built with it",
        workspace.display()
    );
    std::fs::create_dir_all(module_dir)?;
    std::fs::write(
        module_dir.join("app.py"),
        TEMPLATE_PY_APP.replace("{{name}}", name),
    )?;
    std::fs::write(
        module_dir.join("test_app.py"),
        TEMPLATE_PY_TEST.replace("{{name}}", name),
    )?;
    let dir_text = dir.display();
    Ok(format!(
        "\n[modules.{name}]\nfile = \"{name}.wasm\"\n\
         build = \"componentize-py -d wit -w module componentize -p {dir_text}/{name} -p {dir_text}/sdk-py app -o {dir_text}/target/python/{name}.wasm\"\n\
         artifact = \"{dir_text}/target/python/{name}.wasm\"\n\
         topics = [\"{name}\"]\nsubscribes = [\"orders.events\"]\nemits = [\"{name}.events\"]\n"
    ))
}

/// A crate on the Rust SDK, added to the workspace's members; its entry.
fn rust(name: &str, dir: &Path, workspace: &Path, crate_dir: &Path) -> anyhow::Result<String> {
    let workspace_toml = workspace.join("Cargo.toml");
    let text = std::fs::read_to_string(&workspace_toml)
        .with_context(|| format!("reading {}", workspace_toml.display()))?;
    let at = text
        .find("members = [")
        .with_context(|| format!("{} has no `members = [` list", workspace_toml.display()))?
        + "members = [".len();
    let text = format!("{}\"{name}\", {}", &text[..at], &text[at..]);

    std::fs::create_dir_all(crate_dir.join("src"))?;
    std::fs::write(
        crate_dir.join("Cargo.toml"),
        TEMPLATE_CARGO.replace("{{name}}", name),
    )?;
    std::fs::write(
        crate_dir.join("src/lib.rs"),
        TEMPLATE_LIB.replace("{{name}}", name),
    )?;
    std::fs::write(&workspace_toml, text)?;

    let dir_text = dir.display();
    let entry = format!(
        "\n[modules.{name}]\nfile = \"{name}.wasm\"\n\
         build = \"cargo build --release --target wasm32-wasip2 --manifest-path {dir_text}/Cargo.toml -p {name}\"\n\
         artifact = \"{dir_text}/target/wasm32-wasip2/release/{name}.wasm\"\n\
         topics = [\"{name}\"]\nsubscribes = [\"orders.events\"]\nemits = [\"{name}.events\"]\n"
    );
    Ok(entry)
}
