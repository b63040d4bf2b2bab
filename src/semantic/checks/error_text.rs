//! `error_text`: an error message or stack trace delivered as the answer.

use std::sync::OnceLock;

use super::text::{head, is_fence_line, trim_bounded, unit, windows, PhraseSet};

/// Bytes of the answer read: the first ...
const HEAD_BYTES: usize = 8 * 1024;
/// ... and the last.
const TAIL_BYTES: usize = 4 * 1024;
/// Bytes of the prompt read for the discount.
const PROMPT_BYTES: usize = 8 * 1024;
/// Whole answers up to this size are parsed when they look like a JSON error envelope.
const MAX_JSON_BYTES: usize = 64 * 1024;
/// Line evidence is scaled by `COVER_FLOOR + (1 - COVER_FLOOR) · min(1, coverage /
/// COVER_FULL)`, coverage being the share of the answer's non-blank bytes on error lines.
const COVER_FLOOR: f64 = 0.3;
const COVER_FULL: f64 = 0.5;
/// A phrase matched in a line of prose covers `PHRASE_SPAN_FACTOR · len + PHRASE_SPAN_EXTRA`
/// bytes of it (about the sentence it is in), for the coverage.
const PHRASE_SPAN_FACTOR: usize = 2;
const PHRASE_SPAN_EXTRA: usize = 40;
/// Error lines inside a markdown code fence are quoted: their weight is scaled by this.
const FENCED_FACTOR: f64 = 0.6;
/// Factor when the prompt itself holds an error (a pasted traceback, log line, error JSON).
const PROMPT_PASTED_FACTOR: f64 = 0.4;
/// Factor when the prompt is about errors (mentions an error, exception, crash, status code).
const PROMPT_TOPIC_FACTOR: f64 = 0.55;

/// Error phrases matched anywhere in a line, as [`PhraseSet`] matches them (case, apostrophes
/// and punctuation between words ignored: `context_length_exceeded` also matches "context
/// length exceeded").
const PHRASES: &[(&str, f32)] = &[
    ("traceback (most recent call last)", 1.0),
    ("panicked at", 0.8),
    (
        "upstream connect error or disconnect/reset before headers",
        1.0,
    ),
    ("no healthy upstream", 0.9),
    ("upstream request timeout", 0.8),
    ("upstream timed out", 0.6),
    ("rate limit exceeded", 0.6),
    ("rate limit reached", 0.6),
    ("too many requests", 0.5),
    ("exceeded your current quota", 0.8),
    ("insufficient_quota", 0.7),
    ("quota exceeded", 0.5),
    ("model is overloaded", 0.8),
    ("model is currently overloaded", 0.8),
    ("server is overloaded", 0.7),
    ("overloaded_error", 0.8),
    ("context_length_exceeded", 0.7),
    ("maximum context length", 0.55),
    ("prompt is too long", 0.5),
    ("cuda out of memory", 0.9),
    ("outofmemoryerror", 0.7),
    ("cuda error", 0.6),
    ("out of memory", 0.3),
    ("internal server error", 0.6),
    ("bad gateway", 0.6),
    ("service unavailable", 0.5),
    ("service temporarily unavailable", 0.6),
    ("gateway timeout", 0.6),
    ("gateway time-out", 0.6),
    ("the server had an error while processing your request", 0.9),
    ("an error occurred while processing your request", 0.8),
    ("an unexpected error occurred", 0.4),
    ("internal error", 0.3),
    ("unhandled exception", 0.5),
    ("connection reset by peer", 0.5),
    ("econnrefused", 0.6),
    ("econnreset", 0.6),
    ("etimedout", 0.5),
    ("connection refused", 0.4),
    ("request timed out", 0.5),
    ("deadline exceeded", 0.5),
    ("segmentation fault", 0.5),
    ("core dumped", 0.5),
    ("invalid_request_error", 0.6),
    ("invalid_api_key", 0.5),
    ("incorrect api key provided", 0.8),
    ("error code: 5", 0.4),
    ("cloudflare ray id", 0.7),
];

fn phrase_set() -> &'static PhraseSet {
    static SET: OnceLock<PhraseSet> = OnceLock::new();
    SET.get_or_init(|| PhraseSet::new(PHRASES))
}

/// Words that make a prompt "about an error" (matched lowercase, anywhere).
const PROMPT_TOPICS: &[&str] = &[
    "error",
    "exception",
    "traceback",
    "stack trace",
    "stacktrace",
    "panic",
    "crash",
    "raise",
    "throw",
    "fail",
    "bug",
    "fix",
    "broken",
    "429",
    "500",
    "502",
    "503",
    "504",
    "404",
    "rate limit",
    "overload",
    "timeout",
    "timed out",
    "out of memory",
    "oom",
    "status code",
];

/// `at <frame>` of Java, JavaScript, C#: the part after `at ` ends with a source location
/// (`Bar.java:12)`, `/app/x.js:1:2`, `(node:internal/...:1105:14)`, `:line 12`) or names a
/// native frame.
fn is_at_frame(rest: &str) -> bool {
    if !rest.starts_with(|c: char| c.is_alphanumeric() || matches!(c, '/' | '<' | '[' | '_' | '$'))
    {
        return false;
    }
    if rest.contains("(Native Method)") || rest.contains("(Unknown Source)") {
        return true;
    }
    let r = rest.trim_end();
    let r = r.strip_suffix(')').unwrap_or(r);
    if let Some(pos) = r.rfind(":line ") {
        let n = &r[pos + 6..];
        if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) {
            return true;
        }
    }
    let strip_num = |s: &str| -> Option<usize> {
        let digits = s.bytes().rev().take_while(u8::is_ascii_digit).count();
        if digits == 0 || !s[..s.len() - digits].ends_with(':') {
            return None;
        }
        Some(s.len() - digits - 1)
    };
    let Some(mut end) = strip_num(r) else {
        return false;
    };
    if let Some(e) = strip_num(&r[..end]) {
        end = e;
    }
    let pre = &r[..end];
    let last = pre.rsplit([' ', '(']).next().unwrap_or(pre);
    !last.is_empty() && (last.contains('.') || last.contains('/'))
}

/// `Name: message` where the name is one identifier path ending like an exception type
/// (`KeyError: 'x'`, `java.lang.IllegalStateException: ...`, `Uncaught TypeError: ...`).
fn exception_line_weight(t: &str) -> f32 {
    let (t, uncaught) = match t.strip_prefix("Uncaught ") {
        Some(r) => (r, true),
        None => (t, false),
    };
    let name = match t.find(':') {
        Some(i) => &t[..i],
        None => t.trim_end(),
    };
    if name.is_empty()
        || name.len() > 120
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'$'))
        || !name.as_bytes()[0].is_ascii_alphabetic()
    {
        return 0.0;
    }
    if name == "Error" || name == "ERROR" || name == "FATAL" {
        return 0.3;
    }
    let typed = ["Error", "Exception", "Exit", "Interrupt", "Fault"]
        .iter()
        .any(|s| name.ends_with(s) && name.len() > s.len());
    match (typed, uncaught) {
        (true, true) => 0.6,
        (true, false) => 0.45,
        _ => 0.0,
    }
}

/// What kind of error line a (left-trimmed) line is, by how it starts.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    None,
    /// A Python `File "...", line N` frame: the next indented line is its source line.
    PyFrame,
    Other,
}

fn line_start_weight(t: &str) -> (f32, Kind) {
    let Some(&b0) = t.as_bytes().first() else {
        return (0.0, Kind::None);
    };
    let w = match b0 {
        b'T' if t.starts_with("Traceback (most recent call last)") => 1.0,
        b'T' if t.starts_with("The above exception was the direct cause") => 0.9,
        b'D' if t.starts_with("During handling of the above exception") => 0.9,
        b'F' if t.starts_with("File \"") && t.contains("\", line ") => {
            return (0.6, Kind::PyFrame);
        }
        b'a' if t.starts_with("at ") && is_at_frame(&t[3..]) => 0.6,
        b'E' if t.starts_with("Exception in thread \"") => 1.0,
        b'C' if t.starts_with("Caused by: ") => 0.7,
        b't' if t.starts_with("thread '") && t.contains("' panicked at") => 1.0,
        b'g' if t.starts_with("goroutine ")
            && t[10..].starts_with(|c: char| c.is_ascii_digit())
            && t.contains(" [") =>
        {
            0.9
        }
        b'p' if t.starts_with("panic: ") => 0.7,
        b'n' if t.starts_with("note: run with `RUST_BACKTRACE=1`") => 0.7,
        b's' if t.starts_with("stack backtrace:") => 0.6,
        b'.' if t.starts_with("... ") && t.ends_with(" more") => 0.5,
        b'e' if t.starts_with("error[E") => 0.3,
        b'<' => html_line_weight(t),
        b'/' if t.contains(".go:") && t.contains(" +0x") => 0.5,
        _ => exception_line_weight(t),
    };
    (w, if w > 0.0 { Kind::Other } else { Kind::None })
}

/// Whether a title or heading names an HTTP error.
fn is_error_heading(s: &str) -> bool {
    let s = s.trim();
    let b = s.as_bytes();
    let status = b.len() >= 3
        && matches!(b[0], b'4' | b'5')
        && b[1].is_ascii_digit()
        && b[2].is_ascii_digit()
        && b.get(3).is_none_or(|c| !c.is_ascii_digit());
    if status {
        return true;
    }
    let l = s.to_ascii_lowercase();
    [
        "error",
        "bad gateway",
        "unavailable",
        "not found",
        "forbidden",
        "timeout",
        "time-out",
        "too many requests",
        "unauthorized",
    ]
    .iter()
    .any(|k| l.contains(k))
}

/// The text between `open` and the next `<`, if `t` starts with `open` (ASCII
/// case-insensitive).
fn tag_text<'a>(t: &'a str, open: &str) -> Option<&'a str> {
    let head = t.get(..open.len())?;
    if !head.eq_ignore_ascii_case(open) {
        return None;
    }
    let rest = &t[open.len()..];
    Some(&rest[..rest.find('<').unwrap_or(rest.len())])
}

fn html_line_weight(t: &str) -> f32 {
    if let Some(s) = tag_text(t, "<title>") {
        return if is_error_heading(s) { 0.9 } else { 0.0 };
    }
    if let Some(s) = tag_text(t, "<h1>").or_else(|| tag_text(t, "<center><h1>")) {
        return if is_error_heading(s) { 0.8 } else { 0.0 };
    }
    if let Some(s) = tag_text(t, "<center>") {
        return if s.starts_with("nginx") || s.starts_with("openresty") {
            0.7
        } else {
            0.0
        };
    }
    0.0
}

/// Whole-answer shapes: a JSON error envelope or an HTTP error page.
fn whole_text_weight(t: &str) -> f64 {
    if t.starts_with('{') && t.ends_with('}') && t.len() <= MAX_JSON_BYTES {
        // Parsed only when it looks like an envelope, so JSON answers (structured output)
        // are not parsed.
        return if looks_like_envelope(t) {
            json_envelope_weight(t)
        } else {
            0.0
        };
    }
    if t.starts_with('<') {
        return html_page_weight(head(t, 4096));
    }
    0.0
}

/// Whether a JSON object's first key is `error` or `detail`, or its first 256 bytes say
/// `"type": "error"` or `"object": "error"`.
fn looks_like_envelope(t: &str) -> bool {
    let body = t[1..].trim_start();
    if body.starts_with("\"error\"") || body.starts_with("\"detail\"") {
        return true;
    }
    let h = head(t, 256);
    ["\"type\"", "\"object\""].iter().any(|key| {
        h.match_indices(key).any(|(at, k)| {
            let rest = h[at + k.len()..].trim_start();
            rest.strip_prefix(':')
                .is_some_and(|v| v.trim_start().starts_with("\"error\""))
        })
    })
}

fn json_envelope_weight(t: &str) -> f64 {
    let Ok(serde_json::Value::Object(m)) = serde_json::from_str::<serde_json::Value>(t) else {
        return 0.0;
    };
    let is_str = |k: &str, v: &str| m.get(k).and_then(|x| x.as_str()) == Some(v);
    if is_str("type", "error") || is_str("object", "error") {
        return 1.0;
    }
    match m.get("error") {
        Some(serde_json::Value::Object(e)) => {
            if ["message", "type", "code", "status"]
                .iter()
                .any(|k| e.contains_key(*k))
            {
                return 1.0;
            }
            return 0.8;
        }
        Some(serde_json::Value::String(s)) if !s.trim().is_empty() && m.len() <= 3 => {
            return 0.6;
        }
        _ => {}
    }
    if m.len() == 1 && m.get("detail").is_some_and(|d| d.is_string()) {
        return 0.7;
    }
    0.0
}

fn html_page_weight(h: &str) -> f64 {
    let l = h.to_ascii_lowercase();
    let starts = [
        "<!doctype html",
        "<html",
        "<head",
        "<title",
        "<body",
        "<center",
        "<h1",
    ]
    .iter()
    .any(|p| l.starts_with(p));
    if !starts {
        return 0.0;
    }
    let between = |open: &str, close: &str| -> Option<String> {
        let a = l.find(open)? + open.len();
        let b = l[a..].find(close)? + a;
        Some(l[a..b].to_string())
    };
    let heading_error = [("<title>", "</title>"), ("<h1>", "</h1>")]
        .iter()
        .filter_map(|(o, c)| between(o, c))
        .any(|s| is_error_heading(&s));
    if heading_error {
        return 0.95;
    }
    if l.contains("<center>nginx") || (l.contains("cloudflare") && l.contains("ray id")) {
        return 0.9;
    }
    0.0
}

/// Evidence gathered over the lines of the answer.
struct Lines {
    /// Π(1 - w) over error lines.
    keep: f64,
    /// Non-blank bytes on error lines (and the source lines of Python frames).
    error_bytes: usize,
    /// Non-blank bytes of all lines.
    total_bytes: usize,
}

fn scan_lines(w: &str, acc: &mut Lines) {
    let set = phrase_set();
    let mut in_fence = false;
    let mut after_py_frame = false;
    for line in w.split('\n') {
        let t = line.trim();
        if t.is_empty() {
            after_py_frame = false;
            continue;
        }
        acc.total_bytes += t.len();
        if is_fence_line(line) {
            in_fence = !in_fence;
            after_py_frame = false;
            continue;
        }
        let (start_w, kind) = line_start_weight(t);
        let (phrase_w, phrase_len) = set.best(t);
        let w = f64::from(start_w.max(phrase_w));
        if w > 0.0 {
            let w = if in_fence { w * FENCED_FACTOR } else { w };
            acc.keep *= 1.0 - unit(w);
            // A line that is an error by its shape is all error; a phrase in a line of prose
            // covers about its sentence.
            acc.error_bytes += if start_w > 0.0 {
                t.len()
            } else {
                t.len()
                    .min(PHRASE_SPAN_FACTOR * phrase_len + PHRASE_SPAN_EXTRA)
            };
        } else if after_py_frame && line.starts_with([' ', '\t']) {
            // The source line a Python frame shows.
            acc.error_bytes += t.len();
        }
        after_py_frame = kind == Kind::PyFrame;
    }
}

/// How much the prompt explains an error answer: 1 (not at all), [`PROMPT_TOPIC_FACTOR`]
/// when it is about errors, [`PROMPT_PASTED_FACTOR`] when it holds an error itself.
fn prompt_factor(prompt: &str) -> f64 {
    let p = head(trim_bounded(prompt, PROMPT_BYTES), PROMPT_BYTES);
    if p.trim().is_empty() {
        return 1.0;
    }
    let mut acc = Lines {
        keep: 1.0,
        error_bytes: 0,
        total_bytes: 0,
    };
    scan_lines(p, &mut acc);
    if 1.0 - acc.keep >= 0.45 || whole_text_weight(p) > 0.0 {
        return PROMPT_PASTED_FACTOR;
    }
    let lower = p.to_lowercase();
    if PROMPT_TOPICS
        .iter()
        .any(|k| memchr::memmem::find(lower.as_bytes(), k.as_bytes()).is_some())
    {
        return PROMPT_TOPIC_FACTOR;
    }
    1.0
}

/// `error_text`: how much the answer is an error message or stack trace, in [0, 1].
///
/// Line evidence (each error line's weight, combined as `1 - Π(1 - w)`):
/// * stack traces by line shape: Python (`Traceback (most recent call last):` 1.0,
///   `File "x.py", line N` 0.6, chained-exception headers 0.9), Java/JS/C# frames
///   (`at com.foo.Bar(Bar.java:12)`, `at Object.<anonymous> (/app/x.js:1:2)` 0.6,
///   `Exception in thread "main"` 1.0, `Caused by:` 0.7), Rust (`thread 'main' panicked at`
///   1.0), Go (`goroutine 1 [running]:` 0.9, `panic:` 0.7), exception lines
///   (`KeyError: 'x'` 0.45, `Uncaught TypeError:` 0.6, `Error:` 0.3);
/// * HTML error markup by line (`<title>502 Bad Gateway</title>` 0.9, `<h1>` 0.8,
///   `<center>nginx</center>` 0.7);
/// * phrases anywhere, case-insensitive: proxy and upstream messages ("upstream connect
///   error or disconnect/reset before headers" 1.0, "no healthy upstream"), provider errors
///   ("rate limit exceeded", "model is overloaded", "context_length_exceeded", "CUDA out of
///   memory", "insufficient_quota"), HTTP reasons ("Internal Server Error", "Bad Gateway").
///
/// Error lines inside a markdown code fence count 0.6 as much (they are being quoted). The
/// combined line evidence is then scaled by how much of the answer it covers: 0.3 when the
/// error is a small part of the answer, rising to 1 when error lines are half of its
/// non-blank bytes or more (a phrase in a line of prose covers about its sentence: twice
/// its length plus 40 bytes). So a bare traceback or proxy message scores near 1, and an
/// answer explaining an error it quotes scores lower.
///
/// Whole-answer shapes score directly: a JSON error envelope (`{"error": {...}}`,
/// `{"type": "error", ...}`, `{"object": "error", ...}`: 1.0; `{"error": "..."}` 0.6;
/// `{"detail": "..."}` 0.7) and an HTML error page whose title or heading names an HTTP
/// error (0.95). A JSON answer is parsed (up to 64 KiB) only when its first key is `error`
/// or `detail` or its first 256 bytes say `"type": "error"` / `"object": "error"`, so
/// structured-output answers cost no parse.
///
/// Finally, the prompt (its first 8 KiB, read only when the score is above 0) discounts:
/// × 0.4 when it holds an error itself (a pasted traceback or error JSON), × 0.55 when it
/// is about errors ("why does my code raise KeyError?"). Reads the first 8 KiB and the
/// last 4 KiB of the answer.
pub fn error_text(text: &str, prompt: Option<&str>) -> f64 {
    let t = trim_bounded(text, HEAD_BYTES);
    if t.is_empty() {
        return 0.0;
    }
    let whole = whole_text_weight(t);
    let (first, last) = windows(t, HEAD_BYTES, TAIL_BYTES);
    let mut acc = Lines {
        keep: 1.0,
        error_bytes: 0,
        total_bytes: 0,
    };
    scan_lines(first, &mut acc);
    if let Some(last) = last {
        scan_lines(last, &mut acc);
    }
    let base = 1.0 - acc.keep;
    let coverage = acc.error_bytes as f64 / acc.total_bytes.max(1) as f64;
    let lines = base * (COVER_FLOOR + (1.0 - COVER_FLOOR) * (coverage / COVER_FULL).min(1.0));
    let raw = unit(whole.max(lines));
    if raw <= 0.0 {
        return 0.0;
    }
    let factor = prompt.map_or(1.0, prompt_factor);
    unit(raw * factor)
}
