//! Cheap per-response checks: run on every exchange, before and independently of any
//! embedding. Each looks at one [`ExchangeRecord`] and returns a score and the threshold it
//! is compared with ([`CheckScore`]); [`run_checks`] runs them all.
//!
//! | flag         | function       | measures                                              |
//! |--------------|----------------|-------------------------------------------------------|
//! | `blank`      | [`blank`]      | a successful chat answer with no text content at all  |
//! | `refusal`    | [`refusal`]    | refusal / deflection phrasing, by position and length |
//! | `repetition` | [`repetition`] | loops: repeated 4-grams, deflate ratio, char runs     |
//! | `garbled`    | [`garbled`]    | U+FFFD, control chars, mojibake, script mixing, soup  |
//! | `error_text` | [`error_text`] | a stack trace, error page or error JSON inside a 2xx  |
//! | `truncated`  | [`truncated`]  | cut by the token limit or by an interrupted stream    |
//!
//! The other [`Flag`]s (`off_topic`, `outlier`, `length`) are computed by the engine from
//! embeddings and per-key baselines.
//!
//! Cost (`cargo bench --bench checks`; figures in BENCHMARKS.md): all checks together take
//! microseconds for a 256-token (1.2 KB) answer, and for a normal
//! answer allocate nothing but the returned `Vec` (scratch buffers are per thread and
//! reused). Everything is linear in what is read, and each check reads a bounded part of
//! the answer, so a 10 MB answer costs under a millisecond (a 10 MB answer of nothing but
//! whitespace, which `blank` must read to the end, a few milliseconds):
//!
//! * `blank` stops at the first content char (only an answer that *is* blank is read to the
//!   end, eight bytes at a time);
//! * `refusal` reads the first 4 KiB;
//! * `repetition` reads the last 16 KiB;
//! * `garbled` reads the first 32 KiB and the last 8 KiB;
//! * `error_text` reads the first 8 KiB and the last 4 KiB (and the prompt's first 8 KiB, only
//!   when the answer scored above zero);
//! * `truncated` reads no text.
//!
//! The text checks score only what a user was shown as an answer: a 2xx response of a chat
//! or completion API. Embeddings, unrecognised traffic and non-2xx exchanges score 0.

mod error_text;
mod garbled;
mod refusal;
mod repetition;
pub(crate) mod text;

#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

use crate::record::{Api, ExchangeRecord, Outcome};

pub use error_text::error_text;
pub use garbled::garbled;
pub use refusal::{refusal, refusal_exemplars};
pub use repetition::repetition;

/// What an exchange may be flagged for.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Flag {
    /// A successful chat answer with no text content ([`blank`]).
    Blank,
    /// The model refused or deflected ([`refusal`]).
    Refusal,
    /// The answer loops ([`repetition`]).
    Repetition,
    /// The answer is not readable text ([`garbled`]).
    Garbled,
    /// The answer is an error message or stack trace ([`error_text`]).
    ErrorText,
    /// The answer was cut short ([`truncated`]).
    Truncated,
    /// The answer is far from the prompt compared with the key's baseline (engine).
    OffTopic,
    /// The answer is far from the key's baseline answers (engine).
    Outlier,
    /// The answer's length is unusual for the key (engine).
    Length,
}

impl Flag {
    /// Every flag, in declaration order.
    pub const ALL: [Flag; 9] = [
        Flag::Blank,
        Flag::Refusal,
        Flag::Repetition,
        Flag::Garbled,
        Flag::ErrorText,
        Flag::Truncated,
        Flag::OffTopic,
        Flag::Outlier,
        Flag::Length,
    ];

    /// The flag's stable name, as used in records, metrics labels and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Flag::Blank => "blank",
            Flag::Refusal => "refusal",
            Flag::Repetition => "repetition",
            Flag::Garbled => "garbled",
            Flag::ErrorText => "error_text",
            Flag::Truncated => "truncated",
            Flag::OffTopic => "off_topic",
            Flag::Outlier => "outlier",
            Flag::Length => "length",
        }
    }
}

impl std::fmt::Display for Flag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One check's result: its score and the threshold the score is compared with.
#[derive(Copy, Clone, Debug, PartialEq, Serialize)]
pub struct CheckScore {
    /// The check.
    pub flag: Flag,
    /// The score; for the cheap checks in [0, 1].
    pub score: f64,
    /// The flag fires when `score >= threshold`.
    pub threshold: f64,
}

impl CheckScore {
    /// Whether the flag fires (`score >= threshold`).
    pub fn fired(&self) -> bool {
        self.score >= self.threshold
    }
}

/// Thresholds of the cheap checks (the engine's `checks` settings). A flag fires when its
/// score reaches its threshold; a threshold above 1 turns a check off. Missing fields take
/// their defaults when deserialised.
///
/// The defaults were chosen so that normal answers (prose, markdown lists and tables, code,
/// JSON, LaTeX, URLs, Chinese, Japanese, Korean, Russian, Arabic, French and German text,
/// emoji) stay below all of them, most at 0; `checks/tests.rs` has the texts on both sides
/// of each threshold.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CheckConfig {
    /// `blank` is 0 or 1. Default 0.5.
    pub blank: f64,
    /// Default 0.5: reached by an answer of up to ~2,500 chars that opens with an explicit
    /// refusal ("I'm sorry, but I can't help with that"), by "As an AI language model" in
    /// answers up to ~2,000 chars and by a bare "As an AI" under 800. A refusal buried in
    /// or closing a long answer, one inside quotes, an apology for a mistake, or a hedge
    /// ("I can't guarantee") stays below.
    pub refusal: f64,
    /// Default 0.5: reached when about half of the answer (or of its second half) repeats
    /// earlier word 4-grams, by a run of 22+ identical characters, or by text that deflates
    /// below 9% of its size. Code, lists, tables and JSON arrays of similar records score 0.
    pub repetition: f64,
    /// Default 0.5: reached by two replacement or control characters (one stays below), one
    /// unmistakable mojibake sequence ("Ã©", "â€™"), two leaked special tokens, a few words
    /// mixing Latin and Cyrillic letters, or about one token in six being letter soup.
    pub garbled: f64,
    /// Default 0.5: reached by an answer that mostly is a traceback, panic, error page, proxy
    /// or provider message ("Rate limit exceeded", "no healthy upstream") or JSON error
    /// envelope. An answer that quotes an error in a code block while explaining it stays
    /// below, and lower still when the prompt is about an error.
    pub error_text: f64,
    /// `truncated` is 0 or 1. Default 0.5.
    pub truncated: f64,
}

impl Default for CheckConfig {
    fn default() -> Self {
        CheckConfig {
            blank: 0.5,
            refusal: 0.5,
            repetition: 0.5,
            garbled: 0.5,
            error_text: 0.5,
            truncated: 0.5,
        }
    }
}

/// Whether the exchange's `response` is an answer a user was shown: a 2xx response of a
/// chat or completion API (not embeddings, not unrecognised traffic).
fn is_answer(rec: &ExchangeRecord) -> bool {
    matches!(
        rec.api,
        Api::ChatCompletions | Api::Responses | Api::Completions | Api::Messages
    ) && (200..300).contains(&rec.status)
}

/// Runs the cheap checks on one exchange: `blank`, `refusal`, `repetition`, `garbled`,
/// `error_text` and `truncated`, in that order, each with its threshold from `cfg`.
///
/// The text checks score 0 for anything but a 2xx chat or completion answer.
pub fn run_checks(rec: &ExchangeRecord, cfg: &CheckConfig) -> Vec<CheckScore> {
    let answer = is_answer(rec);
    let text = rec.response.as_str();
    let prompt = rec.prompt.as_deref();
    let score = |on: bool, f: &dyn Fn() -> f64| if on { f() } else { 0.0 };
    vec![
        CheckScore {
            flag: Flag::Blank,
            score: blank(rec),
            threshold: cfg.blank,
        },
        CheckScore {
            flag: Flag::Refusal,
            score: score(answer, &|| refusal(text)),
            threshold: cfg.refusal,
        },
        CheckScore {
            flag: Flag::Repetition,
            score: score(answer, &|| repetition(text)),
            threshold: cfg.repetition,
        },
        CheckScore {
            flag: Flag::Garbled,
            score: score(answer, &|| garbled(text, prompt)),
            threshold: cfg.garbled,
        },
        CheckScore {
            flag: Flag::ErrorText,
            score: score(answer, &|| error_text(text, prompt)),
            threshold: cfg.error_text,
        },
        CheckScore {
            flag: Flag::Truncated,
            score: truncated(rec),
            threshold: cfg.truncated,
        },
    ]
}

/// `blank`: 1.0 when a successful chat or completion answer carries no text content, else
/// 0.0.
///
/// "Successful" means a 2xx status and outcome `complete`, for the chat and completion APIs
/// (Chat Completions, Responses, legacy Completions, Messages). Embeddings, unrecognised
/// traffic, non-2xx exchanges and interrupted or cancelled ones are never blank; neither is
/// an answer with tool calls (a tool-call-only answer is a complete answer). For the rest,
/// the answer is blank exactly when [`is_blank_text`] holds for its text.
pub fn blank(rec: &ExchangeRecord) -> f64 {
    if !is_answer(rec) || rec.outcome != Outcome::Complete || !rec.tool_calls.is_empty() {
        return 0.0;
    }
    if is_blank_text(&rec.response) {
        1.0
    } else {
        0.0
    }
}

/// Whether `text` has no content: no letter or digit (of any script) and no emoji, outside
/// markdown code-fence lines.
///
/// So empty text, whitespace, punctuation and symbols ("...", "-", "**", "—", "→"), zero-width
/// and other format characters (U+200B, U+FEFF, ...), combining marks on their own, and
/// fences with nothing in them ("```", "```json\n```", "~~~") are blank. Emoji and other
/// pictographs (👍, ✅, 🇫🇷) count as content: a one-emoji answer is an answer. A fence's
/// info string ("json" in "```json") is not content; a line like "```x```" (inline code)
/// is not a fence.
///
/// Reads the text up to the first line with content, so the cost is tiny for real answers
/// and linear (a byte loop) for text that is blank.
pub fn is_blank_text(text: &str) -> bool {
    let b = text.as_bytes();
    let n = b.len();
    let mut i = 0;
    while i < n {
        // Eight bytes at a time while they are ASCII without letters or digits.
        if let Some(chunk) = b.get(i..i + 8) {
            let mut x = [0u8; 8];
            x.copy_from_slice(chunk);
            if !swar_has_content(u64::from_le_bytes(x)) {
                i += 8;
                continue;
            }
        }
        let c = b[i];
        let content_len = if c < 0x80 {
            if !c.is_ascii_alphanumeric() {
                i += 1;
                continue;
            }
            1
        } else {
            let Some(ch) = text[i..].chars().next() else {
                break;
            };
            if !is_content_char(ch) {
                i += ch.len_utf8();
                continue;
            }
            ch.len_utf8()
        };
        // Content, unless it is on a fence line ("json" in "```json").
        let line_start = memchr::memrchr(b'\n', &b[..i]).map_or(0, |k| k + 1);
        let line_end = memchr::memchr(b'\n', &b[i..]).map_or(n, |k| i + k);
        if text::is_fence_line(&text[line_start..line_end]) {
            i = line_end.max(i + content_len);
            continue;
        }
        return false;
    }
    true
}

/// Whether any of eight bytes is non-ASCII or an ASCII letter or digit (SWAR: each byte is
/// tested for the ranges `0-9`, `A-Z`, `a-z` with carry-free additions).
#[inline]
fn swar_has_content(x: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    if x & HIGH != 0 {
        return true;
    }
    // For a byte b < 128: b + (128 - lo) has its high bit set iff b >= lo, and
    // b + (127 - hi) iff b > hi; neither sum carries into the next byte.
    let in_range = |lo: u8, hi: u8| {
        let ge = x.wrapping_add(ONES * u64::from(128 - lo));
        let gt = x.wrapping_add(ONES * u64::from(127 - hi));
        ge & !gt & HIGH
    };
    (in_range(b'0', b'9') | in_range(b'A', b'Z') | in_range(b'a', b'z')) != 0
}

/// A char that carries meaning on its own: a letter or digit of any script, or a pictograph.
fn is_content_char(c: char) -> bool {
    c.is_alphanumeric() || is_pictograph(c)
}

/// Emoji and pictographs (the Extended_Pictographic blocks plus regional indicators and
/// keycap-free dingbats), approximated by block.
fn is_pictograph(c: char) -> bool {
    matches!(
        u32::from(c),
        0x1F000..=0x1FAFF      // mahjong .. symbols & pictographs ext-A, regional indicators
            | 0x2600..=0x27BF  // misc symbols, dingbats (☀ ✅ ✈ ❤)
            | 0x2B50..=0x2B55  // ⭐ ⭕
            | 0x231A..=0x231B  // ⌚ ⌛
            | 0x23E9..=0x23FA  // ⏩ .. ⏺
            | 0x3030 | 0x303D | 0x3297 | 0x3299
    )
}

/// Finish reasons that mean the model stopped because it ran out of output budget (OpenAI
/// `length`, Anthropic `max_tokens`, Responses `max_output_tokens`, Gemini `MAX_TOKENS`) or
/// the stream was cut (`stream_interrupted`); compared case-insensitively.
const TRUNCATING_FINISH: [&str; 5] = [
    "length",
    "max_tokens",
    "max_output_tokens",
    "model_length",
    "stream_interrupted",
];

/// `truncated`: 1.0 when the answer was cut short, else 0.0.
///
/// Cut short means: a finish reason of `length`, `max_tokens`, `max_output_tokens`,
/// `model_length` or `stream_interrupted` (any case); or outcome `stream_interrupted` (the
/// upstream cut the body); or a 2xx stream whose `error_type` is `stream_incomplete` (it ended
/// without its terminal event).
pub fn truncated(rec: &ExchangeRecord) -> f64 {
    let by_reason = rec.finish_reasons.iter().any(|f| {
        TRUNCATING_FINISH
            .iter()
            .any(|t| f.trim().eq_ignore_ascii_case(t))
    });
    let by_outcome = rec.outcome == Outcome::StreamInterrupted;
    let by_stream = rec.stream
        && (200..300).contains(&rec.status)
        && rec.error_type.as_deref() == Some("stream_incomplete");
    if by_reason || by_outcome || by_stream {
        1.0
    } else {
        0.0
    }
}
