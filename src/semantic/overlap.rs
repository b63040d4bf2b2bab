//! Term overlap between a prompt and its answer: how much of what is *particular* about this
//! prompt the answer mentions.
//!
//! An answer to another question looks like any other answer of its key, so neither the
//! outlier score nor a cosine of mean token vectors separates it well (docs/EVALUATION.md).
//! What does separate it is the prompt's own vocabulary: an answer about `json.dumps`
//! mentions json or dumps; an answer about `shutil.copy` does not. Which prompt words are
//! particular is learned per key from the key's prompts (inverse document frequency), so a
//! template every prompt shares ("Explain what … does") weighs nothing, in any language.
//!
//! Terms are words split at non-alphanumerics and camelCase humps (`ThreadedChildWatcher` →
//! threaded, child, watcher), lower-cased, a trailing plural `s` dropped. Document
//! frequencies live in a fixed table of hashed buckets (bounded memory per key; a collision
//! only makes a rare term look a little commoner).

use serde::{Deserialize, Serialize};

use super::checks::text::head;

/// Hashed document-frequency buckets per key.
const BUCKETS: usize = 2048;
/// Distinct terms taken from one prompt (the last user turn can be long).
const MAX_PROMPT_TERMS: usize = 64;
/// Prompts a key must have seen before its overlap is reported.
pub const MIN_PROMPTS: u32 = 20;
/// Bytes of the answer searched for the prompt's terms.
const SCAN_BYTES: usize = 16 * 1024;

/// A key's prompt vocabulary: how many of its prompts contained each (hashed) term.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PromptTerms {
    prompts: u32,
    df: Vec<u32>,
}

impl Default for PromptTerms {
    fn default() -> Self {
        PromptTerms {
            prompts: 0,
            df: vec![0; BUCKETS],
        }
    }
}

impl PromptTerms {
    /// Counts one prompt's distinct terms.
    pub fn observe(&mut self, prompt: &[u64]) {
        if self.df.len() != BUCKETS {
            // A state file from another layout: start counting again.
            *self = PromptTerms::default();
        }
        for &t in prompt {
            let b = &mut self.df[bucket(t)];
            *b = b.saturating_add(1);
        }
        self.prompts = self.prompts.saturating_add(1);
    }

    /// Share of the prompt's particularity (sum of its terms' IDF) that the answer mentions,
    /// in [0, 1]. `None` until the key has seen [`MIN_PROMPTS`] prompts, or when nothing in
    /// the prompt is particular.
    pub fn overlap(&self, prompt: &[u64], answer: &str) -> Option<f64> {
        if self.prompts < MIN_PROMPTS || prompt.is_empty() || self.df.len() != BUCKETS {
            return None;
        }
        let prompt = &prompt[..prompt.len().min(MAX_PROMPT_TERMS)];
        let n = f64::from(self.prompts);
        let idf: Vec<f64> = prompt
            .iter()
            .map(|&t| {
                ((n + 1.0) / (f64::from(self.df[bucket(t)]) + 1.0))
                    .ln()
                    .max(0.0)
            })
            .collect();
        let total: f64 = idf.iter().sum();
        if total < 1e-6 {
            return None;
        }
        let mut found = [false; MAX_PROMPT_TERMS];
        for_each_term(head(answer, SCAN_BYTES), |h| {
            if let Some(i) = prompt.iter().position(|&t| t == h) {
                found[i] = true;
            }
        });
        let hit: f64 = idf
            .iter()
            .zip(found.iter())
            .filter(|(_, f)| **f)
            .map(|(w, _)| w)
            .sum();
        Some(hit / total)
    }
}

/// The prompt's distinct terms (at most [`MAX_PROMPT_TERMS`]), into `out`.
pub fn prompt_terms(prompt: &str, out: &mut Vec<u64>) {
    out.clear();
    for_each_term(head(prompt, SCAN_BYTES), |h| {
        if out.len() < MAX_PROMPT_TERMS && !out.contains(&h) {
            out.push(h);
        }
    });
}

fn bucket(h: u64) -> usize {
    (h >> 32) as usize % BUCKETS
}

/// Calls `f` with the hash of every term of `text`: one pass, no allocation (the hash is
/// built as the characters arrive; the hash before the last character is kept so a plural
/// `s` can be dropped).
fn for_each_term(text: &str, mut f: impl FnMut(u64)) {
    let mut t = Term::default();
    let mut prev_lower = false;
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let c = if b < 0x80 {
            i += 1;
            char::from(b)
        } else {
            match text[i..].chars().next() {
                Some(c) => {
                    i += c.len_utf8();
                    c
                }
                None => break,
            }
        };
        if c.is_alphanumeric() {
            // A camelCase hump starts a new term.
            if c.is_uppercase() && prev_lower {
                t.emit(&mut f);
            }
            prev_lower = c.is_lowercase() || c.is_numeric();
            if c.is_ascii() {
                t.push(c.to_ascii_lowercase());
            } else {
                for l in c.to_lowercase() {
                    t.push(l);
                }
            }
        } else {
            t.emit(&mut f);
            prev_lower = false;
        }
    }
    t.emit(&mut f);
}

/// A term being read: FNV-1a of its characters so far, and of all but the last.
#[derive(Default)]
struct Term {
    hash: u64,
    before_last: u64,
    chars: usize,
    last: char,
}

impl Term {
    fn push(&mut self, c: char) {
        if self.chars == 0 {
            self.hash = FNV_SEED;
        }
        self.before_last = self.hash;
        let mut buf = [0u8; 4];
        for b in c.encode_utf8(&mut buf).bytes() {
            self.hash = (self.hash ^ u64::from(b)).wrapping_mul(FNV_PRIME);
        }
        self.chars += 1;
        self.last = c;
    }

    /// Hands the finished term to `f` (a trailing plural `s` dropped from words of 4+
    /// characters; single characters skipped: they say nothing about a subject).
    fn emit(&mut self, f: &mut impl FnMut(u64)) {
        if self.chars >= 4 && self.last == 's' {
            f(self.before_last);
        } else if self.chars >= 2 {
            f(self.hash);
        }
        self.chars = 0;
    }
}

const FNV_SEED: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;

#[cfg(test)]
mod tests {
    use super::*;

    fn terms(t: &str) -> Vec<u64> {
        let mut v = Vec::new();
        prompt_terms(t, &mut v);
        v
    }

    #[test]
    fn terms_split_at_camel_case_and_punctuation_and_drop_plurals() {
        assert_eq!(
            terms("ThreadedChildWatcher"),
            terms("threaded child watchers")
        );
        assert_eq!(terms("`json.dumps`"), terms("JSON dump"));
        assert!(terms("a 1 ? !").is_empty());
    }

    #[test]
    fn template_words_weigh_nothing_and_the_subject_decides() {
        let mut k = PromptTerms::default();
        let subjects = [
            "gzip", "tar", "grep", "sed", "awk", "curl", "ssh", "rsync", "find", "sort", "uniq",
            "head", "tail", "chmod", "chown", "mount", "ping", "dig", "top", "kill", "less",
            "make",
        ];
        for s in subjects {
            k.observe(&terms(&format!("What does the `{s}` command do?")));
        }
        let p = terms("What does the `gzip` command do?");
        let on = k
            .overlap(
                &p,
                "gzip reduces the size of the named files using Lempel-Ziv coding.",
            )
            .unwrap();
        let off = k
            .overlap(
                &p,
                "rsync is a fast and extraordinarily versatile file copying tool.",
            )
            .unwrap();
        assert!(on > 0.9, "{on}");
        assert!(off < 0.1, "{off}");
    }

    #[test]
    fn more_prompt_terms_than_the_cap_are_cut_not_a_panic() {
        // 100 real terms (the public API does not stop a caller passing more than 64); the
        // answer mentions one past the cap.
        let many: Vec<u64> = (0..100).flat_map(|i| terms(&format!("word{i}"))).collect();
        assert_eq!(many.len(), 100);
        let mut k = PromptTerms::default();
        for i in 0..MIN_PROMPTS {
            k.observe(&terms(&format!("other{i}")));
        }
        let o = k.overlap(&many, "word99 and word0").unwrap();
        assert!((o - 1.0 / 64.0).abs() < 1e-9, "{o}");
    }

    #[test]
    fn no_overlap_before_the_key_has_seen_enough_prompts() {
        let mut k = PromptTerms::default();
        let p = terms("What does `gzip` do?");
        k.observe(&p);
        assert_eq!(k.overlap(&p, "gzip compresses"), None);
    }

    #[test]
    fn a_state_of_another_layout_starts_over_instead_of_panicking() {
        let mut k: PromptTerms = serde_json::from_str(r#"{"prompts":50,"df":[1,2,3]}"#).unwrap();
        assert_eq!(k.overlap(&terms("gzip"), "gzip"), None);
        k.observe(&terms("gzip"));
        assert_eq!(k.prompts, 1);
    }
}
