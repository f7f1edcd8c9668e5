//! The host's rules on names and sizes, as the in-memory host keeps them:
//! collections, keys, prefixes, topics, and the default per-message budgets
//! of a module (`max-write-bytes`, `max-scan-bytes` in plugins.toml).

use crate::RepoError;
use crate::imports::repository::Document;

/// Longest collection name, in bytes (as the host).
pub const MAX_COLLECTION_LEN: usize = 128;
/// Longest document key (and scan prefix), in bytes (as the host).
pub const MAX_KEY_LEN: usize = 512;
/// Largest document value, in bytes of JSON (as the host).
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// Most documents one message may write (as the host).
pub const MAX_WRITES: usize = 1_000;
/// Most rows one scan returns, whatever the module asks for (as the host).
pub const MAX_SCAN_LIMIT: u32 = 1_000;
/// Most events one message may emit (as the host).
pub const MAX_EVENTS: usize = 1_000;
/// Longest topic or subtopic, in bytes (SPEC §3).
pub const MAX_TOPIC_LEN: usize = 255;
/// Bytes one message may buffer in writes and events together (collection,
/// key and value of each write; topic, subtopic, body and headers of each
/// event): the host's default `max-write-bytes`.
pub const MAX_WRITE_BYTES: usize = 8 * 1024 * 1024;
/// Bytes of keys and values one scan may return: the host's default
/// `max-scan-bytes`.
pub const MAX_SCAN_BYTES: usize = 4 * 1024 * 1024;

/// A collection name: 1 to [`MAX_COLLECTION_LEN`] of `[A-Za-z0-9._-]`.
pub(super) fn check_collection(collection: &str) -> Result<(), RepoError> {
    if collection.is_empty()
        || !collection
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(RepoError::Invalid(format!(
            "collection {collection:?} must be non-empty [A-Za-z0-9._-]"
        )));
    }
    if collection.len() > MAX_COLLECTION_LEN {
        return Err(RepoError::TooLarge(format!(
            "collection name over {MAX_COLLECTION_LEN} bytes"
        )));
    }
    Ok(())
}

/// A document key: 1 to [`MAX_KEY_LEN`] bytes without control characters
/// (NUL included).
pub(super) fn check_key(key: &str) -> Result<(), RepoError> {
    if key.is_empty() {
        return Err(RepoError::Invalid(
            "a document key must not be empty".into(),
        ));
    }
    check_prefix(key)
}

/// A scan prefix: like a key, but it may be empty.
pub(super) fn check_prefix(prefix: &str) -> Result<(), RepoError> {
    if prefix.len() > MAX_KEY_LEN {
        return Err(RepoError::TooLarge(format!(
            "key of {} bytes; the limit is {MAX_KEY_LEN}",
            prefix.len()
        )));
    }
    if prefix.chars().any(char::is_control) {
        return Err(RepoError::Invalid(format!(
            "key {prefix:?} holds a control character"
        )));
    }
    Ok(())
}

/// A topic or subtopic: 1 to [`MAX_TOPIC_LEN`] of `[A-Za-z0-9._-]`.
pub(super) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TOPIC_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The `too-large` of a message whose writes and events would hold `total`
/// bytes, if that is over [`MAX_WRITE_BYTES`].
pub(super) fn check_write_bytes(total: usize) -> Result<(), String> {
    if total > MAX_WRITE_BYTES {
        return Err(format!(
            "this message's writes and events would hold {total} bytes; \
             its budget is {MAX_WRITE_BYTES} (max-write-bytes)"
        ));
    }
    Ok(())
}

/// A scan's answer if it fits [`MAX_SCAN_BYTES`]; else `too-large` with how
/// many of its first documents fit, as the host says it.
pub(super) fn fit_scan(docs: Vec<Document>, what: &str) -> Result<Vec<Document>, RepoError> {
    let mut total = 0usize;
    let fit = docs
        .iter()
        .take_while(|d| {
            total += d.key.len() + d.value.len();
            total <= MAX_SCAN_BYTES
        })
        .count();
    if fit == docs.len() {
        return Ok(docs);
    }
    Err(RepoError::TooLarge(format!(
        "a scan of {what} would return more than {MAX_SCAN_BYTES} bytes (max-scan-bytes): \
         the first {fit} documents fit; ask for at most {fit}, or narrow the prefix"
    )))
}
