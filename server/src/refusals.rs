//! Problem bodies for the requests hyper refuses before any route sees them.
//!
//! When a request's head cannot be parsed (a broken request line or header: 400), is too large
//! (431) or has too long a target (414), hyper writes an automatic answer itself, with an empty
//! body, and closes the connection; it offers no hook to change that answer. [`Refusals`] wraps a
//! connection's socket and, in the bytes hyper writes, replaces each such automatic answer with
//! the same status carrying an RFC 9457 problem (`bad_request`, `header_fields_too_large`,
//! `uri_too_long`), a generated `X-Request-Id` and `Connection: close`, and logs one line.
//!
//! Recognising them is exact: hyper's automatic answer is `HTTP/1.1 <status> <reason>\r\n
//! content-length: 0\r\n`, which no answer of the routes can be, since every one of their 4xx
//! answers has a problem body. Writes are not vectored, so hyper hands each flush over as one
//! buffer and an automatic answer's head arrives whole.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::problem::{PROBLEM_CONTENT_TYPE, Problem};

/// hyper's automatic answers: the status line of each, and the problem that replaces it.
pub(crate) const AUTOMATIC: [(&[u8], u16, &str, &str); 3] = [
    (
        b"HTTP/1.1 400 Bad Request\r\n",
        400,
        "bad_request",
        "The request is not valid HTTP/1.1: its request line or a header cannot be parsed.",
    ),
    (
        b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
        431,
        "header_fields_too_large",
        "The request's headers are too large or too many.",
    ),
    (
        b"HTTP/1.1 414 URI Too Long\r\n",
        414,
        "uri_too_long",
        "The request target is too long.",
    ),
];

/// The header line that marks an answer as hyper's own: the routes never answer these
/// statuses without a body.
const EMPTY_BODY: &[u8] = b"\r\ncontent-length: 0\r\n";

/// A connection's socket whose automatic hyper refusals carry problem bodies.
#[derive(Debug)]
pub struct Refusals<T> {
    inner: T,
    /// A replacement answer still to be written, and how much of it is written.
    pending: Vec<u8>,
    written: usize,
}

impl<T> Refusals<T> {
    /// Wraps a connection's socket.
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            pending: Vec::new(),
            written: 0,
        }
    }
}

/// Where the first automatic answer in `buf` starts, which it is, and how long its head is (to
/// the blank line; `None` if the head does not end within `buf`).
fn find_automatic(buf: &[u8]) -> Option<(usize, usize, Option<usize>)> {
    // Every answer passes through here: most have a body, and one scan for CR settles them.
    find(buf, EMPTY_BODY)?;
    let mut found = None;
    for (which, (status_line, ..)) in AUTOMATIC.iter().enumerate() {
        let starts = buf
            .windows(status_line.len())
            .enumerate()
            .filter(|(_, w)| w == status_line)
            .map(|(at, _)| at);
        for at in starts {
            let rest = buf.get(at..).unwrap_or_default();
            let end = rest.windows(4).position(|w| w == b"\r\n\r\n");
            // The head's lines, with the CRLF before the blank line so the last one matches.
            let head = rest.get(..end.map_or(rest.len(), |e| e.saturating_add(2)));
            let empty = head.is_some_and(|h| h.windows(EMPTY_BODY.len()).any(|w| w == EMPTY_BODY));
            if empty {
                if found.is_none_or(|(first, _, _)| at < first) {
                    found = Some((at, which, end.map(|e| e.saturating_add(4))));
                }
                break;
            }
        }
    }
    found
}

/// Where `needle` (not empty) first occurs in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, rest) = needle.split_first()?;
    let mut from = 0;
    while let Some(offset) = hay.get(from..)?.iter().position(|&b| b == first) {
        let at = from.saturating_add(offset);
        let after = at.saturating_add(1);
        if hay.get(after..)?.starts_with(rest) {
            return Some(at);
        }
        from = after;
    }
    None
}

/// The whole answer that replaces automatic answer `which`.
fn replacement(which: usize) -> Vec<u8> {
    let Some(&(_, status, code, detail)) = AUTOMATIC.get(which) else {
        return Vec::new();
    };
    let request_id = format!("{:016x}", rand::random::<u64>());
    tracing::info!(
        target: "flashsale::request",
        request_id = %request_id,
        status,
        code,
        "request refused by the HTTP layer"
    );
    metrics::counter!("flashsale_http_requests_total", "route" => "other",
        "status" => status.to_string())
    .increment(1);
    let problem = Problem::new(status, code, detail).with_member("request_id", request_id.clone());
    let body = serde_json::to_vec(&problem).unwrap_or_default();
    let reason = problem.status_code().canonical_reason().unwrap_or("Error");
    let mut answer = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {PROBLEM_CONTENT_TYPE}\r\n\
         content-length: {}\r\nx-request-id: {request_id}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    answer.extend_from_slice(&body);
    answer
}

impl<T: AsyncWrite + Unpin> Refusals<T> {
    /// Writes what is left of a replacement answer.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(rest) = self.pending.get(self.written..).filter(|r| !r.is_empty()) {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, rest))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written = self.written.saturating_add(n);
        }
        self.pending.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Refusals<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Refusals<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_pending(cx))?;
        match find_automatic(buf) {
            // Bytes before the automatic answer go out as they are.
            Some((at, ..)) if at > 0 => {
                let before = buf.get(..at).unwrap_or_default();
                Pin::new(&mut this.inner).poll_write(cx, before)
            }
            Some((_, which, Some(head_len))) => {
                this.pending = replacement(which);
                this.written = 0;
                // The head counts as written; the replacement goes out now or on the next
                // write, flush or shutdown, which hyper always calls before it closes.
                if this.poll_pending(cx)?.is_pending() {
                    tracing::trace!("refusal answer waits for the socket");
                }
                Poll::Ready(Ok(head_len))
            }
            _ => Pin::new(&mut this.inner).poll_write(cx, buf),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Serves one connection over an in-memory pipe with an echo service, sends `request`, and
    /// returns everything the server wrote.
    async fn answer_to(request: Vec<u8>) -> String {
        let (client, server) = tokio::io::duplex(1 << 20);
        let service = hyper::service::service_fn(|_request| async {
            let body = http_body_util::Full::new(bytes::Bytes::from_static(b"{\"ok\":true}"));
            Ok::<_, std::convert::Infallible>(hyper::Response::new(body))
        });
        let served = tokio::spawn(
            hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(Refusals::new(server)), service),
        );
        let (mut read, mut write) = tokio::io::split(client);
        write.write_all(&request).await.expect("sent");
        let mut out = Vec::new();
        read.read_to_end(&mut out).await.expect("read");
        let _ = served.await;
        String::from_utf8_lossy(&out).into_owned()
    }

    fn problem_of(answer: &str) -> serde_json::Value {
        let (_, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"))
    }

    #[tokio::test]
    async fn a_broken_request_line_is_a_problem_not_an_empty_400() {
        let answer = answer_to(b"GET /healthz HTTP/9\r\n\r\n".to_vec()).await;
        assert!(
            answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{answer}"
        );
        assert!(
            answer.contains("content-type: application/problem+json\r\n"),
            "{answer}"
        );
        assert!(answer.contains("x-request-id: "), "{answer}");
        let problem = problem_of(&answer);
        assert_eq!(problem["code"], "bad_request");
        assert_eq!(problem["status"], 400);
        assert_eq!(problem["request_id"].as_str().map(str::len), Some(16));
        let length = format!(
            "content-length: {}\r\n",
            answer.split_once("\r\n\r\n").map_or(0, |(_, b)| b.len())
        );
        assert!(
            answer.contains(&length),
            "the length is the body's: {answer}"
        );
    }

    #[tokio::test]
    async fn too_large_headers_and_too_long_targets_are_problems() {
        let mut many = b"GET / HTTP/1.1\r\nhost: x\r\n".to_vec();
        for n in 0..200 {
            many.extend_from_slice(format!("x-h{n}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        let answer = answer_to(many).await;
        assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
        assert_eq!(problem_of(&answer)["code"], "header_fields_too_large");

        let long = format!("GET /{} HTTP/1.1\r\nhost: x\r\n\r\n", "a".repeat(70_000));
        let answer = answer_to(long.into_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 414 "), "{answer}");
        assert_eq!(problem_of(&answer)["code"], "uri_too_long");
    }

    #[tokio::test]
    async fn a_refusal_after_a_pipelined_answer_leaves_that_answer_whole() {
        let request = b"GET /a HTTP/1.1\r\nhost: x\r\n\r\nBROKEN\x01 / HTTP/1.1\r\n\r\n".to_vec();
        let answer = answer_to(request).await;
        let (first, rest) = answer
            .split_once("{\"ok\":true}")
            .expect("the first answer");
        assert!(first.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(rest.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{answer}");
        assert_eq!(problem_of(rest)["code"], "bad_request");
    }

    #[test]
    fn only_hyper_automatic_answers_are_recognised() {
        let ours = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/problem+json\r\n\
                     content-length: 120\r\n\r\n{}";
        assert_eq!(find_automatic(ours), None);
        let ours_then_theirs = [
            &ours[..],
            b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\
                     content-length: 0\r\n\r\n",
        ]
        .concat();
        assert_eq!(
            find_automatic(&ours_then_theirs),
            Some((
                ours.len(),
                0,
                Some(ours_then_theirs.len().saturating_sub(ours.len()))
            ))
        );
        assert_eq!(find_automatic(ours), None);
        let theirs = b"xxHTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\
                       date: Wed, 02 Dec 2026 06:00:00 GMT\r\n\r\n";
        let head_len = theirs.len().saturating_sub(2);
        assert_eq!(find_automatic(theirs), Some((2, 1, Some(head_len))));
    }
}
