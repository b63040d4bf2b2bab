//! `repetition`: loops and degenerate repeats.

use std::cell::RefCell;

use flate2::{Compress, Compression, FlushCompress, Status};

use super::text::{hash_ascii_word, tail, unit, FULL_SEED as FNV_SEED};

/// Bytes of the answer the repetition check reads (its end: loops run to the end).
const SCAN_BYTES: usize = 16 * 1024;
/// Word n-gram length.
const N: usize = 4;
/// Duplicate 4-gram fraction at which the n-gram score starts to rise.
const DUP_LOW: f64 = 0.25;
/// ... and at which it reaches 1.
const DUP_HIGH: f64 = 0.6;
/// N-grams needed for the duplicate fraction to count in full (fewer scale it down).
const FULL_GRAMS: f64 = 16.0;
/// Texts shorter than this are not compressed (deflate's overhead dominates them).
const MIN_COMPRESS_BYTES: usize = 256;
/// Deflate ratio at or above which the compression score is 0 (normal prose: 0.45-0.65).
const RATIO_HIGH: f64 = 0.40;
/// ... and at or below which it is 1.
const RATIO_LOW: f64 = 0.15;
/// A ratio this low on its own means the text is one thing repeated ...
const EXTREME_RATIO_HIGH: f64 = 0.12;
/// ... fully so at this ratio.
const EXTREME_RATIO_LOW: f64 = 0.06;
/// A run of one char (not whitespace, digits or markdown rule chars) this long starts to
/// count ("Nooooo" is fine) ...
const RUN_LOW: f64 = 12.0;
/// ... and this long is certainly degenerate.
const RUN_HIGH: f64 = 32.0;
/// For rule chars (`-=_*#~.`), digits and box drawing the run must be much longer.
const RULE_RUN_LOW: f64 = 256.0;
const RULE_RUN_HIGH: f64 = 512.0;
/// Deflate runs when the duplicate 4-gram fraction reaches this ...
const DEFLATE_GATE: f64 = 0.15;
/// ... or when the window has fewer than one 4-gram per this many bytes.
const BYTES_PER_GRAM_GATE: usize = 16;
/// Weight of the n-gram score in the blend (the rest is the compression score).
const NGRAM_WEIGHT: f64 = 0.6;

/// Reused buffers: the deflate state (large, so kept per thread and reset), its output, and
/// the n-gram table (generation-stamped, so it needs no clearing between calls).
struct Scratch {
    deflate: Compress,
    out: Vec<u8>,
    /// Entries `generation << 32 | key`; an entry of another generation is empty.
    table: Vec<u64>,
    generation: u32,
    dup: Vec<bool>,
}

thread_local! {
    static SCRATCH: RefCell<Option<Scratch>> = const { RefCell::new(None) };
}

/// FNV-1a step over a char (for non-ASCII chars; ASCII words go through
/// [`hash_ascii_word`]).
#[inline]
fn fnv(h: u64, x: u64) -> u64 {
    (h ^ x).wrapping_mul(0x0000_0100_0000_01b3)
}

/// Chars that are tokens on their own (no spaces between words): Han, kana, Thai.
fn is_char_token(c: char) -> bool {
    matches!(u32::from(c),
        0x3040..=0x30FF | 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF
            | 0x20000..=0x2FFFF | 0x0E00..=0x0E7F)
}

/// Chars allowed long runs: markdown rules and underlines, dot leaders, digits, box drawing.
fn is_rule_char(c: char) -> bool {
    matches!(
        c,
        '-' | '=' | '_' | '*' | '#' | '~' | '.' | '·' | '─' | '━' | '═' | '0'..='9'
    ) || ('\u{2500}'..='\u{259F}').contains(&c)
}

/// Runs shorter than this are not recorded (they score 0 whatever the char).
const TRACK_RUN: usize = 12;

/// Word-level statistics of the window.
struct Words {
    /// Duplicate fraction over all n-grams.
    dup_all: f64,
    /// Duplicate fraction over the second half of the n-grams.
    dup_tail: f64,
    grams: usize,
    /// Longest run of one char that is not whitespace or a rule char.
    run: usize,
    /// Longest run of one rule char.
    rule_run: usize,
}

/// The n-gram table and counters while reading a window.
struct Grams<'a> {
    table: &'a mut [u64],
    mask: usize,
    generation: u64,
    dup: &'a mut Vec<bool>,
    ring: [u64; N],
    tokens: usize,
    dups: usize,
}

impl Grams<'_> {
    /// Adds one token (its hash) and, from the `N`th on, looks its n-gram up.
    #[inline]
    fn push(&mut self, h: u64) {
        self.ring.copy_within(1.., 0);
        self.ring[N - 1] = h;
        self.tokens += 1;
        if self.tokens < N {
            return;
        }
        let mut g = 0x9e37_79b9_7f4a_7c15u64;
        for &t in &self.ring {
            g = (g ^ t).wrapping_mul(0xff51_afd7_ed55_8ccd);
            g ^= g >> 29;
        }
        let key = u64::from((g as u32) | 1);
        let entry = self.generation << 32 | key;
        let mut slot = (g >> 32) as usize & self.mask;
        let seen = loop {
            let t = self.table[slot];
            if t >> 32 != self.generation {
                self.table[slot] = entry;
                break false;
            }
            if t == entry {
                break true;
            }
            slot = (slot + 1) & self.mask;
        };
        self.dups += usize::from(seen);
        self.dup.push(seen);
    }
}

/// Records a run of `len` of char `c`.
#[inline]
fn note_run(c: u32, len: usize, run: &mut usize, rule_run: &mut usize) {
    let Some(c) = char::from_u32(c) else { return };
    if c.is_whitespace() {
        return;
    }
    if is_rule_char(c) {
        *rule_run = (*rule_run).max(len);
    } else {
        *run = (*run).max(len);
    }
}

/// Records the longest run of one byte in an ASCII word.
fn longest_run(word: &[u8], run: &mut usize, rule_run: &mut usize) {
    let mut prev = 0u8;
    let mut len = 0usize;
    for &c in word {
        if c == prev {
            len += 1;
        } else {
            if len >= TRACK_RUN {
                note_run(u32::from(prev), len, run, rule_run);
            }
            prev = c;
            len = 1;
        }
    }
    if len >= TRACK_RUN {
        note_run(u32::from(prev), len, run, rule_run);
    }
}

fn words(w: &str, s: &mut Scratch) -> Words {
    // At most one token per 2 bytes (a 1-byte word and a separator): the table stays at most
    // half full.
    let cap = (w.len() + 64).next_power_of_two();
    if s.table.len() < cap {
        s.table.resize(cap, 0);
    }
    s.generation = s.generation.wrapping_add(1);
    if s.generation == 0 {
        s.table.fill(0);
        s.generation = 1;
    }
    s.dup.clear();
    let mut g = Grams {
        table: &mut s.table[..cap],
        mask: cap - 1,
        generation: u64::from(s.generation),
        dup: &mut s.dup,
        ring: [0; N],
        tokens: 0,
        dups: 0,
    };

    let b = w.as_bytes();
    let n = b.len();
    let mut h = FNV_SEED;
    let mut in_word = false;
    let mut prev = u32::MAX;
    let mut run = 0usize;
    let mut best_run = 0usize;
    let mut best_rule_run = 0usize;
    let mut i = 0;
    while i < n {
        let x = b[i];
        if x < 0x80 {
            if x.is_ascii_alphanumeric() {
                // The ASCII letters and digits of a word, in one go; a run of one char inside
                // it is only possible (and only looked for) in a word of 12+ bytes.
                let (hh, len) = hash_ascii_word(&b[i..], h);
                h = hh;
                in_word = true;
                if len >= TRACK_RUN {
                    longest_run(&b[i..i + len], &mut best_run, &mut best_rule_run);
                }
                i += len;
                prev = u32::MAX;
                run = 0;
                continue;
            }
            i += 1;
            let c = u32::from(x);
            if c == prev {
                run += 1;
            } else {
                if run >= TRACK_RUN {
                    note_run(prev, run, &mut best_run, &mut best_rule_run);
                }
                prev = c;
                run = 1;
            }
            if in_word {
                g.push(h);
                h = FNV_SEED;
                in_word = false;
            }
            continue;
        }
        let Some(ch) = w[i..].chars().next() else {
            break;
        };
        i += ch.len_utf8();
        let c = u32::from(ch);
        if c == prev {
            run += 1;
        } else {
            if run >= TRACK_RUN {
                note_run(prev, run, &mut best_run, &mut best_rule_run);
            }
            prev = c;
            run = 1;
        }
        if is_char_token(ch) {
            if in_word {
                g.push(h);
                h = FNV_SEED;
                in_word = false;
            }
            g.push(fnv(FNV_SEED, u64::from(c)));
        } else if ch.is_alphanumeric() {
            h = fnv(h, u64::from(c));
            in_word = true;
        } else if in_word {
            g.push(h);
            h = FNV_SEED;
            in_word = false;
        }
    }
    if run >= TRACK_RUN {
        note_run(prev, run, &mut best_run, &mut best_rule_run);
    }
    if in_word {
        g.push(h);
    }
    let dups = g.dups;
    let grams = s.dup.len();
    let dup_all = if grams == 0 {
        0.0
    } else {
        dups as f64 / grams as f64
    };
    let half = grams / 2;
    let tail_grams = grams - half;
    let dup_tail = if tail_grams == 0 {
        0.0
    } else {
        s.dup[half..].iter().filter(|&&d| d).count() as f64 / tail_grams as f64
    };
    Words {
        dup_all,
        dup_tail,
        grams,
        run: best_run,
        rule_run: best_rule_run,
    }
}

/// Deflate (fast level, raw) size over input size, or `None` if compression failed.
fn deflate_ratio(w: &[u8], deflate: &mut Compress, out: &mut Vec<u8>) -> Option<f64> {
    deflate.reset();
    out.clear();
    out.reserve(w.len() + w.len() / 8 + 64);
    match deflate.compress_vec(w, out, FlushCompress::Finish) {
        Ok(Status::StreamEnd) => Some(out.len() as f64 / w.len().max(1) as f64),
        _ => None,
    }
}

/// `repetition`: how much the answer loops, in [0, 1].
///
/// Combines, over the last 16 KiB of the answer:
/// * the fraction of word 4-grams that already occurred earlier (words are runs of letters
///   and digits, lowercased; Han, kana and Thai chars are words on their own), taken over
///   the whole window and over its second half (a loop at the end of a long answer), scored
///   0 at 25% and 1 at 60%, and scaled down below 16 n-grams;
/// * the deflate ratio (compressed / raw size, flate2 fast level, raw deflate) for windows of
///   256 bytes or more: 0 at a ratio of 0.40, 1 at 0.15. Normal answers of 0.3-3 KB
///   compress to 0.45-0.8 (prose, lists, code) and 0.3 (a JSON array of similar records);
///   an answer looping its last paragraph to about 0.25;
/// * the longest run of one char ("aaaa…", "!!!!…"): 0 at 12, 1 at 32; markdown rule and
///   leader chars (`-=_*#~.`), digits and box drawing only count from 256.
///
/// The score is the largest of `0.6 · ngram + 0.4 · deflate`, the char-run score, and a
/// deflate ratio below 0.12 on its own (1 at 0.06: one thing repeated, even as a single
/// token). The same sentence or line repeated shows up as repeated 4-grams.
///
/// Deflate is the expensive part (~15 µs for 1 KB with miniz_oxide), so it only runs where
/// it can change the outcome: when at least 15% of the 4-grams repeat, or when the window
/// has fewer than one 4-gram per 16 bytes (repeats that 4-grams cannot see: one long token,
/// symbols). Elsewhere the n-gram score is 0, the blend could reach at most 0.4 and, on the
/// answers above, it would add at most 0.16 (the JSON array); its share is taken as 0.
pub fn repetition(text: &str) -> f64 {
    let w = tail(text, SCAN_BYTES);
    if w.trim().is_empty() {
        return 0.0;
    }
    SCRATCH.with(|cell| {
        let Ok(mut guard) = cell.try_borrow_mut() else {
            return 0.0;
        };
        let s = guard.get_or_insert_with(|| Scratch {
            deflate: Compress::new(Compression::fast(), false),
            out: Vec::new(),
            table: Vec::new(),
            generation: 0,
            dup: Vec::new(),
        });
        let stats = words(w, s);
        let confidence = (stats.grams as f64 / FULL_GRAMS).min(1.0);
        let d = stats
            .dup_all
            .max(if stats.grams >= 2 * FULL_GRAMS as usize {
                stats.dup_tail
            } else {
                0.0
            });
        let ngram = unit((d - DUP_LOW) / (DUP_HIGH - DUP_LOW)) * confidence;

        // Deflate only where it can matter: where word 4-grams already show repeats (the
        // blend can reach the threshold), or where the window has few word tokens for its
        // size (repeats that 4-grams cannot see: one long token, symbols). Elsewhere its
        // share of the blend is 0 for prose and small for code, and skipping it keeps the
        // check cheap on normal answers.
        let few_tokens = stats.grams * BYTES_PER_GRAM_GATE < w.len();
        let (comp, extreme) = if w.len() >= MIN_COMPRESS_BYTES && (d >= DEFLATE_GATE || few_tokens)
        {
            match deflate_ratio(w.as_bytes(), &mut s.deflate, &mut s.out) {
                Some(r) => (
                    unit((RATIO_HIGH - r) / (RATIO_HIGH - RATIO_LOW)),
                    unit((EXTREME_RATIO_HIGH - r) / (EXTREME_RATIO_HIGH - EXTREME_RATIO_LOW)),
                ),
                None => (0.0, 0.0),
            }
        } else {
            (0.0, 0.0)
        };
        // Keep the buffers from growing without bound across calls.
        if s.out.capacity() > 4 * SCAN_BYTES {
            s.out = Vec::new();
        }

        let run = unit((stats.run as f64 - RUN_LOW) / (RUN_HIGH - RUN_LOW));
        let rule_run =
            unit((stats.rule_run as f64 - RULE_RUN_LOW) / (RULE_RUN_HIGH - RULE_RUN_LOW));
        let blend = NGRAM_WEIGHT * ngram + (1.0 - NGRAM_WEIGHT) * comp;
        unit(blend.max(extreme).max(run).max(rule_run))
    })
}
