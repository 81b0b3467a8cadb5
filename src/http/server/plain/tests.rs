use super::*;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use tokio::io::AsyncReadExt;

fn parsed(text: &str) -> Option<Parsed> {
    parse(&Bytes::copy_from_slice(text.as_bytes()), MAX_HEADERS)
}

#[tokio::test]
async fn a_whole_request_is_parsed_with_its_body_and_what_follows() {
    let p = parsed("POST /a?b=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nX-A: 1\r\nX-A: 2\r\n\r\nhelloGET / HTTP/1.1\r\n")
        .expect("plain");
    let (parts, body) = p.request.into_parts();
    assert_eq!(parts.method, Method::POST);
    assert_eq!(parts.uri, "/a?b=1");
    assert_eq!(parts.version, Version::HTTP_11);
    assert_eq!(parts.headers["host"], "x");
    assert_eq!(parts.headers.get_all("x-a").iter().count(), 2);
    assert_eq!(body.collect().await.unwrap().to_bytes(), "hello");
    assert_eq!(p.rest, "GET / HTTP/1.1\r\n");
    let asked = Asked {
        head: false,
        http10: false,
        keep_alive: true,
    };
    assert_eq!(p.asked, asked);
}

#[test]
fn keep_alive_follows_the_version_and_the_connection_field() {
    let asked = |text: &str| parsed(text).expect("plain").asked;
    assert!(!asked("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive);
    assert!(!asked("GET / HTTP/1.0\r\n\r\n").keep_alive);
    let kept = asked("HEAD / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
    assert!(kept.keep_alive && kept.http10 && kept.head);
    assert!(!asked("GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n").keep_alive);
}

#[test]
fn anything_but_a_plain_whole_request_is_left_to_hyper() {
    for text in [
        "GET / HTTP/1.1\r\nHost: x\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nhello",
        "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nab",
        "POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\nab",
        "POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\na",
        "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        "GET / HTTP/1.1\r\nConnection: upgrade\r\n\r\n",
        "CONNECT x:443 HTTP/1.1\r\n\r\n",
        "GET / HTTP/2.0\r\n\r\n",
        "GET /a b HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
        "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    ] {
        assert!(parsed(text).is_none(), "{text:?}");
    }
    let fields = "GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
    assert!(parse(&Bytes::from_static(fields.as_bytes()), 2).is_none());
    assert!(parse(&Bytes::from_static(fields.as_bytes()), 3).is_some());
}

fn head_of<B: Body>(answer: &Response<B>, asked: Asked, closing: bool) -> (String, Framing, bool) {
    let mut out = Vec::new();
    let (framing, close) = encode_head(answer, asked, closing, &mut out);
    (String::from_utf8(out).unwrap(), framing, close)
}

const KEPT: Asked = Asked {
    head: false,
    http10: false,
    keep_alive: true,
};

#[test]
fn an_answer_is_framed_by_its_length_else_chunked_else_by_the_close() {
    let mut answer = Response::new(Full::new(Bytes::from_static(b"hi")));
    answer
        .headers_mut()
        .insert("x-a", HeaderValue::from_static("1"));
    let (head, framing, close) = head_of(&answer, KEPT, false);
    assert!(
        head.starts_with("HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 2\r\ndate: "),
        "{head}"
    );
    assert!(head.ends_with(" GMT\r\n\r\n"), "{head}");
    assert_eq!((framing, close), (Framing::Length(2), false));

    let stream = StreamBody::new(futures::stream::empty::<Result<Frame<Bytes>, BoxError>>());
    let mut unknown = Response::new(stream);
    unknown.headers_mut().insert(
        header::TRANSFER_ENCODING,
        HeaderValue::from_static("chunked"),
    );
    let (head, framing, _) = head_of(&unknown, KEPT, false);
    assert_eq!(
        head.matches("transfer-encoding: chunked\r\n").count(),
        1,
        "{head}"
    );
    assert_eq!(framing, Framing::Chunked);
    let old = Asked {
        http10: true,
        ..KEPT
    };
    let (head, framing, close) = head_of(&unknown, old, false);
    assert!(head.contains("connection: close\r\n") && !head.contains("transfer-encoding"));
    assert_eq!((framing, close), (Framing::Close, true));
    let (head, framing, close) = head_of(&answer, old, false);
    assert!(head.contains("connection: keep-alive\r\n"), "{head}");
    assert_eq!((framing, close), (Framing::Length(2), false));
}

#[test]
fn head_204_and_304_answers_have_no_body_and_their_fields_are_kept() {
    let mut answer = Response::new(Full::new(Bytes::new()));
    answer
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("1234"));
    answer.headers_mut().insert(
        header::DATE,
        HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"),
    );
    let head = Asked { head: true, ..KEPT };
    let (text, framing, _) = head_of(&answer, head, false);
    assert_eq!(
        text,
        "HTTP/1.1 200 OK\r\ncontent-length: 1234\r\ndate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\n"
    );
    assert_eq!(framing, Framing::None);
    for status in [StatusCode::NO_CONTENT, StatusCode::NOT_MODIFIED] {
        *answer.status_mut() = status;
        assert_eq!(head_of(&answer, KEPT, false).1, Framing::None);
    }
}

#[test]
fn a_closing_connection_or_an_answer_that_closes_says_so() {
    let answer = Response::new(Full::new(Bytes::from_static(b"hi")));
    let (head, _, close) = head_of(&answer, KEPT, true);
    assert!(close && head.contains("connection: close\r\n"));
    let mut closes = Response::new(Full::new(Bytes::from_static(b"hi")));
    closes
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    let (head, _, close) = head_of(&closes, KEPT, false);
    assert!(close);
    assert_eq!(head.matches("connection").count(), 1, "{head}");
}

/// Writes the answer `frames` make, through a pipe read whole.
async fn written(frames: Vec<&'static str>, asked: Asked) -> (String, Result<Done, Error>) {
    let frames = frames
        .into_iter()
        .map(|f| Ok::<_, BoxError>(Frame::data(Bytes::from_static(f.as_bytes()))));
    let body = StreamBody::new(futures::stream::iter(frames));
    let (mut near, mut far) = tokio::io::duplex(16);
    let mut exchange = Exchange::new(async { Response::new(body) }, asked);
    let writing = async {
        let done = std::future::poll_fn(|cx| exchange.poll(&mut near, false, cx)).await;
        drop(near);
        done
    };
    let mut got = Vec::new();
    let (done, _) = tokio::join!(writing, far.read_to_end(&mut got));
    (String::from_utf8(got).unwrap(), done)
}

#[tokio::test]
async fn a_streamed_answer_is_written_in_chunks_through_a_small_pipe() {
    let (text, done) = written(vec!["hello ", "", "world"], KEPT).await;
    assert!(
        text.ends_with("\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n"),
        "{text}"
    );
    assert_eq!(done.unwrap(), Done::KeepAlive);
    let old = Asked {
        http10: true,
        ..KEPT
    };
    let (text, done) = written(vec!["hello ", "world"], old).await;
    assert!(text.ends_with("\r\n\r\nhello world"), "{text}");
    assert_eq!(done.unwrap(), Done::Close);
}

#[tokio::test]
async fn a_body_longer_or_shorter_than_its_length_fails_the_exchange() {
    for frames in [vec!["toolong"], vec!["ab"]] {
        let frames = frames
            .into_iter()
            .map(|f| Ok::<_, BoxError>(Frame::data(Bytes::from_static(f.as_bytes()))));
        let mut answer = Response::new(StreamBody::new(futures::stream::iter(frames)));
        answer
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        let mut exchange = Exchange::new(async { answer }, KEPT);
        let (mut near, _far) = tokio::io::duplex(1024);
        let done = std::future::poll_fn(|cx| exchange.poll(&mut near, false, cx)).await;
        assert!(matches!(done, Err(Error::Length)));
    }
}

proptest::proptest! {
    /// Whatever the bytes, parsing them does not panic, and what it takes
    /// (a head, a body) is never more than was read.
    #[test]
    fn any_bytes_parse_without_panic(input in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
        let read = Bytes::from(input);
        if let Some(p) = parse(&read, MAX_HEADERS) {
            let body = p.request.body().size_hint().exact().unwrap_or(u64::MAX);
            proptest::prop_assert!(body as usize + p.rest.len() < read.len());
        }
    }

    /// Request-like bytes: a plain request's body is exactly its
    /// Content-Length, and what follows it is left whole.
    #[test]
    fn a_body_is_its_declared_length(
        input in "(GET|POST|HEAD|PUT) /[a-z]{0,5} HTTP/1\\.[01]\r\n((Content-Length|Connection|Host|Expect|Upgrade): [0-9a-z, -]{0,6}\r\n){0,4}\r\n[a-z]{0,12}",
    ) {
        let read = Bytes::from(input);
        if let Some(p) = parse(&read, MAX_HEADERS) {
            let declared = p.request.headers().get(header::CONTENT_LENGTH)
                .map_or(0, |v| v.to_str().unwrap().parse::<u64>().unwrap());
            proptest::prop_assert_eq!(p.request.body().size_hint().exact(), Some(declared));
            proptest::prop_assert!(read.ends_with(&p.rest));
        }
    }
}
