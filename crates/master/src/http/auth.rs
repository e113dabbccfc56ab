//! Who is calling: the [`Principal`] extractor every API handler (and
//! the dashboard's pages) takes. The token comes from
//! `Authorization: Bearer <token>`, or else from the `halite_token` cookie
//! (the dashboard's login sets it from a token, [`COOKIE`]; a browser's
//! `EventSource` cannot send headers). No token, or one the master does not
//! know: 401, and the handler never runs. Without a token, a client
//! certificate the TLS handshake verified (`api.client_ca`) stands for the
//! principal `access.certificates` maps its name to; a verified
//! certificate with no mapping: 403, naming it and the setting to add.
//!
//! What a principal may do is decided in `server::access`, the same rule
//! the control socket applies; [`refused`] writes a refusal to the audit
//! log and answers 403.

use axum::extract::FromRequestParts;
use axum::http::header::{AUTHORIZATION, COOKIE as COOKIE_HEADER};
use axum::http::request::Parts;

use crate::http::HttpState;
use crate::http::api::ApiError;
use crate::http::tls::Peer;
use crate::server::access::{Principal, Refusal};
use crate::server::audit::Entry;

/// The cookie that carries a token for the dashboard.
pub const COOKIE: &str = "halite_token";

/// The token a request carries: the bearer header first, then the cookie.
pub fn token(parts: &Parts) -> Option<String> {
    let bearer = parts
        .headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")))
        .map(|token| token.trim().to_owned());
    bearer.or_else(|| {
        parts
            .headers
            .get_all(COOKIE_HEADER)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(';'))
            .find_map(|pair| pair.trim().strip_prefix(COOKIE).and_then(|rest| rest.strip_prefix('=')))
            .map(|token| token.trim().to_owned())
    })
}

impl FromRequestParts<HttpState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &HttpState) -> Result<Principal, ApiError> {
        let Some(token) = token(parts) else {
            let certificate =
                parts.extensions.get::<axum::extract::ConnectInfo<Peer>>().and_then(|peer| peer.0.certificate.clone());
            if let Some(certificate) = certificate {
                return state.master.access.authenticate_certificate(&certificate.names()).map_err(|error| {
                    tracing::info!(%error, "API client certificate refused.");
                    ApiError::Forbidden(error.to_string())
                });
            }
            return Err(ApiError::Unauthenticated("no token: send `Authorization: Bearer <token>` (make one with `halite-master tokens create NAME --role ROLE`)".into()));
        };
        state
            .master
            .access
            .authenticate_current(&token)
            .await
            .map_err(|error| ApiError::Unauthenticated(error.to_string()))
    }
}

/// Writes `refusal` to the audit log (who, what, target, the request) and
/// returns the 403 to answer with.
pub async fn refused(
    state: &HttpState,
    principal: &Principal,
    what: &str,
    target: &str,
    cause: &str,
    refusal: Refusal,
) -> ApiError {
    tracing::info!(who = %principal.who, what, target, %refusal, "API call refused.");
    state
        .master
        .access
        .record(Entry {
            who: principal.who.clone(),
            what: what.to_owned(),
            target: target.to_owned(),
            cause: cause.to_owned(),
            result: format!("refused: {refusal}"),
        })
        .await;
    ApiError::Forbidden(refusal.to_string())
}

/// Writes a change to the audit log: `result` is `ok` or `failed: …`.
pub async fn audited(state: &HttpState, principal: &Principal, what: &str, target: &str, cause: &str, result: String) {
    state
        .master
        .access
        .record(Entry {
            who: principal.who.clone(),
            what: what.to_owned(),
            target: target.to_owned(),
            cause: cause.to_owned(),
            result,
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(headers: &[(&str, &str)]) -> Parts {
        let mut request = axum::http::Request::builder();
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(()).unwrap().into_parts().0
    }

    #[test]
    fn the_token_comes_from_the_header_then_the_cookie() {
        type Case<'a> = (&'a [(&'a str, &'a str)], Option<&'a str>);
        let cases: [Case; 5] = [
            (&[("authorization", "Bearer hlt_a")], Some("hlt_a")),
            (&[("cookie", "theme=dark; halite_token=hlt_b")], Some("hlt_b")),
            (&[("authorization", "Bearer hlt_a"), ("cookie", "halite_token=hlt_b")], Some("hlt_a")),
            (&[("authorization", "Basic eDp5")], None),
            (&[("cookie", "halite_tokens=x")], None),
        ];
        for (headers, wanted) in cases {
            assert_eq!(token(&parts(headers)).as_deref(), wanted, "{headers:?}");
        }
    }
}
