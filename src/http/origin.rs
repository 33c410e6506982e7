//! Which web origins may open a WebSocket: the server's public origin
//! (`--public-url`) and `--allowed-origins`, compared in full — scheme, host
//! and port.
//!
//! Never the request's own `Host` header: a DNS-rebinding page at
//! `http://evil.example:P`, once its name resolves to this server, sends
//! `Host: evil.example:P` and `Origin: http://evil.example:P`, which agree.
//! Only a list fixed at start tells the server's real origin from that.

use std::net::{IpAddr, SocketAddr};

use axum::http::{HeaderMap, header};

/// The origins allowed, each serialized as browsers send it.
#[derive(Debug, Clone)]
pub struct AllowedOrigins(Vec<String>);

impl AllowedOrigins {
    /// `public` is `--public-url` (already in serialized form); without it
    /// (allowed for loopback binds only, see `Config::validate`) the server's
    /// own origins are the address it is bound to and `localhost` at the
    /// same port. `extra` is `--allowed-origins`.
    pub fn new(public: Option<&str>, bound: SocketAddr, extra: &[String]) -> Self {
        let mut origins = match public {
            Some(public) => vec![public.to_owned()],
            None => {
                let host = match bound.ip() {
                    IpAddr::V4(v4) => v4.to_string(),
                    IpAddr::V6(v6) => format!("[{v6}]"),
                };
                let port = bound.port();
                vec![
                    format!("http://{host}:{port}"),
                    format!("http://localhost:{port}"),
                ]
            }
        };
        origins.extend(extra.iter().cloned());
        Self(origins)
    }

    /// The origins, as compared.
    pub fn list(&self) -> &[String] {
        &self.0
    }

    /// Browsers always send `Origin` on WebSocket upgrades; a page on another
    /// site must not be able to open a socket with this site's cookies
    /// (cross-site WebSocket hijacking). Clients without `Origin` are not
    /// browsers and are allowed.
    pub fn allow(&self, headers: &HeaderMap) -> bool {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return true;
        };
        // Normalized as the allowed ones were (case, default port), so
        // `HTTP://Host:80` is `http://host`; `null` and other opaque
        // origins normalize to "null" and never match.
        let Some(origin) = origin
            .to_str()
            .ok()
            .and_then(|o| url::Url::parse(o).ok())
            .map(|url| url.origin().ascii_serialization())
        else {
            return false;
        };
        self.0.contains(&origin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with_origin(origin: Option<&'static str>, host: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static(host));
        if let Some(o) = origin {
            h.insert(header::ORIGIN, HeaderValue::from_static(o));
        }
        h
    }

    fn loopback() -> AllowedOrigins {
        AllowedOrigins::new(None, "127.0.0.1:3000".parse().unwrap(), &[])
    }

    #[test]
    fn the_bound_address_and_localhost_are_a_loopback_servers_origins() {
        let origins = loopback();
        assert!(origins.allow(&with_origin(None, "127.0.0.1:3000")));
        assert!(origins.allow(&with_origin(Some("http://127.0.0.1:3000"), "x")));
        assert!(origins.allow(&with_origin(Some("http://localhost:3000"), "x")));
        assert!(!origins.allow(&with_origin(Some("http://localhost:3001"), "x")));
        let v6 = AllowedOrigins::new(None, "[::1]:3000".parse().unwrap(), &[]);
        assert!(v6.allow(&with_origin(Some("http://[::1]:3000"), "x")));
    }

    #[test]
    fn a_host_header_that_agrees_with_a_foreign_origin_does_not_make_it_ours() {
        // DNS rebinding: the attacker's name now resolves to this server.
        let h = with_origin(Some("http://evil.example:3000"), "evil.example:3000");
        assert!(!loopback().allow(&h));
    }

    #[test]
    fn the_scheme_counts() {
        let h = with_origin(Some("https://127.0.0.1:3000"), "127.0.0.1:3000");
        assert!(!loopback().allow(&h));
        let public = AllowedOrigins::new(
            Some("https://chat.example"),
            "0.0.0.0:3000".parse().unwrap(),
            &[],
        );
        assert!(public.allow(&with_origin(Some("https://chat.example"), "x")));
        assert!(public.allow(&with_origin(Some("HTTPS://Chat.Example:443"), "x")));
        assert!(!public.allow(&with_origin(Some("http://chat.example"), "x")));
        assert!(!public.allow(&with_origin(Some("https://chat.example:8443"), "x")));
    }

    #[test]
    fn cross_origin_is_refused_unless_listed() {
        let h = with_origin(Some("http://evil.example"), "127.0.0.1:3000");
        assert!(!loopback().allow(&h));
        let listed = AllowedOrigins::new(
            None,
            "127.0.0.1:3000".parse().unwrap(),
            &["http://evil.example".to_owned()],
        );
        assert!(listed.allow(&h));
        let suffixed = with_origin(Some("http://127.0.0.1:3000.evil.example"), "127.0.0.1:3000");
        assert!(!loopback().allow(&suffixed));
        assert!(!loopback().allow(&with_origin(Some("null"), "127.0.0.1:3000")));
    }
}
