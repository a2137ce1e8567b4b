//! Server-Sent Events, parsed with a cap on what one event may hold.
//!
//! The gateway writes `data: <batch>\n\n` frames (a batch on one line,
//! megabytes at times), `event: heartbeat` and `event: closing`. A line or
//! an event larger than the cap is not kept: its bytes are dropped as they
//! arrive, up to the end of its line, and at the end of its event it is
//! reported as [`Sse::Oversized`] once. The stream then goes on with the
//! next event (SSE resynchronises at every line end); a line that never
//! ends is cut by the source's idle timer, which only complete events
//! reset. Lines end with `\n` or `\r\n` (the gateway writes `\n`).
//!
//! Our own parser rather than the `sse-stream` crate it replaced: that crate
//! keeps a line whole in memory whatever its length, so a `data:` line that
//! never ended grew the nozzle's RSS to 2.86 GB in 10 s (issue 17), and it
//! has no limit to set.

/// What the parser found.
#[derive(Debug, PartialEq, Eq)]
pub enum Sse {
    /// A complete event: its type (`None` when it had no `event:` line)
    /// and its data lines joined by `\n`.
    Event {
        event: Option<String>,
        data: Vec<u8>,
    },
    /// An event (or a line) larger than the cap was skipped; `bytes` of it
    /// were seen.
    Oversized { bytes: usize },
}

/// The largest line buffer kept for the next line (a batch is one line).
const KEEP_LINE_BYTES: usize = 4 << 20;

/// An SSE parser whose memory stays under about twice `max` bytes.
#[derive(Debug)]
pub(crate) struct SseParser {
    max: usize,
    /// The current line, up to its end.
    line: Vec<u8>,
    /// Dropping the rest of a line that went over the cap.
    discarding: bool,
    event: Option<String>,
    data: Vec<u8>,
    /// The current event went over the cap: bytes seen, to report at its end.
    oversized: Option<usize>,
}

impl SseParser {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            line: Vec::new(),
            discarding: false,
            event: None,
            data: Vec::new(),
            oversized: None,
        }
    }

    /// Parses `chunk`, appending what it completes to `out`.
    pub fn push(&mut self, mut chunk: &[u8], out: &mut Vec<Sse>) {
        while !chunk.is_empty() {
            let end = memchr::memchr(b'\n', chunk);
            let (part, rest) = match end {
                Some(i) => (&chunk[..i], Some(&chunk[i + 1..])),
                None => (chunk, None),
            };
            if self.discarding {
                *self.oversized.get_or_insert(0) += part.len();
            } else if self.line.len() + part.len() > self.max {
                let seen = self.line.len() + part.len();
                *self.oversized.get_or_insert(0) += seen + self.data.len();
                self.line = Vec::new();
                self.data = Vec::new();
                self.discarding = true;
            } else {
                self.line.extend_from_slice(part);
            }
            match rest {
                None => return,
                Some(rest) => {
                    if self.discarding {
                        self.discarding = false;
                    } else {
                        let line = std::mem::take(&mut self.line);
                        self.line_done(&line, out);
                        // Keep the allocation for the next line unless it is
                        // very large: a frame is one line, and growing a fresh
                        // buffer to a frame's size copied it about twice more
                        // (`--mode gateway`, the SSE reader's largest cost).
                        if line.capacity() <= KEEP_LINE_BYTES {
                            self.line = line;
                            self.line.clear();
                        }
                    }
                    chunk = rest;
                }
            }
        }
    }

    /// The stream ended: an oversized event cut by the end is reported.
    pub fn finish(&mut self, out: &mut Vec<Sse>) {
        if let Some(bytes) = self.oversized.take() {
            out.push(Sse::Oversized {
                bytes: bytes + self.line.len(),
            });
        }
    }

    fn line_done(&mut self, line: &[u8], out: &mut Vec<Sse>) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            let event = self.event.take();
            let mut data = std::mem::take(&mut self.data);
            if let Some(bytes) = self.oversized.take() {
                out.push(Sse::Oversized { bytes });
            } else if !data.is_empty() || event.is_some() {
                data.pop(); // the `\n` after the last data line
                out.push(Sse::Event { event, data });
            }
            return;
        }
        if line[0] == b':' {
            return; // a comment
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let value = &line[i + 1..];
                (&line[..i], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" if self.oversized.is_some() => {
                *self.oversized.get_or_insert(0) += value.len();
            }
            b"data" if self.data.len() + value.len() + 1 > self.max => {
                *self.oversized.get_or_insert(0) += self.data.len() + value.len();
                self.data = Vec::new();
            }
            b"data" => {
                // Most events have one data line: sized once, with its `\n`.
                self.data.reserve(value.len() + 1);
                self.data.extend_from_slice(value);
                self.data.push(b'\n');
            }
            b"event" => self.event = Some(String::from_utf8_lossy(value).into_owned()),
            _ => {} // id, retry: not used
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(max: usize, chunks: &[&[u8]]) -> Vec<Sse> {
        let mut p = SseParser::new(max);
        let mut out = Vec::new();
        for c in chunks {
            p.push(c, &mut out);
        }
        p.finish(&mut out);
        out
    }

    fn event(event: Option<&str>, data: &str) -> Sse {
        Sse::Event {
            event: event.map(str::to_string),
            data: data.as_bytes().to_vec(),
        }
    }

    #[test]
    fn events_split_anywhere_comments_crlf_and_multi_line_data() {
        let text = b"data: {\"batch\":[]}\n\n: comment\r\nevent: heartbeat\r\ndata: 15\r\n\r\ndata:a\ndata: b\n\nevent: closing\ndata: closing due to stream timeout\n\n";
        let want = vec![
            event(None, "{\"batch\":[]}"),
            event(Some("heartbeat"), "15"),
            event(None, "a\nb"),
            event(Some("closing"), "closing due to stream timeout"),
        ];
        assert_eq!(parse(1024, &[text]), want);
        let bytes: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(parse(1024, &bytes), want, "byte by byte");
    }

    #[test]
    fn an_oversized_line_or_event_is_skipped_once_and_the_next_event_arrives() {
        let long = vec![b'x'; 100];
        let mut text = b"data: ok1\n\ndata: ".to_vec();
        text.extend(&long);
        text.extend(b"\n\ndata: ok2\n\ndata: 0123456789\ndata: 0123456789\ndata: 0123456789\n\ndata: ok3\n\n");
        let out = parse(32, &text.chunks(7).collect::<Vec<_>>());
        assert_eq!(
            out,
            vec![
                event(None, "ok1"),
                Sse::Oversized { bytes: 106 },
                event(None, "ok2"),
                Sse::Oversized { bytes: 32 },
                event(None, "ok3"),
            ]
        );
    }

    #[test]
    fn a_line_cut_by_the_end_of_the_stream_is_reported_and_memory_stays_bounded() {
        let mut p = SseParser::new(1024);
        let mut out = Vec::new();
        p.push(b"data: ", &mut out);
        for _ in 0..10_000 {
            p.push(&[b'y'; 1000], &mut out);
            assert!(p.line.capacity() <= 2048 && p.data.capacity() <= 2048);
        }
        assert!(out.is_empty());
        p.finish(&mut out);
        assert_eq!(out, vec![Sse::Oversized { bytes: 10_000_006 }]);
    }
}
