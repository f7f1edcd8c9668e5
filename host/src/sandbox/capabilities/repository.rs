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

fn refused(state: &HostState, call: &str, e: &RepoFailure) {
    if matches!(e, RepoFailure::NotPermitted(_) | RepoFailure::TooLarge(_)) {
        tracing::warn!(module = %state.uow.grants.name, call, error = ?e, "repository call refused");
    }
}

impl Host for HostState {
    async fn get(
        &mut self,
        collection: String,
        key: String,
    ) -> Result<Option<Document>, RepoError> {
        let doc = self.uow.get(&collection, &key).await?;
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
        r.inspect_err(|e| refused(self, "put", e))
            .map_err(Into::into)
    }

    async fn delete(
        &mut self,
        collection: String,
        key: String,
        expected_version: Option<u64>,
    ) -> Result<bool, RepoError> {
        Ok(self.uow.delete(&collection, &key, expected_version).await?)
    }

    async fn scan(
        &mut self,
        collection: String,
        prefix: String,
        limit: u32,
    ) -> Result<Vec<Document>, RepoError> {
        let docs = self.uow.scan(&collection, &prefix, limit).await?;
        Ok(docs.into_iter().map(|(k, d)| to_wit(k, d)).collect())
    }

    async fn read(
        &mut self,
        owner: String,
        collection: String,
        key: String,
    ) -> Result<Option<Document>, RepoError> {
        let r = self.uow.read(&owner, &collection, &key).await;
        let doc = r.inspect_err(|e| refused(self, "read", e))?;
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
        let docs = r.inspect_err(|e| refused(self, "read-scan", e))?;
        Ok(docs.into_iter().map(|(k, d)| to_wit(k, d)).collect())
    }
}
