//! JWT checks: HS256, `sub` a uuid, `exp` required and enforced, `aud` when configured.

use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use uuid::Uuid;

/// A verified token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub user_id: Uuid,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
}

/// Verifies tokens against the configured secret.
pub struct Auth {
    key: DecodingKey,
    validation: Validation,
}

impl Auth {
    pub fn new(secret: &str, audience: Option<&str>) -> Auth {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        match audience {
            Some(aud) => {
                // Without "aud" in the required list, a token lacking it passes.
                validation.set_required_spec_claims(&["exp", "sub", "aud"]);
                validation.set_audience(&[aud]);
            }
            None => {
                validation.set_required_spec_claims(&["exp", "sub"]);
                validation.validate_aud = false;
            }
        }
        Auth { key: DecodingKey::from_secret(secret.as_bytes()), validation }
    }

    /// Checks a token; the error text is safe to show the client.
    pub fn verify(&self, token: &str) -> Result<Identity, String> {
        let data = decode::<Claims>(token, &self.key, &self.validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind::*;
            match e.kind() {
                ExpiredSignature => "token expired".to_string(),
                InvalidSignature => "bad token signature".to_string(),
                InvalidAudience => "token audience not accepted".to_string(),
                MissingRequiredClaim(c) => format!("token lacks the {c} claim"),
                InvalidAlgorithm => "token must be signed with HS256".to_string(),
                _ => "malformed token".to_string(),
            }
        })?;
        let user_id = Uuid::parse_str(&data.claims.sub).map_err(|_| "token sub is not a uuid".to_string())?;
        Ok(Identity { user_id, exp: data.claims.exp })
    }
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

    fn now() -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
    }

    fn token(secret: &str, claims: serde_json::Value) -> String {
        encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
    }

    #[test]
    fn accepts_good_and_rejects_bad_tokens() {
        let auth = Auth::new("s3cret", None);
        let user = Uuid::new_v4();
        let good = token("s3cret", json!({"sub": user.to_string(), "exp": now() + 60}));
        assert_eq!(auth.verify(&good).unwrap().user_id, user);
        assert_eq!(
            auth.verify(&token("other", json!({"sub": user.to_string(), "exp": now() + 60}))).unwrap_err(),
            "bad token signature"
        );
        assert_eq!(
            auth.verify(&token("s3cret", json!({"sub": user.to_string(), "exp": now() - 5}))).unwrap_err(),
            "token expired"
        );
        assert!(auth.verify(&token("s3cret", json!({"sub": user.to_string()}))).is_err(), "exp is required");
        assert!(auth.verify(&token("s3cret", json!({"sub": "bob", "exp": now() + 60}))).is_err());
        assert!(auth.verify("garbage").is_err());
    }

    #[test]
    fn audience_is_checked_when_configured() {
        let auth = Auth::new("k", Some("chat"));
        let sub = Uuid::new_v4().to_string();
        assert!(auth.verify(&token("k", json!({"sub": sub, "exp": now() + 60, "aud": "chat"}))).is_ok());
        assert!(auth.verify(&token("k", json!({"sub": sub, "exp": now() + 60, "aud": "other"}))).is_err());
        assert!(auth.verify(&token("k", json!({"sub": sub, "exp": now() + 60}))).is_err());
    }
}
