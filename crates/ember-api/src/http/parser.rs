//! Request framing: finds where one HTTP/1.x request ends in a connection's
//! buffer, using `httparse` for the request line and headers.
//!
//! Only what the API needs is supported: bodies with `Content-Length`.
//! Everything else gets a precise 4xx ([`FramingError`]) and, when the
//! request's end cannot be known, the connection is closed after it.

/// What the head of a request says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// The method token as sent.
    pub method: String,
    /// The path, without query string or absolute-form prefix.
    pub path: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// The declared body length, if any.
    pub content_length: Option<usize>,
    /// `Expect: 100-continue` was sent.
    pub expect_continue: bool,
    /// The client wants the connection closed after the response.
    pub wants_close: bool,
    /// Bytes taken by the request line and headers.
    pub head_len: usize,
}

impl RequestHead {
    /// Bytes taken by the whole request.
    pub fn total_len(&self) -> usize {
        self.head_len + self.content_length.unwrap_or(0)
    }
}

/// A request that cannot be served, with the status to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FramingError {
    /// 4xx status.
    pub status: u16,
    /// The `fault_message`.
    pub message: String,
}

fn framing(status: u16, message: impl Into<String>) -> FramingError {
    FramingError {
        status,
        message: message.into(),
    }
}

/// Limits applied while framing.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Request line plus headers.
    pub max_head_bytes: usize,
    /// Body.
    pub max_body_bytes: usize,
}

/// The most headers a request may carry.
pub const MAX_HEADERS: usize = 64;

fn strip_target(target: &str) -> &str {
    // Absolute form: "http://host/path" -> "/path".
    let path = match target.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => target,
    };
    // The API has no query parameters; ignore any.
    path.split(['?', '#']).next().unwrap_or("/")
}

/// Parses the head at the start of `buf`. `Ok(None)`: more bytes needed.
pub fn parse_head(buf: &[u8], limits: Limits) -> Result<Option<RequestHead>, FramingError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > limits.max_head_bytes {
                return Err(framing(
                    431,
                    format!(
                        "The request line and headers exceed the limit of {} bytes.",
                        limits.max_head_bytes
                    ),
                ));
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(framing(
                431,
                format!("Too many headers: at most {MAX_HEADERS} are accepted."),
            ))
        }
        Err(httparse::Error::Version) => {
            return Err(framing(
                400,
                "Invalid HTTP Version: Unsupported HTTP version. Use HTTP/1.0 or HTTP/1.1.",
            ))
        }
        Err(e) => return Err(framing(400, format!("Invalid HTTP request: {e}."))),
    };
    if head_len > limits.max_head_bytes {
        return Err(framing(
            431,
            format!(
                "The request line and headers exceed the limit of {} bytes.",
                limits.max_head_bytes
            ),
        ));
    }
    let method = req.method.unwrap_or_default().to_string();
    let target = req.path.unwrap_or("/");
    let minor_version = req.version.unwrap_or(1);
    let mut content_length: Option<usize> = None;
    let mut expect_continue = false;
    let mut connection_close = false;
    let mut connection_keep_alive = false;
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value)
            .map_err(|_| framing(400, format!("The {} header is not valid text.", h.name)))?
            .trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Err(framing(400, format!("Invalid Content-Length {value:?}.")));
            }
            // Too many digits to fit: certainly above the limit.
            let len = value.parse::<usize>().unwrap_or(usize::MAX);
            if content_length.is_some_and(|old| old != len) {
                return Err(framing(400, "Conflicting Content-Length headers."));
            }
            content_length = Some(len);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(framing(
                411,
                "Transfer-Encoding (e.g. chunked) is not supported: send the body with a \
                 Content-Length header.",
            ));
        } else if h.name.eq_ignore_ascii_case("expect") {
            if value.eq_ignore_ascii_case("100-continue") {
                expect_continue = minor_version == 1;
            } else {
                return Err(framing(
                    417,
                    format!("Unsupported expectation {value:?}: only 100-continue is supported."),
                ));
            }
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in value.split(',') {
                let token = token.trim();
                connection_close |= token.eq_ignore_ascii_case("close");
                connection_keep_alive |= token.eq_ignore_ascii_case("keep-alive");
            }
        }
    }
    if let Some(len) = content_length {
        if len > limits.max_body_bytes {
            return Err(framing(
                413,
                format!(
                    "Request payload with size {len} is larger than the limit of {} allowed by \
                     server.",
                    limits.max_body_bytes
                ),
            ));
        }
    }
    // Without Content-Length a request has no body (RFC 9112). A PUT or
    // PATCH like that gets "Empty PUT request." and, since body bytes may
    // follow that cannot be framed, the connection is closed after it.
    let unframed = content_length.is_none() && (method == "PUT" || method == "PATCH");
    let wants_close =
        unframed || connection_close || (minor_version == 0 && !connection_keep_alive);
    Ok(Some(RequestHead {
        method,
        path: strip_target(target).to_string(),
        minor_version,
        content_length,
        expect_continue,
        wants_close,
        head_len,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_head_bytes: 1024,
        max_body_bytes: 100,
    };

    fn parse(s: &str) -> Result<Option<RequestHead>, FramingError> {
        parse_head(s.as_bytes(), LIMITS)
    }

    #[test]
    fn complete_and_partial_heads() {
        let h = parse("PUT /drives/a HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}")
            .unwrap()
            .unwrap();
        assert_eq!(h.method, "PUT");
        assert_eq!(h.path, "/drives/a");
        assert_eq!(h.content_length, Some(2));
        assert_eq!(h.total_len(), h.head_len + 2);
        assert!(!h.wants_close);
        assert_eq!(parse("GET / HTTP/1.1\r\nHost: x\r\n").unwrap(), None);
        let h = parse("GET http://localhost/version?x=1 HTTP/1.0\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.path, "/version");
        assert!(h.wants_close);
        let h = parse("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!h.wants_close);
        let h = parse("GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.wants_close);
        let h = parse("PUT /vm HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.expect_continue);
        let h = parse("PUT /actions HTTP/1.1\r\n\r\n").unwrap().unwrap();
        assert_eq!(h.content_length, None);
        assert!(h.wants_close);
    }

    #[test]
    fn refused_framings() {
        let status = |s: &str| parse(s).unwrap_err().status;
        assert_eq!(
            status("PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            411
        );
        assert_eq!(status("PUT / HTTP/1.1\r\nContent-Length: 101\r\n\r\n"), 413);
        assert_eq!(
            status("PUT / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n"),
            413
        );
        assert_eq!(status("PUT / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"), 400);
        assert_eq!(
            status("PUT / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            400
        );
        assert_eq!(
            status("PUT / HTTP/1.1\r\nExpect: magic\r\nContent-Length: 1\r\n\r\n"),
            417
        );
        assert_eq!(status("GET / HTTP/2.0\r\n\r\n"), 400);
        assert_eq!(status("GET / FTP/1.1\r\n\r\n"), 400);
        assert_eq!(status("\x01\x02 garbage\r\n\r\n"), 400);
        let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(2000));
        assert_eq!(status(&long), 431);
        let many: String = (0..70).map(|i| format!("X-{i}: y\r\n")).collect();
        assert_eq!(status(&format!("GET / HTTP/1.1\r\n{many}\r\n")), 431);
    }
}
