//! The backend inside a component: every call is a WIT import of the
//! `switchyard:module` world, answered by the host within the message's unit
//! of work.

use crate::EmitError;
use crate::Imports;
use crate::imports::{
    clock, config, events, log,
    repository::{self, Document, RepoError},
};

/// The host's imports; no state of its own.
#[derive(Clone, Default)]
pub(crate) struct Host;

impl Imports for Host {
    fn get(&self, collection: &str, key: &str) -> Result<Option<Document>, RepoError> {
        repository::get(collection, key)
    }

    fn put(
        &self,
        collection: &str,
        key: &str,
        value: &str,
        expected: Option<u64>,
    ) -> Result<u64, RepoError> {
        repository::put(collection, key, value, expected)
    }

    fn delete(
        &self,
        collection: &str,
        key: &str,
        expected: Option<u64>,
    ) -> Result<bool, RepoError> {
        repository::delete(collection, key, expected)
    }

    fn scan(&self, collection: &str, prefix: &str, limit: u32) -> Result<Vec<Document>, RepoError> {
        repository::scan(collection, prefix, limit)
    }

    fn read(
        &self,
        owner: &str,
        collection: &str,
        key: &str,
    ) -> Result<Option<Document>, RepoError> {
        repository::read(owner, collection, key)
    }

    fn read_scan(
        &self,
        owner: &str,
        collection: &str,
        prefix: &str,
        limit: u32,
    ) -> Result<Vec<Document>, RepoError> {
        repository::read_scan(owner, collection, prefix, limit)
    }

    fn emit(
        &self,
        topic: &str,
        subtopic: &str,
        body: &str,
        headers: &[(String, String)],
    ) -> Result<String, EmitError> {
        events::emit(topic, subtopic, body, headers)
    }

    fn config(&self, key: &str) -> Option<String> {
        config::get(key)
    }

    fn config_all(&self) -> Vec<(String, String)> {
        config::get_all()
    }

    fn log(&self, level: log::Level, message: &str) {
        log::log(level, message);
    }

    fn now_ms(&self) -> u64 {
        clock::now_ms()
    }
}
