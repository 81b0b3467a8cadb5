//! A worker's answer body as corral reads it from its [`Link`]: data
//! frames cut from the connection's buffer by the answer's [`Framing`]
//! (a length, chunks or the close), and the connection given back to the
//! pool with the last byte.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use hyper::body::{Body, Frame, SizeHint};

use super::framing::{Chunk, Framing};
use super::{Link, LinkError, MAX_CHUNK_LINE};
use crate::http::fields;
use crate::proxy::backends::Key;
use crate::proxy::pool::Pool;
use crate::proxy::request_body::BoxError;

/// A worker's answer body read from its [`Link`].
pub struct LinkBody {
    /// Boxed: a connection lives longer than any one answer, and the
    /// answer's body is moved on its way to the client.
    link: Option<Box<Link>>,
    framing: Framing,
    keep_alive: bool,
    home: Option<(Arc<Pool>, Key)>,
}

impl LinkBody {
    /// The body of an answer just parsed from `link`; an answer without
    /// one gives the connection back at once.
    pub(super) fn new(
        link: Box<Link>,
        framing: Framing,
        keep_alive: bool,
        home: (Arc<Pool>, Key),
    ) -> LinkBody {
        let mut body = LinkBody {
            link: Some(link),
            framing,
            keep_alive,
            home: Some(home),
        };
        body.finish_if_done();
        body
    }

    /// Gives the connection back once the body is all read, so that the
    /// one that reads the last byte does not also have to ask for the end.
    fn finish_if_done(&mut self) {
        if self.framing != Framing::Done {
            return;
        }
        if let (Some(link), Some((pool, key))) = (self.link.take(), self.home.take())
            && self.keep_alive
            && link.buf.is_empty()
        {
            pool.checkin_link(key, link);
        }
    }

    fn data(&mut self, n: usize) -> Frame<Bytes> {
        let link = self
            .link
            .as_mut()
            .expect("a body being read holds its link");
        Frame::data(link.buf.split_to(n).freeze())
    }

    /// The next step of the body: a frame, its end, or more to read.
    fn step(&mut self) -> Result<Option<Frame<Bytes>>, &'static str> {
        let Some(link) = self.link.as_mut() else {
            return Ok(None);
        };
        let buffered = link.buf.len();
        match self.framing {
            Framing::Done => Ok(None),
            Framing::Length(left) if buffered > 0 => {
                let n = buffered.min(usize::try_from(left).unwrap_or(usize::MAX));
                self.framing = Framing::Length(left - n as u64);
                if left == n as u64 {
                    self.framing = Framing::Done;
                }
                let frame = self.data(n);
                self.finish_if_done();
                Ok(Some(frame))
            }
            Framing::Close if buffered > 0 => Ok(Some(self.data(buffered))),
            Framing::Chunked(chunk) => self.chunk_step(chunk),
            Framing::Length(_) | Framing::Close => Ok(None),
        }
    }

    fn chunk_step(&mut self, chunk: Chunk) -> Result<Option<Frame<Bytes>>, &'static str> {
        let link = self
            .link
            .as_mut()
            .expect("a body being read holds its link");
        let buf = &mut link.buf;
        match chunk {
            Chunk::Size | Chunk::Trailers => {
                let Some(end) = fields::line_end(buf) else {
                    if buf.len() > MAX_CHUNK_LINE {
                        return Err("a chunk line is too long");
                    }
                    return Ok(None);
                };
                let line = buf.split_to(end + 2);
                let line = &line[..end];
                self.framing = if chunk == Chunk::Trailers {
                    // Trailer fields end here, as nginx drops them.
                    if line.is_empty() {
                        Framing::Done
                    } else {
                        Framing::Chunked(Chunk::Trailers)
                    }
                } else {
                    match fields::chunk_size(line).ok_or("a chunk size is not hexadecimal")? {
                        0 => Framing::Chunked(Chunk::Trailers),
                        n => Framing::Chunked(Chunk::Data(n)),
                    }
                };
                self.finish_if_done();
                self.step()
            }
            Chunk::Data(left) => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                self.framing = Framing::Chunked(if left == n as u64 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left - n as u64)
                });
                Ok(Some(self.data(n)))
            }
            Chunk::DataEnd => {
                if buf.len() < 2 {
                    return Ok(None);
                }
                if &buf[..2] != b"\r\n" {
                    return Err("a chunk does not end with CRLF");
                }
                buf.advance(2);
                self.framing = Framing::Chunked(Chunk::Size);
                self.step()
            }
        }
    }
}

impl Body for LinkBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            match this.step() {
                Ok(Some(frame)) => return Poll::Ready(Some(Ok(frame))),
                Err(why) => {
                    this.link = None;
                    return Poll::Ready(Some(Err(LinkError::Malformed(why).into())));
                }
                Ok(None) => {}
            }
            let Some(link) = this.link.as_mut() else {
                return Poll::Ready(None);
            };
            if this.framing == Framing::Done {
                return Poll::Ready(None);
            }
            match ready!(link.poll_fill(cx)) {
                Ok(0) if this.framing == Framing::Close => {
                    this.framing = Framing::Done;
                    this.link = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.link = None;
                    let eof = io::Error::from(io::ErrorKind::UnexpectedEof);
                    return Poll::Ready(Some(Err(LinkError::NoAnswer(eof).into())));
                }
                Ok(_) => {}
                Err(e) => {
                    this.link = None;
                    return Poll::Ready(Some(Err(LinkError::NoAnswer(e).into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing == Framing::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Done => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}
