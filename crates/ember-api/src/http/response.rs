//! HTTP responses: status line, the few headers the API uses, and a JSON
//! body (a model, or `{"fault_message": "..."}` for errors).

use serde::Serialize;

/// The interim answer to `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// A response ready to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// JSON body, if any.
    pub body: Option<Vec<u8>>,
    /// Close the connection once written.
    pub close: bool,
}

/// The reason phrase of the statuses the server uses.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Payload Too Large",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

#[derive(Serialize)]
struct Fault<'a> {
    fault_message: &'a str,
}

impl Response {
    /// 204 No Content.
    pub fn no_content() -> Self {
        Self {
            status: 204,
            body: None,
            close: false,
        }
    }

    /// 200 with `value` as JSON.
    pub fn json<T: Serialize>(value: &T) -> Self {
        Self {
            status: 200,
            // Models always serialize; an empty object beats a panic.
            body: Some(serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec())),
            close: false,
        }
    }

    /// An error with a `fault_message` body.
    pub fn fault(status: u16, message: &str) -> Self {
        Self {
            status,
            body: Some(
                serde_json::to_vec(&Fault {
                    fault_message: message,
                })
                .unwrap_or_else(|_| b"{}".to_vec()),
            ),
            close: false,
        }
    }

    /// The same response, closing the connection afterwards.
    pub fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// Appends the wire form to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(
            format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status)).as_bytes(),
        );
        out.extend_from_slice(b"Server: Ember API\r\n");
        if self.close {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        match &self.body {
            Some(body) => {
                out.extend_from_slice(b"Content-Type: application/json\r\n");
                out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
                out.extend_from_slice(body);
            }
            None if self.status == 204 => out.extend_from_slice(b"\r\n"),
            None => out.extend_from_slice(b"Content-Length: 0\r\n\r\n"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(r: &Response) -> String {
        let mut v = Vec::new();
        r.write_to(&mut v);
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn wire_format() {
        assert_eq!(
            wire(&Response::no_content()),
            "HTTP/1.1 204 No Content\r\nServer: Ember API\r\n\r\n"
        );
        let f = wire(&Response::fault(400, "bad \"x\"").closing());
        assert!(f.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        assert!(f.contains("Connection: close\r\n"));
        assert!(f.ends_with("\r\n\r\n{\"fault_message\":\"bad \\\"x\\\"\"}"));
        assert!(f.contains("Content-Length: 29\r\n"), "{f}");
        let j = wire(&Response::json(&serde_json::json!({"a": 1})));
        assert!(j.contains("Content-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"a\":1}"));
    }
}
