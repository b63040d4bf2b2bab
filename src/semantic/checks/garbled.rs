//! `garbled`: text that is not readable text.

use super::text::{head, is_fence_line, noisy_or, unit, windows};

/// Bytes of the answer read: the first ...
const HEAD_BYTES: usize = 32 * 1024;
/// ... and the last.
const TAIL_BYTES: usize = 8 * 1024;
/// Bytes of the prompt read to discount what the user pasted in.
const PROMPT_BYTES: usize = 8 * 1024;
/// Each replacement or control char leaves this much of the "clean" probability:
/// one scores 0.4, two 0.64, three 0.78.
const BAD_KEEP: f64 = 0.6;
/// Each unmistakable mojibake sequence ("Ã©", "â€™", a lead char and two continuation
/// chars) leaves this much: one scores 0.5.
const MOJIBAKE_STRONG_KEEP: f64 = 0.5;
/// Each weaker one (other two-byte leads: "Ð¿", "Ø§") leaves this much: one scores 0.3.
const MOJIBAKE_WEAK_KEEP: f64 = 0.7;
/// Each leaked special token ("<|endoftext|>", "<unk>", "<0x0A>") leaves this much.
const SPECIAL_KEEP: f64 = 0.6;
/// Factor for evidence the prompt also shows (the user pasted garbled text or asked about
/// special tokens).
const PROMPT_ECHO_FACTOR: f64 = 0.3;
/// Soup fraction at which the soup score starts to rise ...
const SOUP_LOW: f64 = 0.08;
/// ... and at which it reaches 1.
const SOUP_HIGH: f64 = 0.25;
/// Tokens needed for the soup fraction to count in full.
const SOUP_FULL_TOKENS: f64 = 10.0;

/// Script of a letter, as a bit.
mod script {
    pub const LATIN: u16 = 1;
    pub const GREEK: u16 = 2;
    pub const CYRILLIC: u16 = 4;
    pub const ARABIC: u16 = 8;
    pub const HEBREW: u16 = 16;
    pub const THAI: u16 = 32;
    pub const HANGUL: u16 = 64;
    /// Han and kana (Chinese, Japanese).
    pub const CJ: u16 = 128;
    pub const INDIC: u16 = 256;
    /// Scripts that legitimately share a word with each other (Chinese, Japanese and Korean
    /// text attach particles to Latin words: "Pythonで", "API를", "用Python").
    pub const EAST_ASIAN_MIX: u16 = LATIN | CJ | HANGUL;
}

fn script_of(c: char) -> u16 {
    let u = u32::from(c);
    match u {
        0x41..=0x5A
        | 0x61..=0x7A
        | 0xC0..=0x24F
        | 0x1E00..=0x1EFF
        | 0xFF21..=0xFF3A
        | 0xFF41..=0xFF5A => script::LATIN,
        0x370..=0x3FF | 0x1F00..=0x1FFF => script::GREEK,
        0x400..=0x52F | 0x1C80..=0x1C8F | 0x2DE0..=0x2DFF | 0xA640..=0xA69F => script::CYRILLIC,
        0x590..=0x5FF | 0xFB1D..=0xFB4F => script::HEBREW,
        0x600..=0x6FF | 0x750..=0x77F | 0x8A0..=0x8FF | 0xFB50..=0xFDFF | 0xFE70..=0xFEFF => {
            script::ARABIC
        }
        0x900..=0xDFF => script::INDIC,
        0xE00..=0xE7F => script::THAI,
        0x1100..=0x11FF | 0x3130..=0x318F | 0xAC00..=0xD7AF => script::HANGUL,
        0x3005..=0x3007
        | 0x3040..=0x30FF
        | 0x31F0..=0x31FF
        | 0x3400..=0x4DBF
        | 0x4E00..=0x9FFF
        | 0xF900..=0xFAFF
        | 0xFF66..=0xFF9F
        | 0x20000..=0x2FFFF => script::CJ,
        _ => 0,
    }
}

/// A word mixes scripts that do not share words in real text (Latin with Cyrillic, Cyrillic
/// with Han, three scripts, ...). Greek letters next to Latin count only from three on
/// (units and variables: "μs", "Δt").
fn is_mixed(scripts: u16, greek: u32) -> bool {
    let s = if greek < 3 {
        scripts & !script::GREEK
    } else {
        scripts
    };
    s.count_ones() >= 2 && (s & !script::EAST_ASIAN_MIX) != 0
}

/// A char a UTF-8 continuation byte (0x80-0xBF) turns into when UTF-8 is decoded as
/// Windows-1252 or Latin-1.
fn is_cont_like(c: char) -> bool {
    matches!(u32::from(c), 0x80..=0xBF)
        || matches!(
            c,
            '€' | '‚'
                | 'ƒ'
                | '„'
                | '…'
                | '†'
                | '‡'
                | 'ˆ'
                | '‰'
                | 'Š'
                | '‹'
                | 'Œ'
                | 'Ž'
                | '‘'
                | '’'
                | '“'
                | '”'
                | '•'
                | '–'
                | '—'
                | '˜'
                | '™'
                | 'š'
                | '›'
                | 'œ'
                | 'ž'
                | 'Ÿ'
        )
}

/// Typographic chars that legitimately follow accented letters in French and other text
/// (no-break space before "»", curly quotes, dashes), so they only count as continuation
/// bytes after the strongest leads ("Â", "Ã", "â€").
fn is_typographic(c: char) -> bool {
    matches!(
        c,
        '\u{A0}' | '«' | '»' | '’' | '‘' | '“' | '”' | '–' | '—' | '…' | '•' | '·'
    )
}

/// Control chars other than tab, newline and carriage return (C0, DEL, C1).
fn is_bad_control(c: char) -> bool {
    (c.is_control() && !matches!(c, '\n' | '\t' | '\r')) || matches!(c, '\u{FFFE}' | '\u{FFFF}')
}

/// Combining marks (for stacks of three or more: "Zalgo" text).
fn is_combining(c: char) -> bool {
    matches!(u32::from(c), 0x300..=0x36F | 0x1AB0..=0x1AFF | 0x1DC0..=0x1DFF | 0x20D0..=0x20FF | 0xFE20..=0xFE2F)
}

/// Evidence from one window.
#[derive(Default)]
struct Stats {
    bad: u32,
    moji_strong: u32,
    moji_weak: u32,
    special: u32,
    words: u32,
    mixed_words: u32,
    /// Tokens considered for soup, and the soup ones among them.
    counted: u32,
    soup: u32,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.bad += o.bad;
        self.moji_strong += o.moji_strong;
        self.moji_weak += o.moji_weak;
        self.special += o.special;
        self.words += o.words;
        self.mixed_words += o.mixed_words;
        self.counted += o.counted;
        self.soup += o.soup;
    }
}

/// Length of a leaked special token starting at `s[0] == b'<'` or `b'['`, if there is one:
/// `<|name|>`, `<unk>`, `<pad>`, `<0xHH>` (byte-fallback tokens), `[PAD]`, `[UNK]`.
fn special_token_at(s: &[u8]) -> Option<usize> {
    match s.first()? {
        b'<' => {
            if s.get(1) == Some(&b'|') {
                let body = &s[2..s.len().min(64)];
                let end = body.windows(2).position(|w| w == b"|>")?;
                let name = &body[..end];
                let ok = !name.is_empty()
                    && name
                        .iter()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
                return ok.then_some(end + 4);
            }
            for t in [&b"<unk>"[..], b"<pad>", b"<mask>", b"<eos>", b"<bos>"] {
                if s.starts_with(t) {
                    return Some(t.len());
                }
            }
            if s.len() >= 6
                && s[1] == b'0'
                && s[2] == b'x'
                && s[3].is_ascii_hexdigit()
                && s[4].is_ascii_hexdigit()
                && s[5] == b'>'
            {
                return Some(6);
            }
            None
        }
        b'[' => [&b"[PAD]"[..], b"[UNK]"]
            .iter()
            .find(|t| s.starts_with(t))
            .map(|t| t.len()),
        _ => None,
    }
}

/// ASCII letter runs of 5+ with no vowel that are still words or common tokens.
const VOWELLESS_OK: &[&str] = &["https", "xhtml", "pgsql", "btrfs", "rhythm", "crwth"];

/// ASCII byte classes, as bits.
const ALPHA: u8 = 1;
const DIGIT: u8 = 2;
const SPACE: u8 = 4;
const VOWEL: u8 = 8;
/// Control chars other than `\t` `\n` `\r`, and DEL.
const CTRL: u8 = 16;
/// Symbols that mark a token as a path, URL, markup, math or identifier, not prose.
const NOT_PROSE: u8 = 32;
/// `<` and `[`: may start a special token.
const OPEN: u8 = 64;
const TICK: u8 = 128;

const fn ascii_classes() -> [u8; 128] {
    let mut t = [0u8; 128];
    let mut b = 0;
    while b < 128 {
        let c = b as u8;
        let mut k = 0;
        if c.is_ascii_alphabetic() {
            k |= ALPHA;
        }
        if c.is_ascii_digit() {
            k |= DIGIT;
        }
        if matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0B | 0x0C) {
            k |= SPACE;
        }
        if matches!(
            c.to_ascii_lowercase(),
            b'a' | b'e' | b'i' | b'o' | b'u' | b'y'
        ) {
            k |= VOWEL;
        }
        if (c < 0x20 && !matches!(c, b'\n' | b'\t' | b'\r')) || c == 0x7F {
            k |= CTRL;
        }
        if matches!(
            c,
            b'/' | b'\\' | b'$' | b'@' | b'=' | b'<' | b'>' | b'{' | b'}' | b'_' | b'|'
        ) {
            k |= NOT_PROSE;
        }
        if matches!(c, b'<' | b'[') {
            k |= OPEN;
        }
        if c == b'`' {
            k |= TICK;
        }
        t[b] = k;
        b += 1;
    }
    t
}

static ASCII: [u8; 128] = ascii_classes();

/// [`ASCII`] for any byte (0 for non-ASCII bytes), so a loop over bytes needs no range check.
static ASCII_256: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 128 {
        t[i] = ASCII[i];
        i += 1;
    }
    t
};

/// Whether an ASCII letter run `r` is soup: 5+ letters without a vowel (unless all upper
/// case, fewer than 3 distinct letters, or a known word), 9+ consonants in a row, or 40+
/// letters.
fn run_is_soup(r: &str, has_vowel: bool) -> bool {
    let len = r.len();
    if len >= 40 {
        return true;
    }
    if has_vowel {
        let mut cons = 0u32;
        for b in r.bytes() {
            if ASCII_256[usize::from(b)] & VOWEL != 0 {
                cons = 0;
            } else {
                cons += 1;
                if cons >= 9 {
                    return true;
                }
            }
        }
        return false;
    }
    if len < 5 {
        return false;
    }
    if len >= 9 {
        return true; // 9+ consonants in a row
    }
    let mut letters = 0u32;
    let mut upper = 0usize;
    for b in r.bytes() {
        letters |= 1 << (b.to_ascii_lowercase().wrapping_sub(b'a') & 31);
        upper += usize::from(b.is_ascii_uppercase());
    }
    upper < len
        && letters.count_ones() >= 3
        && !VOWELLESS_OK.iter().any(|ok| r.eq_ignore_ascii_case(ok))
}

/// A whitespace-separated token being read (for soup).
#[derive(Default, Clone, Copy)]
struct Token {
    len: u32,
    alpha: bool,
    alnum: bool,
    non_ascii: bool,
    not_prose: bool,
    ticks: u32,
    symbols: u128,
    soup: bool,
}

/// Soup state across tokens: code fences and inline code are skipped.
#[derive(Default)]
struct Soup {
    in_fence: bool,
    line_skip: bool,
    in_inline: bool,
    counted: u32,
    soup: u32,
}

impl Soup {
    /// Ends `tok` and counts it.
    #[inline]
    fn end_token(&mut self, tok: &mut Token) {
        if tok.len == 0 {
            return;
        }
        let t = std::mem::take(tok);
        if self.line_skip {
            // Code fence: not prose.
        } else if t.ticks > 0 {
            if t.ticks % 2 == 1 {
                self.in_inline = !self.in_inline;
            }
        } else if !self.in_inline {
            if !t.alnum {
                // Symbol-only token: noise when long and varied ("#@!$", ",.;'").
                if !t.non_ascii && t.len >= 4 {
                    self.counted += 1;
                    self.soup += u32::from(t.symbols.count_ones() >= 4);
                }
            } else if t.alpha && !t.not_prose {
                self.counted += 1;
                self.soup += u32::from(t.soup);
            }
        }
    }
}

/// Word state for script mixing.
#[derive(Default)]
struct Word {
    on: bool,
    scripts: u16,
    greek: u32,
}

impl Word {
    #[inline]
    fn end(&mut self, st: &mut Stats) {
        if self.on {
            st.words += 1;
            if self.scripts != script::LATIN && is_mixed(self.scripts, self.greek) {
                st.mixed_words += 1;
            }
            *self = Word::default();
        }
    }
}

/// One pass over `w`: replacement and control chars, combining-mark stacks, mojibake,
/// special tokens, words mixing scripts, and token soup (outside code fences and inline
/// code).
fn scan(w: &str) -> Stats {
    let mut st = Stats::default();
    let b = w.as_bytes();
    let n = b.len();
    let mut soup = Soup::default();
    let mut tok = Token::default();
    let mut word = Word::default();
    let mut at_line_start = true;
    let mut line_has_token = false;
    // Mojibake: the two previous chars (reset by ASCII).
    let mut p1 = ' ';
    let mut p2 = ' ';
    let mut combining = 0u32;

    let mut i = 0;
    while i < n {
        if at_line_start {
            at_line_start = false;
            // Only a line whose first non-blank byte is ` or ~ can be a fence.
            let first = b[i..].iter().find(|&&c| c != b' ' && c != b'\t');
            let maybe_fence = matches!(first, Some(b'`' | b'~') | Some(0x80..));
            let end = if maybe_fence {
                memchr::memchr(b'\n', &b[i..]).map_or(n, |k| i + k)
            } else {
                i
            };
            if maybe_fence && is_fence_line(&w[i..end]) {
                soup.in_fence = !soup.in_fence;
                soup.line_skip = true;
            } else {
                soup.line_skip = soup.in_fence;
            }
            line_has_token = false;
        }
        let c0 = b[i];
        if c0 < 0x80 {
            p1 = ' ';
            p2 = ' ';
            combining = 0;
            let k = ASCII[usize::from(c0)];
            if k & ALPHA != 0 {
                // A run of ASCII letters, read in one go; consonant runs are only counted
                // (on a second look) in runs long enough to matter.
                let start = i;
                let mut vowel = 0u8;
                for &c in &b[i..] {
                    let k = ASCII_256[usize::from(c)];
                    if k & ALPHA == 0 {
                        break;
                    }
                    vowel |= k;
                    i += 1;
                }
                let len = i - start;
                let has_vowel = vowel & VOWEL != 0;
                word.on = true;
                word.scripts |= script::LATIN;
                line_has_token = true;
                tok.len += len as u32;
                tok.alpha = true;
                tok.alnum = true;
                if (len >= 5 && !has_vowel) || len >= 9 {
                    tok.soup |= run_is_soup(&w[start..i], has_vowel);
                }
                continue;
            }
            word.end(&mut st);
            if k & SPACE != 0 {
                soup.end_token(&mut tok);
                if c0 == b'\n' {
                    if !line_has_token {
                        // A blank line ends a paragraph, and any unclosed inline code.
                        soup.in_inline = false;
                    }
                    at_line_start = true;
                }
            } else {
                line_has_token = true;
                tok.len += 1;
                if k & DIGIT != 0 {
                    tok.alnum = true;
                } else {
                    tok.symbols |= 1u128 << c0;
                    tok.not_prose |= k & NOT_PROSE != 0;
                    tok.ticks += u32::from(k & TICK != 0);
                    if k & CTRL != 0 {
                        st.bad += 1;
                    } else if k & OPEN != 0 && special_token_at(&b[i..]).is_some() {
                        st.special += 1;
                    }
                }
            }
            i += 1;
            continue;
        }

        // Non-ASCII: decode the char (`i` is always on a char boundary).
        let Some(c) = w[i..].chars().next() else {
            break;
        };
        i += c.len_utf8();
        if c == '\u{FFFD}' || is_bad_control(c) {
            st.bad += 1;
        }
        let comb = is_combining(c);
        if comb {
            combining += 1;
            if combining == 3 {
                st.bad += 1;
            }
        } else {
            combining = 0;
        }
        // Mojibake: UTF-8 lead bytes read as Windows-1252 / Latin-1, followed by
        // continuation bytes read the same way.
        let mut hit = false;
        if is_cont_like(c) {
            let u1 = u32::from(p1);
            let u2 = u32::from(p2);
            // "Ã©", "Â ", "â€™"; or a three/four-byte lead and two continuations ("ä¸­").
            let two_byte_strong =
                matches!(p1, 'Â' | 'Ã') || (p1 == 'â' && matches!(c, '€' | '‚' | '„'));
            let multi_byte = (0xE0..=0xF4).contains(&u2)
                && is_cont_like(p1)
                && !is_typographic(p1)
                && !is_typographic(c);
            if two_byte_strong || multi_byte {
                st.moji_strong += 1;
                hit = true;
            } else if (0xC4..=0xDF).contains(&u1) && u1 != 0xD7 && !is_typographic(c) {
                st.moji_weak += 1;
                hit = true;
            }
        }
        if hit {
            p1 = ' ';
            p2 = ' ';
        } else {
            p2 = p1;
            p1 = c;
        }
        // Words and scripts.
        if c.is_alphabetic() {
            let s = script_of(c);
            word.scripts |= s;
            word.greek += u32::from(s == script::GREEK);
            word.on = true;
        } else if !comb {
            word.end(&mut st);
        }
        // Tokens.
        if c.is_whitespace() {
            soup.end_token(&mut tok);
        } else {
            line_has_token = true;
            tok.len += 1;
            tok.non_ascii = true;
            tok.alnum |= c.is_alphanumeric();
        }
    }
    word.end(&mut st);
    soup.end_token(&mut tok);
    st.counted = soup.counted;
    st.soup = soup.soup;
    st
}

/// Whether the prompt shows the same kind of evidence (the user pasted it in).
fn prompt_echoes(prompt: &str, special: bool) -> bool {
    let p = head(prompt, PROMPT_BYTES);
    let st = scan(p);
    if special {
        st.special > 0 || p.contains("<|")
    } else {
        st.bad + st.moji_strong + st.moji_weak > 0
    }
}

/// `garbled`: how much the answer fails to be readable text, in [0, 1].
///
/// Evidence, each scored in [0, 1] and combined as independent (`1 - Π(1 - s)`):
/// * replacement chars (U+FFFD), control chars other than `\n` `\t` `\r` (C0, DEL, C1),
///   noncharacters and stacks of 3+ combining marks: one scores 0.4, two 0.64;
/// * mojibake, UTF-8 decoded as Windows-1252/Latin-1: "Ã©", "Â ", "â€™" or a three-byte
///   lead followed by two continuation-like chars ("ä¸­") score 0.5 each, other two-byte
///   leads ("Ð¿", "Ø§") 0.3 each;
/// * leaked special tokens (`<|endoftext|>`, `<|im_end|>`, `<unk>`, `<0x0A>`, `[PAD]`):
///   0.4 each;
/// * words mixing scripts that never share a word (Latin+Cyrillic, Cyrillic+Han, three
///   scripts; Latin next to Han, kana or Hangul is normal CJK text, and one or two Greek
///   letters next to Latin are units and variables): `mixed / (1.5 + 0.03 · words)`;
/// * token soup, over whitespace-separated tokens with ASCII letters outside code blocks,
///   inline code, URLs, paths and markup: the fraction that has a 5+ letter run without a
///   vowel ("xkqzt", but not "HTTPS" or "hmmmm"), a 9+ consonant run, a 40+ letter run, or
///   that is 4+ varied symbols and nothing else ("#@!$"); 0 at 8%, 1 at 25%, scaled down
///   below 10 tokens.
///
/// Text in any single script (Chinese, Russian, Arabic...), code, URLs, JSON, LaTeX math and
/// emoji carry none of this evidence. Replacement chars, mojibake and special tokens that
/// the prompt also contains (the user pasted garbled text, or asked about chat templates)
/// count 0.3 as much (the prompt's first 8 KiB is read only when there is such evidence).
/// Reads the first 32 KiB and the last 8 KiB of the answer.
pub fn garbled(text: &str, prompt: Option<&str>) -> f64 {
    let (first, last) = windows(text, HEAD_BYTES, TAIL_BYTES);
    let mut st = scan(first);
    if let Some(last) = last {
        st.add(&scan(last));
    }
    let (counted, soup) = (st.counted, st.soup);

    let mut bad = 1.0 - BAD_KEEP.powi(st.bad.min(64) as i32);
    let mut moji = 1.0
        - MOJIBAKE_STRONG_KEEP.powi(st.moji_strong.min(64) as i32)
            * MOJIBAKE_WEAK_KEEP.powi(st.moji_weak.min(64) as i32);
    let mut special = 1.0 - SPECIAL_KEEP.powi(st.special.min(64) as i32);
    if let Some(p) = prompt {
        if (bad > 0.0 || moji > 0.0) && prompt_echoes(p, false) {
            bad *= PROMPT_ECHO_FACTOR;
            moji *= PROMPT_ECHO_FACTOR;
        }
        if special > 0.0 && prompt_echoes(p, true) {
            special *= PROMPT_ECHO_FACTOR;
        }
    }
    let mixed = unit(f64::from(st.mixed_words) / (1.5 + 0.03 * f64::from(st.words)));
    let soup_score = if counted == 0 {
        0.0
    } else {
        let frac = f64::from(soup) / f64::from(counted);
        unit((frac - SOUP_LOW) / (SOUP_HIGH - SOUP_LOW))
            * (f64::from(counted) / SOUP_FULL_TOKENS).min(1.0)
    };
    [bad, moji, special, mixed, soup_score]
        .into_iter()
        .fold(0.0, noisy_or)
}
