//! Incremental Server-Sent-Events parser (WHATWG HTML "event stream interpretation").
//!
//! It sees the response body as the proxy forwards it, in chunks that may split anywhere:
//! inside a line, inside a CRLF pair, inside a UTF-8 sequence. It works on bytes and decodes
//! only the finished event, so a split never changes what comes out: pushing a stream one byte
//! at a time yields the same events, with the same offsets, as pushing it whole.
//!
//! Memory is bounded by `max_event_bytes`: a line or event past the cap is dropped as it streams
//! by (never buffered) and counted in [`SseParser::oversized_events`].

use std::borrow::Cow;

/// One dispatched event, owned.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// The `event:` field; `None` when absent or empty (the spec's default type "message").
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`, decoded as UTF-8 (invalid bytes replaced).
    pub data: String,
    /// Absolute byte offset (over everything pushed) just past the blank line that dispatched
    /// the event, so the caller can map it to the arrival time of that byte.
    pub end_offset: usize,
}

/// One dispatched event, borrowed from the parser's buffers: the allocation-free form that the
/// body parsers use on the hot path (`serde_json` reads `data` straight from these bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SseEventRef<'a> {
    /// The raw `event:` value; `None` when absent or empty.
    pub event: Option<&'a [u8]>,
    /// The raw joined `data:` bytes (not validated as UTF-8).
    pub data: &'a [u8],
    /// See [`SseEvent::end_offset`].
    pub end_offset: usize,
}

impl SseEventRef<'_> {
    /// The event type as text (lossy).
    pub fn event_str(&self) -> Option<Cow<'_, str>> {
        self.event.map(String::from_utf8_lossy)
    }

    /// The data as text (lossy).
    pub fn data_str(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(self.data)
    }

    /// An owned copy.
    pub fn to_owned_event(&self) -> SseEvent {
        SseEvent {
            event: self.event.map(|e| String::from_utf8_lossy(e).into_owned()),
            data: String::from_utf8_lossy(self.data).into_owned(),
            end_offset: self.end_offset,
        }
    }
}

/// The incremental parser. Feed it with [`push`](Self::push) or [`push_with`](Self::push_with),
/// then call [`finish`](Self::finish) at end of body.
#[derive(Debug, Clone)]
pub struct SseParser {
    max: usize,
    /// Bytes pushed so far: the absolute offset of the next chunk's first byte.
    offset: usize,
    /// A line not yet terminated, carried over from earlier chunks.
    line: Vec<u8>,
    /// The carried-over line passed the cap: drop bytes until its end.
    line_overflow: bool,
    /// The previous chunk ended with CR: a leading LF in the next chunk belongs to it.
    after_cr: bool,
    /// That trailing CR ended a blank line; its dispatch waits until we know whether an LF
    /// follows, so `end_offset` does not depend on where the chunk boundary fell.
    deferred_dispatch: bool,
    /// Nothing has been processed yet (a leading UTF-8 BOM is stripped from the first line).
    first_line: bool,
    data: Vec<u8>,
    has_data: bool,
    event_type: Vec<u8>,
    /// Bytes of `data:`/`event:` lines in the current event, for the cap.
    event_bytes: usize,
    /// The current event passed the cap: ignore its lines until the blank line.
    oversized: bool,
    oversized_events: u64,
    last_event_id: Option<String>,
    retry_ms: Option<u64>,
}

impl SseParser {
    /// A parser that drops any single line or event larger than `max_event_bytes`.
    pub fn new(max_event_bytes: usize) -> Self {
        SseParser {
            max: max_event_bytes,
            offset: 0,
            line: Vec::new(),
            line_overflow: false,
            after_cr: false,
            deferred_dispatch: false,
            first_line: true,
            data: Vec::new(),
            has_data: false,
            event_type: Vec::new(),
            event_bytes: 0,
            oversized: false,
            oversized_events: 0,
            last_event_id: None,
            retry_ms: None,
        }
    }

    /// Events (or lines) dropped for passing the size cap so far.
    pub fn oversized_events(&self) -> u64 {
        self.oversized_events
    }

    /// Total bytes pushed so far.
    pub fn bytes_seen(&self) -> usize {
        self.offset
    }

    /// The last `id:` field seen (the spec's "last event ID").
    pub fn last_event_id(&self) -> Option<&str> {
        self.last_event_id.as_deref()
    }

    /// The last valid `retry:` field seen, in milliseconds.
    pub fn retry_ms(&self) -> Option<u64> {
        self.retry_ms
    }

    /// Feeds a chunk, appending every event it completes to `out`.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<SseEvent>) {
        self.push_with(chunk, |ev| out.push(ev.to_owned_event()));
    }

    /// Feeds a chunk, calling `on_event` for every event it completes, without allocating.
    pub fn push_with<F: FnMut(SseEventRef<'_>)>(&mut self, chunk: &[u8], mut on_event: F) {
        if chunk.is_empty() {
            return;
        }
        let base = self.offset;
        self.offset += chunk.len();
        let mut pos = 0;
        if self.after_cr {
            self.after_cr = false;
            if chunk[0] == b'\n' {
                pos = 1;
            }
            if self.deferred_dispatch {
                self.deferred_dispatch = false;
                self.dispatch(base + pos, &mut on_event);
            }
        }
        let len = chunk.len();
        while pos < len {
            let Some(rel) = memchr::memchr2(b'\n', b'\r', &chunk[pos..]) else {
                self.buffer_partial(&chunk[pos..]);
                break;
            };
            let eol = pos + rel;
            let mut line_end_at_chunk_end = false;
            let next = if chunk[eol] == b'\r' {
                match chunk.get(eol + 1) {
                    Some(b'\n') => eol + 2,
                    Some(_) => eol + 1,
                    None => {
                        line_end_at_chunk_end = true;
                        eol + 1
                    }
                }
            } else {
                eol + 1
            };
            if self.line.is_empty() && !self.line_overflow {
                self.process_line(
                    &chunk[pos..eol],
                    base + next,
                    line_end_at_chunk_end,
                    &mut on_event,
                );
            } else {
                self.buffer_partial(&chunk[pos..eol]);
                if self.line_overflow {
                    // The line was already dropped and the event marked oversized.
                    self.line_overflow = false;
                    self.line.clear();
                } else {
                    let line = std::mem::take(&mut self.line);
                    self.process_line(&line, base + next, line_end_at_chunk_end, &mut on_event);
                    self.line = line;
                    self.line.clear();
                }
            }
            if line_end_at_chunk_end {
                self.after_cr = true;
            }
            pos = next;
        }
    }

    /// Ends the stream, appending a last event if a trailing CR completed one. Returns true when
    /// trailing bytes formed an incomplete event (a partial line or an event with no blank line
    /// after it): the body was cut mid-event. The spec discards such an event, and so do we.
    pub fn finish(&mut self, out: &mut Vec<SseEvent>) -> bool {
        self.finish_with(|ev| out.push(ev.to_owned_event()))
    }

    /// [`finish`](Self::finish) with a callback instead of a vector.
    pub fn finish_with<F: FnMut(SseEventRef<'_>)>(&mut self, mut on_event: F) -> bool {
        if self.after_cr {
            self.after_cr = false;
            if self.deferred_dispatch {
                self.deferred_dispatch = false;
                self.dispatch(self.offset, &mut on_event);
            }
        }
        let incomplete = !self.line.is_empty()
            || self.line_overflow
            || self.has_data
            || self.oversized
            || !self.event_type.is_empty();
        if self.oversized || self.line_overflow {
            self.oversized_events += 1;
        }
        self.line.clear();
        self.line_overflow = false;
        self.reset_event();
        incomplete
    }

    /// Appends an unterminated piece of line to the carry-over buffer, dropping it (and marking
    /// the event oversized) once the line passes the cap.
    fn buffer_partial(&mut self, bytes: &[u8]) {
        if self.line_overflow {
            return;
        }
        if self.line.len() + bytes.len() > self.max {
            self.line.clear();
            self.line.shrink_to(self.max.min(64 * 1024));
            self.line_overflow = true;
            self.mark_oversized();
            return;
        }
        self.line.extend_from_slice(bytes);
    }

    fn mark_oversized(&mut self) {
        self.oversized = true;
        self.data.clear();
        self.data.shrink_to(self.max.min(64 * 1024));
        self.has_data = false;
        self.event_type.clear();
    }

    fn reset_event(&mut self) {
        self.data.clear();
        self.has_data = false;
        self.event_type.clear();
        self.event_bytes = 0;
        self.oversized = false;
    }

    fn process_line<F: FnMut(SseEventRef<'_>)>(
        &mut self,
        mut line: &[u8],
        end_offset: usize,
        defer_blank: bool,
        on_event: &mut F,
    ) {
        // Measured before the BOM strip, as the carry-over buffer measures it.
        let raw_len = line.len();
        if self.first_line {
            self.first_line = false;
            if let Some(rest) = line.strip_prefix(b"\xEF\xBB\xBF") {
                line = rest;
            }
        }
        if line.is_empty() {
            if defer_blank {
                self.deferred_dispatch = true;
            } else {
                self.dispatch(end_offset, on_event);
            }
            return;
        }
        if self.oversized {
            return;
        }
        if raw_len > self.max {
            self.mark_oversized();
            return;
        }
        if line[0] == b':' {
            return; // comment
        }
        let (name, value) = match memchr::memchr(b':', line) {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match name {
            b"data" => {
                self.event_bytes += line.len();
                if self.event_bytes > self.max {
                    self.mark_oversized();
                    return;
                }
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            b"event" => {
                self.event_bytes += line.len();
                if self.event_bytes > self.max {
                    self.mark_oversized();
                    return;
                }
                self.event_type.clear();
                self.event_type.extend_from_slice(value);
            }
            b"id" if memchr::memchr(0, value).is_none() => {
                self.last_event_id = Some(String::from_utf8_lossy(value).into_owned());
            }
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                // Digits only, so the only failure is overflow: ignored like the spec's
                // "not a number" case.
                if let Ok(ms) = std::str::from_utf8(value).unwrap_or("").parse::<u64>() {
                    self.retry_ms = Some(ms);
                }
            }
            _ => {}
        }
    }

    fn dispatch<F: FnMut(SseEventRef<'_>)>(&mut self, end_offset: usize, on_event: &mut F) {
        if self.oversized {
            self.oversized_events += 1;
        } else if self.has_data {
            on_event(SseEventRef {
                event: if self.event_type.is_empty() {
                    None
                } else {
                    Some(&self.event_type)
                },
                data: &self.data,
                end_offset,
            });
        }
        self.reset_event();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(chunks: &[&[u8]], max: usize) -> (Vec<SseEvent>, bool, u64) {
        let mut p = SseParser::new(max);
        let mut out = Vec::new();
        for c in chunks {
            p.push(c, &mut out);
        }
        let incomplete = p.finish(&mut out);
        (out, incomplete, p.oversized_events())
    }

    fn parse_whole(body: &[u8]) -> Vec<SseEvent> {
        parse_all(&[body], 1 << 20).0
    }

    fn ev(event: Option<&str>, data: &str, end: usize) -> SseEvent {
        SseEvent {
            event: event.map(str::to_owned),
            data: data.to_owned(),
            end_offset: end,
        }
    }

    /// Small deterministic PRNG so split tests are reproducible without extra crates.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    const MIXED: &[u8] = b"\xEF\xBB\xBF: comment at start\r\n\
event: message_start\r\n\
data: {\"type\":\"message_start\"}\r\n\
\r\n\
data: first\n\
data:second\n\
data\n\
\n\
id: 42\r\
retry: 1500\r\
event: \r\
data: caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80\r\
\r\
: keep-alive\n\
\n\
event: only-type-no-data\n\
\n\
data: [DONE]\r\n\r\n";

    #[test]
    fn whole_stream_parses_every_line_ending_and_field_form() {
        let events = parse_whole(MIXED);
        let expected_texts: Vec<(Option<&str>, &str)> = vec![
            (Some("message_start"), "{\"type\":\"message_start\"}"),
            (None, "first\nsecond\n"),
            (None, "caf\u{e9} \u{20ac} \u{1f600}"),
            (None, "[DONE]"),
        ];
        let got: Vec<(Option<&str>, &str)> = events
            .iter()
            .map(|e| (e.event.as_deref(), e.data.as_str()))
            .collect();
        assert_eq!(got, expected_texts);
        assert_eq!(events.last().map(|e| e.end_offset), Some(MIXED.len()));
    }

    #[test]
    fn end_offset_points_just_past_the_dispatching_blank_line() {
        let body = b"data: a\n\ndata: b\r\n\r\ndata: c\r\r";
        let events = parse_whole(body);
        assert_eq!(
            events,
            vec![ev(None, "a", 9), ev(None, "b", 20), ev(None, "c", 29)]
        );
        assert_eq!(&body[..9], b"data: a\n\n");
    }

    #[test]
    fn one_byte_pushes_give_identical_events_and_offsets() {
        let whole = parse_whole(MIXED);
        let bytes: Vec<&[u8]> = MIXED.chunks(1).collect();
        let (split, incomplete, _) = parse_all(&bytes, 1 << 20);
        assert_eq!(split, whole);
        assert!(!incomplete);
    }

    #[test]
    fn random_splits_give_identical_events_and_offsets() {
        let whole = parse_whole(MIXED);
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        for _ in 0..500 {
            let mut chunks = Vec::new();
            let mut pos = 0;
            while pos < MIXED.len() {
                let n = 1 + (rng.next() % 9) as usize;
                let end = (pos + n).min(MIXED.len());
                chunks.push(&MIXED[pos..end]);
                pos = end;
            }
            let (split, _, _) = parse_all(&chunks, 1 << 20);
            assert_eq!(split, whole);
        }
    }

    #[test]
    fn every_two_way_split_point_gives_identical_events() {
        let whole = parse_whole(MIXED);
        for cut in 0..=MIXED.len() {
            let (split, _, _) = parse_all(&[&MIXED[..cut], &MIXED[cut..]], 1 << 20);
            assert_eq!(split, whole, "cut at {cut}");
        }
    }

    #[test]
    fn crlf_split_between_cr_and_lf_counts_the_lf_in_the_offset() {
        let (events, _, _) = parse_all(&[b"data: x\r\n\r", b"\ndata: y\r\n\r\n"], 1024);
        assert_eq!(events, vec![ev(None, "x", 11), ev(None, "y", 22)]);
    }

    #[test]
    fn lone_cr_at_end_of_body_still_dispatches_on_finish() {
        let mut p = SseParser::new(1024);
        let mut out = Vec::new();
        p.push(b"data: x\r\r", &mut out);
        assert!(out.is_empty(), "dispatch waits to see if an LF follows");
        assert!(!p.finish(&mut out));
        assert_eq!(out, vec![ev(None, "x", 9)]);
    }

    #[test]
    fn multi_line_data_joins_with_newline_and_keeps_empty_lines() {
        let events = parse_whole(b"data: line one\ndata:\ndata:  two spaces\n\n");
        assert_eq!(events[0].data, "line one\n\n two spaces");
    }

    #[test]
    fn only_one_leading_space_is_stripped_and_colon_in_value_kept() {
        let events = parse_whole(b"data:   {\"a\":\"b:c\"}\n\n");
        assert_eq!(events[0].data, "  {\"a\":\"b:c\"}");
    }

    #[test]
    fn field_without_colon_is_field_with_empty_value() {
        let events = parse_whole(b"data\n\nevent\ndata: x\n\n");
        assert_eq!(events, vec![ev(None, "", 6), ev(None, "x", 21)]);
    }

    #[test]
    fn comments_unknown_fields_and_dataless_events_do_not_dispatch() {
        let events = parse_whole(b": hello\n\nfoo: bar\n\nevent: ping\n\nid: 7\n\n");
        assert!(events.is_empty());
    }

    #[test]
    fn event_type_resets_after_each_dispatch() {
        let events = parse_whole(b"event: a\ndata: 1\n\ndata: 2\n\n");
        assert_eq!(events[0].event.as_deref(), Some("a"));
        assert_eq!(events[1].event, None);
    }

    #[test]
    fn id_and_retry_fields_are_tracked_and_id_with_nul_ignored() {
        let mut p = SseParser::new(1024);
        let mut out = Vec::new();
        p.push(
            b"id: abc\nretry: 2500\ndata: x\n\nid: a\x00b\nretry: 12x\ndata: y\n\n",
            &mut out,
        );
        assert_eq!(out.len(), 2);
        assert_eq!(p.last_event_id(), Some("abc"));
        assert_eq!(p.retry_ms(), Some(2500));
    }

    #[test]
    fn leading_bom_is_stripped_only_at_stream_start() {
        let events = parse_whole(b"\xEF\xBB\xBFdata: a\n\n\xEF\xBB\xBFdata: b\n\n");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].data, "a");
    }

    #[test]
    fn invalid_utf8_is_replaced_not_fatal() {
        let events = parse_whole(b"data: \xFF\xFEok\xC3\n\n\x00\x01\x02\n\ndata: after\n\n");
        assert_eq!(events[0].data, "\u{FFFD}\u{FFFD}ok\u{FFFD}");
        assert_eq!(events[1].data, "after");
    }

    #[test]
    fn utf8_sequence_split_across_chunks_decodes_intact() {
        let body = "data: 日本語 🙂\n\n".as_bytes();
        for cut in 0..body.len() {
            let (events, _, _) = parse_all(&[&body[..cut], &body[cut..]], 1024);
            assert_eq!(events[0].data, "日本語 🙂");
        }
    }

    #[test]
    fn oversized_event_is_dropped_counted_and_parsing_resumes() {
        let mut body = b"data: small\n\ndata: ".to_vec();
        body.extend(std::iter::repeat_n(b'x', 5000));
        body.extend_from_slice(b"\ndata: more\n\ndata: after\n\n");
        for chunk_size in [1, 7, 100, 4096, body.len()] {
            let chunks: Vec<&[u8]> = body.chunks(chunk_size).collect();
            let (events, incomplete, oversized) = parse_all(&chunks, 1000);
            let data: Vec<&str> = events.iter().map(|e| e.data.as_str()).collect();
            assert_eq!(data, vec!["small", "after"], "chunk size {chunk_size}");
            assert_eq!(oversized, 1);
            assert!(!incomplete);
        }
    }

    #[test]
    fn many_small_lines_exceeding_cap_together_are_oversized() {
        let mut body = Vec::new();
        for _ in 0..100 {
            body.extend_from_slice(b"data: 0123456789\n");
        }
        body.extend_from_slice(b"\ndata: ok\n\n");
        let (events, _, oversized) = parse_all(&[&body], 500);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].data, "ok");
        assert_eq!(oversized, 1);
    }

    #[test]
    fn memory_stays_bounded_on_endless_line() {
        let mut p = SseParser::new(4096);
        let mut out = Vec::new();
        let chunk = vec![b'a'; 1 << 16];
        p.push(b"data: ", &mut out);
        for _ in 0..64 {
            p.push(&chunk, &mut out);
            assert!(p.line.capacity() <= 64 * 1024);
            assert!(p.data.capacity() <= 64 * 1024);
        }
        assert!(out.is_empty());
        assert!(p.finish(&mut out));
        assert_eq!(p.oversized_events(), 1);
    }

    #[test]
    fn finish_reports_trailing_partial_event() {
        let (events, incomplete, _) = parse_all(&[b"data: a\n\ndata: b"], 1024);
        assert_eq!(events.len(), 1);
        assert!(incomplete);
        let (_, incomplete, _) = parse_all(&[b"data: a\n\ndata: b\n"], 1024);
        assert!(
            incomplete,
            "data line without the blank line is not dispatched"
        );
        let (_, incomplete, _) = parse_all(&[b"data: a\n\n"], 1024);
        assert!(!incomplete);
    }

    #[test]
    fn arbitrary_binary_input_never_panics() {
        let mut rng = XorShift(12345);
        for _ in 0..200 {
            let len = (rng.next() % 300) as usize;
            let body: Vec<u8> = (0..len)
                .map(|_| match rng.next() % 6 {
                    0 => b'\n',
                    1 => b'\r',
                    2 => b':',
                    _ => rng.next() as u8,
                })
                .collect();
            let whole = parse_all(&[&body], 64);
            let ones: Vec<&[u8]> = body.chunks(1).collect();
            assert_eq!(parse_all(&ones, 64), whole);
        }
    }

    #[test]
    fn push_with_borrows_without_allocating_events() {
        let mut p = SseParser::new(1024);
        let mut seen = Vec::new();
        p.push_with(b"event: e\ndata: {\"x\":1}\n\n", |ev| {
            seen.push((
                ev.event_str().map(|s| s.into_owned()),
                ev.data.to_vec(),
                ev.end_offset,
            ));
        });
        assert_eq!(
            seen,
            vec![(Some("e".to_owned()), b"{\"x\":1}".to_vec(), 24)]
        );
    }
}
