//! Accounts over HTTP: sign up, sign in and out, the session cookie, and
//! changing a password (docs/protocol.md, "Accounts over HTTP").
//!
//! Every refusal is `{"error":{"code","message"}}` with the status the code
//! implies ([`ApiError`]); causes are logged, never sent. The session
//! cookie is `HttpOnly` (page scripts never see the token), `SameSite=Lax`
//! (another site's forms and fetches do not carry it) and `Secure` when the
//! public URL is https. State-changing requests also pass the origin check
//! ([`require_same_origin`]), the WebSocket upgrade's rule.

use std::net::SocketAddr;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use crate::identity::accounts::SESSION_TTL;
use crate::identity::password::WeakPassword;
use crate::identity::{AccountError, Session, SignedIn};
use crate::storage::StorageError;

/// The session cookie's name.
pub const COOKIE: &str = "chatterpro_session";
/// Largest accepted request body: a name and a password or two (1024
/// bytes each at most) with room for JSON escapes.
pub const BODY_LIMIT: usize = 16 * 1024;

/// A refusal, as the client sees it.
#[derive(Debug)]
pub enum ApiError {
    BadRequest(String),
    InvalidName(String),
    WeakPassword(WeakPassword),
    NameTaken,
    BadCredentials,
    NotSignedIn,
    RateLimited(u64),
    BadOrigin,
    Unavailable,
    Internal,
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str, String) {
        match self {
            Self::BadRequest(why) => (StatusCode::BAD_REQUEST, "bad_request", why.clone()),
            Self::InvalidName(why) => (StatusCode::BAD_REQUEST, "invalid_name", why.clone()),
            Self::WeakPassword(why) => (StatusCode::BAD_REQUEST, "weak_password", why.to_string()),
            Self::NameTaken => (
                StatusCode::CONFLICT,
                "name_taken",
                "that name, or one that looks like it, is taken".into(),
            ),
            Self::BadCredentials => (
                StatusCode::UNAUTHORIZED,
                "bad_credentials",
                "wrong name or password".into(),
            ),
            Self::NotSignedIn => (
                StatusCode::UNAUTHORIZED,
                "not_signed_in",
                "not signed in".into(),
            ),
            Self::RateLimited(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many failed sign-ins; try again later".into(),
            ),
            Self::BadOrigin => (
                StatusCode::FORBIDDEN,
                "bad_origin",
                "requests from another site are refused".into(),
            ),
            Self::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the server is busy; try again shortly".into(),
            ),
            Self::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "something went wrong on the server".into(),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message) = self.parts();
        let mut response = (
            status,
            [(header::CACHE_CONTROL, "no-store")],
            Json(json!({"error": {"code": code, "message": message}})),
        )
            .into_response();
        let retry = match self {
            Self::RateLimited(secs) => Some(secs),
            Self::Unavailable => Some(1),
            _ => None,
        };
        if let Some(secs) = retry {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        response
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        tracing::error!(
            error = &e as &dyn std::error::Error,
            "accounts: storage failed"
        );
        if e.is_transient() {
            Self::Unavailable
        } else {
            Self::Internal
        }
    }
}

impl From<AccountError> for ApiError {
    fn from(e: AccountError) -> Self {
        match e {
            AccountError::InvalidName(why) => Self::InvalidName(format!("the name {why}")),
            AccountError::WeakPassword(why) => Self::WeakPassword(why),
            AccountError::NameTaken => Self::NameTaken,
            AccountError::BadCredentials => Self::BadCredentials,
            AccountError::RateLimited(retry) => Self::RateLimited(retry.secs()),
            AccountError::Busy => Self::Unavailable,
            AccountError::Storage(e) => e.into(),
            AccountError::Failed(reason) => {
                tracing::error!(%reason, "accounts: password hashing failed");
                Self::Internal
            }
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        Self::BadRequest(e.body_text())
    }
}

#[derive(Deserialize)]
pub struct Credentials {
    name: String,
    password: String,
}

#[derive(Deserialize)]
pub struct PasswordChange {
    current: String,
    new: String,
}

/// `Set-Cookie` for a new session, or (`None`) for removing it.
fn cookie(state: &AppState, token: Option<&str>) -> HeaderValue {
    let secure = if state.secure_cookies { "; Secure" } else { "" };
    let value = match token {
        Some(token) => format!(
            "{COOKIE}={token}; Max-Age={}; Path=/; HttpOnly; SameSite=Lax{secure}",
            SESSION_TTL.as_secs()
        ),
        None => format!("{COOKIE}=; Max-Age=0; Path=/; HttpOnly; SameSite=Lax{secure}"),
    };
    HeaderValue::try_from(value).expect("tokens are hex")
}

/// The session token the request's cookies carry, if any.
pub fn session_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|line| line.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
}

/// The request's valid session, or 401.
async fn current_session(state: &AppState, headers: &HeaderMap) -> Result<Session, ApiError> {
    let token = session_token(headers).ok_or(ApiError::NotSignedIn)?;
    state
        .accounts
        .session(token)
        .await?
        .ok_or(ApiError::NotSignedIn)
}

fn signed_in(state: &AppState, status: StatusCode, signed: SignedIn, admin: bool) -> Response {
    let body = if admin {
        json!({"name": signed.name, "admin": signed.admin})
    } else {
        json!({"name": signed.name})
    };
    (
        status,
        [
            (header::SET_COOKIE, cookie(state, Some(&signed.token))),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        Json(body),
    )
        .into_response()
}

/// An answer with no body that also removes the cookie.
fn signed_out(state: &AppState) -> Response {
    (
        StatusCode::NO_CONTENT,
        [(header::SET_COOKIE, cookie(state, None))],
    )
        .into_response()
}

/// `POST /api/accounts` `{"name","password"}` → `201 {"name"}`, signed in.
pub async fn sign_up(
    State(state): State<AppState>,
    body: Result<Json<Credentials>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body?;
    let signed = state.accounts.sign_up(&body.name, &body.password).await?;
    Ok(signed_in(&state, StatusCode::CREATED, signed, false))
}

/// `POST /api/session` `{"name","password"}` → `200 {"name","admin"}`, signed in.
pub async fn sign_in(
    State(state): State<AppState>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Json<Credentials>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body?;
    let client = state.trusted_proxies.client_ip(remote.ip(), &headers);
    let signed = state
        .accounts
        .sign_in(&body.name, &body.password, client)
        .await?;
    Ok(signed_in(&state, StatusCode::OK, signed, true))
}

/// `GET /api/session` → `200 {"name","admin"}` or 401.
pub async fn whoami(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let session = current_session(&state, &headers).await?;
    Ok((
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({"name": session.account.name, "admin": session.account.admin})),
    )
        .into_response())
}

/// `DELETE /api/session` → 204: this session revoked.
pub async fn sign_out(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let session = current_session(&state, &headers).await?;
    state.accounts.sign_out(&session).await?;
    Ok(signed_out(&state))
}

/// `DELETE /api/sessions` → 204: every session of the account revoked.
pub async fn sign_out_everywhere(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let session = current_session(&state, &headers).await?;
    state.accounts.sign_out_everywhere(&session).await?;
    Ok(signed_out(&state))
}

/// `POST /api/account/password` `{"current","new"}` → 204; every other
/// session revoked.
pub async fn change_password(
    State(state): State<AppState>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Json<PasswordChange>, JsonRejection>,
) -> Result<Response, ApiError> {
    let session = current_session(&state, &headers).await?;
    let Json(body) = body?;
    let client = state.trusted_proxies.client_ip(remote.ip(), &headers);
    state
        .accounts
        .change_password(&session, &body.current, &body.new, client)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Refuses a state-changing request (anything but `GET`, `HEAD` and
/// `OPTIONS`) under `/api/` whose `Origin` is not the server's own nor in
/// `--allowed-origins`: the WebSocket upgrade's rule (`http::origin`), so
/// a page on another site cannot sign people up, in or out.
pub async fn require_same_origin(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let safe = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    if !safe && request.uri().path().starts_with("/api/") && !state.origins.allow(request.headers())
    {
        return ApiError::BadOrigin.into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("a=1; b=2"));
        assert_eq!(session_token(&headers), None);
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("x=y;chatterpro_session=abc ; z=w"),
        );
        assert_eq!(session_token(&headers), Some("abc"));
        let mut prefixed = HeaderMap::new();
        prefixed.insert(
            header::COOKIE,
            HeaderValue::from_static("not_chatterpro_session=abc"),
        );
        assert_eq!(session_token(&prefixed), None);
    }

    #[test]
    fn errors_are_json_with_a_code_and_a_status() {
        let (status, code, _) = ApiError::NameTaken.parts();
        assert_eq!((status.as_u16(), code), (409, "name_taken"));
        let response = ApiError::RateLimited(42).into_response();
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers()[header::RETRY_AFTER], "42");
    }
}
