//! Syslog over a stream (RFC 6587, RFC 5425): each message framed by
//! octet counting (`LEN SP MSG`, what RFC 5425 requires over TLS) or ended
//! by a line feed (non-transparent framing, what many senders use). The
//! framing is read per message from its first byte: a digit starts a
//! count, anything else a line. And the RFC 5424 header of each message.

use bytes::{Buf, Bytes, BytesMut};

/// What the framer found next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    /// One whole message.
    Message(Bytes),
    /// A message over the size limit, skipped.
    Oversize,
}

/// The stream cannot be framed any longer (the connection is closed).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("syslog framing: {0}")]
pub(crate) struct FrameError(pub &'static str);

/// Splits a byte stream into messages of at most `max` bytes.
#[derive(Debug)]
pub(crate) struct Framer {
    max: usize,
    /// Bytes of an oversize counted message still to skip.
    skip: usize,
    /// An oversize line is being skipped up to its line feed.
    skip_line: bool,
}

impl Framer {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max,
            skip: 0,
            skip_line: false,
        }
    }

    /// The next frame in `buf` (consuming it), `Ok(None)` when more bytes are needed.
    pub(crate) fn next(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        loop {
            if self.skip > 0 {
                let n = self.skip.min(buf.len());
                buf.advance(n);
                self.skip -= n;
                if self.skip > 0 {
                    return Ok(None);
                }
                continue;
            }
            if self.skip_line {
                match buf.iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        buf.advance(i + 1);
                        self.skip_line = false;
                        continue;
                    }
                    None => {
                        buf.clear();
                        return Ok(None);
                    }
                }
            }
            // Line feeds between messages (a sender's trailer) are no message.
            let blank = buf
                .iter()
                .take_while(|&&b| matches!(b, b'\n' | b'\r'))
                .count();
            buf.advance(blank);
            let Some(&first) = buf.first() else {
                return Ok(None);
            };
            return if first.is_ascii_digit() {
                self.counted(buf)
            } else {
                Ok(self.line(buf))
            };
        }
    }

    fn counted(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let digits = buf.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits > 9 {
            return Err(FrameError("a message length of more than 9 digits"));
        }
        if digits == buf.len() {
            return Ok(None);
        }
        if buf[digits] != b' ' {
            return Err(FrameError("a message length not followed by a space"));
        }
        let len: usize = std::str::from_utf8(&buf[..digits])
            .expect("ASCII digits")
            .parse()
            .expect("at most 9 digits");
        if len > self.max {
            buf.advance(digits + 1);
            self.skip = len;
            let n = self.skip.min(buf.len());
            buf.advance(n);
            self.skip -= n;
            return Ok(Some(Frame::Oversize));
        }
        if buf.len() < digits + 1 + len {
            return Ok(None);
        }
        buf.advance(digits + 1);
        Ok(Some(Frame::Message(buf.split_to(len).freeze())))
    }

    fn line(&mut self, buf: &mut BytesMut) -> Option<Frame> {
        match buf.iter().position(|&b| b == b'\n') {
            Some(i) if i <= self.max => {
                let mut line = buf.split_to(i + 1);
                line.truncate(i);
                if line.last() == Some(&b'\r') {
                    line.truncate(i - 1);
                }
                Some(Frame::Message(line.freeze()))
            }
            Some(i) => {
                buf.advance(i + 1);
                Some(Frame::Oversize)
            }
            None if buf.len() > self.max => {
                buf.clear();
                self.skip_line = true;
                Some(Frame::Oversize)
            }
            None => None,
        }
    }
}

/// What the ingress reads of an RFC 5424 message: its time (UNIX
/// nanoseconds, `None` for `-`), HOSTNAME, APP-NAME and MSG. A message
/// that is not RFC 5424 (an RFC 3164 line, a bare line) is read whole as
/// MSG, without time or host.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Message<'a> {
    pub time_ns: Option<i64>,
    pub host: &'a str,
    pub app_name: &'a str,
    pub msg: &'a str,
}

/// Reads `text` as RFC 5424 (`<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID
/// MSGID SD [MSG]`), else as a bare MSG.
pub(crate) fn message(text: &str) -> Message<'_> {
    rfc5424(text).unwrap_or(Message {
        time_ns: None,
        host: "",
        app_name: "",
        msg: text,
    })
}

fn rfc5424(text: &str) -> Option<Message<'_>> {
    let rest = text.strip_prefix('<')?;
    let close = rest.find('>').filter(|&i| (1..=3).contains(&i))?;
    rest[..close].parse::<u8>().ok()?;
    let rest = rest[close + 1..].strip_prefix("1 ")?;
    let mut fields = rest.splitn(6, ' ');
    let time = fields.next()?;
    let host = fields.next()?;
    let app_name = fields.next()?;
    let _procid = fields.next()?;
    let _msgid = fields.next()?;
    let rest = fields.next()?;
    let msg = skip_structured_data(rest)?;
    let msg = msg.strip_prefix(' ').unwrap_or(msg);
    let msg = msg.strip_prefix('\u{feff}').unwrap_or(msg);
    Some(Message {
        time_ns: chrono::DateTime::parse_from_rfc3339(time)
            .ok()
            .and_then(|t| t.timestamp_nanos_opt()),
        host: dash(host),
        app_name: dash(app_name),
        msg,
    })
}

/// A NILVALUE (`-`) as empty.
fn dash(s: &str) -> &str {
    if s == "-" { "" } else { s }
}

/// What follows STRUCTURED-DATA: `-`, or `[...]` elements whose quoted
/// values may hold `\"`, `\]` and `\\`.
fn skip_structured_data(s: &str) -> Option<&str> {
    if let Some(rest) = s.strip_prefix('-') {
        return Some(rest);
    }
    let b = s.as_bytes();
    let mut i = 0;
    while b.get(i) == Some(&b'[') {
        let mut quoted = false;
        i += 1;
        loop {
            match *b.get(i)? {
                b'\\' if quoted => i += 2,
                b'"' => {
                    quoted = !quoted;
                    i += 1;
                }
                b']' if !quoted => {
                    i += 1;
                    break;
                }
                _ => i += 1,
            }
        }
    }
    (i > 0).then(|| &s[i..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(framer: &mut Framer, buf: &mut BytesMut) -> Vec<Frame> {
        let mut out = Vec::new();
        while let Some(f) = framer.next(buf).unwrap() {
            out.push(f);
        }
        out
    }

    fn msg(s: &str) -> Frame {
        Frame::Message(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn both_framings_on_one_stream_in_pieces() {
        let stream = b"5 hello<14>1 a\r\n\n11 hello\nworld3 abc";
        let mut f = Framer::new(100);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in stream {
            buf.extend_from_slice(&[*b]);
            got.extend(frames(&mut f, &mut buf));
        }
        assert_eq!(
            got,
            [
                msg("hello"),
                msg("<14>1 a"),
                msg("hello\nworld"),
                msg("abc")
            ]
        );
    }

    #[test]
    fn oversize_messages_are_skipped_and_the_stream_goes_on() {
        let mut f = Framer::new(4);
        let mut buf = BytesMut::from(&b"9 123456789<1>long line\n4 abcdtoolongwithoutend"[..]);
        assert_eq!(
            frames(&mut f, &mut buf),
            [
                Frame::Oversize,
                Frame::Oversize,
                msg("abcd"),
                Frame::Oversize
            ]
        );
        buf.extend_from_slice(b"more\n2 ok");
        assert_eq!(frames(&mut f, &mut buf), [msg("ok")]);
    }

    #[test]
    fn a_broken_count_ends_the_stream() {
        let mut f = Framer::new(100);
        assert_eq!(
            f.next(&mut BytesMut::from(&b"12x"[..])),
            Err(FrameError("a message length not followed by a space"))
        );
        assert!(f.next(&mut BytesMut::from(&b"1234567890 "[..])).is_err());
    }

    #[test]
    fn rfc5424_headers_and_bare_lines() {
        let m = message(
            "<14>1 2024-05-01T10:00:00.5Z api/0 vcap.cloud_controller_ng - - [a@1 x=\"q\\\"]\"][b@2] \u{feff}CEF:0|x",
        );
        assert_eq!(
            m,
            Message {
                time_ns: Some(1_714_557_600_500_000_000),
                host: "api/0",
                app_name: "vcap.cloud_controller_ng",
                msg: "CEF:0|x"
            }
        );
        let m = message("<14>1 - - - - - -");
        assert_eq!((m.time_ns, m.host, m.msg), (None, "", ""));
        let m = message("Jan  1 00:00:00 host app: text");
        assert_eq!((m.host, m.msg), ("", "Jan  1 00:00:00 host app: text"));
    }
}
