//! `switchyard:module/repository`: documents through the unit of work.

use crate::sandbox::bindings::switchyard::module::repository::{Document, Host, RepoError};
use crate::sandbox::state::HostState;
use crate::sandbox::uow::RepoFailure;
use switchyard_store as store;

impl From<RepoFailure> for RepoError {
    fn from(f: RepoFailure) -> Self {
        match f {
            RepoFailure::NotFound => RepoError::NotFound,
            RepoFailure::VersionConflict(v) => RepoError::VersionConflict(v),
            RepoFailure::NotPermitted(m) => RepoError::NotPermitted(m),
            RepoFailure::TooLarge(m) => RepoError::TooLarge(m),
            RepoFailure::Invalid(m) => RepoError::Invalid(m),
            RepoFailure::Unavailable(m) => RepoError::Unavailable(m),
        }
    }
}

fn to_wit(key: String, doc: store::Document) -> Document {
    Document {
        key,
        value: doc.value,
        version: doc.version,
    }
}

/// Says in the host's log that a call was refused: under the module's log
/// rate (a module refused in a loop cannot flood the log), and with the
/// failure's text, which quotes at most a little of what the guest passed.
fn refused<T>(state: &HostState, call: &str, r: Result<T, RepoFailure>) -> Result<T, RepoError> {
    r.map_err(|e| {
        let worth_saying = matches!(
            e,
            RepoFailure::NotPermitted(_) | RepoFailure::TooLarge(_) | RepoFailure::Invalid(_)
        );
        if worth_saying && state.uow.grants.may_log() {
            tracing::warn!(module = %state.uow.grants.name, call, error = ?e, "repository call refused");
        }
        e.into()
    })
}

impl Host for HostState {
    async fn get(
        &mut self,
        collection: String,
        key: String,
    ) -> Result<Option<Document>, RepoError> {
        let r = self.uow.get(&collection, &key).await;
        let doc = refused(self, "get", r)?;
        Ok(doc.map(|d| to_wit(key, d)))
    }

    async fn put(
        &mut self,
        collection: String,
        key: String,
        value: String,
        expected_version: Option<u64>,
    ) -> Result<u64, RepoError> {
        let r = self
            .uow
            .put(&collection, &key, value, expected_version)
            .await;
        refused(self, "put", r)
    }

    async fn delete(
        &mut self,
        collection: String,
        key: String,
        expected_version: Option<u64>,
    ) -> Result<bool, RepoError> {
        let r = self.uow.delete(&collection, &key, expected_version).await;
        refused(self, "delete", r)
    }

    async fn scan(
        &mut self,
        collection: String,
        prefix: String,
        limit: u32,
    ) -> Result<Vec<Document>, RepoError> {
        let r = self.uow.scan(&collection, &prefix, limit).await;
        let docs = refused(self, "scan", r)?;
        Ok(docs.into_iter().map(|(k, d)| to_wit(k, d)).collect())
    }

    async fn read(
        &mut self,
        owner: String,
        collection: String,
        key: String,
    ) -> Result<Option<Document>, RepoError> {
        let r = self.uow.read(&owner, &collection, &key).await;
        let doc = refused(self, "read", r)?;
        Ok(doc.map(|d| to_wit(key, d)))
    }

    async fn read_scan(
        &mut self,
        owner: String,
        collection: String,
        prefix: String,
        limit: u32,
    ) -> Result<Vec<Document>, RepoError> {
        let r = self
            .uow
            .read_scan(&owner, &collection, &prefix, limit)
            .await;
        let docs = refused(self, "read-scan", r)?;
        Ok(docs.into_iter().map(|(k, d)| to_wit(k, d)).collect())
    }
}
