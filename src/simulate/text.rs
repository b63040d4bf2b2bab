//! Deterministic text: the answer paragraphs, hashing, ids, token estimates and chunking.

use serde_json::Value;

/// Substantive answers, one chosen per prompt by hash. Each stays under 200 estimated tokens so a
/// typical `max_tokens` budget does not cut it.
const PARAGRAPHS: &[&str] = &[
    "Photosynthesis happens in two linked stages. In the light-dependent reactions, chlorophyll in the thylakoid membranes absorbs photons and uses that energy to split water, releasing oxygen and producing ATP and NADPH. The Calvin cycle, which runs in the stroma, then spends that ATP and NADPH to fix carbon dioxide into three-carbon sugars with the help of the enzyme RuBisCO. RuBisCO is slow and sometimes grabs oxygen instead of carbon dioxide, which is why C4 and CAM plants evolved ways to concentrate CO2 around it.",
    "TCP congestion control is a feedback loop that runs without any central coordinator. A sender starts cautiously with slow start, roughly doubling its congestion window every round trip until it sees loss or reaches a threshold. After that it grows the window linearly and cuts it sharply when packets are dropped, a pattern known as additive increase, multiplicative decrease. Newer algorithms refine the idea: CUBIC shapes window growth as a cubic function of time since the last loss, while BBR estimates bottleneck bandwidth and round-trip time directly.",
    "Roman aqueducts moved water using nothing but gravity and careful surveying. Engineers kept the gradient remarkably shallow, sometimes only a few tens of centimetres per kilometre, so the water flowed steadily without scouring the channel. Most of the route ran underground in covered conduits; the famous arched bridges were only needed where the line had to cross a valley. At the city end, a distribution tank called a castellum split the supply between public fountains, baths and the private connections of wealthy households.",
    "A sourdough starter is a stable community of wild yeasts and lactic acid bacteria living in flour and water. The yeasts produce the carbon dioxide that leavens the dough, while the bacteria produce lactic and acetic acids that give the bread its tang and help it keep longer. A stiff starter tends to favor sharp acetic sourness, a liquid one a milder, yogurt-like flavor. Long, cool fermentation gives enzymes time to break down starches and proteins, which improves both the flavor and the color of the crust.",
    "Earth's outer shell is broken into a dozen or so large plates that move a few centimetres per year, about as fast as fingernails grow. Where plates pull apart, as along the Mid-Atlantic Ridge, magma rises to create new oceanic crust. Where they converge, the denser plate usually sinks into the mantle in a subduction zone, producing deep trenches, volcanic arcs and the largest earthquakes on record. Transform boundaries such as the San Andreas Fault grind past each other sideways, storing strain until it releases in sudden slips.",
    "Jazz improvisation is less about inventing notes from nothing than about fluent conversation within a shared structure. Players learn the chord changes of a tune so thoroughly that they can outline the harmony with a melodic line, anticipate the next chord, or play against it on purpose for tension. Much of the vocabulary comes from transcribing solos on records and absorbing the phrasing of earlier musicians. On the bandstand the rhythm section listens and responds, so a good solo is shaped as much by the drummer and pianist as by the soloist.",
    "Vaccines work by giving the immune system a rehearsal without the risk of the real disease. When antigen-presenting cells display fragments of a pathogen, helper T cells coordinate a response in which B cells produce antibodies and cytotoxic T cells learn to recognize infected cells. After the threat clears, a small population of long-lived memory cells remains. If the real pathogen appears later, those memory cells expand quickly, which is why a vaccinated person often clears an infection before it causes serious illness.",
    "Compound interest is powerful because each period's gains start earning returns of their own. At a seven percent annual return, money roughly doubles every ten years, which is the intuition behind the rule of 72: divide 72 by the interest rate to estimate the doubling time. The same math works against borrowers, which is why credit card balances at twenty percent or more grow alarmingly fast. Time matters more than most people expect, so a modest amount invested early often ends up larger than a bigger amount invested a decade later.",
    "Octopuses are a striking case of intelligence evolving along a path completely separate from vertebrates. Roughly two thirds of their neurons sit in the arms rather than the central brain, which lets each arm taste, touch and make local decisions while the brain sets overall goals. In laboratories they open jars, escape tanks and recognize individual keepers. Their short lives, usually only a year or two, make this all the more puzzling, since they have little time to learn and no parents to learn from.",
    "Gutenberg's printing press succeeded because it combined several existing ideas into a practical system. Metal type cast from a hand mold could be produced in quantity with consistent dimensions, an oil-based ink adhered to metal far better than water-based inks, and a screw press adapted from winemaking applied even pressure across the page. Within fifty years presses had spread to hundreds of European cities. Cheaper books changed scholarship, religion and politics, because ideas could now be copied faster than authorities could suppress them.",
    "A black hole forms when so much mass is compressed into a small region that the escape velocity exceeds the speed of light. The boundary of no return is the event horizon, whose radius for a non-rotating black hole is about three kilometres for every solar mass. Stephen Hawking showed that quantum effects near the horizon should make black holes emit faint thermal radiation, so in principle they slowly evaporate. For stellar-mass black holes the process is so slow that they absorb more from the cosmic microwave background than they radiate.",
    "Coral reefs are built by tiny animals that live in partnership with photosynthetic algae called zooxanthellae. The algae live inside the coral's tissue and supply most of its energy, while the coral provides shelter and nutrients. When water stays too warm for too long, the partnership breaks down and the coral expels the algae, turning white in a process known as bleaching. Reefs can recover if temperatures return to normal quickly, but repeated marine heatwaves leave less and less time for recovery between events.",
    "Opening principles in chess exist to win the race for useful activity. Players try to control the center with pawns and pieces, develop knights and bishops quickly, and castle early so the king is safe and the rooks can connect. Named openings like the Sicilian Defense or the Queen's Gambit are bundles of tested ideas about pursuing those goals against specific replies. Memorizing long lines helps less than understanding the typical pawn structures, because the structure tells you where your pieces belong once the theory runs out.",
    "Rust's borrow checker enforces a simple rule at compile time: a value can have either many shared references or exactly one mutable reference, but not both at once. Combined with ownership, where each value has a single owner responsible for freeing it, this rules out use-after-free errors and data races without a garbage collector. Lifetimes are the compiler's way of proving that references never outlive the data they point to. The rules feel strict at first, but they push designs toward clear ownership, which makes concurrent code easier to reason about.",
    "Database indexes are usually B-trees because they fit the way storage hardware works. Each node holds many keys and is sized to match a disk or memory page, so a tree over millions of rows is typically only three or four levels deep. A lookup reads one page per level, and range scans are cheap because leaf pages are linked in key order. The trade-off is write cost: every insert or update must also modify the index, so each extra index speeds up some reads while slowing down writes and using more space.",
    "The Silk Road was never a single road but a shifting network of caravan routes linking China, Central Asia, Persia and the Mediterranean. Few merchants traveled the whole distance; goods passed through many hands, with oasis cities like Samarkand and Kashgar acting as markets and relay points. Silk moved west, while horses, glassware, silver and wool moved east. Ideas traveled along the same routes, spreading Buddhism, papermaking and new crops, and unfortunately diseases such as plague as well.",
    "Roasting turns green coffee beans, which taste grassy and astringent, into the aromatic beans we brew. As the beans heat they dry out, turn yellow and then brown through Maillard reactions and caramelization that create hundreds of flavor compounds. Around 196 degrees Celsius, steam and carbon dioxide crack the bean with an audible pop called first crack. Light roasts stop soon after that point and keep more of the origin's acidity and fruit, while dark roasts develop heavier body and bittersweet, smoky notes.",
    "Honeybee foragers tell their nestmates where to find food with a figure-eight movement called the waggle dance. The angle of the waggle run relative to vertical on the comb gives the direction of the food relative to the sun, and the duration of the run encodes distance. Karl von Frisch decoded the dance in the 1940s and later shared a Nobel Prize for the work. Bees even shift the angle over time to account for the sun's movement across the sky while they dance in the dark hive.",
    "Tides are caused mainly by the difference in the Moon's gravitational pull across the width of the Earth. The side facing the Moon is pulled slightly more than the planet's center and the far side slightly less, which stretches the oceans into two bulges. As Earth rotates through those bulges, most coasts see two high tides and two low tides a little over every day. When the Sun and Moon line up at new and full moon their effects add to produce spring tides; at the quarter moons they partly cancel, giving neap tides.",
    "The Impressionists broke with academic painting by trying to capture how light actually looked at a particular moment. Painters such as Claude Monet and Camille Pissarro worked outdoors, using quick, visible brushstrokes and unblended color to suggest shimmer and movement. Newly invented tin paint tubes made outdoor work practical, and synthetic pigments offered brighter colors than before. Critics first mocked the style as unfinished, and the name itself came from a dismissive review of Monet's Impression, Sunrise.",
    "A night of sleep is made of repeating cycles that each last about ninety minutes. Each cycle moves from light sleep into deep slow-wave sleep and then into REM sleep, when most vivid dreaming happens and the large muscles are temporarily paralyzed. Deep sleep dominates the early part of the night, while REM periods grow longer toward morning. That is one reason cutting sleep short by an hour or two disproportionately reduces REM, which appears to matter for emotional regulation and memory.",
    "GPS only works because engineers correct for both of Einstein's theories of relativity. The satellites move fast enough that special relativity makes their clocks tick about seven microseconds per day slower than clocks on the ground. They also sit higher in Earth's gravitational field, so general relativity makes them run about forty-five microseconds per day faster. Left uncorrected, the net drift of roughly thirty-eight microseconds per day would turn into position errors of around ten kilometres every day.",
    "A suspension bridge carries its deck on vertical hangers attached to main cables that drape between tall towers. The cables work purely in tension and carry the load to the towers and to massive anchorages at each end, which is why suspension bridges can span farther than any other type. The 1940 collapse of the Tacoma Narrows Bridge showed that long, flexible decks are vulnerable to wind-driven oscillation. Modern designs use stiffening trusses or aerodynamic box girders and are tested in wind tunnels before construction.",
    "Kimchi is preserved by lactic acid fermentation rather than by vinegar. Salting the cabbage draws out water and suppresses spoilage organisms, giving salt-tolerant lactic acid bacteria such as Leuconostoc and Lactobacillus an advantage. As those bacteria consume sugars they produce acids and carbon dioxide, which is why young kimchi tastes fresh and slightly fizzy and older kimchi turns strongly sour. Temperature sets the pace: a few days at room temperature can do what takes weeks in a refrigerator.",
    "The Hawaiian Islands formed as the Pacific Plate drifted northwest over a hotspot, a long-lived plume of hot material rising from deep in the mantle. Each island grew as a volcano while it sat over the plume, then was carried away and slowly eroded and subsided. That is why the Big Island is still active while Kauai, farther northwest, is older and deeply carved by rivers. The chain continues as underwater seamounts that bend sharply into the Emperor chain, recording a change in the plate's direction about fifty million years ago.",
    "Zero took a surprisingly long time to become a number in its own right. Babylonian scribes used a placeholder symbol to mark an empty position, but they did not treat it as a quantity you could add or multiply. Indian mathematicians, most notably Brahmagupta in the seventh century, wrote down rules for arithmetic with zero and negative numbers. The idea traveled through the Islamic world, where al-Khwarizmi's work spread the decimal place-value system, and reached Europe, where Fibonacci promoted it in 1202.",
    "Most marathon plans are built around gradually increasing weekly mileage and a long run that stretches toward twenty miles. The bulk of the running should be easy enough to hold a conversation, because that volume builds capillaries, mitochondria and the ability to burn fat efficiently. A smaller share of faster work, such as tempo runs and intervals, raises the pace a runner can sustain. A taper of two or three weeks before the race lets the body repair accumulated damage, so the runner arrives fresh rather than tired.",
    "Modern processors rely on caches because main memory is far slower than the CPU core. A typical design has small, very fast L1 caches for each core, a larger L2, and a shared L3 that can hold tens of megabytes. Data moves between levels in fixed-size cache lines, usually sixty-four bytes, so code that walks memory sequentially benefits from prefetching while code that jumps around stalls on misses. Two threads writing different variables on the same cache line can slow each other down badly, a problem known as false sharing.",
    "Ice cores from Antarctica are archives of climate going back roughly eight hundred thousand years. As snow compresses into ice it traps tiny bubbles of air that preserve samples of the ancient atmosphere, including its carbon dioxide and methane. The ratio of oxygen isotopes in the ice itself indicates the temperature when the snow fell. Together these records show that carbon dioxide and temperature rose and fell together through many glacial cycles, and that today's concentrations lie well outside that natural range.",
    "Children acquire their first language with remarkably little explicit teaching. Infants start by tuning in to the sounds of the languages around them, and by their first birthday they have become less sensitive to distinctions their language does not use. Vocabulary grows slowly at first and then accelerates, often around eighteen months, while grammar emerges through overgeneralizations such as saying goed instead of went. Those errors are good signs, because they show the child has extracted a rule rather than merely copying.",
    "Lighthouses solved the problem of making a single flame visible across many miles of dark water. The breakthrough came in 1822, when Augustin-Jean Fresnel designed a lens built from concentric rings of glass prisms that bent scattered light into a concentrated beam while staying far thinner than a solid lens. Each lighthouse was given a distinctive pattern of flashes, called its characteristic, so sailors could identify it on a chart. Most lights are now automated, and they remain a backup when satellite navigation fails.",
];

/// FNV-1a, 64 bit: stable across platforms and compiler versions.
pub(crate) fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Separator so ("ab","c") and ("a","bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The SplitMix64 finaliser: a stateless 64-bit mixer.
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A tiny deterministic generator (SplitMix64).
pub(crate) struct SplitMix(u64);

impl SplitMix {
    pub(crate) fn new(seed: u64) -> Self {
        SplitMix(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.0)
    }

    /// Uniform-ish in `lo..=hi`.
    pub(crate) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.next_u64() % (hi - lo + 1)
    }
}

/// Byte `i` of the deterministic stream for `seed`: independent of how the stream is chunked.
pub(crate) fn fill_stream_bytes(seed: u64, offset: u64, out: &mut [u8]) {
    let mut pos = offset;
    let mut i = 0;
    while i < out.len() {
        let block = pos / 8;
        let word = mix64(seed ^ block.wrapping_mul(0x9e37_79b9_7f4a_7c15)).to_le_bytes();
        let start = (pos % 8) as usize;
        let take = (8 - start).min(out.len() - i);
        out[i..i + take].copy_from_slice(&word[start..start + take]);
        i += take;
        pos += take as u64;
    }
}

/// An id body of `len` characters from `[0-9A-Za-z]`.
pub(crate) fn alnum_id(seed: u64, len: usize) -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut rng = SplitMix::new(seed);
    (0..len)
        .map(|_| char::from(ALPHABET[(rng.next_u64() % ALPHABET.len() as u64) as usize]))
        .collect()
}

/// `len` lowercase hex characters.
pub(crate) fn hex_id(seed: u64, len: usize) -> String {
    let mut rng = SplitMix::new(seed);
    let mut s = String::with_capacity(len + 16);
    while s.len() < len {
        s.push_str(&format!("{:016x}", rng.next_u64()));
    }
    s.truncate(len);
    s
}

/// A plausible but deterministic unix timestamp (somewhere in 2025).
pub(crate) fn created_at(seed: u64) -> u64 {
    1_735_689_600 + mix64(seed ^ 0x00c0_ffee) % 31_536_000
}

/// Rough token estimate: about four characters per token.
pub(crate) fn estimate_tokens(s: &str) -> u64 {
    let chars = s.chars().count() as u64;
    chars.div_ceil(4)
}

/// Words that pick a paragraph by topic, index-aligned with [`PARAGRAPHS`]. A key matches a
/// word exactly or with a plural `s`, as a prefix when it has six letters or more, and as a
/// phrase when it has a space.
const TOPICS: &[&[&str]] = &[
    &["photosynth", "chlorophyll", "plant"],
    &["tcp", "congestion", "networking", "packet"],
    &["aqueduct", "roman", "rome"],
    &["sourdough", "bread", "yeast"],
    &["tectonic", "earthquake", "continent", "continental"],
    &["jazz", "improvis"],
    &["vaccin", "immune", "immunity"],
    &["compound interest", "investing", "investment", "savings"],
    &["octopus", "cephalopod"],
    &["printing", "gutenberg"],
    &["black hole", "hawking"],
    &["coral", "reef"],
    &["chess"],
    &["rust", "borrow"],
    &["index", "indexes", "b-tree", "btree", "database"],
    &["silk road", "caravan"],
    &["coffee", "espresso", "roast", "roasting"],
    &["bee", "honeybee", "hive"],
    &["tide", "tidal", "moon"],
    &["impressionis", "monet", "painting"],
    &["sleep", "sleeping", "dream"],
    &["gps", "relativity"],
    &["bridge", "suspension"],
    &["kimchi", "ferment"],
    &["hawaii", "volcano", "volcanoes", "hotspot"],
    &["zero"],
    &["marathon", "running"],
    &["cpu", "cache", "processor"],
    &["ice core", "antarctic", "climate"],
    &["language", "toddler", "children"],
    &["lighthouse", "fresnel"],
];

/// What a swapped-in model says instead: terse, list-shaped marketing copy whatever was asked,
/// so both the style and the topic of the answers drift.
const SWAPPED: &[&str] = &[
    "Great question! Here are the key takeaways:\n- Unlock synergies across your whole workflow.\n- Upgrade to the Pro plan for priority access.\n- Our platform scales with your ambitions.\nWould you like a personalised demo?",
    "Sure thing! Quick summary:\n- Boost productivity with one-click automation.\n- Seamless integrations with the tools you love.\n- Start your free trial today and save 20%.\nLet me know if you want pricing details!",
    "Absolutely! Top 3 tips:\n1. Streamline onboarding with smart templates.\n2. Track every KPI in one dashboard.\n3. Invite your team and collaborate in real time.\nReady to take the next step?",
    "Happy to help! In short:\n- Cloud-native, AI-powered, enterprise-ready.\n- Trusted by thousands of growing teams.\n- Book a call with our sales experts now.\nAnything else I can help you with today?",
];

/// The answer for a prompt under `faults` that shape text (loop, error text, model swap).
pub(crate) fn answer_with(prompt: &str, faults: &super::faults::Faults) -> String {
    if faults.error_text {
        return format!(
            "Error: The model is currently overloaded with other requests. Please retry after a \
             short wait. (request id req_{:016x}, code 529 overloaded_error)",
            fnv1a(&[prompt.as_bytes()])
        );
    }
    if faults.swap {
        return SWAPPED[(fnv1a(&[prompt.as_bytes()]) % SWAPPED.len() as u64) as usize].to_string();
    }
    let text = answer_for(prompt);
    if faults.looping {
        let first = text.split_inclusive(". ").next().unwrap_or(&text).trim();
        return std::iter::repeat_n(first, 12).collect::<Vec<_>>().join(" ");
    }
    text
}

/// The answer for a prompt: the paragraph on a topic it names, else one chosen by hash.
pub(crate) fn answer_for(prompt: &str) -> String {
    let lower = prompt.to_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| !c.is_alphanumeric() && c != '-')
        .collect();
    let names = |key: &str| {
        if key.contains(' ') {
            return lower.contains(key);
        }
        words.iter().any(|w| {
            *w == key || w.strip_suffix('s') == Some(key) || (key.len() >= 6 && w.starts_with(key))
        })
    };
    if let Some(i) = TOPICS.iter().position(|keys| keys.iter().any(|k| names(k))) {
        if let Some(p) = PARAGRAPHS.get(i) {
            return (*p).to_string();
        }
    }
    let h = fnv1a(&[prompt.as_bytes()]);
    PARAGRAPHS[(h % PARAGRAPHS.len() as u64) as usize].to_string()
}

/// Cuts `text` at a word boundary so its estimate fits `max_tokens`. Returns whether it was cut.
pub(crate) fn truncate_to_tokens(text: &str, max_tokens: Option<u64>) -> (String, bool) {
    let Some(max) = max_tokens else {
        return (text.to_string(), false);
    };
    if estimate_tokens(text) <= max {
        return (text.to_string(), false);
    }
    let mut out = String::new();
    for piece in split_words(text) {
        let candidate_len = out.chars().count() + piece.trim_end().chars().count();
        if (candidate_len as u64).div_ceil(4) > max {
            break;
        }
        out.push_str(piece);
    }
    (out.trim_end().to_string(), true)
}

/// Splits text into words with their trailing whitespace attached; concatenation gives it back.
fn split_words(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut in_space = false;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() {
            in_space = true;
        } else if in_space {
            out.push(&text[start..i]);
            start = i;
            in_space = false;
        }
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

/// Stream deltas of one to four words each; concatenated they equal `text`.
pub(crate) fn chunk_words(text: &str, seed: u64) -> Vec<String> {
    let words = split_words(text);
    let mut rng = SplitMix::new(seed);
    let mut out = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let n = rng.range(1, 4) as usize;
        let end = (i + n).min(words.len());
        out.push(words[i..end].concat());
        i = end;
    }
    out
}

/// Fragments of 4 to 12 characters (on char boundaries), as tool-call arguments are streamed.
pub(crate) fn fragments(s: &str, seed: u64) -> Vec<String> {
    let chars: Vec<char> = s.chars().collect();
    let mut rng = SplitMix::new(seed);
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let n = rng.range(4, 12) as usize;
        let end = (i + n).min(chars.len());
        out.push(chars[i..end].iter().collect());
        i = end;
    }
    out
}

/// Text of a message `content`: a string, or an array of parts with `text` fields.
pub(crate) fn content_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(parts) => {
            let texts: Vec<&str> = parts
                .iter()
                .filter_map(|p| match p {
                    Value::String(s) => Some(s.as_str()),
                    _ => p.get("text").and_then(Value::as_str),
                })
                .collect();
            texts.join("\n")
        }
        _ => String::new(),
    }
}

/// The last `role: user` message's text in a `messages`/`input` array.
pub(crate) fn last_user_text(messages: Option<&Value>) -> String {
    let Some(Value::Array(items)) = messages else {
        return String::new();
    };
    items
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .or_else(|| items.last())
        .map(|m| content_text(m.get("content").unwrap_or(&Value::Null)))
        .unwrap_or_default()
}

/// Estimated prompt tokens of a `messages` array (a few tokens of overhead per message).
pub(crate) fn messages_tokens(messages: Option<&Value>) -> u64 {
    let Some(Value::Array(items)) = messages else {
        return 0;
    };
    items
        .iter()
        .map(|m| 4 + estimate_tokens(&content_text(m.get("content").unwrap_or(&Value::Null))))
        .sum::<u64>()
        + 3
}

/// Whether the request should be answered with a weather tool call.
pub(crate) fn wants_weather_tool(req: &Value, prompt: &str) -> bool {
    let has_tools = matches!(req.get("tools"), Some(Value::Array(t)) if !t.is_empty());
    has_tools && prompt.to_lowercase().contains("weather")
}

/// The weather tool's name: a request tool whose name mentions weather, else `get_weather`.
pub(crate) fn weather_tool_name(req: &Value) -> String {
    if let Some(Value::Array(tools)) = req.get("tools") {
        for t in tools {
            let name = t
                .get("name")
                .or_else(|| t.get("function").and_then(|f| f.get("name")))
                .and_then(Value::as_str);
            if let Some(name) = name {
                if name.to_lowercase().contains("weather") {
                    return name.to_string();
                }
            }
        }
    }
    "get_weather".to_string()
}

/// The place a weather prompt asks about: capitalised words after "in", else San Francisco.
pub(crate) fn weather_location(prompt: &str) -> String {
    let words: Vec<&str> = prompt.split_whitespace().collect();
    for (i, w) in words.iter().enumerate() {
        if !w.eq_ignore_ascii_case("in") && !w.eq_ignore_ascii_case("for") {
            continue;
        }
        let place: Vec<&str> = words[i + 1..]
            .iter()
            .take_while(|w| w.chars().next().is_some_and(char::is_uppercase))
            .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()))
            .filter(|w| !w.is_empty())
            .collect();
        if !place.is_empty() {
            return place.join(" ");
        }
    }
    "San Francisco".to_string()
}

/// JSON arguments of the weather call.
pub(crate) fn weather_args(prompt: &str) -> Value {
    let unit = if prompt.to_lowercase().contains("fahrenheit") {
        "fahrenheit"
    } else {
        "celsius"
    };
    serde_json::json!({"location": weather_location(prompt), "unit": unit})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paragraphs_fit_a_200_token_budget() {
        assert!(PARAGRAPHS.len() >= 30);
        for p in PARAGRAPHS {
            assert!(
                estimate_tokens(p) <= 200,
                "{} tokens: {p}",
                estimate_tokens(p)
            );
        }
    }

    #[test]
    fn topics_pick_their_paragraph() {
        assert_eq!(TOPICS.len(), PARAGRAPHS.len());
        assert!(answer_for("Tell me about tides.").starts_with("Tides are"));
        assert!(answer_for("How do honeybees communicate?").starts_with("Honeybee"));
        assert!(answer_for("Explain black holes").starts_with("A black hole"));
        assert_eq!(
            answer_for("Why is the sky blue?"),
            answer_for("Why is the sky blue?")
        );
    }

    #[test]
    fn chunks_and_fragments_reassemble() {
        let text = answer_for("Why is the sky blue?");
        assert_eq!(chunk_words(&text, 9).concat(), text);
        let s = "{\"location\":\"Zürich\",\"unit\":\"celsius\"}";
        assert_eq!(fragments(s, 3).concat(), s);
    }

    #[test]
    fn truncation_respects_budget() {
        let text = answer_for("x");
        let (cut, was) = truncate_to_tokens(&text, Some(10));
        assert!(was && estimate_tokens(&cut) <= 10 && !cut.is_empty());
        assert_eq!(truncate_to_tokens(&text, Some(1000)), (text.clone(), false));
    }

    #[test]
    fn stream_bytes_are_chunking_independent() {
        let mut whole = vec![0u8; 100];
        fill_stream_bytes(5, 0, &mut whole);
        let mut a = vec![0u8; 37];
        let mut b = vec![0u8; 63];
        fill_stream_bytes(5, 0, &mut a);
        fill_stream_bytes(5, 37, &mut b);
        a.extend(b);
        assert_eq!(a, whole);
    }

    #[test]
    fn weather_location_is_found() {
        assert_eq!(
            weather_location("What's the weather in New York City today?"),
            "New York City"
        );
        assert_eq!(weather_location("weather please"), "San Francisco");
    }
}
