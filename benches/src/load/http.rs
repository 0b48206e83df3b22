//! The client side of the wire: where the server is ([`Target`]), one keep-alive HTTP/1.1
//! connection ([`Connection`], a hyper `SendRequest` plus the task driving its socket), and
//! requests made from templates whose bodies are built once ([`Template`]), so the hot loop
//! clones reference-counted bytes instead of formatting JSON.

use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// The request body type every request uses: one buffer, known length.
pub type Body = Full<Bytes>;

/// The server: the `host:port` to connect to, and the `Host` header value to send.
#[derive(Clone, Debug)]
pub struct Target {
    address: String,
    host: HeaderValue,
}

impl Target {
    /// Parses a base URL such as `http://127.0.0.1:8000` (port 80 by default).
    ///
    /// # Errors
    /// A URL that does not parse, is not `http`, has no host, or has a path other than `/`.
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let uri: Uri = url
            .parse()
            .with_context(|| format!("target `{url}` is not a URL"))?;
        if uri.scheme_str() != Some("http") {
            bail!("target `{url}`: only http:// is supported");
        }
        let Some(authority) = uri.authority() else {
            bail!("target `{url}` has no host");
        };
        if !matches!(uri.path(), "" | "/") {
            bail!("target `{url}`: give the server's base URL, without a path");
        }
        let address = match authority.port_u16() {
            Some(_) => authority.as_str().to_owned(),
            None => format!("{}:80", authority.host()),
        };
        let host = HeaderValue::from_str(authority.as_str())
            .with_context(|| format!("target `{url}`: bad host"))?;
        Ok(Self { address, host })
    }

    /// The `host:port` this target connects to.
    pub fn address(&self) -> &str {
        &self.address
    }
}

/// One keep-alive HTTP/1.1 connection with one request in flight at a time.
pub struct Connection {
    sender: SendRequest<Body>,
    driver: JoinHandle<()>,
}

impl Connection {
    /// Connects (with `TCP_NODELAY`: requests are small and latency is what we measure) and does
    /// the HTTP/1.1 handshake; a task drives the socket until the connection is dropped.
    ///
    /// # Errors
    /// The TCP connect or the handshake failed, or took longer than `timeout`.
    pub async fn open(target: &Target, timeout: Duration) -> anyhow::Result<Self> {
        let connect = async {
            let stream = TcpStream::connect(&target.address).await?;
            stream.set_nodelay(true)?;
            let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
            anyhow::Ok((sender, connection))
        };
        let (sender, connection) = tokio::time::timeout(timeout, connect)
            .await
            .with_context(|| format!("connect to {} timed out", target.address))?
            .with_context(|| format!("connect to {}", target.address))?;
        let driver = tokio::spawn(async move {
            // The connection ends when the server closes it or we drop the sender; either way the
            // next request on it fails and the caller reconnects, so the result carries nothing.
            let _closed = connection.await;
        });
        Ok(Self { sender, driver })
    }

    /// Whether the server has closed this connection (a request on it would fail).
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// Sends `request` and reads the whole response body.
    ///
    /// # Errors
    /// The connection failed or closed mid-exchange, or the exchange took longer than `timeout`;
    /// the caller must then drop this connection.
    pub async fn send(
        &mut self,
        request: Request<Body>,
        timeout: Duration,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let exchange = async {
            self.sender.ready().await?;
            let response = self.sender.send_request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, body))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .context("request timed out")?
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// A request prepared once: method, path, optional JSON body and extra header.
#[derive(Clone, Debug)]
pub struct Template {
    method: Method,
    uri: Uri,
    body: Bytes,
    json: bool,
    header: Option<(HeaderName, HeaderValue)>,
}

impl Template {
    /// `GET path`.
    ///
    /// # Errors
    /// `path` is not a valid request path.
    pub fn get(path: &str) -> anyhow::Result<Self> {
        Ok(Self {
            method: Method::GET,
            uri: parse_path(path)?,
            body: Bytes::new(),
            json: false,
            header: None,
        })
    }

    /// `POST path` with a JSON body.
    ///
    /// # Errors
    /// `path` is not a valid request path.
    pub fn post_json(path: &str, body: impl Into<Bytes>) -> anyhow::Result<Self> {
        Ok(Self {
            method: Method::POST,
            uri: parse_path(path)?,
            body: body.into(),
            json: true,
            header: None,
        })
    }

    /// Adds `authorization: Bearer <token>`.
    ///
    /// # Errors
    /// The token holds characters a header value cannot.
    pub fn bearer(mut self, token: &str) -> anyhow::Result<Self> {
        let value = HeaderValue::from_str(&format!("Bearer {token}"))
            .context("the admin token is not a valid header value")?;
        self.header = Some((AUTHORIZATION, value));
        Ok(self)
    }

    /// A request from this template, for `target`. Clones only reference-counted parts.
    pub fn request(&self, target: &Target) -> Request<Body> {
        self.request_with(target, self.body.clone(), None)
    }

    /// A request from this template with another body and, optionally, one more header: the
    /// flow's order and webhook bodies name a hold only known at run time.
    pub fn request_with(
        &self,
        target: &Target,
        body: Bytes,
        header: Option<(HeaderName, HeaderValue)>,
    ) -> Request<Body> {
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        let headers = request.headers_mut();
        headers.insert(HOST, target.host.clone());
        if self.json {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        for (name, value) in self.header.iter().chain(header.iter()) {
            headers.insert(name.clone(), value.clone());
        }
        request
    }
}

fn parse_path(path: &str) -> anyhow::Result<Uri> {
    path.parse()
        .with_context(|| format!("`{path}` is not a request path"))
}

/// The unsigned integer after `"<field>":` in a JSON body, found by scanning rather than
/// parsing: the flow reads one id from each answer, and a full parse per request would cost
/// the server's CPU. `None` if the field is absent or not a plain number.
pub fn json_u64_field(body: &[u8], field: &str) -> Option<u64> {
    parse_u64_prefix(json_field_value(body, field)?)
}

/// The string after `"<field>":` in a JSON body, without its quotes, found by scanning like
/// [`json_u64_field`]: the expiry storm reads `expires_at` from every granted hold. `None` if
/// the field is absent, not a string, or holds an escape (the server's timestamps never do, and
/// an escaped string would need a real parser to read).
pub fn json_str_field<'a>(body: &'a [u8], field: &str) -> Option<&'a str> {
    let value = json_field_value(body, field)?.strip_prefix(b"\"")?;
    let end = value.iter().position(|&b| b == b'"' || b == b'\\')?;
    if value.get(end) != Some(&b'"') {
        return None;
    }
    std::str::from_utf8(value.get(..end)?).ok()
}

/// The instant an RFC 3339 timestamp names, in milliseconds since the Unix epoch, such as the
/// server's `"2026-11-25T04:22:23.526Z"`. `None` if it does not parse or is before 1970.
pub fn rfc3339_unix_ms(text: &str) -> Option<u64> {
    let at = chrono::DateTime::parse_from_rfc3339(text).ok()?;
    u64::try_from(at.timestamp_millis()).ok()
}

/// The bytes after `"<field>":` (and any blanks) in a JSON body, for the first occurrence of the
/// quoted field name followed by a colon; a name that only appears inside a longer name or as a
/// value is skipped.
fn json_field_value<'a>(body: &'a [u8], field: &str) -> Option<&'a [u8]> {
    let field = field.as_bytes();
    if field.is_empty() {
        return None; // `windows(0)` would panic.
    }
    let mut rest = body;
    while let Some(at) = rest.windows(field.len()).position(|window| window == field) {
        let quoted_before = at.checked_sub(1).and_then(|i| rest.get(i)) == Some(&b'"');
        let after = rest.get(at.saturating_add(field.len())..)?;
        let value = after
            .strip_prefix(b"\"")
            .map(<[u8]>::trim_ascii_start)
            .and_then(|after| after.strip_prefix(b":"));
        if let (true, Some(value)) = (quoted_before, value) {
            return Some(value.trim_ascii_start());
        }
        rest = after;
    }
    None
}

/// The number spelled by the leading ASCII digits of `bytes`; `None` for no digit or overflow.
fn parse_u64_prefix(bytes: &[u8]) -> Option<u64> {
    let digits = bytes.iter().take_while(|b| b.is_ascii_digit());
    let mut value: Option<u64> = None;
    for digit in digits {
        let so_far = value.unwrap_or(0);
        value = Some(
            so_far
                .checked_mul(10)?
                .checked_add(u64::from(digit.saturating_sub(b'0')))?,
        );
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_default_to_port_80_and_refuse_other_schemes() {
        let target = Target::parse("http://localhost").ok();
        assert_eq!(target.as_ref().map(Target::address), Some("localhost:80"));
        let target = Target::parse("http://127.0.0.1:8000/").ok();
        assert_eq!(target.as_ref().map(Target::address), Some("127.0.0.1:8000"));
        assert!(Target::parse("https://127.0.0.1:8000").is_err());
        assert!(Target::parse("http://127.0.0.1:8000/api").is_err());
    }

    #[test]
    fn json_fields_are_found_by_scanning() {
        let body = br#"{"hold_id":42,"product_id":7,"qty":1,"state":"held"}"#;
        assert_eq!(json_u64_field(body, "hold_id"), Some(42));
        assert_eq!(json_u64_field(body, "product_id"), Some(7));
        assert_eq!(json_u64_field(br#"{"id": 9}"#, "id"), Some(9));
        assert_eq!(json_u64_field(body, "order_id"), None);
        assert_eq!(json_u64_field(body, "state"), None);
        assert_eq!(
            json_u64_field(br#"{"xhold_id":1,"hold_id":2}"#, "hold_id"),
            Some(2)
        );
        assert_eq!(
            json_u64_field(br#"{"hold_id":99999999999999999999}"#, "hold_id"),
            None
        );
    }

    #[test]
    fn json_string_fields_are_found_by_scanning_and_escapes_are_refused() {
        let body = br#"{"hold_id":42,"expires_at": "2026-11-25T04:22:23.526Z","state":"held"}"#;
        assert_eq!(
            json_str_field(body, "expires_at"),
            Some("2026-11-25T04:22:23.526Z")
        );
        assert_eq!(json_str_field(body, "state"), Some("held"));
        assert_eq!(json_str_field(body, "hold_id"), None);
        assert_eq!(json_str_field(body, "created_at"), None);
        assert_eq!(json_str_field(br#"{"name":"a\"b"}"#, "name"), None);
        assert_eq!(json_str_field(br#"{"name":"unterminated"#, "name"), None);
        assert_eq!(json_str_field(br#"{"name":""}"#, "name"), Some(""));
    }

    #[test]
    fn rfc3339_timestamps_become_unix_milliseconds() {
        assert_eq!(
            rfc3339_unix_ms("2026-11-25T04:22:23.526Z"),
            Some(1_795_580_543_526)
        );
        assert_eq!(rfc3339_unix_ms("1970-01-01T00:00:01Z"), Some(1_000));
        assert_eq!(rfc3339_unix_ms("1970-01-01T01:00:01+01:00"), Some(1_000));
        assert_eq!(rfc3339_unix_ms("1969-12-31T23:59:59Z"), None);
        assert_eq!(rfc3339_unix_ms("2026-11-25 04:22"), None);
        assert_eq!(rfc3339_unix_ms(""), None);
    }
}
