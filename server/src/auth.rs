//! Access tokens: who may sync which library, when the server runs with a secret.
//!
//! # Token format
//!
//! ```text
//! tm1.<claims>.<signature>
//! ```
//!
//! - `claims` is base64url (no padding) of a JSON object:
//!   `{"library": "demo", "user": "alice", "exp": 1767225600}`. `library` and `user` are
//!   required strings; `exp` (optional) is the expiry in Unix seconds.
//! - `signature` is base64url (no padding) of HMAC-SHA256(secret, `"tm1." + claims`), i.e.
//!   over the token's text up to the last dot, so neither the version nor the claims can be
//!   altered without the secret.
//!
//! Tokens are minted by whoever holds the secret (an app backend, or
//! `tidemark-server token --secret S --library L --user U`) and checked here, statelessly:
//! the server keeps no user table. A token grants sync of exactly one library.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use thiserror::Error;

const PREFIX: &str = "tm1";

/// What a token asserts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub library: String,
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
}

/// Why a token was refused. Messages are safe to send to the client.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("this server requires a token: pass `token` in the sync options")]
    Missing,
    #[error("the token is malformed: expected tm1.<claims>.<signature>")]
    Malformed,
    #[error("the token's signature is invalid: it was not issued with this server's secret")]
    BadSignature,
    #[error("the token expired; get a new one")]
    Expired,
    #[error("the token is for library {token:?}, not {wanted:?}")]
    WrongLibrary { token: String, wanted: String },
}

impl AuthError {
    /// The protocol error code for this refusal.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::WrongLibrary { .. } => "FORBIDDEN",
            // Not UNAUTHORIZED: a client that can renew its token does so at once.
            AuthError::Expired => "SYNC_TOKEN_EXPIRED",
            _ => "UNAUTHORIZED",
        }
    }
}

fn mac(secret: &[u8], signed: &str) -> Hmac<Sha256> {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    m.update(signed.as_bytes());
    m
}

/// Mints a token for `claims`.
pub fn issue(secret: &[u8], claims: &Claims) -> String {
    let json = serde_json::to_vec(claims).expect("claims serialize");
    let signed = format!("{PREFIX}.{}", URL_SAFE_NO_PAD.encode(json));
    let sig = mac(secret, &signed).finalize().into_bytes();
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig))
}

/// Checks a token's signature and expiry (in constant time for the signature) and that it
/// grants `library`. Returns its claims.
pub fn verify(secret: &[u8], token: Option<&str>, library: &str) -> Result<Claims, AuthError> {
    let token = token.ok_or(AuthError::Missing)?;
    let (signed, sig) = token.rsplit_once('.').ok_or(AuthError::Malformed)?;
    let (prefix, claims) = signed.split_once('.').ok_or(AuthError::Malformed)?;
    if prefix != PREFIX {
        return Err(AuthError::Malformed);
    }
    let sig = URL_SAFE_NO_PAD.decode(sig).map_err(|_| AuthError::Malformed)?;
    mac(secret, signed).verify_slice(&sig).map_err(|_| AuthError::BadSignature)?;
    let json = URL_SAFE_NO_PAD.decode(claims).map_err(|_| AuthError::Malformed)?;
    let claims: Claims = serde_json::from_slice(&json).map_err(|_| AuthError::Malformed)?;
    if let Some(exp) = claims.exp {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if now >= exp {
            return Err(AuthError::Expired);
        }
    }
    if claims.library != library {
        return Err(AuthError::WrongLibrary { token: claims.library, wanted: library.to_string() });
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: Option<u64>) -> Claims {
        Claims { library: "demo".into(), user: "alice".into(), exp }
    }

    #[test]
    fn round_trip() {
        let t = issue(b"s3cret", &claims(None));
        assert!(t.starts_with("tm1."));
        assert_eq!(verify(b"s3cret", Some(&t), "demo"), Ok(claims(None)));
    }

    #[test]
    fn refusals() {
        let t = issue(b"s3cret", &claims(None));
        assert_eq!(verify(b"other", Some(&t), "demo"), Err(AuthError::BadSignature));
        assert_eq!(verify(b"s3cret", None, "demo"), Err(AuthError::Missing));
        assert!(matches!(verify(b"s3cret", Some(&t), "other"), Err(AuthError::WrongLibrary { .. })));
        assert_eq!(verify(b"s3cret", Some("garbage"), "demo"), Err(AuthError::Malformed));
        assert_eq!(verify(b"s3cret", Some("tm1.@@.@@"), "demo"), Err(AuthError::Malformed));
        assert_eq!(verify(b"s3cret", Some(&issue(b"s3cret", &claims(Some(1)))), "demo"), Err(AuthError::Expired));
        let future = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 3600;
        assert!(verify(b"s3cret", Some(&issue(b"s3cret", &claims(Some(future)))), "demo").is_ok());
        // Swapping in other claims breaks the signature.
        let other = issue(b"s3cret", &Claims { library: "x".into(), ..claims(None) });
        let (_, sig) = t.rsplit_once('.').unwrap();
        let (signed, _) = other.rsplit_once('.').unwrap();
        assert_eq!(verify(b"s3cret", Some(&format!("{signed}.{sig}")), "x"), Err(AuthError::BadSignature));
    }
}
