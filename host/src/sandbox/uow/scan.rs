//! Scans by key prefix, with this message's writes applied, under the
//! module's `max-scan-bytes`: the store stops loading once the documents
//! pass the budget, and a scan whose answer would not fit returns
//! `too-large` saying how many of its first documents do, so the module can
//! ask for that many (the WIT has no cursor to page with; a silently short
//! answer would read as "no more documents").

use std::collections::BTreeMap;

use switchyard_store::{Document, scan_size};

use super::names::{check_collection, check_prefix};
use super::{MAX_SCAN_LIMIT, RepoFailure, UnitOfWork};

type Rows = Vec<(String, Document)>;

impl UnitOfWork {
    /// This module's documents by key prefix, with this message's writes applied.
    pub async fn scan(
        &mut self,
        collection: &str,
        prefix: &str,
        limit: u32,
    ) -> Result<Rows, RepoFailure> {
        check_collection(collection)?;
        check_prefix(prefix)?;
        // A guest-chosen limit: clamp it so one call cannot read the world.
        let limit = limit.min(MAX_SCAN_LIMIT);
        let in_scan = |(c, k): &(String, String)| c == collection && k.starts_with(prefix);
        // Buffered deletes may hide stored rows: fetch as many more.
        let pending = self.writes.keys().filter(|id| in_scan(id)).count();
        let fetch = limit.saturating_add(u32::try_from(pending).unwrap_or(u32::MAX));
        let budget = self.budgets().scan_bytes;
        let module = self.grants.name.clone();
        let fetched = (self.store()?)
            .scan(&module, collection, prefix, fetch, budget)
            .await;
        let stored = fetched.map_err(|e| self.store_failed(e))?;
        let cut = cut_at(&stored, budget);
        let mut merged: BTreeMap<String, Document> = stored.into_iter().collect();
        for (id, p) in self.writes.iter().filter(|(id, _)| in_scan(id)) {
            match p.document() {
                Some(doc) => merged.insert(id.1.clone(), doc),
                None => merged.remove(&id.1),
            };
        }
        let rows = merged.into_iter().take(limit as usize).collect();
        within_budget(rows, limit, cut.as_deref(), budget, collection)
    }

    /// Scans another module's collection, if `reads` grants it.
    pub async fn read_scan(
        &mut self,
        owner: &str,
        collection: &str,
        prefix: &str,
        limit: u32,
    ) -> Result<Rows, RepoFailure> {
        if owner == self.grants.name {
            return self.scan(collection, prefix, limit).await;
        }
        self.check_read_grant(owner)?;
        check_collection(collection)?;
        check_prefix(prefix)?;
        let limit = limit.min(MAX_SCAN_LIMIT);
        let budget = self.budgets().scan_bytes;
        let fetched = (self.store()?)
            .scan(owner, collection, prefix, limit, budget)
            .await;
        let stored = fetched.map_err(|e| self.store_failed(e))?;
        let cut = cut_at(&stored, budget);
        let what = format!("{owner}/{collection}");
        within_budget(stored, limit, cut.as_deref(), budget, &what)
    }
}

/// The last key the store loaded if it stopped at the byte budget (what it
/// returned totals more than the budget): rows past it are unknown.
fn cut_at(stored: &[(String, Document)], budget: usize) -> Option<String> {
    let total = stored
        .iter()
        .fold(0usize, |sum, (k, d)| sum.saturating_add(scan_size(k, d)));
    if total > budget {
        stored.last().map(|(k, _)| k.clone())
    } else {
        None
    }
}

/// `rows` if they are all known (not past where the store stopped) and fit
/// the budget; else `too-large` with how many of the first rows fit.
fn within_budget(
    rows: Rows,
    limit: u32,
    cut: Option<&str>,
    budget: usize,
    what: &str,
) -> Result<Rows, RepoFailure> {
    let mut total = 0usize;
    let mut fit = 0usize;
    for (key, doc) in &rows {
        total = total.saturating_add(scan_size(key, doc));
        if total > budget || cut.is_some_and(|c| key.as_str() > c) {
            break;
        }
        fit += 1;
    }
    // Cut by the store and short of the limit: more rows may follow.
    let complete = cut.is_none() || rows.len() == limit as usize;
    if fit == rows.len() && complete {
        return Ok(rows);
    }
    Err(RepoFailure::TooLarge(format!(
        "a scan of {what} would return more than {budget} bytes (max-scan-bytes): \
         the first {fit} documents fit; ask for at most {fit}, or narrow the prefix"
    )))
}
