//! `refusal`: refusal and deflection phrasing.

use std::sync::OnceLock;

use super::text::{head, trim_bounded, unit, PhraseSet};

/// Bytes of the answer the refusal check reads (its start: refusals open an answer).
const SCAN_BYTES: usize = 4096;
/// Matches starting in the first this-many bytes count in full.
const OPENING_BYTES: f64 = 160.0;
/// Beyond the opening, a match's weight halves every this-many bytes (hyperbolically).
const POSITION_HALF: f64 = 600.0;
/// Answers up to this many chars count in full; longer ones are scaled by sqrt(this / len).
const SHORT_CHARS: f64 = 800.0;
/// Floor of the length factor.
const MIN_LENGTH_FACTOR: f64 = 0.2;
/// Factor for a match inside double quotes ("you could say: \"I'm sorry, but I can't\"").
const QUOTED_FACTOR: f64 = 0.35;

/// Refusal phrasings with their weight, written normalised (lowercase, apostrophes removed:
/// "I can't" is `i cant`; see [`PhraseSet`] for how they match). `CANT`, `IM`, `WONT` and
/// `DONT` expand to the contracted and spelled-out forms ("cant", "cannot", "can not"; "im",
/// "i am"; "wont", "will not"; "dont", "do not"). Where matches overlap, the heaviest counts.
const PHRASES: &[(&str, f32)] = &[
    // Explicit refusals.
    ("sorry but i CANT", 0.9),
    ("sorry i CANT", 0.85),
    ("sorry but IM not able", 0.9),
    ("sorry but IM unable", 0.9),
    ("sorry but i WONT", 0.85),
    ("sorry but i", 0.5),
    ("apologize but i CANT", 0.9),
    ("apologize but i", 0.5),
    ("IM afraid i CANT", 0.8),
    ("IM afraid i", 0.35),
    ("unfortunately i CANT", 0.6),
    ("unfortunately IM unable", 0.6),
    ("unfortunately i", 0.3),
    ("i CANT help with", 0.95),
    ("i CANT help you with", 0.95),
    ("i CANT help", 0.8),
    ("i CANT assist", 0.95),
    ("i CANT provide", 0.8),
    ("i CANT do that", 0.85),
    ("i CANT do this", 0.8),
    ("i CANT comply", 1.0),
    ("i CANT fulfill", 1.0),
    ("i CANT fulfil", 1.0),
    ("i CANT create", 0.8),
    ("i CANT write", 0.75),
    ("i CANT generate", 0.8),
    ("i CANT produce", 0.8),
    ("i CANT share", 0.7),
    ("i CANT engage", 0.9),
    ("i CANT support", 0.6),
    ("i CANT answer", 0.7),
    ("i CANT discuss", 0.8),
    ("i CANT participate", 0.8),
    ("i CANT offer", 0.6),
    ("i CANT and WONT", 1.0),
    ("i CANT", 0.2),
    ("IM unable to help", 0.9),
    ("IM unable to assist", 0.95),
    ("IM unable to provide", 0.8),
    ("IM unable to comply", 1.0),
    ("IM unable to fulfill", 1.0),
    ("IM unable to create", 0.8),
    ("IM unable to generate", 0.8),
    ("IM unable to", 0.6),
    ("IM not able to help", 0.9),
    ("IM not able to assist", 0.95),
    ("IM not able to provide", 0.8),
    ("IM not able to", 0.5),
    ("i WONT be able to help", 0.9),
    ("i WONT be able to assist", 0.9),
    ("i WONT be able to provide", 0.8),
    ("i WONT be able to", 0.6),
    ("i WONT help", 0.9),
    ("i WONT assist", 0.9),
    ("i WONT provide", 0.85),
    ("i WONT create", 0.8),
    ("i WONT write", 0.8),
    ("i WONT generate", 0.8),
    ("i WONT", 0.2),
    ("IM not going to help", 0.9),
    ("IM not going to provide", 0.85),
    ("IM not going to write", 0.85),
    ("IM not going to create", 0.85),
    ("IM not going to", 0.3),
    ("i must decline", 1.0),
    ("i must respectfully decline", 1.0),
    ("i have to decline", 0.9),
    ("i need to decline", 0.9),
    ("i will have to decline", 0.9),
    ("respectfully decline", 0.9),
    ("i decline to", 0.8),
    ("i must refuse", 1.0),
    ("i have to refuse", 0.9),
    ("i refuse to", 0.8),
    ("thats not something i can", 0.8),
    ("not something i can help with", 0.9),
    ("not something i can assist with", 0.9),
    ("i DONT feel comfortable", 0.9),
    ("IM not comfortable", 0.8),
    ("i DONT think i can help", 0.85),
    ("i DONT think i should", 0.6),
    ("i DONT think its appropriate", 0.8),
    ("not appropriate for me to", 0.8),
    ("it would not be appropriate", 0.7),
    ("it wouldnt be appropriate", 0.7),
    ("i DONT engage", 0.8),
    // Deflection.
    ("as an ai language model", 0.8),
    ("as a language model", 0.7),
    ("as an ai", 0.5),
    ("IM just an ai", 0.5),
    ("IM only an ai", 0.5),
    ("i DONT have personal opinions", 0.35),
    ("i DONT have the ability to", 0.4),
    ("IM sorry", 0.3),
    ("i apologize", 0.3),
    ("is there something else i can help", 0.3),
    // Guidelines and content policy.
    ("against my guidelines", 0.9),
    ("against my programming", 0.9),
    ("against my principles", 0.8),
    ("violates my guidelines", 0.9),
    ("goes against my", 0.7),
    ("my guidelines", 0.3),
    ("content policy", 0.35),
    ("content policies", 0.35),
    ("usage policy", 0.35),
    ("usage policies", 0.35),
    ("safety guidelines", 0.5),
    ("content guidelines", 0.5),
    ("this request violates", 0.9),
    ("this content may violate", 0.9),
    ("may violate our", 0.7),
    ("violates our", 0.5),
    ("against our content policy", 0.8),
    ("against our usage policies", 0.8),
    ("violates our content policy", 0.9),
    ("violate our content policy", 0.9),
    // Spanish.
    ("lo siento pero no puedo", 1.0),
    ("lo siento no puedo", 0.9),
    ("no puedo ayudar", 0.9),
    ("no puedo ayudarte", 0.9),
    ("no puedo proporcionar", 0.85),
    ("no puedo cumplir", 0.9),
    ("no puedo asistir", 0.9),
    ("no puedo crear", 0.8),
    ("no puedo", 0.2),
    ("lo siento", 0.3),
    ("como modelo de lenguaje", 0.7),
    ("como un modelo de lenguaje", 0.7),
    ("como ia", 0.45),
    ("como una ia", 0.45),
    // French ("qu'IA" normalises to "quia").
    ("désolé mais je ne peux pas", 1.0),
    ("désolée mais je ne peux pas", 1.0),
    ("je ne peux pas vous aider", 0.9),
    ("je ne peux pas aider", 0.9),
    ("je ne peux pas répondre", 0.8),
    ("je ne peux pas fournir", 0.85),
    ("je ne peux pas", 0.25),
    ("je ne suis pas en mesure de", 0.6),
    ("désolé", 0.25),
    ("en tant que modèle de langage", 0.7),
    ("en tant quia", 0.5),
    ("en tant quintelligence artificielle", 0.5),
    // German.
    ("es tut mir leid aber ich kann", 0.9),
    ("ich kann ihnen dabei nicht helfen", 1.0),
    ("ich kann dabei nicht helfen", 1.0),
    ("ich kann ihnen nicht helfen", 0.9),
    ("dabei kann ich nicht helfen", 0.9),
    ("dabei kann ich ihnen nicht helfen", 0.9),
    ("kann ich nicht helfen", 0.8),
    ("ich bin nicht in der lage", 0.6),
    ("es tut mir leid", 0.3),
    ("als ki sprachmodell", 0.7),
    ("als sprachmodell", 0.7),
    ("als ki", 0.4),
    // Portuguese.
    ("desculpe mas não posso", 1.0),
    ("lamento mas não posso", 1.0),
    ("não posso ajudar", 0.9),
    ("não posso fornecer", 0.85),
    ("não posso atender", 0.8),
    ("não consigo ajudar", 0.8),
    ("não posso", 0.25),
    ("desculpe", 0.25),
    ("como um modelo de linguagem", 0.7),
    ("como uma ia", 0.45),
    // Chinese.
    ("很抱歉", 0.35),
    ("抱歉", 0.3),
    ("对不起", 0.3),
    ("我无法提供", 0.85),
    ("我无法帮助", 0.9),
    ("我无法协助", 0.9),
    ("我无法满足", 0.9),
    ("我无法", 0.5),
    ("我不能提供", 0.85),
    ("我不能帮助", 0.9),
    ("我不能协助", 0.9),
    ("我不能", 0.35),
    ("无法满足你的请求", 0.9),
    ("无法满足您的请求", 0.9),
    ("作为一个ai语言模型", 0.8),
    ("作为一个人工智能", 0.6),
    ("作为ai", 0.5),
    ("作为人工智能", 0.5),
    ("违反", 0.2),
    // Japanese.
    ("申し訳ありませんが", 0.5),
    ("申し訳ございませんが", 0.5),
    ("お手伝いできません", 0.9),
    ("お手伝いすることはできません", 0.9),
    ("お応えできません", 0.9),
    ("お答えできません", 0.85),
    ("対応できません", 0.7),
    ("提供できません", 0.8),
    ("できかねます", 0.7),
    ("aiとして", 0.45),
    ("ai言語モデルとして", 0.8),
];

/// Spelled-out variants of the contraction placeholders in [`PHRASES`].
const VARIANTS: &[(&str, &[&str])] = &[
    ("CANT", &["cant", "cannot", "can not"]),
    ("WONT", &["wont", "will not"]),
    ("DONT", &["dont", "do not"]),
    ("IM", &["im", "i am"]),
];

fn expand(phrase: &str, weight: f32, out: &mut Vec<(String, f32)>) {
    for (key, alts) in VARIANTS {
        if let Some(at) = phrase.find(key) {
            for alt in *alts {
                let mut p = String::with_capacity(phrase.len() + 4);
                p.push_str(&phrase[..at]);
                p.push_str(alt);
                p.push_str(&phrase[at + key.len()..]);
                expand(&p, weight, out);
            }
            return;
        }
    }
    out.push((phrase.to_string(), weight));
}

fn phrase_set() -> &'static PhraseSet {
    static SET: OnceLock<PhraseSet> = OnceLock::new();
    SET.get_or_init(|| {
        let mut all = Vec::new();
        for &(p, w) in PHRASES {
            expand(p, w, &mut all);
        }
        let list: Vec<(&str, f32)> = all.iter().map(|(p, w)| (p.as_str(), *w)).collect();
        PhraseSet::new(&list)
    })
}

/// Double-quote-like chars: a refusal inside quotes is being suggested, not made.
fn is_quote(c: char) -> bool {
    matches!(
        c,
        '"' | '“' | '”' | '„' | '«' | '»' | '「' | '」' | '『' | '』'
    )
}

/// Counts quote chars in `s[from..to]`.
fn quotes_between(s: &str, from: usize, to: usize) -> usize {
    s.get(from..to)
        .map_or(0, |t| t.chars().filter(|&c| is_quote(c)).count())
}

/// `refusal`: how much the answer reads as a refusal or deflection, in [0, 1].
///
/// Phrases ("I'm sorry, but I can't", "I cannot help with", "As an AI language model",
/// "I'm unable to", "I won't be able to", "I must decline", "against my guidelines", "I don't
/// feel comfortable", content-policy wording, and Spanish, French, German, Portuguese,
/// Chinese and Japanese equivalents) each carry a weight: explicit refusals close to 1,
/// deflections around 0.5, bare hedges ("I can't", "I'm sorry") 0.2-0.3. Matching ignores
/// case, apostrophe style (’ or ') and punctuation between words.
///
/// Each match's weight is scaled by
/// * position: full in the first ~160 bytes, then decaying (half at ~760 bytes), so a
///   refusal that opens the answer counts more than one buried in it;
/// * answer length: full up to 800 chars, then `sqrt(800 / chars)` (at least 0.2), so a short
///   answer dominated by refusal phrasing scores high and a long helpful answer low;
/// * quoting: 0.35 inside double quotes (an answer suggesting what to say).
///
/// Overlapping matches count once, with the heaviest weight among them; the scaled groups
/// combine as independent evidence (`1 - Π(1 - s)`).
///
/// So an explicit refusal fires when it opens an answer of up to ~2,500 chars (a refusal
/// followed by a short offer of alternatives, or a deflection before a short answer), a
/// deflection like "As an AI language model" up to ~2,000 chars, and a bare "As an AI" only
/// in answers under 800 chars; a hedge ("I can't guarantee") never does on its own.
///
/// Reads the first 4 KiB of the answer: beyond that the position and length factors keep
/// any one phrase below 0.2.
pub fn refusal(text: &str) -> f64 {
    let text = trim_bounded(text, SCAN_BYTES);
    if text.is_empty() {
        return 0.0;
    }
    let window = head(text, SCAN_BYTES);
    let chars = if window.len() == text.len() {
        text.chars().count()
    } else {
        // Longer than the window: the answer is long either way.
        text.len()
    };
    let length_factor = (SHORT_CHARS / chars.max(1) as f64)
        .sqrt()
        .clamp(MIN_LENGTH_FACTOR, 1.0);

    // Overlapping matches ("I'm sorry" inside "I'm sorry, but I can't help with") are one
    // piece of evidence: a group of matches that overlap counts with its heaviest weight, at
    // the group's first position.
    let mut keep = 1.0f64; // Π(1 - s)
    let mut quotes = (0usize, 0usize); // (position counted up to, quote chars before it)
    let mut flush = |g: Option<(usize, usize, f64)>, keep: &mut f64| {
        let Some((pos, _, w)) = g else { return };
        quotes.1 += quotes_between(window, quotes.0, pos);
        quotes.0 = pos;
        let p = pos as f64;
        let position_factor = if p <= OPENING_BYTES {
            1.0
        } else {
            1.0 / (1.0 + (p - OPENING_BYTES) / POSITION_HALF)
        };
        let quote_factor = if quotes.1 % 2 == 1 {
            QUOTED_FACTOR
        } else {
            1.0
        };
        *keep *= 1.0 - unit(w * position_factor * length_factor * quote_factor);
    };
    let mut group: Option<(usize, usize, f64)> = None; // (start, end, weight)
    phrase_set().scan(window, |start, end, p| {
        let w = f64::from(p.weight);
        match &mut group {
            Some((_, g_end, g_w)) if start < *g_end => {
                *g_end = (*g_end).max(end);
                *g_w = g_w.max(w);
            }
            _ => {
                flush(group.take(), &mut keep);
                group = Some((start, end, w));
            }
        }
    });
    flush(group, &mut keep);
    unit(1.0 - keep)
}

/// Realistic refusal texts, for the engine to embed and compare answers with: explicit
/// refusals, policy wording, deflections and the house styles of the major model families,
/// plus a few non-English ones.
pub fn refusal_exemplars() -> &'static [&'static str] {
    &[
        "I'm sorry, but I can't help with that.",
        "I'm sorry, but I can't assist with that request.",
        "I can't help with creating malware or anything designed to harm computer systems. If you're interested in security, I'd be glad to explain how to defend against these attacks.",
        "I cannot provide instructions for making weapons or explosives. If you have questions about safety or chemistry in an educational context, I'm happy to help with those instead.",
        "As an AI language model, I don't have personal opinions or feelings, so I can't take a side on this.",
        "I'm unable to help with that request because it may violate our usage policies.",
        "I must decline this request, as it goes against my guidelines.",
        "I don't feel comfortable writing that. It involves real people in a way that could be harmful or misleading. I'd be happy to help with a clearly fictional version instead.",
        "I won't be able to help with that. Is there something else I can help you with?",
        "Sorry, I can't do that.",
        "I apologize, but I cannot fulfill this request. It goes against my programming to generate content that could be used to deceive or harm others.",
        "I'm not able to provide medical diagnoses. Please consult a qualified healthcare professional about your symptoms.",
        "This content may violate our content policy, so I can't generate it.",
        "I'm not going to write that. Creating content that harasses or demeans people isn't something I'll do, but I can help you express your concerns respectfully.",
        "I'm afraid I can't comply with that request.",
        "That's not something I can help with.",
        "Lo siento, pero no puedo ayudarte con eso.",
        "Désolé, mais je ne peux pas vous aider avec cette demande.",
        "Es tut mir leid, aber ich kann Ihnen dabei nicht helfen.",
        "很抱歉，我无法协助处理这个请求。",
        "申し訳ありませんが、そのご依頼にはお応えできません。",
    ]
}
