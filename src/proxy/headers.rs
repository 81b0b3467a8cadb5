//! The header rules of a forwarding hop, as RFC 9110 (7.6) and the
//! X-Forwarded-* convention set them: hop-by-hop fields (those named in
//! `Connection`, and the fixed set below) stop here in both directions; an
//! `Upgrade` request keeps its `Upgrade` and `Connection: upgrade` so the
//! worker can switch protocols; the forwarded fields are believed only from
//! a trusted peer and otherwise replaced. Pure functions over header maps.

use std::net::IpAddr;

use hyper::HeaderMap;
use hyper::header::{self, HeaderName, HeaderValue};

use crate::values::AllowIps;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Whether the request asks to switch protocols (`Connection: upgrade`
/// with an `Upgrade` field), as a WebSocket handshake does.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_tokens(headers).any(|t| t == "upgrade")
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = String> + '_ {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
}

/// Drops the hop-by-hop fields; with `upgrade`, the two that carry the
/// protocol switch are put back.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let upgrade_to = headers.get(header::UPGRADE).cloned();
    let named: Vec<String> = connection_tokens(headers).collect();
    for name in named {
        if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
            headers.remove(name);
        }
    }
    for name in [
        header::CONNECTION,
        KEEP_ALIVE,
        PROXY_CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    if upgrade && let Some(to) = upgrade_to {
        headers.insert(header::UPGRADE, to);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Sets X-Forwarded-For, -Proto and -Host for the worker. From a trusted
/// peer the incoming ones are kept (its address appended to the `For`
/// chain); from anyone else they, and `Forwarded`, are replaced. `tls`:
/// the client reached corral over TLS.
pub fn set_forwarded(headers: &mut HeaderMap, peer: Option<IpAddr>, tls: bool, allow: &AllowIps) {
    let trusted = peer.is_some_and(|p| allow.allows(p));
    let peer_text = peer.map(|p| p.to_string());
    if trusted {
        let chain = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(", ");
        let value = match (&peer_text, chain.is_empty()) {
            (Some(p), true) => p.clone(),
            (Some(p), false) => format!("{chain}, {p}"),
            (None, _) => chain,
        };
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(X_FORWARDED_FOR, v);
        }
    } else {
        headers.remove(&X_FORWARDED_FOR);
        headers.remove(&FORWARDED);
        headers.remove(&X_FORWARDED_PROTO);
        headers.remove(&X_FORWARDED_HOST);
        if let Some(v) = peer_text.and_then(|p| HeaderValue::from_str(&p).ok()) {
            headers.insert(X_FORWARDED_FOR, v);
        }
    }
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        let proto = if tls { "https" } else { "http" };
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if !headers.contains_key(&X_FORWARDED_HOST)
        && let Some(host) = headers.get(header::HOST).cloned()
    {
        headers.insert(X_FORWARDED_HOST, host);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn get<'a>(h: &'a HeaderMap, k: &str) -> Option<&'a str> {
        h.get(k).map(|v| v.to_str().unwrap())
    }

    #[test]
    fn hop_by_hop_fields_and_those_named_in_connection_stop_here() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("accept", "*/*"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(get(&h, "accept"), Some("*/*"));
    }

    #[test]
    fn an_upgrade_keeps_what_switches_the_protocol() {
        let mut h = map(&[
            ("connection", "Upgrade, keep-alive"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "abc"),
        ]);
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(get(&h, "upgrade"), Some("websocket"));
        assert_eq!(get(&h, "connection"), Some("upgrade"));
        assert_eq!(get(&h, "sec-websocket-key"), Some("abc"));
        assert!(!is_upgrade(&map(&[("upgrade", "websocket")])));
    }

    #[test]
    fn forwarded_fields_from_an_untrusted_peer_are_replaced() {
        let allow: AllowIps = "127.0.0.1".parse().unwrap();
        let mut h = map(&[
            ("host", "example.com"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=6.6.6.6"),
        ]);
        set_forwarded(&mut h, Some("10.1.1.1".parse().unwrap()), false, &allow);
        assert_eq!(get(&h, "x-forwarded-for"), Some("10.1.1.1"));
        assert_eq!(get(&h, "x-forwarded-proto"), Some("http"));
        assert_eq!(get(&h, "x-forwarded-host"), Some("example.com"));
        assert_eq!(get(&h, "forwarded"), None);
    }

    #[test]
    fn a_trusted_peer_extends_the_chain_and_keeps_the_rest() {
        let allow: AllowIps = "127.0.0.1".parse().unwrap();
        let mut h = map(&[
            ("host", "inner"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-for", "5.6.7.8"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "outer.example"),
        ]);
        set_forwarded(&mut h, Some("127.0.0.1".parse().unwrap()), true, &allow);
        assert_eq!(
            get(&h, "x-forwarded-for"),
            Some("1.2.3.4, 5.6.7.8, 127.0.0.1")
        );
        assert_eq!(get(&h, "x-forwarded-proto"), Some("https"));
        assert_eq!(get(&h, "x-forwarded-host"), Some("outer.example"));
    }

    #[test]
    fn a_unix_socket_client_is_not_trusted_and_sends_no_address() {
        let allow: AllowIps = "*".parse().unwrap();
        let mut h = map(&[("x-forwarded-for", "1.2.3.4")]);
        set_forwarded(&mut h, None, true, &allow);
        assert_eq!(get(&h, "x-forwarded-for"), None);
        assert_eq!(get(&h, "x-forwarded-proto"), Some("https"), "over TLS");
    }
}
