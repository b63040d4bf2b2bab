//! A text's lexical profile: a few character- and word-level rates that say what kind of text
//! an answer is, independent of what it is about. The outlier score measures an answer's
//! profile against its key's reference beside the embedding distance, because embeddings
//! (static or transformer) rate many broken answers as ordinary: a traceback, a mid-sentence
//! cut, a token soup or a loop sits close to normal prose in embedding space but far from it
//! here (docs/EVALUATION.md measured both).
//!
//! Computing a profile is one bounded pass: at most [`SCAN_BYTES`] of the text are read (plus
//! its last characters for the ending), so a 10 MB answer costs the same as a 16 KB one.

use super::checks::text::{head, tail};

/// Bytes of an answer the profile reads.
pub const SCAN_BYTES: usize = 16 * 1024;
/// Words whose distinctness is counted.
const SCAN_WORDS: usize = 1000;

/// Number of features in a profile.
pub const FEATURES: usize = 12;

/// Per-feature floor of the spread a reference may report: a feature that is constant on a
/// key's normal answers (say, every answer ends with a full stop) must still not turn a tiny
/// difference into an infinite distance.
pub const FLOORS: [f64; FEATURES] = [
    0.02, 0.01, 0.01, 0.02, 0.005, 0.2, 0.03, 0.1, 0.1, 0.02, 0.1, 0.05,
];

/// The profile of `text`:
/// 0 letters, 1 digits, 2 ASCII punctuation (each a share of non-space characters),
/// 3 upper case (share of letters), 4 non-ASCII (share of characters, U+FFFD and control
/// characters count double), 5 mean word length (characters, capped at 20), 6 distinct words
/// (share of the first 1000 words), 7 line breaks per 100 characters, 8 whether the text ends
/// like finished prose or code (1) or mid-sentence (0), 9 distinct word pairs (share of the
/// pairs among the first 1000 words: a loop repeats pairs, which prose rarely does),
/// 10 sentence starts (share of the words closing a sentence whose next word, as written,
/// does not start with a lower-case letter: a quote or bracket counts as a start; `e.g.`
/// counts as a close), 11 article pairs (share of `the`/`a`/`an` followed by a function
/// word). 10 and 11 look at word order the way prose has it: a bag of tokens (the static
/// tier's vector) and the character and word rates are the same for an answer and its words
/// shuffled, but shuffled words put lower-case words after full stops and articles before
/// `of`, `and` or `the`.
pub fn profile(text: &str) -> [f32; FEATURES] {
    let head = head(text, SCAN_BYTES);
    let mut chars = 0usize;
    let mut non_space = 0usize;
    let (mut letters, mut digits, mut punct, mut upper, mut foreign, mut newlines) =
        (0usize, 0usize, 0usize, 0usize, 0usize, 0usize);
    let bytes = head.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        chars += 1;
        if b < 0x80 {
            // ASCII (most of any answer): a table lookup instead of Unicode property tests.
            i += 1;
            let class = ASCII_CLASS[usize::from(b)];
            if b == b'\n' {
                newlines += 1;
            }
            if class & SPACE != 0 {
                continue;
            }
            non_space += 1;
            letters += usize::from(class & LETTER != 0);
            upper += usize::from(class & UPPER != 0);
            digits += usize::from(class & DIGIT != 0);
            punct += usize::from(class & PUNCT != 0);
            if class & CONTROL != 0 {
                foreign += 2;
            }
            continue;
        }
        let Some(c) = head[i..].chars().next() else {
            break;
        };
        i += c.len_utf8();
        if c.is_whitespace() {
            continue;
        }
        non_space += 1;
        if c.is_alphabetic() {
            letters += 1;
            if c.is_uppercase() {
                upper += 1;
            }
        }
        foreign += 1;
        if c == '\u{fffd}' || c.is_control() {
            foreign += 2;
        }
    }
    let w = word_stats(head);
    let (words, word_chars, distinct) = (w.words, w.chars, w.distinct);
    let share = |n: usize, of: usize| if of == 0 { 0.0 } else { n as f32 / of as f32 };
    [
        share(letters, non_space),
        share(digits, non_space),
        share(punct, non_space),
        share(upper, letters),
        share(foreign, chars).min(1.0),
        if words == 0 {
            0.0
        } else {
            word_chars as f32 / words as f32
        },
        share(distinct, words.min(SCAN_WORDS)),
        100.0 * share(newlines, chars),
        if ends_finished(text) { 1.0 } else { 0.0 },
        if w.pairs == 0 {
            1.0
        } else {
            share(w.distinct_pairs, w.pairs)
        },
        if w.sentence_ends == 0 {
            1.0
        } else {
            share(w.sentence_starts, w.sentence_ends)
        },
        share(w.article_function, w.articles),
    ]
}

const SPACE: u8 = 1;
const LETTER: u8 = 2;
const UPPER: u8 = 4;
const DIGIT: u8 = 8;
const PUNCT: u8 = 16;
const CONTROL: u8 = 32;

/// Character classes of the 128 ASCII bytes, as the Unicode tests give them (tab counts as
/// space, not as a control character).
const ASCII_CLASS: [u8; 128] = {
    let mut t = [0u8; 128];
    let mut b = 0;
    while b < 128 {
        let c = b as u8;
        t[b] = if c.is_ascii_whitespace() || c == 0x0b {
            SPACE
        } else if c.is_ascii_uppercase() {
            LETTER | UPPER
        } else if c.is_ascii_lowercase() {
            LETTER
        } else if c.is_ascii_digit() {
            DIGIT
        } else if c.is_ascii_punctuation() {
            PUNCT
        } else if c.is_ascii_control() {
            CONTROL
        } else {
            0
        };
        b += 1;
    }
    t
};

/// Word statistics of a text's head.
#[derive(Debug, PartialEq, Eq)]
struct WordStats {
    words: usize,
    /// Characters of the words, each counted up to 20.
    chars: usize,
    /// Distinct words among the first [`SCAN_WORDS`].
    distinct: usize,
    /// Adjacent word pairs among the first [`SCAN_WORDS`] words, and how many are distinct.
    pairs: usize,
    distinct_pairs: usize,
    /// Among the first [`SCAN_WORDS`] words: those that close a sentence and have a next
    /// word, and how many of those next words do not start in lower case.
    sentence_ends: usize,
    sentence_starts: usize,
    /// Articles with a next word, and how many of those next words are function words.
    articles: usize,
    article_function: usize,
}

/// Words (whitespace-separated, ASCII punctuation trimmed off both ends, case folded) and
/// their statistics: what `split_whitespace` and sorted lists of hashes would give, in one
/// pass over the bytes with reused hash tables.
fn word_stats(head: &str) -> WordStats {
    thread_local! {
        static SEEN: std::cell::RefCell<(Distinct, Distinct)> =
            std::cell::RefCell::new((Distinct::new(), Distinct::new()));
    }
    SEEN.with(|seen| {
        let mut guard = seen.borrow_mut();
        let (seen, seen_pairs) = &mut *guard;
        seen.start();
        seen_pairs.start();
        let b = head.as_bytes();
        let (mut words, mut word_chars, mut pairs) = (0usize, 0usize, 0usize);
        let mut prev: Option<u64> = None;
        let (mut sentence_ends, mut sentence_starts) = (0usize, 0usize);
        let (mut articles, mut article_function) = (0usize, 0usize);
        // What the previous word (of the first SCAN_WORDS) was: a sentence end, an article.
        let (mut after_end, mut after_article) = (false, false);
        let mut word = |start: usize, end: usize, seen: &mut Distinct| {
            if after_end {
                sentence_ends += 1;
                sentence_starts += usize::from(!starts_lower(&head[start..end]));
            }
            after_end = words < SCAN_WORDS && closes_sentence(&b[start..end]);
            let (mut s, mut e) = (start, end);
            while s < e && b[s].is_ascii_punctuation() {
                s += 1;
            }
            while e > s && b[e - 1].is_ascii_punctuation() {
                e -= 1;
            }
            if s == e {
                return;
            }
            if words < SCAN_WORDS {
                let w = &b[s..e];
                if after_article {
                    articles += 1;
                    article_function +=
                        usize::from(FUNCTION_WORDS.iter().any(|f| f.eq_ignore_ascii_case(w)));
                }
                after_article = ARTICLES.iter().any(|a| a.eq_ignore_ascii_case(w));
            }
            words += 1;
            // Characters: bytes that do not continue a UTF-8 sequence.
            word_chars += b[s..e]
                .iter()
                .filter(|&&x| x & 0xC0 != 0x80)
                .count()
                .min(20);
            if words <= SCAN_WORDS {
                let h = word_hash(&b[s..e]);
                seen.insert(h);
                if let Some(p) = prev {
                    pairs += 1;
                    seen_pairs.insert(p.rotate_left(29) ^ h.wrapping_mul(0x9E37_79B9_7F4A_7C15));
                }
                prev = Some(h);
            }
        };
        let mut start: Option<usize> = None;
        let mut i = 0;
        while i < b.len() {
            let x = b[i];
            let (space, len) = if x < 0x80 {
                (x.is_ascii_whitespace() || x == 0x0B, 1)
            } else {
                match head[i..].chars().next() {
                    Some(c) => (c.is_whitespace(), c.len_utf8()),
                    None => break,
                }
            };
            match (space, start) {
                (true, Some(st)) => {
                    word(st, i, seen);
                    start = None;
                }
                (false, None) => start = Some(i),
                _ => {}
            }
            i += len;
        }
        if let Some(st) = start {
            word(st, b.len(), seen);
        }
        WordStats {
            words,
            chars: word_chars,
            distinct: seen.len,
            pairs,
            distinct_pairs: seen_pairs.len,
            sentence_ends,
            sentence_starts,
            articles,
            article_function,
        }
    })
}

const ARTICLES: [&[u8]; 3] = [b"the", b"a", b"an"];

/// Words an English article is (almost) never followed by in prose: determiners,
/// prepositions, conjunctions, auxiliaries. Shuffled words land there about as often as these
/// words are common in the text; prose almost never does.
const FUNCTION_WORDS: [&[u8]; 24] = [
    b"the", b"a", b"an", b"of", b"to", b"and", b"in", b"is", b"for", b"that", b"with", b"as",
    b"by", b"on", b"it", b"or", b"be", b"are", b"this", b"from", b"at", b"if", b"not", b"which",
];

/// Whether a whitespace-separated word closes a sentence: a letter, then `.`, `!` or `?`,
/// then only closing quotes, brackets or emphasis (`end.`, `"done!"`, `(see above.)`), so
/// numbers (`3.`), ellipses and bare punctuation do not count.
fn closes_sentence(w: &[u8]) -> bool {
    let mut e = w.len();
    while e > 0 && matches!(w[e - 1], b'"' | b'\'' | b')' | b']' | b'}' | b'*' | b'`') {
        e -= 1;
    }
    e >= 2
        && matches!(w[e - 1], b'.' | b'!' | b'?')
        && (w[e - 2].is_ascii_alphabetic() || w[e - 2] >= 0x80)
}

/// Whether a word starts with a lower-case letter (what a new sentence does not).
fn starts_lower(w: &str) -> bool {
    w.chars().next().is_some_and(char::is_lowercase)
}

/// A set of word hashes reused across calls: a generation stamp per slot instead of clearing.
struct Distinct {
    slots: Vec<(u64, u32)>,
    generation: u32,
    len: usize,
}

impl Distinct {
    /// Twice [`SCAN_WORDS`], so the table is at most half full.
    const SLOTS: usize = (2 * SCAN_WORDS).next_power_of_two();

    fn new() -> Distinct {
        Distinct {
            slots: vec![(0, 0); Self::SLOTS],
            generation: 0,
            len: 0,
        }
    }

    fn start(&mut self) {
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            self.slots.fill((0, 0));
            self.generation = 1;
        }
        self.len = 0;
    }

    fn insert(&mut self, h: u64) {
        let mask = Self::SLOTS - 1;
        let mut i = (h as usize) & mask;
        loop {
            let slot = &mut self.slots[i];
            if slot.1 != self.generation {
                *slot = (h, self.generation);
                self.len += 1;
                return;
            }
            if slot.0 == h {
                return;
            }
            i = (i + 1) & mask;
        }
    }
}

/// FNV-1a of the word's bytes, ASCII letters folded to lower case (no allocation per word).
fn word_hash(w: &[u8]) -> u64 {
    w.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b.to_ascii_lowercase())).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Whether the text's last visible character closes a sentence, a quote, a bracket or a
/// code block (what a completed answer ends with; a cut answer ends mid-word).
fn ends_finished(text: &str) -> bool {
    match tail(text, 64).trim_end().chars().last() {
        None => false,
        Some(c) => {
            matches!(
                c,
                '.' | '!' | '?' | ':' | ';' | ')' | ']' | '}' | '"' | '\'' | '`' | '*' | '>' | '|'
            ) || c == '。'
                || c == '！'
                || c == '？'
                || c == '」'
                || c == '…'
        }
    }
}

/// Distance of a profile from a reference's per-feature medians, in units of each feature's
/// spread (MAD, floored by [`FLOORS`]), each term capped at [`TERM_CAP`], summed.
pub fn distance(p: &[f32], median: &[f64], spread: &[f64]) -> f64 {
    p.iter()
        .zip(median)
        .zip(spread)
        .map(|((&x, &m), &s)| ((f64::from(x) - m).abs() / s).min(TERM_CAP))
        .sum()
}

/// Largest contribution one feature makes to [`distance`].
pub const TERM_CAP: f64 = 10.0;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_stats_equal_split_whitespace_and_a_sorted_hash_list() {
        let naive = |head: &str| {
            let (mut words, mut chars) = (0usize, 0usize);
            let mut seen = Vec::new();
            let raw: Vec<&str> = head.split_whitespace().collect();
            let (mut sentence_ends, mut sentence_starts) = (0, 0);
            let mut scanned = 0;
            for (i, w) in raw.iter().enumerate() {
                if scanned >= SCAN_WORDS {
                    break;
                }
                let closes = {
                    let t = w.trim_end_matches(['"', '\'', ')', ']', '}', '*', '`']);
                    let mut cs = t.chars().rev();
                    matches!(cs.next(), Some('.' | '!' | '?'))
                        && cs
                            .next()
                            .is_some_and(|c| c.is_ascii_alphabetic() || !c.is_ascii())
                };
                if closes {
                    if let Some(next) = raw.get(i + 1) {
                        sentence_ends += 1;
                        sentence_starts += usize::from(!next.starts_with(char::is_lowercase));
                    }
                }
                scanned += usize::from(
                    !w.trim_matches(|c: char| c.is_ascii_punctuation())
                        .is_empty(),
                );
            }
            for w in head.split_whitespace() {
                let w = w.trim_matches(|c: char| c.is_ascii_punctuation());
                if w.is_empty() {
                    continue;
                }
                words += 1;
                chars += w.chars().count().min(20);
                if words <= SCAN_WORDS {
                    seen.push(w.to_ascii_lowercase());
                }
            }
            let articles = seen
                .windows(2)
                .filter(|p| ["the", "a", "an"].contains(&p[0].as_str()))
                .count();
            let article_function = seen
                .windows(2)
                .filter(|p| {
                    ["the", "a", "an"].contains(&p[0].as_str())
                        && FUNCTION_WORDS
                            .iter()
                            .any(|f| f.eq_ignore_ascii_case(p[1].as_bytes()))
                })
                .count();
            let mut pairs: Vec<(String, String)> = seen
                .windows(2)
                .map(|w| (w[0].clone(), w[1].clone()))
                .collect();
            let n_pairs = pairs.len();
            pairs.sort_unstable();
            pairs.dedup();
            seen.sort_unstable();
            seen.dedup();
            WordStats {
                words,
                chars,
                distinct: seen.len(),
                pairs: n_pairs,
                distinct_pairs: pairs.len(),
                sentence_ends,
                sentence_starts,
                articles,
                article_function,
            }
        };
        let long: String = (0..3000).map(|i| format!("w{} ", i % 1500)).collect();
        // Sentence ends and articles on both sides of the 1000-word limit.
        let long_prose = "The of. a End. the and. ".repeat(400);
        for t in [
            "",
            "   ",
            "Hello, world! Hello again -- (world).",
            "Grüße\u{a0}aus\u{3000}München\u{b}und\u{85}Köln; \"Straße\" ... ???",
            "x\ty\nz\r\nA a A. a!",
            "averyveryverylongwordthatgoesonandon and 日本語のテキスト",
            "End. then The a of. (Done!) \"Quoted.\" ok 3. Next... and? Yes. ÉTÉ. été",
            "the the of An AND a",
            long.as_str(),
            long_prose.as_str(),
        ] {
            assert_eq!(word_stats(t), naive(t), "{t:?}");
        }
    }

    const PROSE: &str =
        "The json module encodes Python objects as JSON text. Use dumps() to get a \
        string and dump() to write to a file; both accept indent and sort_keys.";

    #[test]
    fn prose_ends_finished_and_a_cut_answer_does_not() {
        assert_eq!(profile(PROSE)[8], 1.0);
        assert_eq!(profile(&PROSE[..60])[8], 0.0);
        assert_eq!(profile("")[8], 0.0);
        assert_eq!(profile("```\ncode\n```")[8], 1.0);
    }

    #[test]
    fn profiles_separate_prose_from_tracebacks_loops_and_foreign_text() {
        let prose = profile(PROSE);
        let trace = profile(
            "Traceback (most recent call last):\n  File \"<string>\", line 1, in <module>\n\
             ValueError: invalid literal for int() with base 10: 'twelve'",
        );
        let looped = profile(&"the answer is yes. ".repeat(40));
        let russian = profile("Модуль json кодирует объекты Python в текст JSON.");
        let broken = profile("caf\u{fffd} na\u{fffd}ve \u{fffd}\u{fffd} text");
        assert!(trace[7] > prose[7] && trace[2] > prose[2], "{trace:?}");
        assert!(looped[6] < 0.1 && prose[6] > 0.8, "{looped:?}");
        assert!(russian[4] > 0.5 && prose[4] == 0.0);
        assert!(broken[4] > russian[4] / 4.0);
    }

    #[test]
    fn shuffled_words_move_the_word_order_rates_and_not_the_character_rates() {
        let prose = "The parser reads the whole file. It returns a list of the records it \
            found. Each record is a tuple of the name and the value. Errors in a line are \
            reported with the line number. The caller decides what to do with them.";
        // The same words in another order (a fixed shuffle).
        let mut words: Vec<&str> = prose.split_whitespace().collect();
        let n = words.len();
        for i in 0..n {
            words.swap(i, (i * 7 + 3) % n);
        }
        let shuffled = words.join(" ");
        let (p, q) = (profile(prose), profile(&shuffled));
        assert_eq!(
            p[10], 1.0,
            "every sentence of the prose starts in upper case"
        );
        assert!(q[10] < 0.5, "{q:?}");
        assert_eq!(
            p[11], 0.0,
            "no article of the prose is followed by a function word"
        );
        assert!(q[11] > 0.1, "{q:?}");
        // Rates that do not see order stay where they were.
        for f in [0, 1, 2, 3, 4, 5, 6] {
            assert!((p[f] - q[f]).abs() < 1e-6, "feature {f}: {p:?} vs {q:?}");
        }
        // No sentence end, no article: the neutral values.
        let plain = profile("just some words without an ending");
        assert_eq!(plain[10], 1.0);
        assert_eq!(profile("just some words")[11], 0.0);
    }

    #[test]
    fn profile_reads_a_bounded_prefix_and_never_panics_on_odd_text() {
        let huge = "é".repeat(5 * 1024 * 1024);
        let p = profile(&huge);
        assert!(p.iter().all(|v| v.is_finite()));
        for t in ["", " ", "\u{0}\u{1}", "😀", "a", "\n\n\n"] {
            assert!(profile(t).iter().all(|v| v.is_finite()), "{t:?}");
        }
    }

    /// The ASCII table path counts exactly what the Unicode property tests count.
    #[test]
    fn ascii_fast_path_matches_the_unicode_definitions() {
        let reference = |text: &str| {
            let (mut chars, mut non_space, mut letters, mut digits, mut punct, mut upper) =
                (0usize, 0usize, 0usize, 0usize, 0usize, 0usize);
            let (mut foreign, mut newlines) = (0usize, 0usize);
            for c in text.chars() {
                chars += 1;
                newlines += usize::from(c == '\n');
                if c.is_whitespace() {
                    continue;
                }
                non_space += 1;
                if c.is_alphabetic() {
                    letters += 1;
                    upper += usize::from(c.is_uppercase());
                } else if c.is_ascii_digit() {
                    digits += 1;
                } else if c.is_ascii_punctuation() {
                    punct += 1;
                }
                foreign += usize::from(!c.is_ascii());
                if c == '\u{fffd}' || (c.is_control() && c != '\t') {
                    foreign += 2;
                }
            }
            let share = |n: usize, of: usize| if of == 0 { 0.0 } else { n as f32 / of as f32 };
            [
                share(letters, non_space),
                share(digits, non_space),
                share(punct, non_space),
                share(upper, letters),
                share(foreign, chars).min(1.0),
                100.0 * share(newlines, chars),
            ]
        };
        let all_ascii: String = (0u8..128).map(char::from).collect();
        for text in [
            all_ascii.as_str(),
            "Ünïcödé ÀB 12 — «quotes» \u{a0}nbsp\u{85}next\u{fffd}\u{9f}\r\n\t\u{b}\u{c}",
            "Модуль JSON: 3 ошибки!\n東京は日本の首都です。",
            PROSE,
        ] {
            let p = profile(text);
            let r = reference(text);
            let fast = [p[0], p[1], p[2], p[3], p[4], p[7]];
            assert_eq!(fast, r, "{text:?}");
        }
    }

    #[test]
    fn distance_is_zero_at_the_median_and_capped_per_feature() {
        let med = [0.5f64; FEATURES];
        let spread = [0.1f64; FEATURES];
        let at = [0.5f32; FEATURES];
        assert!(distance(&at, &med, &spread) < 1e-6);
        let far = [100.0f32; FEATURES];
        assert!((distance(&far, &med, &spread) - TERM_CAP * FEATURES as f64).abs() < 1e-9);
    }
}
