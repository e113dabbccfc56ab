//! The dashboard at `/` (issue #17 item 4): server-rendered pages on the
//! API's listener, behind the same [`Principal`] extractor (a token from
//! the `halite_token` cookie; `http::auth::COOKIE`). The pages are the
//! dashboard engineer's; this module is where they register.
//!
//! [`Principal`]: crate::server::access::Principal

use axum::Router;

use crate::http::HttpState;

/// The dashboard's routes, merged beside the API's by `http::router`.
pub fn router() -> Router<HttpState> {
    Router::new()
}
