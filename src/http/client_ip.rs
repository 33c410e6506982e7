//! Which address a WebSocket upgrade comes from, for the per-address limits.
//!
//! Behind a reverse proxy every connection comes from the proxy, so the
//! per-address limits would count all clients as one. A proxy listed in
//! `--trusted-proxies` appends the address it saw to `X-Forwarded-For`.
//! Reading that header from the right, past the hops we trust, gives the
//! first address that no trusted proxy vouched away: the client. Entries
//! further left were written by the client itself and could be anything,
//! so they are never used. A connection from an address not trusted is
//! keyed by that address and its header is ignored.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use axum::http::HeaderMap;
use ipnet::IpNet;

/// Hops of `X-Forwarded-For` read at most, from the right: a longer chain of
/// trusted proxies is not a deployment, it is a header built to cost us time.
const MAX_HOPS: usize = 16;

/// The networks whose `X-Forwarded-For` is believed (empty: nobody's).
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(networks: Vec<IpNet>) -> Self {
        Self(networks)
    }

    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client's address: `peer` itself unless `peer` is a trusted proxy,
    /// else the rightmost `X-Forwarded-For` hop that is not trusted. If the
    /// header is missing, malformed where it is read, or lists only trusted
    /// hops, the last trusted hop reached is the answer: the limits then
    /// count those clients together, which is the safe side. Hops left of
    /// the answer are never looked at, so nothing a client writes there
    /// (not even bytes that are not text) changes the answer.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let mut client = peer.to_canonical();
        if self.0.is_empty() || !self.contains(client) {
            return client;
        }
        // Several header lines are one list, in order (RFC 9110 §5.3): a
        // proxy that adds a line of its own adds it after the client's.
        let lines: Vec<&[u8]> = headers
            .get_all("x-forwarded-for")
            .iter()
            .map(|value| value.as_bytes())
            .collect();
        let hops = lines
            .into_iter()
            .rev()
            .flat_map(|line| line.rsplit(|&b| b == b','));
        for hop in hops.take(MAX_HOPS) {
            let Some(ip) = parse_hop(hop) else {
                return client;
            };
            client = ip;
            if !self.contains(ip) {
                return client;
            }
        }
        client
    }
}

/// One hop: an address, possibly bracketed or with a port (`1.2.3.4:80`,
/// `[::1]`, `[::1]:80`).
fn parse_hop(hop: &[u8]) -> Option<IpAddr> {
    let hop = std::str::from_utf8(hop).ok()?.trim();
    let unbracketed = hop
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .unwrap_or(hop);
    IpAddr::from_str(unbracketed)
        .or_else(|_| SocketAddr::from_str(hop).map(|addr| addr.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_network;
    use axum::http::HeaderValue;

    fn trusting(entries: &[&str]) -> TrustedProxies {
        TrustedProxies::new(entries.iter().map(|e| parse_network(e).unwrap()).collect())
    }

    fn forwarded(lines: &[&str]) -> HeaderMap {
        forwarded_bytes(&lines.iter().map(|l| l.as_bytes()).collect::<Vec<_>>())
    }

    fn forwarded_bytes(lines: &[&[u8]]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append("x-forwarded-for", HeaderValue::from_bytes(line).unwrap());
        }
        headers
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn nobody_is_trusted_by_default() {
        let proxies = TrustedProxies::default();
        let headers = forwarded(&["203.0.113.7"]);
        assert_eq!(
            proxies.client_ip(ip("127.0.0.1"), &headers),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn an_untrusted_peer_is_its_own_address_whatever_it_claims() {
        let proxies = trusting(&["10.0.0.0/8"]);
        let headers = forwarded(&["203.0.113.7"]);
        assert_eq!(
            proxies.client_ip(ip("192.0.2.1"), &headers),
            ip("192.0.2.1")
        );
    }

    #[test]
    fn a_trusted_proxy_names_the_client() {
        let proxies = trusting(&["127.0.0.1"]);
        let headers = forwarded(&["203.0.113.7"]);
        assert_eq!(
            proxies.client_ip(ip("127.0.0.1"), &headers),
            ip("203.0.113.7")
        );
    }

    #[test]
    fn what_the_client_wrote_left_of_the_proxys_entry_is_ignored() {
        // The client sent "X-Forwarded-For: 198.51.100.1"; the proxy appended
        // the address it saw.
        let proxies = trusting(&["127.0.0.1"]);
        let headers = forwarded(&["198.51.100.1, 203.0.113.7"]);
        assert_eq!(
            proxies.client_ip(ip("127.0.0.1"), &headers),
            ip("203.0.113.7")
        );
    }

    #[test]
    fn a_line_the_proxy_added_after_the_clients_own_line_wins() {
        // HAProxy's `option forwardfor` adds a line instead of appending.
        let proxies = trusting(&["127.0.0.1"]);
        let headers = forwarded(&["198.51.100.1", "203.0.113.7"]);
        assert_eq!(
            proxies.client_ip(ip("127.0.0.1"), &headers),
            ip("203.0.113.7")
        );
    }

    #[test]
    fn bytes_that_are_not_text_left_of_the_client_change_nothing() {
        let proxies = trusting(&["127.0.0.1"]);
        let peer = ip("127.0.0.1");
        let same_line = forwarded_bytes(&[b"\xff\xfe, 203.0.113.7"]);
        assert_eq!(proxies.client_ip(peer, &same_line), ip("203.0.113.7"));
        let own_line = forwarded_bytes(&[b"\xff", b"203.0.113.7"]);
        assert_eq!(proxies.client_ip(peer, &own_line), ip("203.0.113.7"));
        // Where the answer would be, they are malformed: the proxy's own.
        let at_the_end = forwarded_bytes(&[b"203.0.113.7, \xff"]);
        assert_eq!(proxies.client_ip(peer, &at_the_end), peer);
    }

    #[test]
    fn a_chain_of_trusted_proxies_is_walked_to_the_first_untrusted_hop() {
        let proxies = trusting(&["127.0.0.1", "10.0.0.0/8"]);
        let headers = forwarded(&["198.51.100.1, 203.0.113.7", "10.1.2.3"]);
        assert_eq!(
            proxies.client_ip(ip("127.0.0.1"), &headers),
            ip("203.0.113.7")
        );
    }

    #[test]
    fn without_a_usable_header_the_last_trusted_hop_is_the_client() {
        let proxies = trusting(&["127.0.0.1", "10.0.0.0/8"]);
        let peer = ip("127.0.0.1");
        assert_eq!(proxies.client_ip(peer, &HeaderMap::new()), peer);
        assert_eq!(
            proxies.client_ip(peer, &forwarded(&["not an address"])),
            peer
        );
        assert_eq!(
            proxies.client_ip(peer, &forwarded(&["garbage, 10.0.0.9"])),
            ip("10.0.0.9")
        );
        assert_eq!(
            proxies.client_ip(peer, &forwarded(&["10.0.0.9"])),
            ip("10.0.0.9")
        );
    }

    #[test]
    fn only_so_many_hops_are_read() {
        let proxies = trusting(&["10.0.0.0/8"]);
        let long = std::iter::once("203.0.113.7".to_owned())
            .chain((0..40).map(|i| format!("10.0.0.{i}")))
            .collect::<Vec<_>>()
            .join(", ");
        let client = proxies.client_ip(ip("10.0.0.1"), &forwarded(&[&long]));
        assert!(proxies.contains(client), "{client}");
    }

    #[test]
    fn ports_brackets_and_mapped_addresses_are_understood() {
        let proxies = trusting(&["::1", "127.0.0.1"]);
        assert_eq!(
            proxies.client_ip(ip("::1"), &forwarded(&["[2001:db8::5]:4711"])),
            ip("2001:db8::5")
        );
        assert_eq!(
            proxies.client_ip(ip("::1"), &forwarded(&["[2001:db8::6]"])),
            ip("2001:db8::6")
        );
        assert_eq!(
            proxies.client_ip(ip("::ffff:127.0.0.1"), &forwarded(&["203.0.113.7:80"])),
            ip("203.0.113.7")
        );
    }
}
