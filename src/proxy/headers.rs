//! The header rules of a forwarding hop, as RFC 9110 (7.6) and the
//! X-Forwarded-* convention set them: hop-by-hop fields (those named in
//! `Connection`, and the fixed set below) stop here in both directions; an
//! `Upgrade` request keeps its `Upgrade` and `Connection: upgrade` so the
//! worker can switch protocols; the forwarded fields are believed only from
//! a trusted peer and otherwise replaced. A forwarding field is known by
//! its name once case and `_`/`-` are ignored, because that is how
//! frameworks read them (Django folds `X_Forwarded_For` into
//! `HTTP_X_FORWARDED_FOR`, the same key as `X-Forwarded-For`). Pure
//! functions over header maps.

use std::net::IpAddr;

use hyper::HeaderMap;
use hyper::header::{self, HeaderName, HeaderValue};

use crate::http::fields;
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
    headers.contains_key(header::UPGRADE)
        && connection_values(headers).any(|v| fields::has_token(v.as_bytes(), b"upgrade"))
}

/// The `Connection` values, those of visible ASCII only.
fn connection_values(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
}

/// The fields that stop at every hop whether or not `Connection` names them.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Drops the hop-by-hop fields; with `upgrade`, the two that carry the
/// protocol switch are put back. Most requests have none: one look at
/// each name, and nothing is hashed or allocated for them.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    if !headers.keys().any(|k| HOP_BY_HOP.contains(k)) {
        return;
    }
    let upgrade_to = headers.get(header::UPGRADE).cloned();
    let named: Vec<HeaderName> = connection_values(headers)
        .flat_map(|v| fields::tokens(v.as_bytes()))
        .filter_map(|t| HeaderName::from_bytes(t).ok())
        .collect();
    for name in named.into_iter().chain(HOP_BY_HOP) {
        headers.remove(name);
    }
    if upgrade && let Some(to) = upgrade_to {
        headers.insert(header::UPGRADE, to);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Fields that say who the client was, how and whom it asked, as a proxy
/// saw it: beside every `X-Forwarded-*`, the names in use by proxies and
/// CDNs. Compared after lowercasing and `_` -> `-`.
const FORWARDING: &[&str] = &[
    "forwarded",
    "x-real-ip",
    "x-client-ip",
    "client-ip",
    "true-client-ip",
    "x-cluster-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-original-forwarded-for",
    "x-original-host",
    "x-original-url",
    "x-rewrite-url",
];

/// Whether `name` is a forwarding field, however it is spelt (compared
/// byte by byte: this runs on every field of every request).
fn is_forwarding(name: &str) -> bool {
    let name = name.as_bytes();
    let spelt = |known: &str| {
        name.len() >= known.len()
            && name.iter().zip(known.as_bytes()).all(|(&b, &k)| {
                (if b == b'_' {
                    b'-'
                } else {
                    b.to_ascii_lowercase()
                }) == k
            })
    };
    (spelt("x-forwarded") && matches!(name.get(11), None | Some(b'-' | b'_')))
        || FORWARDING.iter().any(|f| f.len() == name.len() && spelt(f))
}

/// What a worker is told of the client: X-Forwarded-For, -Proto and
/// -Host and `Forwarded` (RFC 7239). Decided once per request
/// ([`Forwarding::new`]) and written by whichever encoder sends it: as
/// field lines after the client's own by the worker exchange, into a
/// header map for hyper's client. No field is inserted into the client's
/// map for it (each insert is a hash), nor text allocated.
#[derive(Debug, Clone)]
pub struct Forwarding {
    peer: Option<IpAddr>,
    proto: &'static str,
    host: Option<HeaderValue>,
    /// A trusted peer's own `Forwarded`, joined: this hop goes after it.
    forwarded_before: String,
    /// A trusted peer's own `X-Forwarded-For` chain, joined.
    chain: String,
    /// A trusted peer's own X-Forwarded-Proto and -Host stay as they are.
    keep_proto: bool,
    keep_host: bool,
}

impl Forwarding {
    /// From a trusted peer the incoming forwarding fields are believed (its
    /// own hop is appended to the `For` chain and to `Forwarded`); from
    /// anyone else every forwarding field is dropped from `headers` and
    /// corral's own sent. A forwarding name spelt with `_` is dropped from
    /// anyone: it would shadow the real one in a framework's table. `tls`:
    /// the client reached corral over TLS.
    pub fn new(
        headers: &mut HeaderMap,
        peer: Option<IpAddr>,
        tls: bool,
        allow: &AllowIps,
    ) -> Forwarding {
        let trusted = peer.is_some_and(|p| allow.allows(p));
        let mut sent_some = false;
        let spoofable: Vec<HeaderName> = headers
            .keys()
            .filter(|k| {
                let forwarding = is_forwarding(k.as_str());
                sent_some |= forwarding;
                forwarding && (!trusted || k.as_str().contains('_'))
            })
            .cloned()
            .collect();
        for name in spoofable {
            headers.remove(name);
        }
        let mut forwarding = Forwarding {
            peer,
            proto: if tls { "https" } else { "http" },
            host: headers.get(header::HOST).cloned(),
            forwarded_before: String::new(),
            chain: String::new(),
            keep_proto: false,
            keep_host: false,
        };
        // From an untrusted peer every forwarding field is gone by now, and
        // a client that sent none has none: no need to look for the
        // client's own (each look is a hash).
        if trusted && sent_some {
            forwarding.forwarded_before = joined(headers, &FORWARDED);
            forwarding.chain = joined(headers, &X_FORWARDED_FOR);
            headers.remove(FORWARDED);
            headers.remove(X_FORWARDED_FOR);
            forwarding.keep_proto = headers.contains_key(X_FORWARDED_PROTO);
            forwarding.keep_host = headers.contains_key(X_FORWARDED_HOST);
        }
        forwarding
    }

    /// Each field, its value in pieces (written one after the other, so
    /// nothing is joined to send them).
    fn each(&self, mut field: impl FnMut(&HeaderName, &[&[u8]])) {
        let peer = self.peer.map(IpText::new);
        let peer = peer.as_ref().map(IpText::as_bytes);
        let host = self.host.as_ref().map(HeaderValue::as_bytes);
        // `Forwarded` (RFC 7239 section 4): `for` the peer (`unknown` on a
        // Unix socket; an IPv6 address quoted in brackets), `proto`, and
        // `host` as the client asked, unless it cannot be quoted.
        let (open, close): (&[u8], &[u8]) = match self.peer {
            Some(IpAddr::V6(_)) => (b"\"[", b"]\""),
            _ => (b"", b""),
        };
        let quotable = host.filter(|h| {
            h.iter()
                .all(|&b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
        });
        let (host_open, host_close): (&[u8], &[u8]) = match quotable {
            Some(_) => (b";host=\"", b"\""),
            None => (b"", b""),
        };
        let before = self.forwarded_before.as_bytes();
        field(
            &FORWARDED,
            &[
                before,
                if before.is_empty() { b"" } else { b", " },
                b"for=",
                open,
                peer.unwrap_or(b"unknown"),
                close,
                b";proto=",
                self.proto.as_bytes(),
                host_open,
                quotable.unwrap_or_default(),
                host_close,
            ],
        );
        let chain = self.chain.as_bytes();
        let comma: &[u8] = if chain.is_empty() || peer.is_none() {
            b""
        } else {
            b", "
        };
        if !chain.is_empty() || peer.is_some() {
            field(&X_FORWARDED_FOR, &[chain, comma, peer.unwrap_or_default()]);
        }
        if !self.keep_proto {
            field(&X_FORWARDED_PROTO, &[self.proto.as_bytes()]);
        }
        if let Some(host) = host
            && !self.keep_host
        {
            field(&X_FORWARDED_HOST, &[host]);
        }
    }

    /// The fields as HTTP/1.1 field lines.
    pub fn write(&self, out: &mut Vec<u8>) {
        self.each(|name, value| {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            for piece in value.iter().filter(|p| !p.is_empty()) {
                out.extend_from_slice(piece);
            }
            out.extend_from_slice(b"\r\n");
        });
    }

    /// The fields set in `headers`.
    pub fn insert_into(&self, headers: &mut HeaderMap) {
        self.each(|name, value| {
            if let Ok(v) = HeaderValue::from_bytes(&value.concat()) {
                headers.insert(name.clone(), v);
            }
        });
    }
}

/// The values of every `name` field, joined with `, ` as one list.
fn joined(headers: &HeaderMap, name: &HeaderName) -> String {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(", ")
}

/// An address as text, on the stack. IPv4 is written digit by digit:
/// every request needs its peer's, and `Display` costs more than the rest
/// of the rule.
struct IpText {
    text: [u8; 45],
    len: usize,
}

impl IpText {
    fn new(ip: IpAddr) -> IpText {
        let mut out = IpText {
            text: [0; 45],
            len: 0,
        };
        match ip {
            IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        out.push(b'.');
                    }
                    if octet >= 100 {
                        out.push(b'0' + octet / 100);
                    }
                    if octet >= 10 {
                        out.push(b'0' + octet / 10 % 10);
                    }
                    out.push(b'0' + octet % 10);
                }
            }
            IpAddr::V6(v6) => {
                use std::io::Write;
                let mut room = &mut out.text[..];
                // 45 bytes hold the longest form (`::ffff:` and an IPv4).
                let _ = write!(room, "{v6}");
                out.len = 45 - room.len();
            }
        }
        out
    }

    fn push(&mut self, b: u8) {
        self.text[self.len] = b;
        self.len += 1;
    }

    fn as_bytes(&self) -> &[u8] {
        &self.text[..self.len]
    }
}

/// HTTP/2 lets a client split `cookie` into several fields ("crumbs", RFC
/// 9113 8.2.3); they are joined with `; ` into one before the request goes
/// on as HTTP/1.1, where apps read a single field.
pub fn join_cookie_crumbs(headers: &mut HeaderMap) {
    let crumbs: Vec<&str> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if crumbs.len() < 2 {
        return;
    }
    if let Ok(v) = HeaderValue::from_str(&crumbs.join("; ")) {
        headers.insert(header::COOKIE, v);
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

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for octet in 0..=255u8 {
            for ip in [
                IpAddr::from([octet, 0, 10, 255]),
                IpAddr::from([1, octet, 99, 100]),
                IpAddr::from([255, 9, octet, 0]),
                IpAddr::from([127, 0, 0, octet]),
            ] {
                assert_eq!(IpText::new(ip).as_bytes(), ip.to_string().as_bytes());
            }
        }
        for v6 in [
            "2001:db8::1",
            "::ffff:255.255.255.255",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ] {
            let ip: IpAddr = v6.parse().unwrap();
            assert_eq!(IpText::new(ip).as_bytes(), ip.to_string().as_bytes());
        }
    }

    /// The forwarding fields of a request with fields `h`, set in `h` as
    /// hyper's client gets them; the field lines the worker exchange
    /// writes must say the same.
    fn set_forwarded(h: &mut HeaderMap, peer: Option<IpAddr>, tls: bool, allow: &AllowIps) {
        let forwarding = Forwarding::new(h, peer, tls, allow);
        let mut lines = Vec::new();
        forwarding.write(&mut lines);
        forwarding.insert_into(h);
        let mut from_map = Vec::new();
        for name in [
            &FORWARDED,
            &X_FORWARDED_FOR,
            &X_FORWARDED_PROTO,
            &X_FORWARDED_HOST,
        ] {
            for value in h.get_all(name) {
                crate::http::fields::put(&mut from_map, name.as_str().as_bytes(), value.as_bytes());
            }
        }
        // The map holds the kept fields too; the lines hold only corral's.
        let lines = String::from_utf8(lines).unwrap();
        let from_map = String::from_utf8(from_map).unwrap();
        for line in lines.split_inclusive("\r\n") {
            assert!(from_map.contains(line), "{line:?} not in {from_map:?}");
        }
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
        assert_eq!(
            get(&h, "forwarded"),
            Some("for=10.1.1.1;proto=http;host=\"example.com\"")
        );
    }

    #[test]
    fn every_spelling_of_a_forwarding_field_from_an_untrusted_peer_is_dropped() {
        let allow: AllowIps = "127.0.0.1".parse().unwrap();
        let mut h = map(&[
            ("host", "example.com"),
            ("x_forwarded_for", "6.6.6.6"),
            ("X-Real-IP", "6.6.6.6"),
            ("x-forwarded-port", "1"),
            ("x-forwarded-prefix", "/admin"),
            ("true-client-ip", "6.6.6.6"),
            ("accept", "*/*"),
        ]);
        set_forwarded(&mut h, Some("10.1.1.1".parse().unwrap()), false, &allow);
        for gone in [
            "x_forwarded_for",
            "x-real-ip",
            "x-forwarded-port",
            "x-forwarded-prefix",
            "true-client-ip",
        ] {
            assert_eq!(get(&h, gone), None, "{gone}");
        }
        assert_eq!(get(&h, "x-forwarded-for"), Some("10.1.1.1"));
        assert_eq!(get(&h, "accept"), Some("*/*"));
        // From a trusted peer the real names stay, an underscore one never.
        let mut h = map(&[("x-real-ip", "1.2.3.4"), ("x_forwarded_for", "6.6.6.6")]);
        set_forwarded(&mut h, Some("127.0.0.1".parse().unwrap()), false, &allow);
        assert_eq!(get(&h, "x-real-ip"), Some("1.2.3.4"));
        assert_eq!(get(&h, "x_forwarded_for"), None);
        assert_eq!(get(&h, "x-forwarded-for"), Some("127.0.0.1"));
    }

    #[test]
    fn cookie_crumbs_are_joined_into_one_field() {
        let mut h = map(&[("cookie", "a=1"), ("cookie", "b=2"), ("cookie", "c=3")]);
        join_cookie_crumbs(&mut h);
        assert_eq!(h.get_all("cookie").iter().count(), 1);
        assert_eq!(get(&h, "cookie"), Some("a=1; b=2; c=3"));
    }

    #[test]
    fn forwarded_gets_this_hop_after_a_trusted_peers_own() {
        let allow: AllowIps = "::1".parse().unwrap();
        let mut h = map(&[
            ("host", "a:8443"),
            ("forwarded", "for=192.0.2.1;proto=https"),
        ]);
        set_forwarded(&mut h, Some("::1".parse().unwrap()), true, &allow);
        assert_eq!(
            get(&h, "forwarded"),
            Some("for=192.0.2.1;proto=https, for=\"[::1]\";proto=https;host=\"a:8443\"")
        );
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
