//! E2B API keys: made by `banger e2b key create`, shown once, stored as
//! SHA-256 digests. A key belongs to the user who made it; the sandboxes
//! made with it are that user's VMs.

use rusqlite::{params, OptionalExtension};
use sha2::{Digest, Sha256};

use super::E2bError;
use crate::store::Store;

/// The prefix every banger E2B key has (E2B's own keys start `e2b_`).
pub const KEY_PREFIX: &str = "e2b_";

/// A stored key, without its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub id: String,
    pub name: String,
    pub owner_uid: u32,
    /// The key's first characters, to recognise it.
    pub prefix: String,
    pub created_at: String,
}

/// A fresh secret with [`KEY_PREFIX`] (256 random bits). Pure but for
/// randomness.
pub fn new_secret(prefix: &str) -> String {
    format!(
        "{prefix}{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// The stored form of a secret. Pure.
pub fn digest(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Makes a key for `owner_uid`; returns it and its secret (shown once).
pub fn create(store: &Store, name: &str, owner_uid: u32) -> Result<(Key, String), E2bError> {
    crate::names::validate_name("key", name)?;
    let secret = new_secret(KEY_PREFIX);
    let key = Key {
        id: format!("k-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]),
        name: name.into(),
        owner_uid,
        prefix: secret[..KEY_PREFIX.len() + 6].to_string(),
        created_at: chrono::Utc::now().to_rfc3339(),
    };
    store.write(|tx| -> Result<(), E2bError> {
        let taken: Option<String> = tx
            .query_row(
                "SELECT id FROM e2b_keys WHERE name = ?1 AND owner_uid = ?2",
                params![name, owner_uid],
                |r| r.get(0),
            )
            .optional()?;
        if taken.is_some() {
            return Err(E2bError::Invalid {
                what: "key name",
                reason: format!("you already have a key named {name:?}"),
            });
        }
        tx.execute(
            "INSERT INTO e2b_keys (id, name, owner_uid, sha256, prefix, created_at) \
            VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                key.id,
                key.name,
                key.owner_uid,
                digest(&secret),
                key.prefix,
                key.created_at
            ],
        )?;
        Ok(())
    })?;
    Ok((key, secret))
}

fn key_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Key> {
    Ok(Key {
        id: r.get(0)?,
        name: r.get(1)?,
        owner_uid: r.get(2)?,
        prefix: r.get(3)?,
        created_at: r.get(4)?,
    })
}

/// The keys of `owner_uid` (every key when `None`).
pub fn list(store: &Store, owner_uid: Option<u32>) -> Result<Vec<Key>, E2bError> {
    Ok(store.read(|c| -> rusqlite::Result<Vec<Key>> {
        let mut stmt = c.prepare(
            "SELECT id, name, owner_uid, prefix, created_at FROM e2b_keys \
            WHERE ?1 IS NULL OR owner_uid = ?1 ORDER BY created_at",
        )?;
        let rows = stmt.query_map([owner_uid], key_from_row)?;
        rows.collect()
    })?)
}

/// Removes the key `id_or_name` of `owner_uid` (any owner's when `None`).
pub fn remove(store: &Store, id_or_name: &str, owner_uid: Option<u32>) -> Result<(), E2bError> {
    let n = store.write(|tx| {
        tx.execute(
            "DELETE FROM e2b_keys WHERE (id = ?1 OR name = ?1) AND (?2 IS NULL OR owner_uid = ?2)",
            params![id_or_name, owner_uid],
        )
    })?;
    if n == 0 {
        return Err(E2bError::NotFound {
            what: "key",
            name: id_or_name.into(),
        });
    }
    Ok(())
}

/// The key whose secret is `secret`, if any.
pub fn authenticate(store: &Store, secret: &str) -> Result<Option<Key>, E2bError> {
    if !secret.starts_with(KEY_PREFIX) || secret.len() > 200 {
        return Ok(None);
    }
    Ok(store.read(|c| {
        c.query_row(
            "SELECT id, name, owner_uid, prefix, created_at FROM e2b_keys WHERE sha256 = ?1",
            [digest(secret)],
            key_from_row,
        )
        .optional()
    })?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_long_random_and_stored_as_digests() {
        let (a, b) = (new_secret(KEY_PREFIX), new_secret(KEY_PREFIX));
        assert!(a.starts_with("e2b_") && a.len() == 4 + 64, "{a}");
        assert_ne!(a, b);
        assert_eq!(digest(&a).len(), 64);
        assert_ne!(digest(&a), digest(&b));
    }

    #[test]
    fn keys_are_made_found_listed_per_owner_and_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("db")).expect("store");
        let (k, secret) = create(&store, "ci", 1000).expect("create");
        assert!(create(&store, "ci", 1000).is_err(), "one name per owner");
        create(&store, "ci", 1001).expect("another owner may");
        assert_eq!(
            authenticate(&store, &secret).expect("auth"),
            Some(k.clone())
        );
        assert_eq!(authenticate(&store, "e2b_nope").expect("auth"), None);
        assert_eq!(list(&store, Some(1000)).expect("ls").len(), 1);
        assert_eq!(list(&store, None).expect("ls").len(), 2);
        assert!(remove(&store, "ci", Some(1002)).is_err(), "not theirs");
        remove(&store, "ci", Some(1000)).expect("rm");
        assert_eq!(authenticate(&store, &secret).expect("auth"), None);
    }
}
