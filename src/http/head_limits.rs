//! Gunicorn's limits on a request head, held by the front on every
//! request before it is forwarded. Pure: a head in, an answer or none out.

use hyper::{Request, StatusCode};

/// Gunicorn's limits on a request head (`--limit-request-line`,
/// `--limit-request-fields`, `--limit-request-field_size`), held on every
/// request, HTTP/1.1 and HTTP/2, before it is forwarded. `None`: unbounded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeadLimits {
    /// Bytes of the request line: method, target and version.
    pub line: Option<usize>,
    pub fields: usize,
    /// Bytes of one header field: name, `: ` and value.
    pub field_size: Option<usize>,
}

/// `HTTP/1.1` and the two spaces of a request line.
const LINE_FRAME: usize = 10;

impl HeadLimits {
    /// The answer to a request past a limit: 414 for its line, 431 for
    /// its fields (the RFC's codes; hyper answers 431 to a head too large
    /// as a whole).
    pub fn refusal<B>(&self, req: &Request<B>) -> Option<(StatusCode, &'static str)> {
        let uri = req.uri();
        let target = uri.scheme_str().map_or(0, |s| s.len() + 3)
            + uri.authority().map_or(0, |a| a.as_str().len())
            + uri.path_and_query().map_or(1, |pq| pq.as_str().len());
        if self
            .line
            .is_some_and(|max| req.method().as_str().len() + target + LINE_FRAME > max)
        {
            return Some((StatusCode::URI_TOO_LONG, "the request line is too long\n"));
        }
        let headers = req.headers();
        if headers.len() > self.fields {
            return Some((
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "the request has too many header fields\n",
            ));
        }
        if let Some(max) = self.field_size
            && headers
                .iter()
                .any(|(n, v)| n.as_str().len() + 2 + v.len() > max)
        {
            return Some((
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "a request header field is too large\n",
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_limits_refuse_a_long_line_and_many_or_large_fields() {
        let limits = HeadLimits {
            line: Some(30),
            fields: 2,
            field_size: Some(20),
        };
        let req = |target: &str, fields: &[(&str, &str)]| {
            let mut b = Request::get(target);
            for (n, v) in fields {
                b = b.header(*n, *v);
            }
            b.body(()).unwrap()
        };
        assert_eq!(limits.refusal(&req("/a", &[("host", "x")])), None);
        // GET /01234567890123456 HTTP/1.1 is 31 bytes; one less is 30.
        let long = limits.refusal(&req("/01234567890123456", &[])).unwrap();
        assert_eq!(long.0, StatusCode::URI_TOO_LONG);
        assert_eq!(limits.refusal(&req("/0123456789012345", &[])), None);
        let many = limits.refusal(&req("/", &[("a", "1"), ("b", "2"), ("c", "3")]));
        assert_eq!(many.unwrap().0, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        // "x-long: " and 13 bytes is 21.
        let large = limits.refusal(&req("/", &[("x-long", "0123456789012")]));
        assert_eq!(
            large.unwrap().0,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
        let unbounded = HeadLimits {
            line: None,
            fields: 100,
            field_size: None,
        };
        assert_eq!(
            unbounded.refusal(&req(&format!("/{}", "a".repeat(9000)), &[])),
            None
        );
    }
}
