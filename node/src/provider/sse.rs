//! A server-sent events parser (the WHATWG "event stream interpretation"), sans-IO.
//!
//! Feed it bytes as they arrive, in chunks of any size; it returns complete events. It handles
//! LF, CRLF and lone CR line ends (also a CR at the end of one chunk and its LF at the start of
//! the next), comments (`:`), `event:` names, multi-line `data:` (joined with `\n`), and fields it
//! does not use (`id`, `retry`). Lines and events have hard size limits.

/// Longest line accepted, in bytes.
pub const SSE_LINE_BYTES_MAX: usize = 1024 * 1024;
/// Largest event (all its data lines together) accepted, in bytes.
pub const SSE_EVENT_BYTES_MAX: usize = 4 * 1024 * 1024;

/// An owned event, for tests.
#[cfg(test)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, if any (the spec's default type is `message`).
    pub event: Option<String>,
    pub data: String,
}

#[cfg(test)]
impl SseEvent {
    pub fn as_ref(&self) -> SseEventRef<'_> {
        SseEventRef { event: self.event.as_deref(), data: &self.data }
    }
}

/// An event as [`SseParser::feed_with`] hands it over: borrowed from the parser's buffers, valid
/// for the call only (no allocation per event).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SseEventRef<'a> {
    pub event: Option<&'a str>,
    pub data: &'a str,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    #[error("an event-stream line exceeds {SSE_LINE_BYTES_MAX} bytes")]
    LineTooLong,
    #[error("an event exceeds {SSE_EVENT_BYTES_MAX} bytes")]
    EventTooLarge,
    #[error("an event-stream line is not valid UTF-8")]
    NotUtf8,
}

/// Why [`SseParser::feed_with`] stopped: the stream is broken, or the handler refused an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeedError<E> {
    Sse(SseError),
    Handler(E),
}

impl<E> From<SseError> for FeedError<E> {
    fn from(e: SseError) -> Self {
        FeedError::Sse(e)
    }
}

/// The buffers are reused from event to event: after the first few events of a stream, parsing
/// allocates nothing.
#[derive(Debug, Default)]
pub struct SseParser {
    /// The start of a line whose end has not arrived yet.
    line: Vec<u8>,
    /// The previous chunk ended in CR: a LF at the start of the next one belongs to it.
    after_cr: bool,
    event: String,
    has_event: bool,
    data: String,
    has_data: bool,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses `chunk`, appending every event it completes to `out`.
    #[cfg(test)]
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        let fed = self.feed_with(chunk, |e| {
            out.push(SseEvent { event: e.event.map(str::to_string), data: e.data.to_string() });
            Ok::<(), ()>(())
        });
        match fed {
            Ok(()) => Ok(()),
            Err(FeedError::Sse(e)) => Err(e),
            Err(FeedError::Handler(())) => Ok(()),
        }
    }

    /// Parses `chunk`, calling `on_event` for every event it completes, in order. Stops at the
    /// first error (events completed before it were handed over).
    pub fn feed_with<E>(
        &mut self,
        chunk: &[u8],
        mut on_event: impl FnMut(SseEventRef<'_>) -> Result<(), E>,
    ) -> Result<(), FeedError<E>> {
        let mut rest = chunk;
        if rest.is_empty() {
            // An empty read says nothing about a CR LF pair split around it.
            return Ok(());
        }
        if self.after_cr {
            self.after_cr = false;
            if let Some(stripped) = rest.strip_prefix(b"\n") {
                rest = stripped;
            }
        }
        while let Some(at) = rest.iter().position(|b| *b == b'\n' || *b == b'\r') {
            let was_cr = rest[at] == b'\r';
            if self.line.is_empty() {
                // The whole line is in this chunk: parse it in place.
                self.process_line(&rest[..at], &mut on_event)?;
            } else {
                self.push_line_bytes(&rest[..at])?;
                let line = std::mem::take(&mut self.line);
                let processed = self.process_line(&line, &mut on_event);
                self.line = line;
                self.line.clear();
                processed?;
            }
            rest = &rest[at + 1..];
            if was_cr {
                match rest.first() {
                    Some(b'\n') => rest = &rest[1..],
                    None => self.after_cr = true,
                    Some(_) => {}
                }
            }
        }
        Ok(self.push_line_bytes(rest)?)
    }

    fn push_line_bytes(&mut self, bytes: &[u8]) -> Result<(), SseError> {
        if self.line.len() + bytes.len() > SSE_LINE_BYTES_MAX {
            return Err(SseError::LineTooLong);
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn process_line<E>(
        &mut self,
        line: &[u8],
        on_event: &mut impl FnMut(SseEventRef<'_>) -> Result<(), E>,
    ) -> Result<(), FeedError<E>> {
        if line.len() > SSE_LINE_BYTES_MAX {
            return Err(SseError::LineTooLong.into());
        }
        if line.is_empty() {
            let dispatched = if self.has_data {
                let event = self.has_event.then_some(self.event.as_str());
                on_event(SseEventRef { event, data: &self.data })
            } else {
                Ok(())
            };
            self.event.clear();
            self.has_event = false;
            self.data.clear();
            self.has_data = false;
            return dispatched.map_err(FeedError::Handler);
        }
        let line = std::str::from_utf8(line).map_err(|_| SseError::NotUtf8)?;
        if line.starts_with(':') {
            return Ok(());
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => {
                self.event.clear();
                self.event.push_str(value);
                self.has_event = true;
            }
            "data" => {
                if self.data.len() + value.len() + 1 > SSE_EVENT_BYTES_MAX {
                    return Err(SseError::EventTooLarge.into());
                }
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_all(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut parser = SseParser::new();
        let mut out = Vec::new();
        for chunk in chunks {
            parser.feed(chunk, &mut out).unwrap();
        }
        out
    }

    fn ev(event: Option<&str>, data: &str) -> SseEvent {
        SseEvent { event: event.map(str::to_string), data: data.to_string() }
    }

    #[test]
    fn named_events_comments_and_multiline_data() {
        let text = b": keep-alive\nevent: ping\ndata: {\"a\":1}\n\ndata: line1\ndata:line2\nid: 7\nretry: 5\n\n";
        assert_eq!(
            parse_all(&[text]),
            vec![ev(Some("ping"), "{\"a\":1}"), ev(None, "line1\nline2")]
        );
    }

    #[test]
    fn crlf_and_lone_cr_line_ends_split_across_chunks() {
        let events = parse_all(&[b"data: a\r", b"\n\r", b"\ndata: b\r\r"]);
        assert_eq!(events, vec![ev(None, "a"), ev(None, "b")]);
    }

    #[test]
    fn event_without_data_is_not_dispatched_and_name_does_not_leak() {
        assert_eq!(parse_all(&[b"event: x\n\ndata: y\n\n"]), vec![ev(None, "y")]);
    }

    #[test]
    fn incomplete_event_waits_for_its_blank_line() {
        let mut parser = SseParser::new();
        let mut out = Vec::new();
        parser.feed(b"data: par", &mut out).unwrap();
        parser.feed(b"tial\n", &mut out).unwrap();
        assert!(out.is_empty());
        parser.feed(b"\n", &mut out).unwrap();
        assert_eq!(out, vec![ev(None, "partial")]);
    }

    #[test]
    fn utf8_split_across_chunks_is_reassembled() {
        let text = "data: héllo\n\n".as_bytes();
        let (a, b) = text.split_at(8); // inside the two bytes of 'é'
        assert_eq!(parse_all(&[a, b]), vec![ev(None, "héllo")]);
    }

    #[test]
    fn oversized_line_is_a_typed_error() {
        let mut parser = SseParser::new();
        let big = vec![b'a'; SSE_LINE_BYTES_MAX + 1];
        assert_eq!(parser.feed(&big, &mut Vec::new()), Err(SseError::LineTooLong));
    }

    #[test]
    fn oversized_event_is_a_typed_error() {
        let mut parser = SseParser::new();
        let line = format!("data: {}\n", "a".repeat(SSE_LINE_BYTES_MAX - 10));
        let mut result = Ok(());
        for _ in 0..(SSE_EVENT_BYTES_MAX / SSE_LINE_BYTES_MAX + 1) {
            result = parser.feed(line.as_bytes(), &mut Vec::new());
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(SseError::EventTooLarge));
    }

    proptest! {
        /// However the bytes are cut into chunks, the same events come out.
        #[test]
        fn chunking_does_not_change_events(cuts in proptest::collection::vec(0usize..200, 0..12),
                                           crlf in any::<bool>()) {
            let nl = if crlf { "\r\n" } else { "\n" };
            let text = format!(
                "event: a{nl}data: 1{nl}{nl}: c{nl}data: x{nl}data: y{nl}{nl}event: b{nl}data: ü{nl}{nl}"
            );
            let bytes = text.as_bytes();
            let whole = parse_all(&[bytes]);
            let mut points: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
            points.sort_unstable();
            let mut chunks = Vec::new();
            let mut last = 0;
            for p in points {
                chunks.push(&bytes[last..p]);
                last = p;
            }
            chunks.push(&bytes[last..]);
            prop_assert_eq!(parse_all(&chunks), whole.clone());
            prop_assert_eq!(whole.len(), 3);
        }
    }
}
