//! API keys and tenants: creation, revocation and per-request authentication. Secrets are stored
//! only as argon2 hashes; each secret embeds its non-secret key id, so verifying one costs a single
//! indexed lookup and a single argon2 run, and a verified secret is then cached under its SHA-256 so
//! the hot path runs argon2 once per key per process, not once per request.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand::rngs::OsRng;
use rand::{Rng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{LedgerError, Result};
use crate::policy::{Budget, RateLimits};
use crate::store::{KeyRecord, LedgerStore};
use crate::time::now_ms;

/// Every Orchard secret starts with this, so leaked keys are recognisable by secret scanners.
pub const SECRET_PREFIX: &str = "sk-orch-";
/// Tenant that plain `--api-key` values (and unauthenticated servers) are accounted to.
pub const ANONYMOUS_TENANT: &str = "anonymous";
const LOOKUP_LEN: usize = 12;
const SECRET_LEN: usize = 32;
const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A key's public identifier (`key_<12 base62>` for stored keys, `static-<8 hex>` for `--api-key`
/// values). Safe to log and to show in reports.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct KeyId(pub String);

impl KeyId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The outcome of a successful [`KeyStore::authenticate`]: who is calling and what policy applies,
/// so the limiter needs no database access of its own.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthedKey {
    pub key_id: KeyId,
    pub tenant: String,
    /// May read usage of every tenant (`GET /v1/usage`).
    pub admin: bool,
    /// A plain `--api-key` value rather than a stored key.
    pub is_static: bool,
    pub budget: Option<Budget>,
    pub limits: Option<RateLimits>,
    pub tenant_budget: Option<Budget>,
    pub tenant_limits: Option<RateLimits>,
}

/// Why a secret was refused. `Unknown` and `Revoked` map to HTTP 401; `Unavailable` (the database
/// could not be asked) to 503, so an outage never looks like a bad key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    #[error("invalid API key")]
    Unknown,
    #[error("API key {key_id} has been revoked")]
    Revoked { key_id: KeyId },
    #[error("key store unavailable: {reason}")]
    Unavailable { reason: String },
}

/// What to create; [`KeyStore::create_key`] covers the common case.
#[derive(Debug, Clone, Default)]
pub struct NewKey {
    pub tenant: String,
    pub label: String,
    pub admin: bool,
    pub budget: Option<Budget>,
    pub limits: Option<RateLimits>,
}

/// A stored key as listed to an operator (never the secret or its hash).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeyInfo {
    pub key_id: KeyId,
    pub tenant: String,
    pub label: String,
    pub admin: bool,
    pub created_ms: i64,
    pub revoked_ms: Option<i64>,
    pub budget: Option<Budget>,
    pub limits: Option<RateLimits>,
    /// The first characters of the secret (`sk-orch-<lookup>…`), to tell keys apart.
    pub secret_prefix: String,
}

#[derive(Clone)]
struct CacheEntry {
    outcome: std::result::Result<AuthedKey, AuthError>,
    fetched: Instant,
}

/// Creates, lists, revokes and authenticates keys. Share it behind an `Arc`; `authenticate` is
/// cheap after the first success for a given secret.
pub struct KeyStore {
    store: Arc<dyn LedgerStore>,
    cache: RwLock<HashMap<[u8; 32], CacheEntry>>,
    static_keys: RwLock<HashMap<[u8; 32], AuthedKey>>,
    ttl: Duration,
}

fn sha256(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

fn random_base62(n: usize) -> String {
    let mut rng = OsRng;
    (0..n)
        .map(|_| BASE62[rng.gen_range(0..BASE62.len())] as char)
        .collect()
}

/// The key id embedded in a well-formed secret.
fn key_id_of(secret: &str) -> Option<String> {
    let body = secret.strip_prefix(SECRET_PREFIX)?;
    if body.len() != LOOKUP_LEN + SECRET_LEN || !body.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    Some(format!("key_{}", &body[..LOOKUP_LEN]))
}

/// The key id a plain `--api-key` value is accounted under: stable across restarts and nodes, and
/// reveals nothing usable about the key.
pub fn static_key_id(secret: &str) -> KeyId {
    let h = sha256(secret);
    KeyId(format!(
        "static-{:02x}{:02x}{:02x}{:02x}",
        h[0], h[1], h[2], h[3]
    ))
}

impl KeyStore {
    /// Cached authentications are re-read from the database after 60 s, so a revocation made on
    /// another node of a fleet takes effect within that time (revoking through this `KeyStore`
    /// takes effect at once).
    pub fn new(store: Arc<dyn LedgerStore>) -> Self {
        Self::with_cache_ttl(store, Duration::from_secs(60))
    }

    pub fn with_cache_ttl(store: Arc<dyn LedgerStore>, ttl: Duration) -> Self {
        KeyStore {
            store,
            cache: RwLock::new(HashMap::new()),
            static_keys: RwLock::new(HashMap::new()),
            ttl,
        }
    }

    /// Accepts a plain secret (the server's `--api-key`) as the anonymous tenant, no budget or
    /// limits. Returns the key id its usage is recorded under.
    pub fn add_static_key(&self, secret: &str, admin: bool) -> KeyId {
        let key_id = static_key_id(secret);
        let authed = AuthedKey {
            key_id: key_id.clone(),
            tenant: ANONYMOUS_TENANT.to_owned(),
            admin,
            is_static: true,
            budget: None,
            limits: None,
            tenant_budget: None,
            tenant_limits: None,
        };
        self.static_keys
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(sha256(secret), authed);
        key_id
    }

    /// Creates a key for `tenant` (creating the tenant if new). Returns its id and the plaintext
    /// secret, which is shown once and never stored.
    pub fn create_key(
        &self,
        tenant: &str,
        budget: Option<Budget>,
        limits: Option<RateLimits>,
    ) -> Result<(KeyId, String)> {
        self.create_key_with(NewKey {
            tenant: tenant.to_owned(),
            budget,
            limits,
            ..NewKey::default()
        })
    }

    pub fn create_key_with(&self, new: NewKey) -> Result<(KeyId, String)> {
        let tenant = new.tenant.trim();
        if tenant.is_empty() || tenant.len() > 128 || tenant.chars().any(char::is_control) {
            return Err(LedgerError::InvalidInput {
                field: "tenant",
                reason: "must be 1..=128 printable characters".to_owned(),
            });
        }
        let now = now_ms();
        self.store.ensure_tenant(tenant, now)?;
        // 12 base62 characters make a collision between ids vanishingly unlikely, but a fleet
        // creating keys concurrently must still never hand out one id twice: the primary key
        // decides, and we retry with a fresh id.
        let mut last_err = None;
        for _ in 0..4 {
            let lookup = random_base62(LOOKUP_LEN);
            let secret = format!("{SECRET_PREFIX}{lookup}{}", random_base62(SECRET_LEN));
            let key_id = format!("key_{lookup}");
            if self.store.get_key(&key_id)?.is_some() {
                continue;
            }
            let record = KeyRecord {
                key_id: key_id.clone(),
                tenant: tenant.to_owned(),
                secret_hash: hash_secret(&secret)?,
                label: new.label.clone(),
                admin: new.admin,
                created_ms: now,
                revoked_ms: None,
                budget: new.budget,
                limits: new.limits,
            };
            match self.store.insert_key(&record) {
                Ok(()) => return Ok((KeyId(key_id), secret)),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or(LedgerError::KeyHash {
            reason: "could not find a free key id".to_owned(),
        }))
    }

    pub fn list_keys(&self) -> Result<Vec<KeyInfo>> {
        Ok(self
            .store
            .list_keys()?
            .into_iter()
            .map(|k| KeyInfo {
                secret_prefix: format!("{SECRET_PREFIX}{}…", k.key_id.trim_start_matches("key_")),
                key_id: KeyId(k.key_id),
                tenant: k.tenant,
                label: k.label,
                admin: k.admin,
                created_ms: k.created_ms,
                revoked_ms: k.revoked_ms,
                budget: k.budget,
                limits: k.limits,
            })
            .collect())
    }

    /// Revokes a key and drops it from this process's cache at once. Errors if the id is unknown.
    pub fn revoke_key(&self, key_id: &str) -> Result<()> {
        if !self.store.revoke_key(key_id, now_ms())? {
            return Err(LedgerError::UnknownKeyId {
                key_id: key_id.to_owned(),
            });
        }
        self.cache
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, e| match &e.outcome {
                Ok(k) => k.key_id.as_str() != key_id,
                Err(AuthError::Revoked { key_id: k }) => k.as_str() != key_id,
                Err(_) => true,
            });
        Ok(())
    }

    /// Sets a tenant-wide budget and limits, and drops cached authentications so they apply now.
    pub fn set_tenant_policy(
        &self,
        tenant: &str,
        budget: Option<Budget>,
        limits: Option<RateLimits>,
    ) -> Result<()> {
        self.store
            .set_tenant_policy(tenant, budget, limits, now_ms())?;
        self.cache
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        Ok(())
    }

    /// Checks a bearer secret. Runs argon2 only the first time a given secret is seen (and again
    /// never: after the cache TTL only the key's row is re-read, for revocation and policy).
    pub fn authenticate(&self, secret: &str) -> std::result::Result<AuthedKey, AuthError> {
        let digest = sha256(secret);
        if let Some(k) = self
            .static_keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&digest)
        {
            return Ok(k.clone());
        }
        let cached = self
            .cache
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&digest)
            .cloned();
        if let Some(entry) = &cached {
            if entry.fetched.elapsed() < self.ttl {
                return entry.outcome.clone();
            }
        }
        let Some(key_id) = key_id_of(secret) else {
            return Err(AuthError::Unknown);
        };
        let unavailable = |e: LedgerError| AuthError::Unavailable {
            reason: e.to_string(),
        };
        let Some(record) = self.store.get_key(&key_id).map_err(unavailable)? else {
            return Err(AuthError::Unknown);
        };
        // A stale cache entry proves this exact secret verified against this key before (hashes
        // never change), so only the policy and revocation state need refreshing.
        let previously_verified = matches!(
            &cached,
            Some(CacheEntry { outcome: Ok(k), .. }) if k.key_id.as_str() == key_id
        ) || matches!(
            &cached,
            Some(CacheEntry { outcome: Err(AuthError::Revoked { key_id: k }), .. }) if k.as_str() == key_id
        );
        if !previously_verified && !verify_secret(secret, &record.secret_hash) {
            return Err(AuthError::Unknown);
        }
        let outcome = if record.revoked_ms.is_some() {
            Err(AuthError::Revoked {
                key_id: KeyId(record.key_id.clone()),
            })
        } else {
            let tenant = self.store.get_tenant(&record.tenant).map_err(unavailable)?;
            Ok(AuthedKey {
                key_id: KeyId(record.key_id),
                tenant: record.tenant,
                admin: record.admin,
                is_static: false,
                budget: record.budget,
                limits: record.limits,
                tenant_budget: tenant.as_ref().and_then(|t| t.budget),
                tenant_limits: tenant.and_then(|t| t.limits),
            })
        };
        self.cache
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                digest,
                CacheEntry {
                    outcome: outcome.clone(),
                    fetched: Instant::now(),
                },
            );
        outcome
    }
}

fn hash_secret(secret: &str) -> Result<String> {
    let mut salt = [0u8; 16];
    OsRng.fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| LedgerError::KeyHash {
        reason: e.to_string(),
    })?;
    Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| LedgerError::KeyHash {
            reason: e.to_string(),
        })
}

fn verify_secret(secret: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(h) => Argon2::default()
            .verify_password(secret.as_bytes(), &h)
            .is_ok(),
        // A corrupt stored hash can never match; refusing is the safe answer.
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_format_round_trips_to_key_id() {
        let lookup = random_base62(LOOKUP_LEN);
        let secret = format!("{SECRET_PREFIX}{lookup}{}", random_base62(SECRET_LEN));
        assert_eq!(key_id_of(&secret), Some(format!("key_{lookup}")));
        assert_eq!(key_id_of("sk-orch-short"), None);
        assert_eq!(key_id_of(&secret.replace("sk-orch-", "sk-other")), None);
        let h = hash_secret(&secret).unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_secret(&secret, &h));
        assert!(!verify_secret(&format!("{secret}x"), &h));
        assert!(!verify_secret(&secret, "not a phc string"));
    }

    #[test]
    fn static_key_ids_are_stable_and_short() {
        let a = static_key_id("hunter2");
        assert_eq!(a, static_key_id("hunter2"));
        assert_ne!(a, static_key_id("hunter3"));
        assert_eq!(a.as_str().len(), "static-".len() + 8);
    }
}
