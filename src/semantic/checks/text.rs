//! Text helpers shared by the checks: bounded windows over long answers, and a multi-phrase
//! matcher that works on raw text as if it were normalised, so no check has to copy or
//! rewrite the answer.

/// The longest prefix of `s` of at most `max` bytes that ends on a char boundary.
pub(crate) fn head(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut cut = max;
    while cut > 0 && !s.is_char_boundary(cut) {
        cut -= 1;
    }
    &s[..cut]
}

/// The longest suffix of `s` of at most `max` bytes that starts on a char boundary.
pub(crate) fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut cut = s.len() - max;
    while cut < s.len() && !s.is_char_boundary(cut) {
        cut += 1;
    }
    &s[cut..]
}

/// `s` itself when it is at most `head_max + tail_max` bytes long, otherwise its first
/// `head_max` and last `tail_max` bytes (cut on char boundaries) as two windows.
pub(super) fn windows(s: &str, head_max: usize, tail_max: usize) -> (&str, Option<&str>) {
    if s.len() <= head_max.saturating_add(tail_max) {
        (s, None)
    } else {
        (head(s, head_max), Some(tail(s, tail_max)))
    }
}

/// `s` without leading and trailing whitespace, trimming at most `max` bytes at each end (so
/// a 10 MB run of spaces costs no more than `2 · max` bytes of work).
pub(super) fn trim_bounded(s: &str, max: usize) -> &str {
    let h = head(s, max);
    let s = &s[h.len() - h.trim_start().len()..];
    let t = tail(s, max);
    &s[..s.len() - (t.len() - t.trim_end().len())]
}

/// `1 - (1 - a)(1 - b)`: combines independent pieces of evidence in [0, 1].
pub(super) fn noisy_or(a: f64, b: f64) -> f64 {
    1.0 - (1.0 - unit(a)) * (1.0 - unit(b))
}

/// `x` clamped into [0, 1] (NaN becomes 0).
pub(super) fn unit(x: f64) -> f64 {
    if x.is_nan() {
        0.0
    } else {
        x.clamp(0.0, 1.0)
    }
}

/// Whether a line opens or closes a markdown code fence: ``` or ~~~ after any indentation
/// (models indent fences inside list items); for backticks the rest of the line may not hold
/// another backtick, as CommonMark requires, so "```x```" is inline code, not a fence.
pub(super) fn is_fence_line(line: &str) -> bool {
    let t = line.trim_start_matches(|c: char| {
        c.is_whitespace() || matches!(c, '\u{200B}'..='\u{200D}' | '\u{2060}' | '\u{FEFF}')
    });
    if let Some(rest) = t.strip_prefix("```") {
        !rest.contains('`')
    } else {
        t.starts_with("~~~")
    }
}

/// Apostrophe-like chars: dropped by normalisation, so "can’t", "can't" and "cant" agree.
pub(super) fn is_apostrophe(c: char) -> bool {
    matches!(c, '\'' | '’' | '‘' | 'ʼ' | '`' | '´' | '′')
}

/// The normalised form of a phrase: lowercase, apostrophes dropped, every run of other
/// chars that are not letters or digits one space, trimmed.
pub(super) fn normalise_phrase(p: &str) -> Vec<u8> {
    let mut out = String::with_capacity(p.len());
    let mut space = true;
    for c in p.chars() {
        if c.is_alphanumeric() {
            out.extend(c.to_lowercase());
            space = false;
        } else if is_apostrophe(c) {
            // Dropped: "can't" is `cant`.
        } else if !space {
            out.push(' ');
            space = true;
        }
    }
    out.truncate(out.trim_end().len());
    out.into_bytes()
}

/// One phrase of a [`PhraseSet`].
#[derive(Debug, Clone)]
pub(super) struct Phrase {
    /// The phrase in normalised form ([`normalise_phrase`]).
    pub bytes: Vec<u8>,
    /// What a match is worth to the check that owns the set.
    pub weight: f32,
}

/// The char at `s[i..]` (`i` on a char boundary) and its length; `None` at the end.
#[inline]
fn char_at(s: &str, i: usize) -> Option<(char, usize)> {
    let c = s.get(i..)?.chars().next()?;
    Some((c, c.len_utf8()))
}

/// Length of the apostrophe at `s[i..]`, if there is one.
#[inline]
fn apostrophe_at(s: &str, i: usize) -> Option<usize> {
    let b = *s.as_bytes().get(i)?;
    if b == b'\'' || b == b'`' {
        return Some(1);
    }
    if b < 0x80 {
        return None;
    }
    char_at(s, i).and_then(|(c, l)| is_apostrophe(c).then_some(l))
}

/// Whether the char at `s[i..]` is a letter or digit (false at the end).
#[inline]
fn word_char_at(s: &str, i: usize) -> bool {
    match s.as_bytes().get(i) {
        None => false,
        Some(&b) if b < 0x80 => b.is_ascii_alphanumeric(),
        Some(_) => char_at(s, i).is_some_and(|(c, _)| c.is_alphanumeric()),
    }
}

/// ASCII letters and digits, lowercased; 0 for every other byte.
pub(super) static LOWER: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        if c.is_ascii_alphanumeric() {
            t[i] = c.to_ascii_lowercase();
        }
        i += 1;
    }
    t
};

/// Seed of word hashes (the FNV-1a offset basis); `repetition` hashes words with it too.
pub(super) const FULL_SEED: u64 = 0xcbf2_9ce4_8422_2325;
/// Seed of the hash of a first word's ASCII start (kept apart from whole-word hashes).
const PREFIX_SEED: u64 = 0x8422_2325_cbf2_9ce4;

/// FNV-1a step over one normalised byte.
#[inline]
pub(super) fn fnv(h: u64, b: u8) -> u64 {
    (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
}

/// The table key of a hash state (never 0, which marks an empty slot).
#[inline]
fn key_of(h: u64) -> u64 {
    let mut x = h ^ (h >> 31);
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    (x ^ (x >> 29)) | 1
}

/// One slot of the index: the phrases filed under a key.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    key: u64,
    start: u32,
    len: u32,
    /// The key is a first word of phrases with more words (filed under the first two).
    multi: bool,
}

/// A set of phrases matched in one pass over raw text, as if both were normalised: ASCII
/// letters compare case-insensitively, apostrophes in the text are skipped ("I’m" matches
/// `im`), and a space in a phrase matches any run of whitespace and punctuation ("sorry, but"
/// matches `sorry but`). Non-ASCII letters compare exactly (so "DÉSOLÉ" in capitals does
/// not match `désolé`).
///
/// Phrases that start with an ASCII letter or digit only match at a word start (the char
/// before is not a letter or digit); if they end with one, the text must not go on with one,
/// so `as an ai` does not match "as an aid". Phrases that start with a non-ASCII char
/// (Chinese, Japanese) match anywhere.
///
/// Candidates come from a hash index on the first word (and the first two words, for phrases
/// that have them) or, for first words with non-ASCII letters, on their ASCII start; the text
/// is hashed word by word as it is read, so a byte of text costs a few instructions and a
/// word one table probe.
#[derive(Debug)]
pub(super) struct PhraseSet {
    phrases: Vec<Phrase>,
    /// Open-addressing table of [`Slot`]s, a power of two long.
    slots: Vec<Slot>,
    /// Phrase indices, in runs that slots point to.
    members: Vec<u16>,
    /// Indices of phrases by the lead byte (0xC0..=0xFF) of their first char.
    other: Vec<Vec<u16>>,
}

/// Where a phrase is filed.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum File {
    /// Under the hash of its words so far (one or two).
    Words(u64),
    /// Under the hash of the ASCII start of a first word that goes on with non-ASCII letters.
    Prefix(u64),
}

impl PhraseSet {
    /// Builds the set from `(phrase, weight)` pairs; phrases are normalised here, and those
    /// that normalise to nothing are dropped.
    pub fn new(list: &[(&str, f32)]) -> PhraseSet {
        let phrases: Vec<Phrase> = list
            .iter()
            .map(|&(p, w)| Phrase {
                bytes: normalise_phrase(p),
                weight: w,
            })
            .filter(|p| !p.bytes.is_empty())
            .take(usize::from(u16::MAX))
            .collect();
        let mut other = vec![Vec::new(); 64];
        let mut files: std::collections::BTreeMap<u64, (Vec<u16>, bool)> = Default::default();
        for (i, p) in phrases.iter().enumerate() {
            let i = i as u16; // at most u16::MAX phrases (take above)
            let b0 = p.bytes[0];
            if b0 >= 0x80 {
                other[usize::from(b0.saturating_sub(0xC0)).min(63)].push(i);
                continue;
            }
            let mut words = p.bytes.split(|&b| b == b' ');
            let w1 = words.next().unwrap_or_default();
            let w2 = words.next();
            let file = if !w1.is_ascii() {
                let ascii = w1
                    .iter()
                    .take_while(|b| b.is_ascii())
                    .fold(PREFIX_SEED, |h, &b| fnv(h, b));
                File::Prefix(key_of(ascii))
            } else {
                let h1 = w1.iter().fold(FULL_SEED, |h, &b| fnv(h, b));
                match w2 {
                    Some(w2) if w2.is_ascii() => {
                        files.entry(key_of(h1)).or_default().1 = true;
                        let h2 = w2.iter().fold(fnv(h1, b' '), |h, &b| fnv(h, b));
                        File::Words(key_of(h2))
                    }
                    _ => File::Words(key_of(h1)),
                }
            };
            let (File::Words(k) | File::Prefix(k)) = file;
            files.entry(k).or_default().0.push(i);
        }
        let size = (files.len() * 4).next_power_of_two().max(64);
        let mut slots = vec![Slot::default(); size];
        let mut members = Vec::new();
        for (key, (idx, multi)) in files {
            let mut at = (key >> 40) as usize & (size - 1);
            while slots[at].key != 0 {
                at = (at + 1) & (size - 1);
            }
            slots[at] = Slot {
                key,
                start: members.len() as u32,
                len: idx.len() as u32,
                multi,
            };
            members.extend(idx);
        }
        PhraseSet {
            phrases,
            slots,
            members,
            other,
        }
    }

    #[inline]
    fn slot(&self, key: u64) -> Option<&Slot> {
        let mask = self.slots.len() - 1;
        let mut at = (key >> 40) as usize & mask;
        loop {
            let s = &self.slots[at];
            if s.key == key {
                return Some(s);
            }
            if s.key == 0 {
                return None;
            }
            at = (at + 1) & mask;
        }
    }

    /// Tries the phrases filed in `slot` at `start`.
    #[inline]
    fn try_slot(
        &self,
        s: &str,
        start: usize,
        slot: &Slot,
        f: &mut impl FnMut(usize, usize, &Phrase),
    ) {
        let from = slot.start as usize;
        for &k in &self.members[from..from + slot.len as usize] {
            let p = &self.phrases[usize::from(k)];
            if let Some(end) = match_at(s, start, &p.bytes) {
                f(start, end, p);
            }
        }
    }

    /// Calls `f(start, end, phrase)` for every match in `s` (byte offsets into `s`), in
    /// increasing `start` order.
    pub fn scan(&self, s: &str, mut f: impl FnMut(usize, usize, &Phrase)) {
        let b = s.as_bytes();
        let n = b.len();
        let mut prev_word = false;
        let mut i = 0;
        while i < n {
            let c = b[i];
            if c < 0x80 {
                if LOWER[usize::from(c)] == 0 {
                    if c != b'\'' && c != b'`' {
                        prev_word = false;
                    }
                    i += 1;
                    continue;
                }
                if prev_word {
                    // Inside a word (after a non-ASCII letter or an apostrophe).
                    while i < n && LOWER[usize::from(b[i])] != 0 {
                        i += 1;
                    }
                    continue;
                }
                let start = i;
                let (h1, end, complete) = read_word(s, i, FULL_SEED);
                i = end;
                prev_word = true;
                if !complete {
                    // Goes on with non-ASCII letters ("désolé", "AIとして").
                    let (hp, _, _) = read_word(s, start, PREFIX_SEED);
                    if let Some(slot) = self.slot(key_of(hp)) {
                        self.try_slot(s, start, slot, &mut f);
                    }
                    continue;
                }
                let Some(slot) = self.slot(key_of(h1)) else {
                    continue;
                };
                self.try_slot(s, start, slot, &mut f);
                if slot.multi {
                    if let Some(j) = skip_separators(s, end) {
                        let (h2, _, complete2) = read_word(s, j, fnv(h1, b' '));
                        if complete2 {
                            if let Some(slot2) = self.slot(key_of(h2)) {
                                self.try_slot(s, start, slot2, &mut f);
                            }
                        }
                    }
                }
                continue;
            }
            let Some((ch, len)) = char_at(s, i) else {
                break;
            };
            if let Some(bucket) = self.other.get(usize::from(c.wrapping_sub(0xC0))) {
                for &k in bucket {
                    let p = &self.phrases[usize::from(k)];
                    if let Some(end) = match_at(s, i, &p.bytes) {
                        f(i, end, p);
                    }
                }
            }
            if ch.is_alphanumeric() {
                prev_word = true;
            } else if !is_apostrophe(ch) {
                prev_word = false;
            }
            i += len;
        }
    }

    /// The largest weight of any match in `s` (0 if none) and the length of that match.
    pub fn best(&self, s: &str) -> (f32, usize) {
        let mut best = (0.0f32, 0usize);
        self.scan(s, |start, end, p| {
            if p.weight > best.0 {
                best = (p.weight, end - start);
            }
        });
        best
    }
}

/// Hashes the leading ASCII letters and digits of `b` (lowercased) into `h`; returns the
/// hash and how many bytes that was.
#[inline(always)]
pub(super) fn hash_ascii_word(b: &[u8], mut h: u64) -> (u64, usize) {
    let mut len = 0;
    for &c in b {
        let l = LOWER[usize::from(c)];
        if l == 0 {
            break;
        }
        h = fnv(h, l);
        len += 1;
    }
    (h, len)
}

/// Reads the ASCII word at `s[i..]` into hash state `h`: letters and digits lowercased,
/// apostrophes followed by more of the word skipped ("can't" is `cant`). For a
/// [`PREFIX_SEED`] state it stops at the first non-ASCII char. Returns the hash, where the
/// ASCII part ends, and whether the word ends there (false if it goes on with a non-ASCII
/// letter or digit).
#[inline(always)]
fn read_word(s: &str, mut i: usize, mut h: u64) -> (u64, usize, bool) {
    let b = s.as_bytes();
    let n = b.len();
    loop {
        let (hh, len) = hash_ascii_word(b.get(i..).unwrap_or_default(), h);
        h = hh;
        i += len;
        match apostrophe_at(s, i) {
            Some(l) if b.get(i + l).is_some_and(|&c| LOWER[usize::from(c)] != 0) => i += l,
            _ => break,
        }
    }
    let complete = !(i < n && b[i] >= 0x80 && word_char_at(s, i));
    (h, i, complete)
}

/// Skips one or more separators (whitespace, punctuation; apostrophes do not count) at
/// `s[i..]`; returns where the next word starts, or `None` if there is no separator or no
/// next word.
#[inline]
fn skip_separators(s: &str, mut i: usize) -> Option<usize> {
    let b = s.as_bytes();
    let mut seps = 0;
    loop {
        let &c = b.get(i)?;
        if c < 0x80 {
            if LOWER[usize::from(c)] != 0 {
                break;
            }
            seps += usize::from(c != b'\'' && c != b'`');
            i += 1;
        } else {
            let (ch, l) = char_at(s, i)?;
            if ch.is_alphanumeric() {
                return None; // a non-ASCII word: not filed under two ASCII words
            }
            seps += usize::from(!is_apostrophe(ch));
            i += l;
        }
    }
    (seps > 0).then_some(i)
}

/// Matches the normalised phrase `p` against `s` at byte `i`; returns the end of the match.
fn match_at(s: &str, i: usize, p: &[u8]) -> Option<usize> {
    let b = s.as_bytes();
    // Fast path: the text is already in normalised form here, or differs from the phrase at
    // a letter or digit (where normalisation changes nothing): decided without the slow
    // walk below.
    let rest = &b[i.min(b.len())..];
    let same = rest
        .iter()
        .zip(p)
        .take_while(|(h, q)| h.to_ascii_lowercase() == **q)
        .count();
    if same < p.len() {
        match rest.get(same) {
            None => return None,
            Some(h) if h.is_ascii_alphanumeric() && p[same].is_ascii_alphanumeric() => {
                return None;
            }
            _ => {}
        }
    }
    let mut j = i;
    for &pc in p {
        if pc == b' ' {
            // One or more separators (whitespace, punctuation); apostrophes do not count.
            let mut seps = 0;
            loop {
                let &c = b.get(j)?;
                if c < 0x80 {
                    if c.is_ascii_alphanumeric() {
                        break;
                    }
                    if c != b'\'' && c != b'`' {
                        seps += 1;
                    }
                    j += 1;
                } else {
                    let (ch, l) = char_at(s, j)?;
                    if ch.is_alphanumeric() {
                        break;
                    }
                    if !is_apostrophe(ch) {
                        seps += 1;
                    }
                    j += l;
                }
            }
            if seps == 0 {
                return None;
            }
        } else {
            if pc.is_ascii_alphanumeric() && j > i {
                while let Some(l) = apostrophe_at(s, j) {
                    j += l;
                }
            }
            let &c = b.get(j)?;
            if c.to_ascii_lowercase() != pc {
                return None;
            }
            j += 1;
        }
    }
    // A phrase ending in a letter or digit must end a word.
    if p.last().is_some_and(u8::is_ascii_alphanumeric) {
        let mut k = j;
        while let Some(l) = apostrophe_at(s, k) {
            k += l;
        }
        if word_char_at(s, k) {
            return None;
        }
    }
    Some(j)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(phrase: &str, text: &str) -> Vec<(usize, usize)> {
        let set = PhraseSet::new(&[(phrase, 1.0)]);
        let mut v = Vec::new();
        set.scan(text, |a, b, _| v.push((a, b)));
        v
    }

    #[test]
    fn phrases_match_as_if_normalised() {
        assert_eq!(matches("I can't", "Sorry, I can’t."), vec![(7, 16)]);
        assert_eq!(matches("i cant", "I CANT"), vec![(0, 6)]);
        assert_eq!(matches("sorry but i", "Sorry,   but\nI"), vec![(0, 14)]);
        assert!(matches("as an ai", "as an aid to memory").is_empty());
        assert!(matches("cant", "decant").is_empty());
        assert!(matches("i cant", "i can't've").is_empty());
        assert!(matches("sorry but", "sorrybut").is_empty());
        assert_eq!(
            matches("disconnect/reset", "disconnect/reset"),
            vec![(0, 16)]
        );
        assert_eq!(matches("我无法", "很抱歉，我无法协助"), vec![(12, 21)]);
        assert_eq!(matches("désolé", "Je suis désolé."), vec![(8, 16)]);
        // Mid-word: "sorry" after a non-ASCII letter is not a word start.
        assert!(matches("sorry", "ésorry").is_empty());
        assert!(matches("x", "").is_empty());
    }

    #[test]
    fn windows_cut_on_char_boundaries() {
        let s = "aé日本b";
        assert_eq!(head(s, 2), "a");
        assert_eq!(head(s, 3), "aé");
        assert_eq!(tail(s, 2), "b");
        assert_eq!(tail(s, 4), "本b");
        assert_eq!(windows(s, 1, 1), ("a", Some("b")));
        assert_eq!(windows(s, 10, 10), (s, None));
        assert!(is_fence_line("```json"));
        assert!(is_fence_line("   ~~~"));
        assert!(!is_fence_line("```x```"));
        assert!(!is_fence_line("text ```"));
    }
}
