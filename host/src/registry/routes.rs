//! Resolving loaded modules into a routing table: each command topic to its
//! one owner (a second claimant is refused, the incumbent keeps it), each
//! event topic to its subscribers.

use std::sync::Arc;

use super::module::LoadedModule;
use super::{LoadProblem, Routes};

/// Builds the routing table. When two modules claim one command topic, the
/// module that owned it in `previous` keeps it; a refused module falls back
/// to its previous version if that still fits.
pub(super) fn resolve(
    mut loaded: Vec<Arc<LoadedModule>>,
    previous: Option<&Routes>,
    problems: &mut Vec<LoadProblem>,
) -> Routes {
    let challenger = |m: &LoadedModule| {
        previous.is_some_and(|p| {
            m.topics
                .iter()
                .any(|t| p.commands.get(t).is_some_and(|owner| owner.name != m.name))
        })
    };
    // Stable: incumbents first, otherwise load order.
    loaded.sort_by_key(|m| challenger(m));
    let mut routes = Routes::default();
    for module in loaded {
        let Some((topic, owner)) = conflict(&routes, &module) else {
            insert(&mut routes, module);
            continue;
        };
        problems.push(LoadProblem {
            module: module.name.clone(),
            file: module.file.clone(),
            message: format!(
                "command topic '{topic}' is already owned by module '{owner}'; refused"
            ),
        });
        if let Some(old) = previous.and_then(|p| p.modules.get(&module.name))
            && !Arc::ptr_eq(old, &module)
            && !routes.modules.contains_key(&old.name)
            && conflict(&routes, old).is_none()
        {
            insert(&mut routes, old.clone());
        }
    }
    routes
}

/// The first command topic of `module` that another module owns already.
fn conflict(routes: &Routes, module: &LoadedModule) -> Option<(String, String)> {
    module.topics.iter().find_map(|t| {
        routes
            .commands
            .get(t)
            .map(|owner| (t.clone(), owner.name.clone()))
    })
}

fn insert(routes: &mut Routes, module: Arc<LoadedModule>) {
    for topic in &module.topics {
        routes.commands.insert(topic.clone(), module.clone());
    }
    for topic in &module.subscribes {
        routes
            .subscribers
            .entry(topic.clone())
            .or_default()
            .push(module.clone());
    }
    routes.modules.insert(module.name.clone(), module);
}
