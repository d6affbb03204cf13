//! A minimal client for the API socket, used by `vmr ctl` and the tests: one request per
//! connection (`Connection: close`), so the answer is everything after the head.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// One answer: status code and body text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The `fault_message` of an error body, or the body itself.
    pub fn fault_message(&self) -> String {
        serde_json::from_str::<super::schema::ApiErrorBody>(&self.body)
            .map(|b| b.fault_message)
            .unwrap_or_else(|_| self.body.trim().to_string())
    }
}

/// Sends `method path` with an optional JSON body to the socket at `socket`; waits up to 30 s
/// for the answer.
pub fn request(socket: &Path, method: &str, path: &str, body: Option<&str>) -> std::io::Result<Reply> {
    request_within(socket, method, path, body, Some(Duration::from_secs(30)))
}

/// [`request`] with its own answer timeout (`None`: wait as long as the server works, e.g. for
/// vmrd's `shutdown`, which waits for the guest).
pub fn request_within(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Option<Duration>,
) -> std::io::Result<Reply> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(timeout)?;
    let body = body.unwrap_or("");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_reply(&raw)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed HTTP answer"))
}

fn parse_reply(raw: &[u8]) -> Option<Reply> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some(Reply { status, body: body.to_string() })
}

#[cfg(test)]
mod tests {
    #[test]
    fn replies_parse() {
        let r = super::parse_reply(
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 22\r\n\r\n{\"fault_message\":\"x\"}",
        )
        .unwrap();
        assert_eq!(r.status, 400);
        assert_eq!(r.fault_message(), "x");
        assert!(super::parse_reply(b"garbage").is_none());
    }
}
