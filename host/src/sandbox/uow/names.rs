//! The collections, keys and prefixes a guest passes: bounded, and free of
//! what a store or a log line should never hold (control characters, NUL
//! included). Refusals quote at most a little of the guest's text.

use switchyard_model::grants::quote;

use super::RepoFailure;

/// Longest collection name a module may use, in bytes.
pub const MAX_COLLECTION_LEN: usize = 128;
/// Longest document key (and scan prefix), in bytes.
pub const MAX_KEY_LEN: usize = 512;

/// A collection name: 1 to [`MAX_COLLECTION_LEN`] of `[A-Za-z0-9._-]`.
pub(super) fn check_collection(collection: &str) -> Result<(), RepoFailure> {
    if collection.is_empty()
        || !collection
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(RepoFailure::Invalid(format!(
            "collection {:?} must be non-empty [A-Za-z0-9._-]",
            quote(collection)
        )));
    }
    if collection.len() > MAX_COLLECTION_LEN {
        return Err(RepoFailure::TooLarge(format!(
            "collection name over {MAX_COLLECTION_LEN} bytes"
        )));
    }
    Ok(())
}

/// A document key: 1 to [`MAX_KEY_LEN`] bytes, no control characters (the
/// WIT says an empty key is `invalid`).
pub(super) fn check_key(key: &str) -> Result<(), RepoFailure> {
    if key.is_empty() {
        return Err(RepoFailure::Invalid(
            "a document key must not be empty".into(),
        ));
    }
    check_prefix(key)
}

/// A scan prefix: like a key, but it may be empty (scan everything).
pub(super) fn check_prefix(prefix: &str) -> Result<(), RepoFailure> {
    if prefix.len() > MAX_KEY_LEN {
        return Err(RepoFailure::TooLarge(format!(
            "key of {} bytes; the limit is {MAX_KEY_LEN}",
            prefix.len()
        )));
    }
    if prefix.chars().any(char::is_control) {
        return Err(RepoFailure::Invalid(format!(
            "key {:?} holds a control character",
            quote(prefix)
        )));
    }
    Ok(())
}
