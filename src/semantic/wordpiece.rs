//! A fast BERT WordPiece tokenizer whose ids are identical to the `tokenizers` crate's.
//!
//! The static tier tokenises every response, and the `tokenizers` pipeline (offset-tracking
//! `NormalizedString`s, a `String` per token) costs far more than the embedding itself. This
//! implementation fuses the BERT normalizer, the BERT pre-tokenizer and the WordPiece model
//! into one pass over the bytes: ASCII is normalised through lookup tables into a reused
//! word buffer, only non-ASCII runs take the full Unicode path (clean-up, CJK spacing, NFD,
//! accent stripping, lowercasing), vocabulary lookups borrow slices of that buffer, and
//! tokenisation stops as soon as the truncation length is reached.
//!
//! Exactness: `tokenizers` 0.22 classifies characters with the `unicode_categories` 0.1.1
//! tables and decomposes with `unicode-normalization-alignments` 0.1.12, both Unicode 9.0,
//! while `char` methods (whitespace, lowercase) follow the compiler's Unicode. The tables
//! below reproduce the Unicode 9 behaviour (including characters those tables leave out), so
//! characters added since then are treated as `tokenizers` treats them. The tests compare
//! ids with `tokenizers` on generated text and every code point's normalisation.

use std::cell::Cell;
use std::path::Path;

use serde_json::Value;

/// Why a tokenizer.json could not be used.
#[derive(Debug, thiserror::Error)]
pub enum WordPieceError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not JSON.
    #[error("tokenizer.json is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// Valid, but describes something this implementation does not reproduce exactly.
    #[error("unsupported tokenizer.json: {0}")]
    Unsupported(String),
    /// Missing or malformed fields.
    #[error("invalid tokenizer.json: {0}")]
    Invalid(String),
}

// ---------------------------------------------------------------------------------------------
// Vocabulary lookup

const FX_SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

/// Keys up to this many bytes are held as two words inside the slot, so comparing is two
/// integer compares and a lookup touches at most one slot cache line.
const INLINE_KEY: usize = 16;

/// Ids beyond this are rejected, so a corrupt file cannot demand a huge id table.
const MAX_IDS: usize = 1 << 24;

/// A key of up to 16 bytes as two words, read with overlapping loads (no copying). Given the
/// length the words determine the bytes, so comparing (len, words) compares keys.
#[inline]
fn key_words(k: &[u8]) -> (u64, u64) {
    #[inline(always)]
    fn u32_at(k: &[u8], i: usize) -> u64 {
        u64::from(u32::from_le_bytes([k[i], k[i + 1], k[i + 2], k[i + 3]]))
    }
    #[inline(always)]
    fn u64_at(k: &[u8], i: usize) -> u64 {
        let mut w = [0u8; 8];
        w.copy_from_slice(&k[i..i + 8]);
        u64::from_le_bytes(w)
    }
    let n = k.len();
    match n {
        0 => (0, 0),
        1..=3 => (
            u64::from(k[0]) | u64::from(k[n / 2]) << 8 | u64::from(k[n - 1]) << 16,
            0,
        ),
        4..=7 => (u32_at(k, 0) | u32_at(k, n - 4) << 32, 0),
        _ => (u64_at(k, 0), u64_at(k, n - 8)),
    }
}

/// FxHash-style mixing (rotate, xor, multiply) with a final avalanche so the low bits (slot)
/// and top bits (tag) are both well distributed. Keys are trusted: no DoS resistance needed.
#[inline]
fn fx_hash(k: &[u8]) -> u64 {
    let mix = |h: u64, w: u64| (h.rotate_left(5) ^ w).wrapping_mul(FX_SEED);
    let (a, b) = key_words(k);
    let mut h = mix(mix((k.len() as u64).wrapping_mul(FX_SEED), a), b);
    if k.len() > INLINE_KEY {
        for chunk in k[8..k.len() - 8].chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            h = mix(h, u64::from_le_bytes(w));
        }
    }
    let h = (h ^ (h >> 31)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h ^ (h >> 32)
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// `key_words` of the key; for longer keys `a` is its offset in `long`.
    a: u64,
    b: u64,
    len: u32,
    id: u32,
}

/// Token → id map built once: open addressing with linear probing at a load factor ≤ 1/2 and
/// a SwissTable-style byte of hash per slot in a separate small array, so most misses (the
/// greedy search makes many) never touch the slots. Looked up with borrowed slices of the
/// word buffer: the WordPiece search allocates nothing.
#[derive(Debug, Clone)]
struct VocabTable {
    /// 0 for an empty slot, else 0x80 | 7 bits of the hash.
    ctrl: Vec<u8>,
    slots: Vec<Slot>,
    mask: usize,
    long: Vec<u8>,
    len: usize,
    /// Longest key in bytes.
    max_len: usize,
    /// Longest key starting with each pair of bytes (saturating at 255: then `max_len`).
    /// Bounds the greedy search, e.g. to a few characters for Cyrillic.
    max_len2: Box<[u8]>,
}

#[inline]
fn tag_of(h: u64) -> u8 {
    0x80 | (h >> 57) as u8
}

impl VocabTable {
    /// Builds the table; the first entry wins for duplicate keys, empty keys are skipped.
    fn build<'a>(entries: impl Iterator<Item = (&'a str, u32)> + Clone) -> Self {
        let n = entries.clone().count();
        let cap = (n * 2).next_power_of_two().max(16);
        let mut t = VocabTable {
            ctrl: vec![0; cap],
            slots: vec![Slot::default(); cap],
            mask: cap - 1,
            long: Vec::new(),
            len: 0,
            max_len: 0,
            max_len2: vec![0u8; 1 << 16].into_boxed_slice(),
        };
        for (key, id) in entries {
            let k = key.as_bytes();
            if k.is_empty() || k.len() > u32::MAX as usize || t.get(key).is_some() {
                continue;
            }
            let (a, b) = key_words(k);
            let mut slot = Slot {
                a,
                b,
                len: k.len() as u32,
                id,
            };
            if k.len() > INLINE_KEY {
                slot.a = t.long.len() as u64;
                t.long.extend_from_slice(k);
            }
            let h = fx_hash(k);
            let mut i = h as usize & t.mask;
            while t.ctrl[i] != 0 {
                i = (i + 1) & t.mask;
            }
            t.ctrl[i] = tag_of(h);
            t.slots[i] = slot;
            t.len += 1;
            t.max_len = t.max_len.max(k.len());
            if let [a, b, ..] = *k {
                let m = &mut t.max_len2[usize::from(a) << 8 | usize::from(b)];
                *m = (*m).max(u8::try_from(k.len()).unwrap_or(u8::MAX));
            }
        }
        t
    }

    /// An upper bound on the length of a key that is a prefix of `rest`.
    #[inline]
    fn longest_from(&self, rest: &[u8]) -> usize {
        match *rest {
            [a, b, ..] => match self.max_len2[usize::from(a) << 8 | usize::from(b)] {
                u8::MAX => self.max_len,
                // One-byte keys are not in the pair table.
                m => usize::from(m).max(1),
            },
            _ => 1,
        }
    }

    #[inline]
    fn get(&self, key: &str) -> Option<u32> {
        let k = key.as_bytes();
        let h = fx_hash(k);
        let tag = tag_of(h);
        let mut i = h as usize & self.mask;
        let (a, b) = key_words(k);
        let len = k.len();
        loop {
            let c = self.ctrl[i];
            if c == 0 {
                return None;
            }
            if c == tag {
                let s = &self.slots[i];
                if s.len as usize == len {
                    if len <= INLINE_KEY {
                        if s.a == a && s.b == b {
                            return Some(s.id);
                        }
                    } else {
                        let off = s.a as usize;
                        if self.long.get(off..off + len) == Some(k) {
                            return Some(s.id);
                        }
                    }
                }
            }
            i = (i + 1) & self.mask;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Character classes

/// `Cc`, `Cf` and `Co` as the `unicode_categories` 0.1.1 tables (Unicode 9) define them.
#[rustfmt::skip]
const OTHER_U9: &[(u32, u32)] = &[
    (0x0, 0x1F), (0x7F, 0x9F), (0xAD, 0xAD), (0x600, 0x605), (0x61C, 0x61C), (0x6DD, 0x6DD),
    (0x70F, 0x70F), (0x180E, 0x180E), (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x2064),
    (0x2066, 0x206F), (0xE000, 0xF8FF), (0xFEFF, 0xFEFF), (0xFFF9, 0xFFFB), (0x110BD, 0x110BD),
    (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A), (0xE0001, 0xE0001), (0xE0020, 0xE007F),
    (0xF0000, 0xFFFFD), (0x100000, 0x10FFFD),
];

/// `P*` (all punctuation categories) as the `unicode_categories` 0.1.1 tables define them.
#[rustfmt::skip]
const PUNCT_U9: &[(u32, u32)] = &[
    (0x21, 0x23), (0x25, 0x2A), (0x2C, 0x2F), (0x3A, 0x3B), (0x3F, 0x40), (0x5B, 0x5D),
    (0x5F, 0x5F), (0x7B, 0x7B), (0x7D, 0x7D), (0xA1, 0xA1), (0xA7, 0xA7), (0xAB, 0xAB),
    (0xB6, 0xB7), (0xBB, 0xBB), (0xBF, 0xBF), (0x37E, 0x37E), (0x387, 0x387), (0x55A, 0x55F),
    (0x589, 0x58A), (0x5BE, 0x5BE), (0x5C0, 0x5C0), (0x5C3, 0x5C3), (0x5C6, 0x5C6), (0x5F3, 0x5F4),
    (0x609, 0x60A), (0x60C, 0x60D), (0x61B, 0x61B), (0x61E, 0x61F), (0x66A, 0x66D), (0x6D4, 0x6D4),
    (0x700, 0x70D), (0x7F7, 0x7F9), (0x830, 0x83E), (0x85E, 0x85E), (0x964, 0x965), (0x970, 0x970),
    (0xAF0, 0xAF0), (0xDF4, 0xDF4), (0xE4F, 0xE4F), (0xE5A, 0xE5B), (0xF04, 0xF12), (0xF14, 0xF14),
    (0xF3A, 0xF3D), (0xF85, 0xF85), (0xFD0, 0xFD4), (0xFD9, 0xFDA), (0x104A, 0x104F),
    (0x10FB, 0x10FB), (0x1360, 0x1368), (0x1400, 0x1400), (0x166D, 0x166E), (0x169B, 0x169C),
    (0x16EB, 0x16ED), (0x1735, 0x1736), (0x17D4, 0x17D6), (0x17D8, 0x17DA), (0x1800, 0x180A),
    (0x1944, 0x1945), (0x1A1E, 0x1A1F), (0x1AA0, 0x1AA6), (0x1AA8, 0x1AAD), (0x1B5A, 0x1B60),
    (0x1BFC, 0x1BFF), (0x1C3B, 0x1C3F), (0x1C7E, 0x1C7F), (0x1CC0, 0x1CC7), (0x1CD3, 0x1CD3),
    (0x2010, 0x2027), (0x2030, 0x2043), (0x2045, 0x2051), (0x2053, 0x205E), (0x207D, 0x207E),
    (0x208D, 0x208E), (0x2308, 0x230B), (0x2329, 0x232A), (0x2768, 0x2775), (0x27C5, 0x27C6),
    (0x27E6, 0x27EF), (0x2983, 0x2998), (0x29D8, 0x29DB), (0x29FC, 0x29FD), (0x2CF9, 0x2CFC),
    (0x2CFE, 0x2CFF), (0x2D70, 0x2D70), (0x2E00, 0x2E2E), (0x2E30, 0x2E42), (0x3001, 0x3003),
    (0x3008, 0x3011), (0x3014, 0x301F), (0x3030, 0x3030), (0x303D, 0x303D), (0x30A0, 0x30A0),
    (0x30FB, 0x30FB), (0xA4FE, 0xA4FF), (0xA60D, 0xA60F), (0xA673, 0xA673), (0xA67E, 0xA67E),
    (0xA6F2, 0xA6F7), (0xA874, 0xA877), (0xA8CE, 0xA8CF), (0xA8F8, 0xA8FA), (0xA8FC, 0xA8FC),
    (0xA92E, 0xA92F), (0xA95F, 0xA95F), (0xA9C1, 0xA9CD), (0xA9DE, 0xA9DF), (0xAA5C, 0xAA5F),
    (0xAADE, 0xAADF), (0xAAF0, 0xAAF1), (0xABEB, 0xABEB), (0xFD3E, 0xFD3F), (0xFE10, 0xFE19),
    (0xFE30, 0xFE52), (0xFE54, 0xFE61), (0xFE63, 0xFE63), (0xFE68, 0xFE68), (0xFE6A, 0xFE6B),
    (0xFF01, 0xFF03), (0xFF05, 0xFF0A), (0xFF0C, 0xFF0F), (0xFF1A, 0xFF1B), (0xFF1F, 0xFF20),
    (0xFF3B, 0xFF3D), (0xFF3F, 0xFF3F), (0xFF5B, 0xFF5B), (0xFF5D, 0xFF5D), (0xFF5F, 0xFF65),
    (0x10100, 0x10102), (0x1039F, 0x1039F), (0x103D0, 0x103D0), (0x1056F, 0x1056F),
    (0x10857, 0x10857), (0x1091F, 0x1091F), (0x1093F, 0x1093F), (0x10A50, 0x10A58),
    (0x10A7F, 0x10A7F), (0x10AF0, 0x10AF6), (0x10B39, 0x10B3F), (0x10B99, 0x10B9C),
    (0x11047, 0x1104D), (0x110BB, 0x110BC), (0x110BE, 0x110C1), (0x11140, 0x11143),
    (0x11174, 0x11175), (0x111C5, 0x111C9), (0x111CD, 0x111CD), (0x111DB, 0x111DB),
    (0x111DD, 0x111DF), (0x11238, 0x1123D), (0x112A9, 0x112A9), (0x114C6, 0x114C6),
    (0x115C1, 0x115D7), (0x11641, 0x11643), (0x1173C, 0x1173E), (0x12470, 0x12474),
    (0x16A6E, 0x16A6F), (0x16AF5, 0x16AF5), (0x16B37, 0x16B3B), (0x16B44, 0x16B44),
    (0x1BC9F, 0x1BC9F), (0x1DA87, 0x1DA8B),
];

/// `Mn` as the `unicode_categories` 0.1.1 tables define them.
#[rustfmt::skip]
const MN_U9: &[(u32, u32)] = &[
    (0x300, 0x36F), (0x483, 0x487), (0x591, 0x5BD), (0x5BF, 0x5BF), (0x5C1, 0x5C2), (0x5C4, 0x5C5),
    (0x5C7, 0x5C7), (0x610, 0x61A), (0x64B, 0x65F), (0x670, 0x670), (0x6D6, 0x6DC), (0x6DF, 0x6E4),
    (0x6E7, 0x6E8), (0x6EA, 0x6ED), (0x711, 0x711), (0x730, 0x74A), (0x7A6, 0x7B0), (0x7EB, 0x7F3),
    (0x816, 0x819), (0x81B, 0x823), (0x825, 0x827), (0x829, 0x82D), (0x859, 0x85B), (0x8E3, 0x902),
    (0x93A, 0x93A), (0x93C, 0x93C), (0x941, 0x948), (0x94D, 0x94D), (0x951, 0x957), (0x962, 0x963),
    (0x981, 0x981), (0x9BC, 0x9BC), (0x9C1, 0x9C4), (0x9CD, 0x9CD), (0x9E2, 0x9E3), (0xA01, 0xA02),
    (0xA3C, 0xA3C), (0xA41, 0xA42), (0xA47, 0xA48), (0xA4B, 0xA4D), (0xA51, 0xA51), (0xA70, 0xA71),
    (0xA75, 0xA75), (0xA81, 0xA82), (0xABC, 0xABC), (0xAC1, 0xAC5), (0xAC7, 0xAC8), (0xACD, 0xACD),
    (0xAE2, 0xAE3), (0xB01, 0xB01), (0xB3C, 0xB3C), (0xB3F, 0xB3F), (0xB41, 0xB44), (0xB4D, 0xB4D),
    (0xB56, 0xB56), (0xB62, 0xB63), (0xB82, 0xB82), (0xBC0, 0xBC0), (0xBCD, 0xBCD), (0xC00, 0xC00),
    (0xC3E, 0xC40), (0xC46, 0xC48), (0xC4A, 0xC4D), (0xC55, 0xC56), (0xC62, 0xC63), (0xC81, 0xC81),
    (0xCBC, 0xCBC), (0xCBF, 0xCBF), (0xCC6, 0xCC6), (0xCCC, 0xCCD), (0xCE2, 0xCE3), (0xD01, 0xD01),
    (0xD41, 0xD44), (0xD4D, 0xD4D), (0xD62, 0xD63), (0xDCA, 0xDCA), (0xDD2, 0xDD4), (0xDD6, 0xDD6),
    (0xE31, 0xE31), (0xE34, 0xE3A), (0xE47, 0xE4E), (0xEB1, 0xEB1), (0xEB4, 0xEB9), (0xEBB, 0xEBC),
    (0xEC8, 0xECD), (0xF18, 0xF19), (0xF35, 0xF35), (0xF37, 0xF37), (0xF39, 0xF39), (0xF71, 0xF7E),
    (0xF80, 0xF84), (0xF86, 0xF87), (0xF8D, 0xF97), (0xF99, 0xFBC), (0xFC6, 0xFC6),
    (0x102D, 0x1030), (0x1032, 0x1037), (0x1039, 0x103A), (0x103D, 0x103E), (0x1058, 0x1059),
    (0x105E, 0x1060), (0x1071, 0x1074), (0x1082, 0x1082), (0x1085, 0x1086), (0x108D, 0x108D),
    (0x109D, 0x109D), (0x135D, 0x135F), (0x1712, 0x1714), (0x1732, 0x1734), (0x1752, 0x1753),
    (0x1772, 0x1773), (0x17B4, 0x17B5), (0x17B7, 0x17BD), (0x17C6, 0x17C6), (0x17C9, 0x17D3),
    (0x17DD, 0x17DD), (0x180B, 0x180D), (0x18A9, 0x18A9), (0x1920, 0x1922), (0x1927, 0x1928),
    (0x1932, 0x1932), (0x1939, 0x193B), (0x1A17, 0x1A18), (0x1A1B, 0x1A1B), (0x1A56, 0x1A56),
    (0x1A58, 0x1A5E), (0x1A60, 0x1A60), (0x1A62, 0x1A62), (0x1A65, 0x1A6C), (0x1A73, 0x1A7C),
    (0x1A7F, 0x1A7F), (0x1AB0, 0x1ABD), (0x1B00, 0x1B03), (0x1B34, 0x1B34), (0x1B36, 0x1B3A),
    (0x1B3C, 0x1B3C), (0x1B42, 0x1B42), (0x1B6B, 0x1B73), (0x1B80, 0x1B81), (0x1BA2, 0x1BA5),
    (0x1BA8, 0x1BA9), (0x1BAB, 0x1BAD), (0x1BE6, 0x1BE6), (0x1BE8, 0x1BE9), (0x1BED, 0x1BED),
    (0x1BEF, 0x1BF1), (0x1C2C, 0x1C33), (0x1C36, 0x1C37), (0x1CD0, 0x1CD2), (0x1CD4, 0x1CE0),
    (0x1CE2, 0x1CE8), (0x1CED, 0x1CED), (0x1CF4, 0x1CF4), (0x1CF8, 0x1CF9), (0x1DC0, 0x1DF5),
    (0x1DFC, 0x1DFF), (0x20D0, 0x20DC), (0x20E1, 0x20E1), (0x20E5, 0x20F0), (0x2CEF, 0x2CF1),
    (0x2D7F, 0x2D7F), (0x2DE0, 0x2DFF), (0x302A, 0x302D), (0x3099, 0x309A), (0xA66F, 0xA66F),
    (0xA674, 0xA67D), (0xA69E, 0xA69F), (0xA6F0, 0xA6F1), (0xA802, 0xA802), (0xA806, 0xA806),
    (0xA80B, 0xA80B), (0xA825, 0xA826), (0xA8C4, 0xA8C4), (0xA8E0, 0xA8F1), (0xA926, 0xA92D),
    (0xA947, 0xA951), (0xA980, 0xA982), (0xA9B3, 0xA9B3), (0xA9B6, 0xA9B9), (0xA9BC, 0xA9BC),
    (0xA9E5, 0xA9E5), (0xAA29, 0xAA2E), (0xAA31, 0xAA32), (0xAA35, 0xAA36), (0xAA43, 0xAA43),
    (0xAA4C, 0xAA4C), (0xAA7C, 0xAA7C), (0xAAB0, 0xAAB0), (0xAAB2, 0xAAB4), (0xAAB7, 0xAAB8),
    (0xAABE, 0xAABF), (0xAAC1, 0xAAC1), (0xAAEC, 0xAAED), (0xAAF6, 0xAAF6), (0xABE5, 0xABE5),
    (0xABE8, 0xABE8), (0xABED, 0xABED), (0xFB1E, 0xFB1E), (0xFE00, 0xFE0F), (0xFE20, 0xFE2F),
    (0x101FD, 0x101FD), (0x102E0, 0x102E0), (0x10376, 0x1037A), (0x10A01, 0x10A03),
    (0x10A05, 0x10A06), (0x10A0C, 0x10A0F), (0x10A38, 0x10A3A), (0x10A3F, 0x10A3F),
    (0x10AE5, 0x10AE6), (0x11001, 0x11001), (0x11038, 0x11046), (0x1107F, 0x11081),
    (0x110B3, 0x110B6), (0x110B9, 0x110BA), (0x11100, 0x11102), (0x11127, 0x1112B),
    (0x1112D, 0x11134), (0x11173, 0x11173), (0x11180, 0x11181), (0x111B6, 0x111BE),
    (0x111CA, 0x111CC), (0x1122F, 0x11231), (0x11234, 0x11234), (0x11236, 0x11237),
    (0x112DF, 0x112DF), (0x112E3, 0x112EA), (0x11300, 0x11301), (0x1133C, 0x1133C),
    (0x11340, 0x11340), (0x11366, 0x1136C), (0x11370, 0x11374), (0x114B3, 0x114B8),
    (0x114BA, 0x114BA), (0x114BF, 0x114C0), (0x114C2, 0x114C3), (0x115B2, 0x115B5),
    (0x115BC, 0x115BD), (0x115BF, 0x115C0), (0x115DC, 0x115DD), (0x11633, 0x1163A),
    (0x1163D, 0x1163D), (0x1163F, 0x11640), (0x116AB, 0x116AB), (0x116AD, 0x116AD),
    (0x116B0, 0x116B5), (0x116B7, 0x116B7), (0x1171D, 0x1171F), (0x11722, 0x11725),
    (0x11727, 0x1172B), (0x16AF0, 0x16AF4), (0x16B30, 0x16B36), (0x16F8F, 0x16F92),
    (0x1BC9D, 0x1BC9E), (0x1D167, 0x1D169), (0x1D17B, 0x1D182), (0x1D185, 0x1D18B),
    (0x1D1AA, 0x1D1AD), (0x1D242, 0x1D244), (0x1DA00, 0x1DA36), (0x1DA3B, 0x1DA6C),
    (0x1DA75, 0x1DA75), (0x1DA84, 0x1DA84), (0x1DA9B, 0x1DA9F), (0x1DAA1, 0x1DAAF),
    (0x1E8D0, 0x1E8D6), (0xE0100, 0xE01EF),
];

/// Characters that decompose canonically in Unicode 18 but were unassigned (so did not
/// decompose) in Unicode 9. Generated by `unicode9_exception_tables` in the tests.
#[rustfmt::skip]
const NEW_DECOMPOSING: &[(u32, u32)] = &[
    (0x105C9, 0x105C9), (0x105E4, 0x105E4), (0x11383, 0x11383), (0x11385, 0x11385),
    (0x1138E, 0x1138E), (0x11391, 0x11391), (0x113C5, 0x113C5), (0x113C7, 0x113C8),
    (0x11938, 0x11938), (0x16121, 0x16128), (0x16D68, 0x16D6A),
];

/// Characters with a non-zero canonical combining class in Unicode 18 that were unassigned
/// (class 0) in Unicode 9. Generated by `unicode9_exception_tables` in the tests.
#[rustfmt::skip]
const NEW_COMBINING: &[(u32, u32)] = &[
    (0x5C8, 0x5C9), (0x7FD, 0x7FD), (0x897, 0x89F), (0x8CA, 0x8D3), (0x9FE, 0x9FE), (0xC3C, 0xC3C),
    (0xD3B, 0xD3C), (0xEBA, 0xEBA), (0x1715, 0x1715), (0x1ABF, 0x1AF0), (0x1DF6, 0x1DFA),
    (0xA82C, 0xA82C), (0x10D24, 0x10D27), (0x10D69, 0x10D6D), (0x10EAB, 0x10EAC),
    (0x10ECB, 0x10ECF), (0x10EF0, 0x10EFB), (0x10EFD, 0x10EFF), (0x10F46, 0x10F50),
    (0x10F82, 0x10F85), (0x11070, 0x11070), (0x1133B, 0x1133B), (0x113CE, 0x113D0),
    (0x1145E, 0x1145E), (0x11839, 0x1183A), (0x1193D, 0x1193E), (0x11943, 0x11943),
    (0x119E0, 0x119E0), (0x11A34, 0x11A34), (0x11A47, 0x11A47), (0x11A99, 0x11A99),
    (0x11D42, 0x11D42), (0x11D44, 0x11D45), (0x11D97, 0x11D97), (0x11F41, 0x11F42),
    (0x1612F, 0x1612F), (0x16FF0, 0x16FF1), (0x1D127, 0x1D128), (0x1D250, 0x1D252),
    (0x1D25B, 0x1D25C), (0x1D25F, 0x1D25F), (0x1D280, 0x1D281), (0x1E08F, 0x1E08F),
    (0x1E130, 0x1E136), (0x1E2AE, 0x1E2AE), (0x1E2EC, 0x1E2EF), (0x1E4EC, 0x1E4EF),
    (0x1E5EE, 0x1E5EF), (0x1E6E3, 0x1E6E3), (0x1E6E6, 0x1E6E6), (0x1E6EE, 0x1E6EF),
    (0x1E6F5, 0x1E6F5),
];

#[inline]
fn in_ranges(c: char, table: &[(u32, u32)]) -> bool {
    let c = c as u32;
    table
        .binary_search_by(|&(lo, hi)| {
            if hi < c {
                std::cmp::Ordering::Less
            } else if lo > c {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

/// BERT's "control": Cc, Cf or Co (Unicode 9 tables) except tab, newline and carriage return.
#[inline]
fn is_bert_control(c: char) -> bool {
    !matches!(c, '\t' | '\n' | '\r') && in_ranges(c, OTHER_U9)
}

/// BERT's whitespace (the normalizer's: tab, newline, CR and `char::is_whitespace`).
#[inline]
fn is_bert_whitespace(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r') || c.is_whitespace()
}

/// BERT's punctuation: ASCII punctuation or a Unicode 9 `P*` character.
#[inline]
pub(crate) fn is_bert_punct(c: char) -> bool {
    c.is_ascii_punctuation() || (!c.is_ascii() && in_ranges(c, PUNCT_U9))
}

/// The CJK ideograph blocks BERT puts spaces around.
#[inline]
fn is_chinese_char(c: char) -> bool {
    matches!(c as u32,
        0x4E00..=0x9FFF
        | 0x3400..=0x4DBF
        | 0x20000..=0x2A6DF
        | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F
        | 0x2B920..=0x2CEAF
        | 0xF900..=0xFAFF
        | 0x2F800..=0x2FA1F)
}

#[inline]
fn ccc_u9(c: char) -> u8 {
    if c.is_ascii() {
        return 0;
    }
    let class = unicode_normalization::char::canonical_combining_class(c);
    if class != 0 && in_ranges(c, NEW_COMBINING) {
        0
    } else {
        class
    }
}

/// Canonical decomposition (NFD) as Unicode 9 defines it, appended to `out`.
fn nfd_u9(input: &[char], out: &mut Vec<char>) {
    for &c in input {
        if c.is_ascii() || in_ranges(c, NEW_DECOMPOSING) {
            out.push(c);
        } else {
            unicode_normalization::char::decompose_canonical(c, |d| out.push(d));
        }
    }
    // Canonical ordering: stable sort of each run of non-starters by combining class.
    let mut i = 0;
    while i < out.len() {
        if ccc_u9(out[i]) == 0 {
            i += 1;
            continue;
        }
        let start = i;
        while i < out.len() && ccc_u9(out[i]) != 0 {
            i += 1;
        }
        if i - start > 1 {
            out[start..i].sort_by_key(|&c| ccc_u9(c));
        }
    }
}

/// Removed by `clean_text`: NUL, U+FFFD and BERT control characters.
const F_REMOVE: u8 = 1;
/// Whitespace (the normalizer's and the pre-tokenizer's definitions agree).
const F_SPACE: u8 = 2;
/// BERT punctuation: a word of its own.
const F_PUNCT: u8 = 4;
/// A CJK ideograph, which the normalizer surrounds with spaces.
const F_CJK: u8 = 8;
/// Needs the accent-stripping pass: decomposes, has a combining class or is `Mn` (Unicode 9).
const F_ACCENT: u8 = 16;
/// Changed by lowercasing.
const F_CASED: u8 = 32;

/// The normaliser's view of one character, computed from the definitions above.
fn compute_flags(c: char) -> u8 {
    let mut f = 0;
    if c == '\0' || c == '\u{fffd}' || is_bert_control(c) {
        f |= F_REMOVE;
    }
    if is_bert_whitespace(c) {
        f |= F_SPACE;
    }
    if is_bert_punct(c) {
        f |= F_PUNCT;
    }
    if is_chinese_char(c) {
        f |= F_CJK;
    }
    let decomposes = !c.is_ascii() && !in_ranges(c, NEW_DECOMPOSING) && {
        let mut same = true;
        unicode_normalization::char::decompose_canonical(c, |d| same &= d == c);
        !same
    };
    if decomposes || ccc_u9(c) != 0 || in_ranges(c, MN_U9) {
        f |= F_ACCENT;
    }
    let mut lower = c.to_lowercase();
    if !(lower.len() == 1 && lower.next() == Some(c)) {
        f |= F_CASED;
    }
    f
}

/// [`compute_flags`] for every BMP character, built once per process (64 KiB): non-ASCII
/// text then costs a table load per character instead of several binary searches.
fn bmp_flags() -> &'static [u8] {
    static TABLE: std::sync::OnceLock<Box<[u8]>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        (0..0x10000u32)
            .map(|cp| char::from_u32(cp).map_or(0, compute_flags))
            .collect()
    })
}

#[inline]
fn flags_in(table: &[u8], c: char) -> u8 {
    match table.get(c as usize) {
        Some(&f) => f,
        None => compute_flags(c),
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration

/// The BertNormalizer settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Normalizer {
    clean_text: bool,
    handle_chinese_chars: bool,
    /// Already resolved (`None` in the file follows `lowercase`).
    strip_accents: bool,
    lowercase: bool,
}

// What a raw byte becomes after normalisation, for the pre-tokenizer (`WordPiece::class`).
/// Part of a word, unchanged by normalisation.
const C_WORD: u8 = 0;
/// Part of a word, changed by normalisation (uppercase, when lowercasing).
const C_CHANGED: u8 = 1;
/// Whitespace: ends a word.
const C_SPACE: u8 = 2;
/// Punctuation: a word of its own.
const C_PUNCT: u8 = 3;
/// Removed by the normalizer (control characters).
const C_DROP: u8 = 4;
/// A byte of a non-ASCII character: the Unicode path.
const C_HIGH: u8 = 5;

/// Added tokens (e.g. `[CLS]`, `[MASK]`) that `tokenizers` extracts from the raw text before
/// normalising it, matched leftmost-longest like its Aho-Corasick automaton.
#[derive(Debug, Clone, Default)]
struct AddedTokens {
    /// Sorted longest first, so the first hit at a position is the longest.
    tokens: Vec<(Box<str>, u32)>,
    /// Distinct first bytes.
    firsts: Vec<u8>,
}

impl AddedTokens {
    /// The leftmost-longest match at or after `from`: (start, end, id).
    fn find(&self, text: &str, from: usize) -> Option<(usize, usize, u32)> {
        let bytes = text.as_bytes();
        let mut pos = from;
        loop {
            let rest = bytes.get(pos..)?;
            let off = match self.firsts.as_slice() {
                [] => return None,
                [a] => memchr::memchr(*a, rest)?,
                [a, b] => memchr::memchr2(*a, *b, rest)?,
                [a, b, c] => memchr::memchr3(*a, *b, *c, rest)?,
                many => rest.iter().position(|b| many.contains(b))?,
            };
            let start = pos + off;
            let tail = &bytes[start..];
            for (tok, id) in &self.tokens {
                if tail.starts_with(tok.as_bytes()) {
                    return Some((start, start + tok.len(), *id));
                }
            }
            pos = start + 1;
        }
    }
}

/// Reused buffers, one set per thread, so encoding does not allocate once warm.
#[derive(Default)]
struct Scratch {
    word: String,
    run: Vec<char>,
    tmp: Vec<char>,
}

thread_local! {
    static SCRATCH: Cell<Scratch> = Cell::new(Scratch::default());
}

/// Receives the pre-tokenizer's words. The id sink runs WordPiece on them; tests collect them.
trait WordSink {
    /// A word of `chars` characters (`word` holds it unless `chars` is over the word limit).
    /// Returns false to stop.
    fn word(&mut self, wp: &WordPiece, word: &str, chars: usize) -> bool;
    /// A single ASCII punctuation character. Returns false to stop.
    fn ascii_punct(&mut self, wp: &WordPiece, b: u8) -> bool;
    /// An added token found in the raw text. Returns false to stop.
    fn added(&mut self, id: u32) -> bool;
}

struct IdSink<'a> {
    out: &'a mut Vec<u32>,
    limit: usize,
}

impl WordSink for IdSink<'_> {
    #[inline]
    fn word(&mut self, wp: &WordPiece, word: &str, chars: usize) -> bool {
        wp.word_ids(word, chars, self.out);
        self.out.len() < self.limit
    }

    #[inline]
    fn ascii_punct(&mut self, wp: &WordPiece, b: u8) -> bool {
        self.out.push(wp.ascii_single[usize::from(b & 0x7f)]);
        self.out.len() < self.limit
    }

    #[inline]
    fn added(&mut self, id: u32) -> bool {
        self.out.push(id);
        self.out.len() < self.limit
    }
}

// ---------------------------------------------------------------------------------------------
// The tokenizer

/// A BERT WordPiece tokenizer loaded from a `tokenizer.json`, producing the same ids as
/// `tokenizers` with padding off and truncation at the requested length.
///
/// `encode` is `&self` and thread-safe; per-thread scratch buffers keep it allocation-free
/// apart from growing `out`.
#[derive(Debug, Clone)]
pub struct WordPiece {
    /// Every vocabulary token.
    vocab: VocabTable,
    /// Tokens that start with the continuing-subword prefix, keyed without it.
    cont: VocabTable,
    unk: u32,
    max_chars: usize,
    prefix: String,
    normalizer: Option<Normalizer>,
    /// `C_*` class of every byte value.
    class: [u8; 256],
    ascii_out: [u8; 128],
    /// Id of each ASCII character as a one-character word (the unk id when not in the vocab).
    ascii_single: [u32; 128],
    special_prefix: Vec<u32>,
    special_suffix: Vec<u32>,
    added: AddedTokens,
    /// Token text by id (ids with no token are empty).
    by_id: Vec<Box<str>>,
    special_ids: Vec<u32>,
}

fn field_bool(v: &Value, key: &str, default: bool) -> Result<bool, WordPieceError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(WordPieceError::Invalid(format!(
            "{key} should be a boolean, found {other}"
        ))),
    }
}

fn type_of(v: &Value) -> Option<&str> {
    v.get("type").and_then(Value::as_str)
}

impl WordPiece {
    /// Loads `tokenizer.json` from `path`.
    pub fn from_tokenizer_json(path: impl AsRef<Path>) -> Result<Self, WordPieceError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| WordPieceError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_tokenizer_json_str(&text)
    }

    /// Parses the contents of a `tokenizer.json`. Only configurations reproduced exactly are
    /// accepted (BertNormalizer or none, BertPreTokenizer, WordPiece, Template/Bert processing
    /// or none, added tokens matched on raw text); anything else is `Unsupported`, so callers can
    /// fall back to `tokenizers` rather than silently tokenise differently.
    pub fn from_tokenizer_json_str(json: &str) -> Result<Self, WordPieceError> {
        let root: Value = serde_json::from_str(json)?;

        // Model.
        let model = root
            .get("model")
            .ok_or_else(|| WordPieceError::Invalid("no model".into()))?;
        match type_of(model) {
            Some("WordPiece") => {}
            // Older files omit the type; WordPiece is recognised by its fields.
            None if model.get("continuing_subword_prefix").is_some() => {}
            other => {
                return Err(WordPieceError::Unsupported(format!(
                    "model type {other:?} (only WordPiece)"
                )))
            }
        }
        let vocab_json = model
            .get("vocab")
            .and_then(Value::as_object)
            .ok_or_else(|| WordPieceError::Invalid("model.vocab is not an object".into()))?;
        let unk_token = model
            .get("unk_token")
            .and_then(Value::as_str)
            .unwrap_or("[UNK]");
        let prefix = model
            .get("continuing_subword_prefix")
            .and_then(Value::as_str)
            .unwrap_or("##")
            .to_string();
        let max_chars = match model.get("max_input_chars_per_word") {
            None | Some(Value::Null) => 100,
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| {
                    WordPieceError::Invalid("max_input_chars_per_word is not a count".into())
                })?,
        };

        let mut entries: Vec<(&str, u32)> = Vec::with_capacity(vocab_json.len());
        let mut max_id = 0u32;
        for (tok, id) in vocab_json {
            let id = id
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| WordPieceError::Invalid(format!("vocab id of {tok:?}")))?;
            max_id = max_id.max(id);
            entries.push((tok.as_str(), id));
        }
        let vocab = VocabTable::build(entries.iter().copied());
        let cont = VocabTable::build(
            entries
                .iter()
                .filter_map(|&(t, id)| t.strip_prefix(prefix.as_str()).map(|r| (r, id))),
        );
        if vocab.len == 0 {
            return Err(WordPieceError::Invalid("empty vocabulary".into()));
        }
        let unk = vocab.get(unk_token).ok_or_else(|| {
            WordPieceError::Invalid(format!("unk token {unk_token:?} is not in the vocabulary"))
        })?;

        // Normalizer.
        let normalizer = match root.get("normalizer") {
            None | Some(Value::Null) => None,
            Some(n) if type_of(n) == Some("BertNormalizer") => {
                let lowercase = field_bool(n, "lowercase", true)?;
                Some(Normalizer {
                    clean_text: field_bool(n, "clean_text", true)?,
                    handle_chinese_chars: field_bool(n, "handle_chinese_chars", true)?,
                    strip_accents: field_bool(n, "strip_accents", lowercase)?,
                    lowercase,
                })
            }
            Some(n) => {
                return Err(WordPieceError::Unsupported(format!(
                    "normalizer {:?} (only BertNormalizer)",
                    type_of(n)
                )))
            }
        };

        // Pre-tokenizer.
        match root.get("pre_tokenizer").map(type_of) {
            Some(Some("BertPreTokenizer")) => {}
            other => {
                return Err(WordPieceError::Unsupported(format!(
                    "pre_tokenizer {other:?} (only BertPreTokenizer)"
                )))
            }
        }

        // Added tokens.
        let mut added = AddedTokens::default();
        let mut special_ids = Vec::new();
        if let Some(list) = root.get("added_tokens").and_then(Value::as_array) {
            for t in list {
                let content = t
                    .get("content")
                    .and_then(Value::as_str)
                    .ok_or_else(|| WordPieceError::Invalid("added token without content".into()))?;
                let json_id = t
                    .get("id")
                    .and_then(Value::as_u64)
                    .and_then(|n| u32::try_from(n).ok());
                // `tokenizers` resolves an added token through the model's vocabulary first.
                let id = vocab.get(content).or(json_id).ok_or_else(|| {
                    WordPieceError::Invalid(format!("added token {content:?} has no id"))
                })?;
                if field_bool(t, "normalized", false)?
                    || field_bool(t, "lstrip", false)?
                    || field_bool(t, "rstrip", false)?
                    || field_bool(t, "single_word", false)?
                {
                    return Err(WordPieceError::Unsupported(format!(
                        "added token {content:?} is normalized or uses lstrip/rstrip/single_word"
                    )));
                }
                if content.is_empty() {
                    return Err(WordPieceError::Unsupported("empty added token".into()));
                }
                if field_bool(t, "special", false)? {
                    special_ids.push(id);
                }
                max_id = max_id.max(id);
                added.tokens.push((content.into(), id));
            }
        }
        // Stable: equal lengths keep file order, as the automaton's pattern order does.
        added
            .tokens
            .sort_by_key(|(t, _)| std::cmp::Reverse(t.len()));
        for (t, _) in &added.tokens {
            if let Some(&b) = t.as_bytes().first() {
                if !added.firsts.contains(&b) {
                    added.firsts.push(b);
                }
            }
        }

        // Post-processor.
        let resolve = |name: &str| -> Result<u32, WordPieceError> {
            vocab.get(name).ok_or_else(|| {
                WordPieceError::Invalid(format!("special token {name:?} is not in the vocabulary"))
            })
        };
        let (special_prefix, special_suffix) = match root.get("post_processor") {
            None | Some(Value::Null) => (Vec::new(), Vec::new()),
            Some(p) => match type_of(p) {
                Some("BertProcessing") => {
                    let id_of = |key: &str| -> Result<u32, WordPieceError> {
                        p.get(key)
                            .and_then(|pair| pair.get(1))
                            .and_then(Value::as_u64)
                            .and_then(|n| u32::try_from(n).ok())
                            .ok_or_else(|| WordPieceError::Invalid(format!("BertProcessing.{key}")))
                    };
                    (vec![id_of("cls")?], vec![id_of("sep")?])
                }
                Some("TemplateProcessing") => template_ids(p, &resolve)?,
                other => {
                    return Err(WordPieceError::Unsupported(format!(
                        "post_processor {other:?} (only TemplateProcessing or BertProcessing)"
                    )))
                }
            },
        };
        for &id in special_prefix.iter().chain(&special_suffix) {
            max_id = max_id.max(id);
            if !special_ids.contains(&id) {
                special_ids.push(id);
            }
        }
        special_ids.sort_unstable();

        if max_id as usize >= MAX_IDS {
            return Err(WordPieceError::Invalid(format!(
                "token id {max_id} is too large"
            )));
        }
        let mut by_id: Vec<Box<str>> = vec![Box::from(""); max_id as usize + 1];
        for &(tok, id) in &entries {
            by_id[id as usize] = tok.into();
        }
        for (tok, id) in &added.tokens {
            if by_id[*id as usize].is_empty() {
                by_id[*id as usize] = tok.clone();
            }
        }

        let mut wp = WordPiece {
            vocab,
            cont,
            unk,
            max_chars,
            prefix,
            normalizer,
            class: [C_HIGH; 256],
            ascii_out: [0; 128],
            ascii_single: [unk; 128],
            special_prefix,
            special_suffix,
            added,
            by_id,
            special_ids,
        };
        wp.build_ascii_tables();
        Ok(wp)
    }

    fn build_ascii_tables(&mut self) {
        for b in 0u8..128 {
            let c = char::from(b);
            let i = usize::from(b);
            let (class, out) = match self.normalizer {
                Some(n) => {
                    if n.clean_text && (b == 0 || is_bert_control(c)) {
                        (C_DROP, b)
                    } else if is_bert_whitespace(c) {
                        (C_SPACE, b' ')
                    } else if n.lowercase {
                        (C_WORD, b.to_ascii_lowercase())
                    } else {
                        (C_WORD, b)
                    }
                }
                None if c.is_whitespace() => (C_SPACE, b),
                None => (C_WORD, b),
            };
            let class = match class {
                C_WORD if is_bert_punct(c) => C_PUNCT,
                C_WORD if out != b => C_CHANGED,
                other => other,
            };
            self.class[i] = class;
            self.ascii_out[i] = out;
            let mut buf = [0u8; 4];
            let s = char::from(out).encode_utf8(&mut buf);
            self.ascii_single[i] = self.vocab.get(s).unwrap_or(self.unk);
        }
    }

    /// Encodes `text` as `[CLS] … [SEP]` (the post-processor's special tokens) truncated to
    /// `max_len` ids in all, into `out` (cleared first). Equals `tokenizers`' `encode(text,
    /// true)` with truncation `max_length = max_len`; a `max_len` below the number of special
    /// tokens yields just the special tokens. Stops tokenising once `max_len` is reached.
    pub fn encode(&self, text: &str, max_len: usize, out: &mut Vec<u32>) {
        out.clear();
        let n_special = self.special_prefix.len() + self.special_suffix.len();
        let limit = self.special_prefix.len() + max_len.saturating_sub(n_special);
        out.extend_from_slice(&self.special_prefix);
        self.encode_content(text, limit, out);
        out.truncate(limit);
        out.extend_from_slice(&self.special_suffix);
    }

    /// Encodes `text` without special tokens, truncated to `max_len` ids, into `out` (cleared
    /// first): `tokenizers`' `encode(text, false)`. Token counting uses this.
    pub fn encode_no_special(&self, text: &str, max_len: usize, out: &mut Vec<u32>) {
        out.clear();
        self.encode_content(text, max_len, out);
        out.truncate(max_len);
    }

    fn encode_content(&self, text: &str, limit: usize, out: &mut Vec<u32>) {
        if out.len() >= limit {
            return;
        }
        let mut sink = IdSink { out, limit };
        self.with_scratch(|sc| self.scan(text, sc, &mut sink));
    }

    fn with_scratch<R>(&self, f: impl FnOnce(&mut Scratch) -> R) -> R {
        // Taking the buffers out of a `Cell` (rather than borrowing a `RefCell`) cannot fail.
        let mut sc = SCRATCH.try_with(Cell::take).unwrap_or_default();
        let r = f(&mut sc);
        let _ = SCRATCH.try_with(|cell| cell.set(sc));
        r
    }

    /// Splits on added tokens, then normalises and pre-tokenises each piece.
    fn scan<S: WordSink>(&self, text: &str, sc: &mut Scratch, sink: &mut S) {
        let mut pos = 0;
        while let Some((start, end, id)) = self.added.find(text, pos) {
            if start > pos && !self.scan_segment(&text[pos..start], sc, sink) {
                return;
            }
            if !sink.added(id) {
                return;
            }
            pos = end;
        }
        if pos < text.len() {
            self.scan_segment(&text[pos..], sc, sink);
        }
    }

    /// Normalises and pre-tokenises one piece of text (no added tokens inside), feeding words
    /// to `sink`. Returns false when the sink asked to stop.
    fn scan_segment<S: WordSink>(&self, seg: &str, sc: &mut Scratch, sink: &mut S) -> bool {
        let Scratch { word, run, tmp } = sc;
        let bytes = seg.as_bytes();
        let cap = self.max_chars;
        word.clear();
        let mut chars = 0usize;
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            match self.class[usize::from(b)] {
                C_WORD | C_CHANGED => {
                    // The ASCII stretch of a word, in one tight loop.
                    let start = i;
                    let mut changed = false;
                    while i < bytes.len() {
                        let class = self.class[usize::from(bytes[i])];
                        if class > C_CHANGED {
                            break;
                        }
                        changed |= class == C_CHANGED;
                        i += 1;
                    }
                    let ends = i == bytes.len()
                        || matches!(self.class[usize::from(bytes[i])], C_SPACE | C_PUNCT);
                    if chars == 0 && ends && !changed {
                        // A whole word needing no normalisation: borrow it from the text.
                        let Some(w) = seg.get(start..i) else { continue };
                        if !sink.word(self, w, i - start) {
                            return false;
                        }
                    } else {
                        for &c in &bytes[start..i] {
                            chars += 1;
                            if chars <= cap {
                                word.push(char::from(self.ascii_out[usize::from(c)]));
                            }
                        }
                    }
                    continue;
                }
                C_SPACE => {
                    if chars > 0 {
                        if !sink.word(self, word, chars) {
                            return false;
                        }
                        word.clear();
                        chars = 0;
                    }
                    i += 1;
                    continue;
                }
                C_PUNCT => {
                    if chars > 0 {
                        if !sink.word(self, word, chars) {
                            return false;
                        }
                        word.clear();
                        chars = 0;
                    }
                    if !sink.ascii_punct(self, b) {
                        return false;
                    }
                    i += 1;
                    continue;
                }
                C_DROP => {
                    i += 1;
                    continue;
                }
                _ => {}
            }
            // A run of non-ASCII characters takes the full Unicode path. Removed ASCII control
            // characters stay inside the run: `tokenizers` removes them before NFD, so marks on
            // either side of one are reordered together.
            let start = i;
            i += 1;
            while i < bytes.len() && matches!(self.class[usize::from(bytes[i])], C_HIGH | C_DROP) {
                i += 1;
            }
            let Some(piece) = seg.get(start..i) else {
                // Unreachable for valid UTF-8 (runs start and end at ASCII boundaries).
                continue;
            };
            let flags = bmp_flags();
            self.normalize_run(piece, flags, run, tmp);
            for &c in run.iter() {
                let f = flags_in(flags, c);
                if f & F_SPACE != 0 {
                    if chars > 0 {
                        if !sink.word(self, word, chars) {
                            return false;
                        }
                        word.clear();
                        chars = 0;
                    }
                } else if f & F_PUNCT != 0 {
                    if chars > 0 {
                        if !sink.word(self, word, chars) {
                            return false;
                        }
                        word.clear();
                        chars = 0;
                    }
                    let go = if c.is_ascii() {
                        sink.ascii_punct(self, c as u8)
                    } else {
                        word.push(c);
                        let go = sink.word(self, word, 1);
                        word.clear();
                        go
                    };
                    if !go {
                        return false;
                    }
                } else {
                    chars += 1;
                    if chars <= cap {
                        word.push(c);
                    }
                }
            }
        }
        chars == 0 || sink.word(self, word, chars)
    }

    /// The BertNormalizer applied to a run of text, into `out`. The NFD and lowercasing
    /// passes are skipped when no character in the run needs them.
    fn normalize_run(&self, s: &str, flags: &[u8], out: &mut Vec<char>, tmp: &mut Vec<char>) {
        out.clear();
        let Some(n) = self.normalizer else {
            out.extend(s.chars());
            return;
        };
        tmp.clear();
        let mut accents = false;
        let mut cased = false;
        for c in s.chars() {
            let f = flags_in(flags, c);
            if n.clean_text {
                if f & F_REMOVE != 0 {
                    continue;
                }
                if f & F_SPACE != 0 {
                    tmp.push(' ');
                    continue;
                }
            }
            accents |= f & F_ACCENT != 0;
            cased |= f & F_CASED != 0;
            if n.handle_chinese_chars && f & F_CJK != 0 {
                tmp.extend([' ', c, ' ']);
            } else {
                tmp.push(c);
            }
        }
        if n.strip_accents && accents {
            nfd_u9(tmp, out);
            out.retain(|&c| !in_ranges(c, MN_U9));
            std::mem::swap(tmp, out);
            out.clear();
            cased = true;
        }
        if n.lowercase && cased {
            for &c in tmp.iter() {
                if c.is_ascii() {
                    out.push(c.to_ascii_lowercase());
                } else {
                    out.extend(c.to_lowercase());
                }
            }
        } else {
            out.extend_from_slice(tmp);
        }
    }

    /// WordPiece on one word: greedy longest-match-first; the whole word becomes the unk token
    /// when it is longer than `max_input_chars_per_word` or some part matches nothing.
    #[inline]
    fn word_ids(&self, word: &str, chars: usize, out: &mut Vec<u32>) {
        if chars > self.max_chars {
            out.push(self.unk);
            return;
        }
        let mark = out.len();
        let n = word.len();
        let mut start = 0;
        while start < n {
            let map = if start == 0 { &self.vocab } else { &self.cont };
            let mut end = n.min(start + map.longest_from(&word.as_bytes()[start..]));
            while !word.is_char_boundary(end) {
                end -= 1;
            }
            let mut found = None;
            while end > start {
                if let Some(id) = word.get(start..end).and_then(|s| map.get(s)) {
                    found = Some(id);
                    break;
                }
                end -= 1;
                while !word.is_char_boundary(end) {
                    end -= 1;
                }
            }
            match found {
                Some(id) => {
                    out.push(id);
                    start = end;
                }
                None => {
                    out.truncate(mark);
                    out.push(self.unk);
                    return;
                }
            }
        }
    }

    /// Size of the id space (largest id + 1): the row count a per-token table needs.
    pub fn vocab_size(&self) -> usize {
        self.by_id.len()
    }

    /// The id of a vocabulary token, if present.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.vocab.get(token).or_else(|| {
            self.added
                .tokens
                .iter()
                .find(|(t, _)| &**t == token)
                .map(|(_, id)| *id)
        })
    }

    /// The token text of an id, if the id is used.
    pub fn id_to_token(&self, id: u32) -> Option<&str> {
        self.by_id
            .get(id as usize)
            .map(|s| &**s)
            .filter(|s| !s.is_empty())
    }

    /// Token texts indexed by id (empty for unused ids), e.g. for the static tier's weights.
    pub fn tokens_by_id(&self) -> Vec<String> {
        self.by_id.iter().map(|s| s.to_string()).collect()
    }

    /// The unknown-token id.
    pub fn unk_id(&self) -> u32 {
        self.unk
    }

    /// The id `encode` starts with (`[CLS]`): the post-processor's first special token, else
    /// the vocabulary's `[CLS]`, else the unk id. Distillation wraps each token in it.
    pub fn cls_id(&self) -> u32 {
        self.special_prefix
            .first()
            .copied()
            .or_else(|| self.vocab.get("[CLS]"))
            .unwrap_or(self.unk)
    }

    /// The id `encode` ends with (`[SEP]`): the post-processor's last special token, else the
    /// vocabulary's `[SEP]`, else the unk id.
    pub fn sep_id(&self) -> u32 {
        self.special_suffix
            .last()
            .copied()
            .or_else(|| self.vocab.get("[SEP]"))
            .unwrap_or(self.unk)
    }

    /// Ids that carry no text: special added tokens and the post-processor's tokens, sorted.
    pub fn special_ids(&self) -> Vec<u32> {
        self.special_ids.clone()
    }

    /// The continuing-subword prefix (`##`).
    pub fn continuing_prefix(&self) -> &str {
        &self.prefix
    }
}

/// Prefix and suffix ids of a TemplateProcessing `single` template (`[CLS] $A [SEP]`).
fn template_ids(
    p: &Value,
    resolve: &dyn Fn(&str) -> Result<u32, WordPieceError>,
) -> Result<(Vec<u32>, Vec<u32>), WordPieceError> {
    let single = p
        .get("single")
        .and_then(Value::as_array)
        .ok_or_else(|| WordPieceError::Invalid("TemplateProcessing.single".into()))?;
    let specials = p.get("special_tokens");
    let mut prefix = Vec::new();
    let mut suffix = Vec::new();
    let mut seen_sequence = false;
    for piece in single {
        if let Some(seq) = piece.get("Sequence") {
            if seen_sequence || seq.get("id").and_then(Value::as_str) != Some("A") {
                return Err(WordPieceError::Unsupported(
                    "single template must contain $A exactly once".into(),
                ));
            }
            seen_sequence = true;
        } else if let Some(sp) = piece.get("SpecialToken") {
            let name = sp
                .get("id")
                .and_then(Value::as_str)
                .ok_or_else(|| WordPieceError::Invalid("SpecialToken without id".into()))?;
            let ids: Vec<u32> = match specials
                .and_then(|s| s.get(name))
                .and_then(|s| s.get("ids"))
                .and_then(Value::as_array)
            {
                Some(ids) => ids
                    .iter()
                    .map(|v| {
                        v.as_u64()
                            .and_then(|n| u32::try_from(n).ok())
                            .ok_or_else(|| WordPieceError::Invalid(format!("ids of {name:?}")))
                    })
                    .collect::<Result<_, _>>()?,
                None => vec![resolve(name)?],
            };
            if seen_sequence {
                suffix.extend(ids);
            } else {
                prefix.extend(ids);
            }
        } else {
            return Err(WordPieceError::Invalid(format!("template piece {piece}")));
        }
    }
    if !seen_sequence {
        return Err(WordPieceError::Unsupported(
            "single template without $A".into(),
        ));
    }
    Ok((prefix, suffix))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::path::PathBuf;
    use tokenizers::normalizers::BertNormalizer;
    use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
    use tokenizers::{
        NormalizedString, Normalizer as _, OffsetReferential, OffsetType, PreTokenizedString,
        PreTokenizer as _, Tokenizer, TruncationParams,
    };

    /// The real model's tokenizer.json: `models/all-MiniLM-L6-v2/` in the repository, or the
    /// directory named by `SEMTAP_MODEL_DIR`.
    fn real_tokenizer_json() -> Option<PathBuf> {
        let mut candidates =
            vec![Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("models/all-MiniLM-L6-v2/tokenizer.json")];
        if let Some(dir) = std::env::var_os("SEMTAP_MODEL_DIR") {
            candidates.push(PathBuf::from(dir).join("tokenizer.json"));
        }
        candidates.into_iter().find(|p| p.is_file())
    }

    const WORDS: &[&str] = &[
        "the",
        "of",
        "and",
        "to",
        "in",
        "is",
        "you",
        "that",
        "it",
        "he",
        "was",
        "for",
        "on",
        "are",
        "as",
        "with",
        "his",
        "they",
        "at",
        "be",
        "this",
        "have",
        "from",
        "or",
        "one",
        "had",
        "by",
        "word",
        "but",
        "not",
        "what",
        "all",
        "were",
        "we",
        "when",
        "your",
        "can",
        "said",
        "there",
        "use",
        "an",
        "each",
        "which",
        "she",
        "do",
        "how",
        "their",
        "if",
        "will",
        "up",
        "other",
        "about",
        "out",
        "many",
        "then",
        "them",
        "these",
        "so",
        "some",
        "her",
        "would",
        "make",
        "like",
        "him",
        "into",
        "time",
        "has",
        "look",
        "two",
        "more",
        "write",
        "go",
        "see",
        "number",
        "no",
        "way",
        "could",
        "people",
        "my",
        "than",
        "first",
        "water",
        "been",
        "call",
        "who",
        "oil",
        "its",
        "now",
        "find",
        "long",
        "down",
        "day",
        "did",
        "get",
        "come",
        "made",
        "may",
        "part",
        "token",
        "model",
        "cafe",
        "naive",
        "response",
        "error",
        "request",
        "json",
        "http",
        "api",
        "sorry",
        "cannot",
        "help",
        "assistant",
        "function",
        "return",
        "value",
        "data",
        "server",
        "user",
    ];
    const PIECES: &[&str] = &[
        "ing", "ed", "s", "tion", "ly", "er", "est", "ize", "ization", "ness", "ment", "able",
        "un", "re", "pre", "ful", "less",
    ];

    /// A small BERT tokenizer.json built with the `tokenizers` crate, with the given
    /// normalizer settings. Returns its path (inside `dir`).
    fn build_small_tokenizer(
        dir: &Path,
        clean_text: bool,
        chinese: bool,
        strip_accents: Option<bool>,
        lowercase: bool,
    ) -> PathBuf {
        let mut vocab: Vec<String> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let push = |v: &mut Vec<String>, s: String| {
            if !v.contains(&s) {
                v.push(s);
            }
        };
        for b in 33u8..127 {
            push(&mut vocab, char::from(b).to_string());
            if b.is_ascii_alphanumeric() {
                push(&mut vocab, format!("##{}", char::from(b)));
            }
        }
        for w in WORDS {
            push(&mut vocab, w.to_string());
            push(&mut vocab, format!("##{w}"));
            let upper = w[..1].to_uppercase() + &w[1..];
            push(&mut vocab, upper);
        }
        for p in PIECES {
            push(&mut vocab, format!("##{p}"));
            push(&mut vocab, p.to_string());
        }
        for s in [
            "α",
            "β",
            "γ",
            "σ",
            "ς",
            "ω",
            "##α",
            "##σ",
            "##ς",
            "καλημερα",
            "καλημέρα",
            "п",
            "р",
            "##и",
            "##в",
            "привет",
            "中",
            "文",
            "字",
            "漢",
            "ひ",
            "##ら",
            "##が",
            "な",
            "カ",
            "##タ",
            "م",
            "##ر",
            "##ح",
            "😀",
            "👍",
            "é",
            "##é",
            "e",
            "café",
            "naïve",
            "ß",
            "ø",
            "å",
            "ñ",
            "##ñ",
            "i",
            "##̇",
            "Å",
            "É",
            "…",
            "—",
            "“",
            "”",
            "¿",
            "¡",
            "ｶ",
            "한",
            "##국",
            "ก",
        ] {
            push(&mut vocab, s.to_string());
        }
        let vocab_path = dir.join("vocab.txt");
        std::fs::write(&vocab_path, vocab.join("\n") + "\n").expect("write vocab");
        let tok = crate::semantic::testing::bert_tokenizer(
            &vocab_path,
            BertNormalizer::new(clean_text, chinese, strip_accents, lowercase),
        )
        .expect("reference tokenizer");
        let path = dir.join("tokenizer.json");
        tok.save(&path, false).expect("save tokenizer.json");
        path
    }

    const FRAGMENTS: &[&str] = &[
        ",",
        ".",
        "!",
        "?",
        ";",
        ":",
        "'",
        "\"",
        "(",
        ")",
        "[",
        "]",
        "{",
        "}",
        "-",
        "_",
        "/",
        "\\",
        "@",
        "#",
        "$",
        "%",
        "^",
        "&",
        "*",
        "+",
        "=",
        "<",
        ">",
        "|",
        "~",
        "`",
        "...",
        "\t",
        "\n",
        "\r\n",
        "\r",
        "\u{a0}",
        "\u{3000}",
        "\u{2028}",
        "\u{2009}",
        "\u{200b}",
        "\u{b}",
        "\u{c}",
        "é",
        "e\u{301}",
        "ñ",
        "n\u{303}",
        "Å",
        "A\u{30a}",
        "ü",
        "ç",
        "Ø",
        "ß",
        "ẞ",
        "café",
        "cafe\u{301}",
        "naïve",
        "Crème brûlée",
        "Καλημέρα",
        "ΣΊΣΥΦΟΣ",
        "ὈΔΥΣΣΕΎΣ",
        "Привет",
        "Ёлка",
        "中文字符",
        "漢字",
        "\u{F900}\u{2F800}",
        "ひらがな",
        "カタカナ",
        "ｶﾀｶﾅ",
        "مرحبا",
        "مَرْحَبًا",
        "😀",
        "👍🏽",
        "👨\u{200d}👩\u{200d}👧",
        "🇺🇸",
        "🏴\u{E0067}\u{E0062}\u{E0065}\u{E006E}\u{E0067}\u{E007F}",
        "🤩",
        "🫠",
        "\u{0}",
        "\u{1}",
        "\u{7f}",
        "\u{85}",
        "\u{ad}",
        "\u{200d}",
        "\u{feff}",
        "\u{fffd}",
        "\u{e000}",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        "[PAD]",
        "[UNK]",
        "[cls]",
        "[CLS",
        "[[SEP]]",
        "[CL\u{0}S]",
        "한국어",
        "ภาษาไทย",
        "हिन्दी",
        "İstanbul",
        "ǅ",
        "ﬁ",
        "\u{2126}",
        "\u{212a}",
        "\u{1fef}",
        "x\u{1d165}\u{301}\u{1d16d}",
        "\u{302e}\u{1d165}",
        "\u{345}\u{316}",
        "https://example.com/a_b?c=d&e=1",
        "fn main() { println!(\"hi\"); }",
        "user@example.org",
        "3.14159",
        "1,000,000",
        "2024-01-31T12:00:00Z",
        "C++",
        "--flag",
        "tokenization",
        "untokenizable",
        "Tokenization",
        "THE",
        "The",
        "responses",
    ];

    fn random_piece(rng: &mut StdRng) -> String {
        match rng.random_range(0..20) {
            0..=5 => {
                let w = WORDS[rng.random_range(0..WORDS.len())];
                match rng.random_range(0..6) {
                    0 => w.to_uppercase(),
                    1 => w[..1].to_uppercase() + &w[1..],
                    2 => format!("{w}{}", PIECES[rng.random_range(0..PIECES.len())]),
                    _ => w.to_string(),
                }
            }
            6..=9 => FRAGMENTS[rng.random_range(0..FRAGMENTS.len())].to_string(),
            10 => {
                let n = rng.random_range(1..8);
                (0..n)
                    .map(|_| char::from(rng.random_range(b'0'..=b'9')))
                    .collect()
            }
            11 | 12 => {
                let n = rng.random_range(1..14);
                (0..n)
                    .map(|_| char::from(rng.random_range(33u8..127)))
                    .collect()
            }
            13 => {
                // A very long word around the 100-character limit.
                let n = rng.random_range(90..130);
                let base: String = (0..n)
                    .map(|_| char::from(rng.random_range(b'a'..=b'z')))
                    .collect();
                if rng.random_bool(0.3) {
                    base.chars()
                        .map(|c| if c == 'e' { 'é' } else { c })
                        .collect()
                } else {
                    base
                }
            }
            14 | 15 => {
                // Random code points, biased to interesting planes.
                let n = rng.random_range(1..4);
                (0..n)
                    .filter_map(|_| {
                        let cp = match rng.random_range(0..4) {
                            0 => rng.random_range(0x80..0x800),
                            1 => rng.random_range(0x800..0x10000),
                            2 => rng.random_range(0x10000..0x30000),
                            _ => rng.random_range(0..0x110000),
                        };
                        char::from_u32(cp)
                    })
                    .collect()
            }
            16 => {
                // A letter with random combining marks (some with non-zero classes).
                const MARKS: &[char] = &[
                    '\u{300}',
                    '\u{301}',
                    '\u{316}',
                    '\u{327}',
                    '\u{345}',
                    '\u{1d165}',
                    '\u{1d16d}',
                    '\u{302e}',
                    '\u{5b0}',
                    '\u{93c}',
                    '\u{1abe}',
                    '\u{1dfa}',
                    '\u{10efd}',
                    '\u{1e4ef}',
                    '\u{16ff0}',
                ];
                let mut s = String::new();
                s.push(char::from(rng.random_range(b'a'..=b'z')));
                for _ in 0..rng.random_range(1..5) {
                    s.push(MARKS[rng.random_range(0..MARKS.len())]);
                }
                s
            }
            _ => {
                let n = rng.random_range(1..10);
                (0..n)
                    .map(|_| char::from(rng.random_range(b'a'..=b'z')))
                    .collect()
            }
        }
    }

    fn random_text(rng: &mut StdRng) -> String {
        let pieces = match rng.random_range(0..10) {
            0 => rng.random_range(0..3),
            1 => rng.random_range(150..500),
            _ => rng.random_range(1..60),
        };
        let mut s = String::new();
        for _ in 0..pieces {
            s.push_str(&random_piece(rng));
            match rng.random_range(0..10) {
                0 => {}
                1 => s.push_str(FRAGMENTS[rng.random_range(0..FRAGMENTS.len())]),
                _ => s.push(' '),
            }
        }
        s
    }

    fn reference(path: &Path) -> Tokenizer {
        let mut t = Tokenizer::from_file(path).expect("tokenizers loads the file");
        t.with_padding(None);
        t
    }

    fn reference_ids(t: &mut Tokenizer, text: &str, max_len: usize, special: bool) -> Vec<u32> {
        t.with_truncation(Some(TruncationParams {
            max_length: max_len,
            ..Default::default()
        }))
        .expect("truncation");
        t.encode(text, special)
            .expect("tokenizers encodes")
            .get_ids()
            .to_vec()
    }

    /// Compares ids on `n` generated strings at assorted lengths; returns how many were compared.
    fn compare_generated(path: &Path, seed: u64, n: usize) -> usize {
        let ours = WordPiece::from_tokenizer_json(path).expect("loads");
        let mut theirs = reference(path);
        let mut rng = StdRng::seed_from_u64(seed);
        let mut ids = Vec::new();
        for i in 0..n {
            let text = random_text(&mut rng);
            let max_len = [2, 3, 5, 16, 64, 128, 256, 512, 100_000][rng.random_range(0..9)];
            let special = i % 5 != 0;
            let expected = reference_ids(&mut theirs, &text, max_len, special);
            if special {
                ours.encode(&text, max_len, &mut ids);
            } else {
                ours.encode_no_special(&text, max_len, &mut ids);
            }
            assert_eq!(
                ids, expected,
                "string #{i} (max_len {max_len}, special {special}) differs: {text:?}"
            );
        }
        n
    }

    #[test]
    fn generated_strings_match_tokenizers_small_vocab() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = build_small_tokenizer(dir.path(), true, true, None, true);
        let n = compare_generated(&path, 1, 4000);
        eprintln!("compared {n} generated strings with tokenizers (generated vocab)");
    }

    #[test]
    fn generated_strings_match_tokenizers_other_normalizer_settings() {
        let mut total = 0;
        for (i, (clean, chinese, strip, lower)) in [
            (true, true, None, false),
            (true, true, Some(false), true),
            (true, true, Some(true), false),
            (false, true, None, true),
            (true, false, None, true),
            (false, false, Some(false), false),
        ]
        .into_iter()
        .enumerate()
        {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = build_small_tokenizer(dir.path(), clean, chinese, strip, lower);
            total += compare_generated(&path, 100 + i as u64, 500);
        }
        eprintln!("compared {total} generated strings with tokenizers (other normalizer settings)");
    }

    #[test]
    fn generated_strings_match_tokenizers_other_pipelines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = build_small_tokenizer(dir.path(), true, true, None, true);
        let json: Value =
            serde_json::from_str(&std::fs::read_to_string(&base).expect("read")).expect("json");
        let mut total = 0;
        for (i, (ptr, value)) in [
            ("/normalizer", Value::Null),
            (
                "/post_processor",
                serde_json::json!({"type": "BertProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2]}),
            ),
            ("/post_processor", Value::Null),
        ]
        .into_iter()
        .enumerate()
        {
            let mut j = json.clone();
            *j.pointer_mut(ptr).expect("field exists") = value;
            let path = dir.path().join(format!("variant{i}.json"));
            std::fs::write(&path, j.to_string()).expect("write");
            total += compare_generated(&path, 200 + i as u64, 400);
        }
        eprintln!("compared {total} generated strings with tokenizers (other pipelines)");
    }

    #[test]
    fn generated_strings_match_tokenizers_real_vocab() {
        let Some(path) = real_tokenizer_json() else {
            eprintln!(
                "note: models/all-MiniLM-L6-v2/tokenizer.json absent (and SEMTAP_MODEL_DIR unset): \
                 skipping the real-vocabulary comparison"
            );
            return;
        };
        let n = compare_generated(&path, 7, 6000);
        eprintln!(
            "compared {n} generated strings with tokenizers (real vocab {})",
            path.display()
        );
    }

    #[test]
    fn real_vocab_known_examples() {
        let Some(path) = real_tokenizer_json() else {
            eprintln!("note: real tokenizer.json absent: skipping known examples");
            return;
        };
        let wp = WordPiece::from_tokenizer_json(&path).expect("loads");
        let mut theirs = reference(&path);
        let mut ids = Vec::new();
        wp.encode("Hello, world!", 256, &mut ids);
        assert_eq!(ids, [101, 7592, 1010, 2088, 999, 102]);
        for text in [
            "",
            " ",
            "[MASK]",
            "Tokenization of naïve CAFÉ 中文!",
            "a[SEP]b",
        ] {
            wp.encode(text, 256, &mut ids);
            assert_eq!(ids, reference_ids(&mut theirs, text, 256, true), "{text:?}");
        }
        assert_eq!(wp.vocab_size(), 30522);
        assert_eq!((wp.cls_id(), wp.sep_id(), wp.unk_id()), (101, 102, 100));
        assert_eq!(wp.special_ids(), &[0, 100, 101, 102, 103]);
        assert_eq!(wp.id_to_token(7592), Some("hello"));
        assert_eq!(wp.token_to_id("##ing"), Some(2075));
    }

    /// Collects the pre-tokenizer's words instead of ids.
    struct Words(Vec<String>);

    impl WordSink for Words {
        fn word(&mut self, wp: &WordPiece, word: &str, chars: usize) -> bool {
            if chars > wp.max_chars {
                self.0.push(format!("<{chars} chars>"));
            } else {
                self.0.push(word.to_string());
            }
            true
        }
        fn ascii_punct(&mut self, wp: &WordPiece, b: u8) -> bool {
            self.0
                .push(char::from(wp.ascii_out[usize::from(b)]).to_string());
            true
        }
        fn added(&mut self, id: u32) -> bool {
            self.0.push(format!("<added {id}>"));
            true
        }
    }

    fn our_words(wp: &WordPiece, text: &str) -> Vec<String> {
        let mut sink = Words(Vec::new());
        wp.with_scratch(|sc| wp.scan(text, sc, &mut sink));
        sink.0
    }

    fn their_words(text: &str) -> Vec<String> {
        let mut n = NormalizedString::from(text);
        BertNormalizer::default()
            .normalize(&mut n)
            .expect("normalize");
        let mut pre = PreTokenizedString::from(n);
        BertPreTokenizer
            .pre_tokenize(&mut pre)
            .expect("pre-tokenize");
        pre.get_splits(OffsetReferential::Original, OffsetType::Byte)
            .into_iter()
            .map(|(s, _, _)| s.to_string())
            .collect()
    }

    fn bert_default() -> WordPiece {
        let json = serde_json::json!({
            "added_tokens": [],
            "normalizer": {"type": "BertNormalizer", "clean_text": true,
                "handle_chinese_chars": true, "strip_accents": null, "lowercase": true},
            "pre_tokenizer": {"type": "BertPreTokenizer"},
            "post_processor": null,
            "model": {"type": "WordPiece", "unk_token": "[UNK]",
                "continuing_subword_prefix": "##", "max_input_chars_per_word": 100,
                "vocab": {"[UNK]": 0}}
        });
        WordPiece::from_tokenizer_json_str(&json.to_string()).expect("loads")
    }

    #[test]
    fn every_code_point_normalises_and_splits_like_tokenizers() {
        let wp = bert_default();
        let mut checked = 0;
        for cp in 0..=0x10FFFFu32 {
            let Some(c) = char::from_u32(cp) else {
                continue;
            };
            let text = format!("a{c}b");
            assert_eq!(our_words(&wp, &text), their_words(&text), "U+{cp:04X}");
            checked += 1;
        }
        eprintln!("checked {checked} code points");
    }

    fn their_nfd(s: &str) -> String {
        let mut n = NormalizedString::from(s);
        n.nfd();
        n.get().to_string()
    }

    fn our_nfd(s: &str) -> String {
        let input: Vec<char> = s.chars().collect();
        let mut out = Vec::new();
        nfd_u9(&input, &mut out);
        out.into_iter().collect()
    }

    /// Derives the Unicode 9 exception tables from `tokenizers`' own NFD and checks ours equal
    /// them; on mismatch it prints the tables to paste.
    #[test]
    fn unicode9_exception_tables() {
        let mut decomposing = Vec::new();
        let mut combining = Vec::new();
        for cp in 0x80..=0x10FFFFu32 {
            let Some(c) = char::from_u32(cp) else {
                continue;
            };
            let mut new = String::new();
            unicode_normalization::char::decompose_canonical(c, |d| new.push(d));
            let old = their_nfd(&c.to_string());
            if new != c.to_string() && old == c.to_string() {
                decomposing.push(cp);
            }
            let class = unicode_normalization::char::canonical_combining_class(c);
            if class != 0 && class < 240 && old == c.to_string() {
                // A non-starter would be moved before U+0345 (class 240); a starter is not.
                let probe = format!("\u{345}{c}");
                if their_nfd(&probe) == probe {
                    combining.push(cp);
                }
            }
        }
        let ranges = |v: &[u32]| -> Vec<(u32, u32)> {
            let mut out: Vec<(u32, u32)> = Vec::new();
            for &x in v {
                match out.last_mut() {
                    Some(last) if last.1 + 1 == x => last.1 = x,
                    _ => out.push((x, x)),
                }
            }
            out
        };
        let (d, c) = (ranges(&decomposing), ranges(&combining));
        if d != NEW_DECOMPOSING || c != NEW_COMBINING {
            let show = |r: &[(u32, u32)]| {
                r.iter()
                    .map(|(a, b)| format!("(0x{a:X}, 0x{b:X}),"))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            panic!(
                "exception tables out of date:\nNEW_DECOMPOSING = [{}]\nNEW_COMBINING = [{}]",
                show(&d),
                show(&c)
            );
        }
    }

    #[test]
    fn nfd_matches_tokenizers_around_marks() {
        let mut checked = 0;
        for cp in 0x80..=0x10FFFFu32 {
            let Some(c) = char::from_u32(cp) else {
                continue;
            };
            let mut decomposed = String::new();
            unicode_normalization::char::decompose_canonical(c, |d| decomposed.push(d));
            let class = unicode_normalization::char::canonical_combining_class(c);
            if class == 0 && decomposed == c.to_string() {
                continue;
            }
            for s in [
                format!("{c}"),
                format!("\u{345}{c}"),
                format!("{c}\u{345}"),
                format!("x\u{316}{c}\u{301}"),
                format!("x{c}\u{1d165}\u{334}"),
                format!("\u{1d16d}{c}\u{5b0}"),
            ] {
                assert_eq!(our_nfd(&s), their_nfd(&s), "U+{cp:04X} in {s:?}");
            }
            checked += 1;
        }
        assert!(checked > 1000);
    }

    #[test]
    fn overlong_words_become_unk() {
        let wp = bert_default();
        let mut ids = Vec::new();
        let word = "a".repeat(101);
        wp.encode_no_special(&word, 10, &mut ids);
        assert_eq!(ids, [0]);
        wp.encode_no_special(&"é".repeat(150), 10, &mut ids);
        assert_eq!(ids, [0]);
        assert_eq!(our_words(&wp, &"b".repeat(120)), ["<120 chars>"]);
    }

    #[test]
    fn truncation_and_specials() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = build_small_tokenizer(dir.path(), true, true, None, true);
        let wp = WordPiece::from_tokenizer_json(&path).expect("loads");
        let mut ids = Vec::new();
        wp.encode("the of and to in", 4, &mut ids);
        assert_eq!(ids.len(), 4);
        assert_eq!((ids[0], ids[3]), (2, 3));
        wp.encode("the of", 2, &mut ids);
        assert_eq!(ids, [2, 3]);
        wp.encode("the of", 0, &mut ids);
        assert_eq!(ids, [2, 3], "max_len below the specials keeps just them");
        wp.encode("", 16, &mut ids);
        assert_eq!(ids, [2, 3]);
        wp.encode_no_special("the [MASK] of", 16, &mut ids);
        assert_eq!(ids.len(), 3);
        assert_eq!(
            ids[1], 4,
            "literal added tokens are extracted from raw text"
        );
        assert_eq!(wp.special_ids(), &[0, 1, 2, 3, 4]);
    }

    #[test]
    fn unsupported_configurations_are_rejected() {
        let base = serde_json::json!({
            "added_tokens": [],
            "normalizer": {"type": "BertNormalizer"},
            "pre_tokenizer": {"type": "BertPreTokenizer"},
            "post_processor": null,
            "model": {"type": "WordPiece", "unk_token": "[UNK]", "vocab": {"[UNK]": 0, "a": 1}}
        });
        assert!(WordPiece::from_tokenizer_json_str(&base.to_string()).is_ok());
        let with = |ptr: &str, v: Value| {
            let mut j = base.clone();
            if let Some(slot) = j.pointer_mut(ptr) {
                *slot = v;
            }
            WordPiece::from_tokenizer_json_str(&j.to_string())
        };
        assert!(matches!(
            with("/model/type", "BPE".into()),
            Err(WordPieceError::Unsupported(_))
        ));
        assert!(matches!(
            with("/normalizer", serde_json::json!({"type": "NFC"})),
            Err(WordPieceError::Unsupported(_))
        ));
        assert!(matches!(
            with("/pre_tokenizer", serde_json::json!({"type": "Whitespace"})),
            Err(WordPieceError::Unsupported(_))
        ));
        assert!(matches!(
            with(
                "/added_tokens",
                serde_json::json!([{"id": 1, "content": "a", "normalized": true}])
            ),
            Err(WordPieceError::Unsupported(_))
        ));
        assert!(matches!(
            with("/model/unk_token", "[NOPE]".into()),
            Err(WordPieceError::Invalid(_))
        ));
        assert!(matches!(
            WordPiece::from_tokenizer_json_str("{"),
            Err(WordPieceError::Json(_))
        ));
        assert!(matches!(
            WordPiece::from_tokenizer_json("/nonexistent/tokenizer.json"),
            Err(WordPieceError::Io { .. })
        ));
    }

    #[test]
    fn vocab_table_lookups() {
        let long = "x".repeat(40);
        let keys: Vec<String> = (0..5000)
            .map(|i| format!("k{i}"))
            .chain([
                long.clone(),
                format!("{long}y"),
                "a".repeat(16),
                "a".repeat(17),
            ])
            .collect();
        let t = VocabTable::build(keys.iter().enumerate().map(|(i, k)| (k.as_str(), i as u32)));
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(t.get(k), Some(i as u32), "{k}");
        }
        for absent in [
            "",
            "k",
            "k5000",
            "x",
            &"x".repeat(39),
            &"a".repeat(15),
            "k1\0",
        ] {
            assert_eq!(t.get(absent), None, "{absent:?}");
        }
        let dup = VocabTable::build([("a", 1), ("a", 2), ("", 3)].into_iter());
        assert_eq!((dup.get("a"), dup.get(""), dup.len), (Some(1), None, 1));
        // Hashes spread: few collisions in the low bits used for slots.
        let mut buckets = vec![0u32; 8192];
        for k in &keys {
            buckets[fx_hash(k.as_bytes()) as usize & 8191] += 1;
        }
        assert!(
            buckets.iter().all(|&n| n <= 8),
            "max {:?}",
            buckets.iter().max()
        );
    }
}
