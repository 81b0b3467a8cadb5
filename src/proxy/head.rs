//! A request's head as it goes to a worker: made once from the client's
//! (the header rules of `headers` applied), and kept to build each attempt.

use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Uri, Version};

use super::headers::{self, Forwarding};
use super::request_body::Outgoing;
use crate::http::server::Peer;

/// The head of a request as it goes to a worker, kept to build each attempt.
pub struct Head {
    pub method: Method,
    pub uri: Uri,
    pub headers: hyper::HeaderMap,
    /// What the worker is told of the client, added as the head is sent.
    pub forwarding: Forwarding,
}

impl Head {
    /// A client's request head as a worker gets it: the target in origin
    /// form, `Host` from an HTTP/2 request's authority, hop-by-hop fields
    /// gone and the forwarded fields set.
    pub fn for_worker(
        mut parts: hyper::http::request::Parts,
        peer: Peer,
        upgrade: bool,
        allow: &crate::values::AllowIps,
    ) -> Head {
        // The target's authority wins over Host: RFC 9112 3.2.2 for an
        // absolute-form target, RFC 9113 8.3.1 for HTTP/2's :authority.
        if let Some(authority) = parts.uri.authority()
            && let Some(host) = authority.as_str().rsplit('@').next()
            && let Ok(host) = HeaderValue::from_str(host)
        {
            parts.headers.insert(header::HOST, host);
        }
        if parts.version == Version::HTTP_2 {
            headers::join_cookie_crumbs(&mut parts.headers);
        }
        let uri = if parts.uri.scheme().is_none() && parts.uri.authority().is_none() {
            // Already in origin form, as HTTP/1.1 clients send it.
            parts.uri
        } else {
            parts.uri.path_and_query().map_or_else(
                || Uri::from_static("/"),
                |pq| Uri::try_from(pq.as_str()).unwrap_or_else(|_| Uri::from_static("/")),
            )
        };
        let mut headers = parts.headers;
        headers::strip_hop_by_hop(&mut headers, upgrade);
        let forwarding = Forwarding::new(&mut headers, peer.addr.map(|a| a.ip()), peer.tls, allow);
        Head {
            method: parts.method,
            uri,
            headers,
            forwarding,
        }
    }

    pub fn request(&self, body: Outgoing) -> Request<Outgoing> {
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = Version::HTTP_11;
        *req.headers_mut() = self.headers.clone();
        self.forwarding.insert_into(req.headers_mut());
        req
    }
}
