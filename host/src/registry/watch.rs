//! Hot reload: watches `plugins-dir` (its `*.wasm` files) and plugins.toml,
//! and after a quiet period runs the same reload as `POST /v1/admin/reload`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::reload::Reloader;

/// A burst of changes (a copy written in several chunks, a build replacing
/// several modules) is applied once it has been quiet this long.
pub const QUIET: Duration = Duration::from_millis(250);
/// The quiet period after an event that leaves a file complete (renamed into
/// place, or closed after writing): only other files of the same burst are
/// still worth waiting for.
pub const SETTLE: Duration = Duration::from_millis(40);
/// A file that never stops changing is still picked up after this long, so
/// the 2 s promise of SPEC §8 holds (a half-written file is refused by
/// compilation and the previous version keeps serving).
pub const MAX_DELAY: Duration = Duration::from_millis(1_000);
/// How often to try again to watch a path that could not be watched (a
/// plugins folder not created yet, a manifest being replaced).
const REWATCH_EVERY: Duration = Duration::from_secs(1);

/// What to watch.
#[derive(Debug, Clone)]
pub struct Watched {
    pub plugins_dir: PathBuf,
    pub manifest: PathBuf,
}

impl Watched {
    /// Whether `event` can change what is loaded: a `*.wasm` of the plugins
    /// folder (not `*.wasm.partial` and other temporary names) or the
    /// manifest. Opens and reads are the host's own loads: never relevant.
    fn relevant(&self, event: &Event) -> bool {
        let access = matches!(event.kind, EventKind::Access(_));
        let written = matches!(
            event.kind,
            EventKind::Access(AccessKind::Close(AccessMode::Write))
        );
        if access && !written {
            return false;
        }
        event.paths.iter().any(|p| {
            p == &self.manifest
                || (p.parent() == Some(self.plugins_dir.as_path())
                    && p.extension().is_some_and(|x| x == "wasm"))
        })
    }
}

/// How long to wait for more changes after `event`: a file renamed into
/// place or closed after writing is complete, so a short [`SETTLE`] lets the
/// rest of a burst arrive; any other change (a copy still being written)
/// waits the full [`QUIET`].
fn quiet_after(event: &Event) -> Duration {
    match event.kind {
        EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both))
        | EventKind::Access(AccessKind::Close(AccessMode::Write)) => SETTLE,
        _ => QUIET,
    }
}

/// The file watcher, watching from the moment it is created: created before
/// the first load, so no change between that load and serving is missed.
pub struct FolderWatcher {
    watched: Watched,
    /// `None`: the OS watcher could not start; hot reload is off.
    watcher: Option<RecommendedWatcher>,
    events: mpsc::UnboundedReceiver<notify::Result<Event>>,
    dir_watched: bool,
    manifest_watched: bool,
}

impl FolderWatcher {
    pub fn new(watched: Watched) -> Self {
        let (tx, events) = mpsc::unbounded_channel();
        let watcher = notify::recommended_watcher(move |event: notify::Result<Event>| {
            // The receiver is gone only when the host is stopping.
            let _ = tx.send(event);
        });
        let mut watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::error!(error = %e, "cannot watch the plugins folder; hot reload is off (POST /v1/admin/reload still works)");
                None
            }
        };
        let (mut dir_watched, mut manifest_watched) = (false, false);
        if let Some(w) = watcher.as_mut() {
            dir_watched = watch(w, &watched.plugins_dir, false);
            manifest_watched = watch(w, &watched.manifest, false);
            tracing::info!(plugins_dir = %watched.plugins_dir.display(), manifest = %watched.manifest.display(), "watching for module and manifest changes");
        }
        Self {
            watched,
            watcher,
            events,
            dir_watched,
            manifest_watched,
        }
    }

    /// Reloads after each burst of changes until `shutdown`.
    pub async fn run(self, reloader: Arc<Reloader>, shutdown: CancellationToken) {
        let Self {
            watched,
            watcher,
            events: mut rx,
            mut dir_watched,
            mut manifest_watched,
        } = self;
        let Some(mut watcher) = watcher else {
            return;
        };
        loop {
            // Wait for the first relevant change.
            let mut manifest_changed = false;
            let mut quiet = QUIET;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                event = rx.recv() => match event {
                    None => return,
                    Some(Ok(event)) if watched.relevant(&event) => {
                        manifest_changed = event.paths.contains(&watched.manifest);
                        quiet = quiet_after(&event);
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => {
                        // E.g. the kernel's event queue overflowed: changes may
                        // have been missed, so look at everything again.
                        tracing::warn!(error = %e, "file watcher error; reloading to be safe");
                        manifest_changed = true;
                    }
                },
                _ = tokio::time::sleep(REWATCH_EVERY), if !(dir_watched && manifest_watched) => {
                    let was = (dir_watched, manifest_watched);
                    dir_watched = dir_watched || watch(&mut watcher, &watched.plugins_dir, true);
                    manifest_watched = manifest_watched || watch(&mut watcher, &watched.manifest, true);
                    // A path that appeared may have brought changes with it.
                    if was == (dir_watched, manifest_watched) {
                        continue;
                    }
                }
            }

            // Debounce: wait until nothing relevant happened for QUIET, but no
            // longer than MAX_DELAY after the first change.
            let first = Instant::now();
            let mut deadline = first + quiet;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep_until(deadline) => break,
                    event = rx.recv() => match event {
                        None => return,
                        Some(Ok(event)) if watched.relevant(&event) => {
                            manifest_changed |= event.paths.contains(&watched.manifest);
                            deadline = (Instant::now() + quiet_after(&event)).min(first + MAX_DELAY);
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => tracing::warn!(error = %e, "file watcher error"),
                    },
                }
            }

            // A failed reload was logged and surfaced by the reloader; the old
            // routes stay.
            if let Ok(summary) = reloader.reload().await {
                tracing::info!(
                    modules = ?summary.modules,
                    problems = summary.problems.len(),
                    "reloaded after a change on disk"
                );
            }

            if manifest_changed {
                // Editors and `mv` replace the file: the watch followed the old
                // inode, so watch the path again.
                let _ = watcher.unwatch(&watched.manifest);
                manifest_watched = watch(&mut watcher, &watched.manifest, true);
            }
        }
    }
}

/// Starts watching `path` (non-recursive); `quiet`: do not log a failure.
fn watch(watcher: &mut RecommendedWatcher, path: &Path, quiet: bool) -> bool {
    match watcher.watch(path, RecursiveMode::NonRecursive) {
        Ok(()) => true,
        Err(e) => {
            if !quiet {
                tracing::warn!(path = %path.display(), error = %e, "cannot watch yet; trying again every second");
            }
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use notify::event::{CreateKind, ModifyKind, RenameMode};

    use super::*;

    fn watched() -> Watched {
        Watched {
            plugins_dir: PathBuf::from("/srv/app/plugins"),
            manifest: PathBuf::from("/srv/app/plugins.toml"),
        }
    }

    fn event(kind: EventKind, paths: &[&str]) -> Event {
        paths
            .iter()
            .fold(Event::new(kind), |e, p| e.add_path(PathBuf::from(p)))
    }

    #[test]
    fn wasm_files_and_the_manifest_count_temporary_files_and_reads_do_not() {
        let w = watched();
        let modify = EventKind::Modify(ModifyKind::Any);
        assert!(w.relevant(&event(modify, &["/srv/app/plugins/orders.wasm"])));
        assert!(w.relevant(&event(modify, &["/srv/app/plugins.toml"])));
        // `switchyard build` writes a partial file, then renames it.
        assert!(!w.relevant(&event(
            EventKind::Create(CreateKind::File),
            &["/srv/app/plugins/orders.wasm.partial"]
        )));
        assert!(w.relevant(&event(
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
            &[
                "/srv/app/plugins/orders.wasm.partial",
                "/srv/app/plugins/orders.wasm"
            ]
        )));
        // The host reading a module to load it must not trigger a reload.
        assert!(!w.relevant(&event(
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            &["/srv/app/plugins/orders.wasm"]
        )));
        assert!(w.relevant(&event(
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            &["/srv/app/plugins/orders.wasm"]
        )));
        // Neither the database beside the manifest nor a nested folder.
        assert!(!w.relevant(&event(modify, &["/srv/app/switchyard.db-wal"])));
        assert!(!w.relevant(&event(modify, &["/srv/app/plugins/old/x.wasm"])));
    }
}
