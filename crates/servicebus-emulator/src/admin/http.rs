//! Just enough HTTP/1.1 for the administration clients: requests with a `Content-Length` or
//! chunked body, kept alive between requests, each within size and time limits.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The most a request's head (request line and headers) may take.
const MAX_HEAD: usize = 64 * 1024;
/// The most a request's body may take: an entity description is a few kilobytes.
pub(super) const MAX_BODY: usize = 1024 * 1024;
const MAX_HEADERS: usize = 64;

/// One request.
#[derive(Debug)]
pub(super) struct Request {
    pub(super) method: String,
    /// The path, percent-decoded, without its leading `/` and without the query.
    pub(super) path: String,
    query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    pub(super) body: Vec<u8>,
}

impl Request {
    /// A header's value (names are case-insensitive).
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// A query parameter's value.
    pub(super) fn query(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Whether the client asked to close the connection after this request.
    pub(super) fn wants_close(&self) -> bool {
        self.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// One response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Response {
    pub(super) status: u16,
    pub(super) content_type: &'static str,
    pub(super) body: String,
}

impl Response {
    pub(super) fn new(status: u16, content_type: &'static str, body: impl Into<String>) -> Self {
        Self { status, content_type, body: body.into() }
    }
}

/// Why a request could not be read. Each is answered (when the connection still can be) and
/// ends the connection.
#[derive(Debug, thiserror::Error)]
pub(super) enum HttpError {
    #[error("the request is malformed: {0}")]
    Malformed(String),
    #[error("the request head is over {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("the request body is over {MAX_BODY} bytes")]
    BodyTooLarge,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl HttpError {
    /// The response that says so, if the peer can still be answered.
    pub(super) fn response(&self) -> Option<Response> {
        let (status, text) = match self {
            Self::Malformed(m) => (400, m.clone()),
            Self::HeadTooLarge => (431, self.to_string()),
            Self::BodyTooLarge => (413, self.to_string()),
            Self::Io(_) => return None,
        };
        Some(Response::new(status, "text/plain; charset=utf-8", text))
    }
}

/// Reads the next request; `None` when the peer closed the connection between requests.
/// `buf` keeps what was read past this request (the next one, pipelined).
pub(super) async fn read_request<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
) -> Result<Option<Request>, HttpError> {
    let (mut request, head_len, body) = loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(buf).map_err(|e| HttpError::Malformed(e.to_string()))? {
            httparse::Status::Complete(head_len) => {
                let target = parsed.path.unwrap_or("/");
                let (path, query) = target.split_once('?').unwrap_or((target, ""));
                let headers: Vec<(String, String)> = parsed
                    .headers
                    .iter()
                    .map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into_owned()))
                    .collect();
                let request = Request {
                    method: parsed.method.unwrap_or("GET").to_string(),
                    path: decode(path.trim_start_matches('/')),
                    query: query
                        .split('&')
                        .filter(|p| !p.is_empty())
                        .map(|p| {
                            let (k, v) = p.split_once('=').unwrap_or((p, ""));
                            (decode(k), decode(v))
                        })
                        .collect(),
                    headers,
                    body: Vec::new(),
                };
                let body = body_kind(&request)?;
                break (request, head_len, body);
            }
            httparse::Status::Partial if buf.len() >= MAX_HEAD => return Err(HttpError::HeadTooLarge),
            httparse::Status::Partial => {
                if io.read_buf(buf).await? == 0 {
                    return if buf.is_empty() {
                        Ok(None)
                    } else {
                        Err(HttpError::Malformed("the connection ended inside a request".into()))
                    };
                }
            }
        }
    };
    buf.advance(head_len);
    request.body = match body {
        Body::Length(n) => {
            while buf.len() < n {
                if io.read_buf(buf).await? == 0 {
                    return Err(HttpError::Malformed("the connection ended inside a request body".into()));
                }
            }
            buf.split_to(n).to_vec()
        }
        Body::Chunked => read_chunked(io, buf).await?,
    };
    Ok(Some(request))
}

enum Body {
    Length(usize),
    Chunked,
}

fn body_kind(request: &Request) -> Result<Body, HttpError> {
    if request.header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        return Ok(Body::Chunked);
    }
    let n = match request.header("content-length") {
        None => 0,
        Some(v) => v.trim().parse::<usize>().map_err(|_| HttpError::Malformed(format!("Content-Length {v:?}")))?,
    };
    if n > MAX_BODY {
        return Err(HttpError::BodyTooLarge);
    }
    Ok(Body::Length(n))
}

/// A chunked body: `size CRLF data CRLF`, ..., `0 CRLF [trailers] CRLF`.
async fn read_chunked<R: AsyncRead + Unpin>(io: &mut R, buf: &mut BytesMut) -> Result<Vec<u8>, HttpError> {
    let mut body = Vec::new();
    loop {
        let line = read_line(io, buf).await?;
        let size = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size, 16).map_err(|_| HttpError::Malformed(format!("chunk size {line:?}")))?;
        if size == 0 {
            // Trailers, up to the empty line.
            while !read_line(io, buf).await?.is_empty() {}
            return Ok(body);
        }
        if body.len() + size > MAX_BODY {
            return Err(HttpError::BodyTooLarge);
        }
        while buf.len() < size + 2 {
            if io.read_buf(buf).await? == 0 {
                return Err(HttpError::Malformed("the connection ended inside a chunk".into()));
            }
        }
        body.extend_from_slice(&buf[..size]);
        if &buf[size..size + 2] != b"\r\n" {
            return Err(HttpError::Malformed("a chunk does not end with CRLF".into()));
        }
        buf.advance(size + 2);
    }
}

async fn read_line<R: AsyncRead + Unpin>(io: &mut R, buf: &mut BytesMut) -> Result<String, HttpError> {
    loop {
        if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8_lossy(&buf[..i]).into_owned();
            buf.advance(i + 2);
            return Ok(line);
        }
        if buf.len() > MAX_HEAD {
            return Err(HttpError::HeadTooLarge);
        }
        if io.read_buf(buf).await? == 0 {
            return Err(HttpError::Malformed("the connection ended inside a chunked body".into()));
        }
    }
}

/// Writes a response with its length.
pub(super) async fn write_response<W: AsyncWrite + Unpin>(
    io: &mut W,
    response: &Response,
    close: bool,
) -> std::io::Result<()> {
    let reason = match response.status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        412 => "Precondition Failed",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    };
    let head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n",
        response.status,
        response.content_type,
        response.body.len(),
        if close { "close" } else { "keep-alive" },
    );
    io.write_all(head.as_bytes()).await?;
    io.write_all(response.body.as_bytes()).await?;
    io.flush().await
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read_all(raw: &[u8]) -> Vec<Result<Option<Request>, String>> {
        let mut io = raw;
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        loop {
            let r = read_request(&mut io, &mut buf).await.map_err(|e| e.to_string());
            let end = !matches!(r, Ok(Some(_)));
            out.push(r);
            if end {
                return out;
            }
        }
    }

    #[tokio::test]
    async fn requests_with_length_and_chunked_bodies_are_read_one_after_another() {
        let raw = b"PUT /a%2Fb?api-version=2021-05&x HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc\
                    GET /$Resources/queues HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n1;x=y\r\n!\r\n0\r\n\r\n";
        let got = read_all(raw).await;
        let first = got[0].as_ref().unwrap().as_ref().unwrap();
        assert_eq!((first.method.as_str(), first.path.as_str(), first.body.as_slice()), ("PUT", "a/b", &b"abc"[..]));
        assert_eq!((first.query("API-VERSION"), first.query("x")), (Some("2021-05"), Some("")));
        assert_eq!(first.header("HOST"), Some("h"));
        let second = got[1].as_ref().unwrap().as_ref().unwrap();
        assert_eq!((second.path.as_str(), second.body.as_slice()), ("$Resources/queues", &b"hi!"[..]));
        assert!(matches!(got[2], Ok(None)), "the peer closed between requests");
    }

    #[tokio::test]
    async fn bad_and_oversized_requests_are_refused_with_a_status() {
        let cases: [(&[u8], u16); 4] = [
            (b"NOT HTTP\r\n\r\n", 400),
            (b"PUT / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n", 413),
            (b"PUT / HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400),
            (b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
        ];
        for (raw, status) in cases {
            let got = read_all(raw).await;
            let e = match &got[0] {
                Err(e) => e.clone(),
                other => panic!("{other:?}"),
            };
            let mut io = raw;
            let err = read_request(&mut io, &mut BytesMut::new()).await.unwrap_err();
            assert_eq!(err.response().map(|r| r.status), Some(status), "{e}");
        }
        let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEAD));
        let mut io = huge.as_bytes();
        let err = read_request(&mut io, &mut BytesMut::new()).await.unwrap_err();
        assert!(matches!(err, HttpError::HeadTooLarge), "{err}");
    }
}
