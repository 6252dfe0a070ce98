//! JWT checks: which tokens open a connection, and whose they are.
//!
//! A token is HS256-signed with `CHAT_RELAY_JWT_SECRET`, or RS256, ES256 or
//! EdDSA-signed with a key of the JWKS at `CHAT_RELAY_JWT_JWKS_URL`, found by
//! the token's `kid` (what Supabase Auth issues today). `sub` must be a uuid;
//! `exp` is required and enforced to the second; `nbf`, when present, may be
//! at most [`NBF_SKEW`] ahead of our clock; `aud` and `iss` must match when
//! configured. An `exp` further out than [`MAX_LIFETIME`] is refused like any
//! other bad claim (such a token is a mistake or an attack, and a deadline
//! that far overflows timers).
//!
//! The JWKS is fetched at start-up, refreshed every [`JWKS_REFRESH`], and
//! fetched again when a token names an unknown `kid` (a key rotation), at
//! most once per [`JWKS_MIN_INTERVAL`] so a stream of made-up kids cannot
//! turn the relay into a load generator for the auth server.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How far ahead of our clock a token's `nbf` may be (clock skew).
pub const NBF_SKEW: u64 = 5;
/// Tokens that claim to live longer than this are refused.
pub const MAX_LIFETIME: u64 = 100 * 366 * 24 * 3600;
/// Regular JWKS refresh.
pub const JWKS_REFRESH: Duration = Duration::from_secs(600);
/// Least time between two JWKS fetches caused by unknown kids.
pub const JWKS_MIN_INTERVAL: Duration = Duration::from_secs(30);
const JWKS_TIMEOUT: Duration = Duration::from_secs(5);

/// A verified token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub user_id: Uuid,
    /// Expiry, seconds since the Unix epoch (at most [`MAX_LIFETIME`] ahead).
    pub exp: u64,
}

impl Identity {
    /// Time left until expiry (zero when expired).
    pub fn remaining(&self) -> Duration {
        Duration::from_secs(self.exp.saturating_sub(now()))
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    nbf: Option<u64>,
}

/// What the relay accepts, from the command line.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    pub secret: Option<String>,
    pub jwks_url: Option<String>,
    pub audience: Option<String>,
    pub issuer: Option<String>,
}

/// Why the configuration cannot work.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error("set CHAT_RELAY_JWT_SECRET (HS256) or CHAT_RELAY_JWT_JWKS_URL (RS256, ES256, EdDSA), or both")]
    NoKeys,
    #[error("CHAT_RELAY_JWT_SECRET is empty")]
    EmptySecret,
    #[error("CHAT_RELAY_JWT_JWKS_URL {0:?} is not an http(s) URL")]
    BadUrl(String),
    #[error("cannot build the JWKS client: {0}")]
    Client(String),
}

/// Verifies tokens.
pub struct Auth {
    hmac: Option<DecodingKey>,
    jwks: Option<Jwks>,
    audience: Option<String>,
    issuer: Option<String>,
}

impl Auth {
    pub fn new(cfg: &AuthConfig) -> Result<Auth, AuthConfigError> {
        let hmac = match cfg.secret.as_deref() {
            Some("") => return Err(AuthConfigError::EmptySecret),
            Some(s) => Some(DecodingKey::from_secret(s.as_bytes())),
            None => None,
        };
        let jwks = match cfg.jwks_url.as_deref() {
            Some(url) => Some(Jwks::new(url)?),
            None => None,
        };
        if hmac.is_none() && jwks.is_none() {
            return Err(AuthConfigError::NoKeys);
        }
        Ok(Auth { hmac, jwks, audience: cfg.audience.clone(), issuer: cfg.issuer.clone() })
    }

    /// Keeps the JWKS fresh until `stop` (no-op without a JWKS URL).
    pub async fn refresh_jwks(self: Arc<Self>, stop: CancellationToken) {
        let Some(jwks) = &self.jwks else { return };
        let mut backoff = Duration::from_secs(1);
        loop {
            let wait = match jwks.fetch().await {
                Ok(n) => {
                    tracing::debug!(keys = n, url = %jwks.url, "JWKS refreshed");
                    backoff = Duration::from_secs(1);
                    JWKS_REFRESH
                }
                Err(e) => {
                    tracing::error!(url = %jwks.url, error = %e, "cannot fetch the JWKS; tokens signed with its keys are refused until it can be read");
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                    backoff
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    /// Checks a token; the error text is safe to show the client.
    pub async fn verify(&self, token: &str) -> Result<Identity, String> {
        let header = decode_header(token).map_err(|_| "malformed token".to_string())?;
        let (key, alg) = match header.alg {
            Algorithm::HS256 => match &self.hmac {
                Some(k) => (k.clone(), Algorithm::HS256),
                None => return Err("HS256 tokens are not accepted here".into()),
            },
            Algorithm::RS256 | Algorithm::ES256 | Algorithm::EdDSA => {
                let Some(jwks) = &self.jwks else {
                    return Err(format!("{:?} tokens are not accepted here (no JWKS configured)", header.alg));
                };
                let kid = header.kid.as_deref().ok_or("token has no kid")?;
                let key = jwks.key(kid).await.ok_or("token signed with an unknown key")?;
                if key.alg != header.alg {
                    return Err("token algorithm does not match its key".into());
                }
                (key.key, key.alg)
            }
            other => return Err(format!("token algorithm {other:?} is not accepted")),
        };
        self.check(token, &key, alg)
    }

    fn check(&self, token: &str, key: &DecodingKey, alg: Algorithm) -> Result<Identity, String> {
        let mut validation = Validation::new(alg);
        validation.leeway = 0;
        validation.validate_nbf = false; // checked below, with a small skew
        let mut required = vec!["exp", "sub"];
        match &self.audience {
            // Without "aud" in the required list, a token lacking it passes.
            Some(aud) => {
                required.push("aud");
                validation.set_audience(&[aud]);
            }
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            required.push("iss");
            validation.set_issuer(&[iss]);
        }
        validation.set_required_spec_claims(&required);
        let data = decode::<Claims>(token, key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind::*;
            match e.kind() {
                ExpiredSignature => "token expired".to_string(),
                InvalidSignature => "bad token signature".to_string(),
                InvalidAudience => "token audience not accepted".to_string(),
                InvalidIssuer => "token issuer not accepted".to_string(),
                MissingRequiredClaim(c) => format!("token lacks the {c} claim"),
                InvalidAlgorithm => "token algorithm not accepted".to_string(),
                _ => "malformed token".to_string(),
            }
        })?;
        let now = now();
        if data.claims.exp > now.saturating_add(MAX_LIFETIME) {
            return Err("token exp is out of range".into());
        }
        if data.claims.nbf.is_some_and(|nbf| nbf > now.saturating_add(NBF_SKEW)) {
            return Err("token not valid yet (nbf)".into());
        }
        let user_id = Uuid::parse_str(&data.claims.sub).map_err(|_| "token sub is not a uuid".to_string())?;
        Ok(Identity { user_id, exp: data.claims.exp })
    }
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[derive(Clone)]
struct VerifyKey {
    key: DecodingKey,
    alg: Algorithm,
}

/// The keys of a JWKS URL, by kid.
struct Jwks {
    url: String,
    client: reqwest::Client,
    keys: RwLock<Arc<HashMap<String, VerifyKey>>>,
    /// When an unknown kid last caused a fetch; serialises such fetches.
    last_on_demand: tokio::sync::Mutex<Option<Instant>>,
}

impl Jwks {
    fn new(url: &str) -> Result<Jwks, AuthConfigError> {
        let parsed = url::Url::parse(url).map_err(|_| AuthConfigError::BadUrl(url.into()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(AuthConfigError::BadUrl(url.into()));
        }
        let client = reqwest::Client::builder()
            .timeout(JWKS_TIMEOUT)
            .build()
            .map_err(|e| AuthConfigError::Client(e.to_string()))?;
        Ok(Jwks {
            url: url.into(),
            client,
            keys: RwLock::new(Arc::new(HashMap::new())),
            last_on_demand: tokio::sync::Mutex::new(None),
        })
    }

    fn cached(&self, kid: &str) -> Option<VerifyKey> {
        self.keys.read().ok().and_then(|k| k.get(kid).cloned())
    }

    /// The key for `kid`, fetching the set again (rate-limited) when unknown.
    async fn key(&self, kid: &str) -> Option<VerifyKey> {
        if let Some(k) = self.cached(kid) {
            return Some(k);
        }
        let mut last = self.last_on_demand.lock().await;
        // Another caller may have fetched while we waited for the lock.
        if let Some(k) = self.cached(kid) {
            return Some(k);
        }
        if last.is_some_and(|t| t.elapsed() < JWKS_MIN_INTERVAL) {
            return None;
        }
        *last = Some(Instant::now());
        if let Err(e) = self.fetch().await {
            tracing::warn!(url = %self.url, error = %e, "JWKS fetch for an unknown kid failed");
        }
        self.cached(kid)
    }

    /// Fetches the set and replaces the cache; returns how many keys it holds.
    async fn fetch(&self) -> Result<usize, String> {
        let response = self.client.get(&self.url).send().await.map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status()));
        }
        let body = response.bytes().await.map_err(|e| e.to_string())?;
        let set: JwkSet = serde_json::from_slice(&body).map_err(|e| format!("not a JWKS: {e}"))?;
        let keys = usable_keys(&set);
        let n = keys.len();
        if let Ok(mut k) = self.keys.write() {
            *k = Arc::new(keys);
        }
        Ok(n)
    }
}

/// The signing keys of a set we can verify with, by kid.
fn usable_keys(set: &JwkSet) -> HashMap<String, VerifyKey> {
    let mut out = HashMap::new();
    for jwk in &set.keys {
        let Some(kid) = jwk.common.key_id.clone() else { continue };
        if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
            continue;
        }
        // The algorithm the key is for: declared, else implied by its type.
        let alg = match (&jwk.common.key_algorithm, &jwk.algorithm) {
            (Some(KeyAlgorithm::RS256), AlgorithmParameters::RSA(_)) | (None, AlgorithmParameters::RSA(_)) => {
                Algorithm::RS256
            }
            (Some(KeyAlgorithm::ES256), AlgorithmParameters::EllipticCurve(p))
            | (None, AlgorithmParameters::EllipticCurve(p))
                if p.curve == EllipticCurve::P256 =>
            {
                Algorithm::ES256
            }
            (Some(KeyAlgorithm::EdDSA), AlgorithmParameters::OctetKeyPair(p))
            | (None, AlgorithmParameters::OctetKeyPair(p))
                if p.curve == EllipticCurve::Ed25519 =>
            {
                Algorithm::EdDSA
            }
            _ => {
                tracing::debug!(kid, "skipping a JWKS key of an algorithm the relay does not accept");
                continue;
            }
        };
        match DecodingKey::from_jwk(jwk) {
            Ok(key) => {
                out.insert(kid, VerifyKey { key, alg });
            }
            Err(e) => tracing::warn!(kid, error = %e, "skipping an unreadable JWKS key"),
        }
    }
    out
}

/// Signs an HS256 token for `user_id` valid for `ttl_secs` (for the demo and
/// the benchmarks; production tokens come from the app's auth service).
pub fn issue(secret: &str, user_id: Uuid, ttl_secs: i64) -> Result<String, jsonwebtoken::errors::Error> {
    let exp = chrono::Utc::now().timestamp() + ttl_secs;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &serde_json::json!({"sub": user_id, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    fn token(secret: &str, claims: serde_json::Value) -> String {
        encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
    }

    fn auth(audience: Option<&str>, issuer: Option<&str>) -> Auth {
        Auth::new(&AuthConfig {
            secret: Some("s3cret".into()),
            audience: audience.map(Into::into),
            issuer: issuer.map(Into::into),
            ..Default::default()
        })
        .unwrap()
    }

    #[tokio::test]
    async fn accepts_good_and_rejects_bad_tokens() {
        let auth = auth(None, None);
        let user = Uuid::new_v4();
        let good = token("s3cret", json!({"sub": user.to_string(), "exp": now() + 60}));
        assert_eq!(auth.verify(&good).await.unwrap().user_id, user);
        assert_eq!(
            auth.verify(&token("other", json!({"sub": user.to_string(), "exp": now() + 60}))).await.unwrap_err(),
            "bad token signature"
        );
        assert_eq!(
            auth.verify(&token("s3cret", json!({"sub": user.to_string(), "exp": now() - 5}))).await.unwrap_err(),
            "token expired"
        );
        assert!(auth.verify(&token("s3cret", json!({"sub": user.to_string()}))).await.is_err(), "exp is required");
        assert!(auth.verify(&token("s3cret", json!({"sub": "bob", "exp": now() + 60}))).await.is_err());
        assert!(auth.verify("garbage").await.is_err());
    }

    #[tokio::test]
    async fn nbf_and_absurd_exp() {
        let auth = auth(None, None);
        let sub = Uuid::new_v4().to_string();
        let t = |c| token("s3cret", c);
        assert_eq!(
            auth.verify(&t(json!({"sub": sub, "exp": now() + 600, "nbf": now() + 60}))).await.unwrap_err(),
            "token not valid yet (nbf)"
        );
        assert!(auth.verify(&t(json!({"sub": sub, "exp": now() + 600, "nbf": now() + 2}))).await.is_ok(), "skew");
        assert!(auth.verify(&t(json!({"sub": sub, "exp": now() + 600, "nbf": now() - 60}))).await.is_ok());
        for exp in [json!(i64::MAX), json!(u64::MAX), json!(now() + MAX_LIFETIME + 10)] {
            assert!(auth.verify(&t(json!({"sub": sub, "exp": exp}))).await.is_err(), "{exp}");
        }
        let far = auth.verify(&t(json!({"sub": sub, "exp": now() + 10 * 365 * 86400}))).await.unwrap();
        assert!(far.remaining() > Duration::from_secs(9 * 365 * 86400), "a ten-year token is fine");
    }

    #[tokio::test]
    async fn audience_and_issuer_are_checked_when_configured() {
        let auth = auth(Some("chat"), Some("https://auth.example/v1"));
        let sub = Uuid::new_v4().to_string();
        let t = |c| token("s3cret", c);
        let iss = "https://auth.example/v1";
        assert!(auth.verify(&t(json!({"sub": sub, "exp": now() + 60, "aud": "chat", "iss": iss}))).await.is_ok());
        assert!(auth.verify(&t(json!({"sub": sub, "exp": now() + 60, "aud": "other", "iss": iss}))).await.is_err());
        assert!(auth.verify(&t(json!({"sub": sub, "exp": now() + 60, "iss": iss}))).await.is_err());
        assert_eq!(
            auth.verify(&t(json!({"sub": sub, "exp": now() + 60, "aud": "chat", "iss": "https://evil"})))
                .await
                .unwrap_err(),
            "token issuer not accepted"
        );
        assert!(auth.verify(&t(json!({"sub": sub, "exp": now() + 60, "aud": "chat"}))).await.is_err(), "iss required");
    }

    #[test]
    fn configuration_needs_keys() {
        assert!(matches!(Auth::new(&AuthConfig::default()), Err(AuthConfigError::NoKeys)));
        assert!(matches!(
            Auth::new(&AuthConfig { secret: Some(String::new()), ..Default::default() }),
            Err(AuthConfigError::EmptySecret)
        ));
        assert!(matches!(
            Auth::new(&AuthConfig { jwks_url: Some("ftp://x".into()), ..Default::default() }),
            Err(AuthConfigError::BadUrl(_))
        ));
    }
}
