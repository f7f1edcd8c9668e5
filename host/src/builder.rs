//! `switchyard build`: runs each manifest entry's build command from the
//! manifest's folder and installs the artifact into the plugins folder.
//!
//! A build command is any shell command: `cargo build --target wasm32-wasip2`
//! for Rust modules, `componentize-py ... componentize` for Python ones. The
//! tool a command names is made available first (the rustup target, the
//! componentize-py package), and the artifact's folder is created.

use std::path::{Path, PathBuf};
use std::process::Command;

use switchyard_model::manifest::Manifest;

/// The target every module is built for.
pub const WASM_TARGET: &str = "wasm32-wasip2";

/// Builds Python modules into components (PyPI package of the same name).
pub const COMPONENTIZE_PY: &str = "componentize-py";

/// Variables of an outer cargo (e.g. `cargo run`, `cargo test`) that would
/// redirect or break the modules' own build.
pub const CARGO_ENV_TO_CLEAR: &[&str] = &[
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_MAKEFLAGS",
    "CARGO_PRIMARY_PACKAGE",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
];

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("module {module}: `{command}` failed ({status})")]
    Failed {
        module: String,
        command: String,
        status: String,
    },
    #[error("module {module}: the build left no artifact at {path}")]
    MissingArtifact { module: String, path: PathBuf },
    #[error("module {module}: cannot install {path}: {source}")]
    Install {
        module: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("adding the {WASM_TARGET} target failed: {0}")]
    Target(String),
    #[error(
        "{COMPONENTIZE_PY} is not installed and `python3 -m pip install {COMPONENTIZE_PY}` failed ({0}); \
         Python modules need it: install it with pip and build again"
    )]
    ComponentizePy(String),
}

/// What one build did.
#[derive(Debug)]
pub struct Built {
    pub module: String,
    pub file: PathBuf,
    /// False when the artifact was identical to the installed file.
    pub changed: bool,
}

/// Adds the wasm target with rustup when it is missing.
pub fn ensure_wasm_target() -> Result<(), BuildError> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output();
    match installed {
        Ok(out)
            if String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|l| l.trim() == WASM_TARGET) =>
        {
            Ok(())
        }
        Ok(_) => {
            tracing::info!("adding the {WASM_TARGET} target with rustup");
            let status = Command::new("rustup")
                .args(["target", "add", WASM_TARGET])
                .status()
                .map_err(|e| BuildError::Target(e.to_string()))?;
            if status.success() {
                Ok(())
            } else {
                Err(BuildError::Target(status.to_string()))
            }
        }
        // No rustup: the toolchain may still have the target; let cargo say.
        Err(e) => {
            tracing::warn!(error = %e, "rustup not found; assuming {WASM_TARGET} is available");
            Ok(())
        }
    }
}

/// Installs componentize-py with pip when it is missing, as
/// [`ensure_wasm_target`] adds the Rust target.
pub fn ensure_componentize_py() -> Result<(), BuildError> {
    let found = Command::new(COMPONENTIZE_PY)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return Ok(());
    }
    tracing::info!("installing {COMPONENTIZE_PY} with pip");
    let status = Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", COMPONENTIZE_PY])
        .status()
        .map_err(|e| BuildError::ComponentizePy(format!("cannot run python3: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(BuildError::ComponentizePy(status.to_string()))
    }
}

/// Runs a shell command from `dir` with a clean cargo environment.
pub fn run_command(command: &str, dir: &Path, module: &str) -> Result<(), BuildError> {
    tracing::info!(module, command, dir = %dir.display(), "building");
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(command).current_dir(dir);
    for var in CARGO_ENV_TO_CLEAR {
        cmd.env_remove(var);
    }
    let status = cmd.status().map_err(|source| BuildError::Spawn {
        command: command.to_string(),
        source,
    })?;
    if status.success() {
        Ok(())
    } else {
        Err(BuildError::Failed {
            module: module.to_string(),
            command: command.to_string(),
            status: status.to_string(),
        })
    }
}

/// Builds every module that has a `build` command and installs artifacts.
pub fn build_all(manifest: &Manifest) -> Result<Vec<Built>, BuildError> {
    let mut ensured = false;
    let mut ensured_py = false;
    let mut built = Vec::new();
    for (name, entry) in &manifest.modules {
        let Some(command) = &entry.build else {
            continue;
        };
        if !ensured && command.contains(WASM_TARGET) {
            ensure_wasm_target()?;
            ensured = true;
        }
        if !ensured_py && command.contains(COMPONENTIZE_PY) {
            ensure_componentize_py()?;
            ensured_py = true;
        }
        // Tools such as componentize-py do not create the output's folder.
        if let Some(folder) = entry
            .artifact
            .as_ref()
            .and_then(|a| manifest.dir.join(a).parent().map(Path::to_path_buf))
        {
            std::fs::create_dir_all(&folder).map_err(|source| BuildError::Install {
                module: name.clone(),
                path: folder,
                source,
            })?;
        }
        let artifact = entry.artifact.as_ref().map(|a| manifest.dir.join(a));
        if artifact
            .as_deref()
            .is_some_and(|a| python_artifact_is_fresh(command, &manifest.dir, a))
        {
            // componentize-py has no incremental build of its own: without
            // this, every `up` would spend ~30 s rebuilding an unchanged module.
            tracing::info!(module = %name, "Python sources unchanged since the last build");
        } else {
            run_command(command, &manifest.dir, name)?;
        }
        let file = manifest.host.plugins_dir.join(&entry.file);
        let changed = match &entry.artifact {
            Some(artifact) => install(name, &manifest.dir.join(artifact), &file)?,
            None if file.exists() => true,
            None => {
                return Err(BuildError::MissingArtifact {
                    module: name.clone(),
                    path: file,
                });
            }
        };
        built.push(Built {
            module: name.clone(),
            file,
            changed,
        });
    }
    Ok(built)
}

/// Copies `artifact` to `file` through a temporary file and a rename, so a
/// watcher never sees it half-written. Returns whether the content changed.
fn install(module: &str, artifact: &Path, file: &Path) -> Result<bool, BuildError> {
    let install_err = |source| BuildError::Install {
        module: module.to_string(),
        path: file.to_path_buf(),
        source,
    };
    let bytes = std::fs::read(artifact).map_err(|_| BuildError::MissingArtifact {
        module: module.to_string(),
        path: artifact.to_path_buf(),
    })?;
    if std::fs::read(file).is_ok_and(|old| old == bytes) {
        return Ok(false);
    }
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).map_err(install_err)?;
    }
    let tmp = file.with_extension("wasm.partial");
    std::fs::write(&tmp, &bytes).map_err(install_err)?;
    std::fs::rename(&tmp, file).map_err(install_err)?;
    Ok(true)
}

/// For a componentize-py command: whether `artifact` is newer than every
/// file of its inputs (each `-p`/`--python-path` folder and the `-d`/
/// `--wit-path` WIT), so the build can be skipped. Any other command, or an
/// input that cannot be read, is never fresh.
fn python_artifact_is_fresh(command: &str, dir: &Path, artifact: &Path) -> bool {
    let words: Vec<&str> = command.split_whitespace().collect();
    if words.first() != Some(&COMPONENTIZE_PY) {
        return false;
    }
    let inputs: Vec<PathBuf> = words
        .windows(2)
        .filter(|w| matches!(w[0], "-p" | "--python-path" | "-d" | "--wit-path"))
        .map(|w| dir.join(w[1]))
        .collect();
    let Ok(built) = std::fs::metadata(artifact).and_then(|m| m.modified()) else {
        return false;
    };
    !inputs.is_empty() && inputs.iter().all(|input| older_than(input, built))
}

/// Whether every file under `path` was last modified before `time`
/// (`__pycache__` folders aside: Python writes them when it merely reads).
fn older_than(path: &Path, time: std::time::SystemTime) -> bool {
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    if !meta.is_dir() {
        return meta.modified().is_ok_and(|m| m < time);
    }
    let Ok(entries) = std::fs::read_dir(path) else {
        return false;
    };
    entries
        .flatten()
        .all(|e| e.file_name() == "__pycache__" || older_than(&e.path(), time))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_python_build_is_skipped_only_while_its_inputs_are_older() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("app/pkg")).expect("mkdir");
        std::fs::write(root.join("app/pkg/app.py"), "x = 1").expect("write");
        std::fs::write(root.join("world.wit"), "package a:b;").expect("write");
        let command = "componentize-py -d world.wit -w module componentize -p app app -o out.wasm";
        let artifact = root.join("out.wasm");
        assert!(
            !python_artifact_is_fresh(command, root, &artifact),
            "not built yet"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&artifact, b"wasm").expect("write");
        assert!(python_artifact_is_fresh(command, root, &artifact));
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(root.join("app/pkg/app.py"), "x = 2").expect("write");
        assert!(
            !python_artifact_is_fresh(command, root, &artifact),
            "source changed"
        );
        assert!(!python_artifact_is_fresh(
            "cargo build -p app",
            root,
            &artifact
        ));
    }
}
