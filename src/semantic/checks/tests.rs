//! Tests of the cheap checks on realistic answers, on both sides of each default threshold.

use super::*;
use crate::record::{Api, ExchangeRecord, Outcome, ToolCall};

// ---------------------------------------------------------------------------------------------
// Realistic answers

/// A normal prose answer of about 256 tokens.
const PARAGRAPH: &str = include_str!("../../../tests/fixtures/answer_256.txt");

const MARKDOWN_LIST: &str = "Here's how to set up a Python virtual environment:\n\n\
## Steps\n\n\
1. **Install Python 3.11 or newer.** Check your version with `python3 --version`.\n\
2. **Create the environment** in your project folder:\n   ```bash\n   python3 -m venv .venv\n   ```\n\
3. **Activate it:**\n   - On macOS and Linux: `source .venv/bin/activate`\n   - On Windows: `.venv\\Scripts\\activate`\n\
4. **Install your dependencies** with `pip install -r requirements.txt`.\n\
5. **Deactivate** when you're done by running `deactivate`.\n\n\
## Tips\n\n\
- Add `.venv/` to your `.gitignore` so the environment is not committed.\n\
- Use `pip freeze > requirements.txt` to record exact versions.\n\
- If you work on several projects, consider a tool such as **pyenv** to manage Python versions.\n\
- Keep one environment per project; sharing them leads to version conflicts.\n\n\
That's it! Your project now has an isolated set of packages.";

const PYTHON_ANSWER: &str = "You can use a small class with a dictionary to cache results:\n\n\
```python\nimport time\nfrom typing import Any, Callable, Dict, Tuple\n\n\n\
class TTLCache:\n    \"\"\"A cache whose entries expire after `ttl` seconds.\"\"\"\n\n\
    def __init__(self, ttl: float = 60.0) -> None:\n        self.ttl = ttl\n        self._data: Dict[Any, Tuple[float, Any]] = {}\n\n\
    def get(self, key: Any, default: Any = None) -> Any:\n        entry = self._data.get(key)\n        if entry is None:\n            return default\n\
        stored_at, value = entry\n        if time.monotonic() - stored_at > self.ttl:\n            del self._data[key]\n            return default\n        return value\n\n\
    def set(self, key: Any, value: Any) -> None:\n        self._data[key] = (time.monotonic(), value)\n\n\
    def cached(self, func: Callable[..., Any]) -> Callable[..., Any]:\n        def wrapper(*args: Any) -> Any:\n            hit = self.get(args)\n            if hit is not None:\n                return hit\n\
            result = func(*args)\n            self.set(args, result)\n            return result\n        return wrapper\n\n\n\
cache = TTLCache(ttl=30)\n\n\n@cache.cached\ndef slow_square(x: int) -> int:\n    time.sleep(1)\n    return x * x\n\n\n\
if __name__ == \"__main__\":\n    print(slow_square(4))  # takes a second\n    print(slow_square(4))  # instant\n```\n\n\
The first call computes the value and stores it with a timestamp; later calls within 30 seconds return the \
stored value. Note that `None` results are not cached by this version.";

/// Repetitive but legitimate code: unit tests.
const TEST_CODE: &str = "```python\nimport unittest\n\nfrom calc import add, sub, mul, div\n\n\n\
class TestCalc(unittest.TestCase):\n    def test_add(self):\n        self.assertEqual(add(2, 3), 5)\n        self.assertEqual(add(-1, 1), 0)\n\n\
    def test_sub(self):\n        self.assertEqual(sub(5, 3), 2)\n        self.assertEqual(sub(0, 4), -4)\n\n\
    def test_mul(self):\n        self.assertEqual(mul(3, 4), 12)\n        self.assertEqual(mul(-2, 3), -6)\n\n\
    def test_div(self):\n        self.assertEqual(div(8, 2), 4)\n        with self.assertRaises(ZeroDivisionError):\n            div(1, 0)\n\n\n\
if __name__ == \"__main__\":\n    unittest.main()\n```";

const CHINESE: &str = "光合作用是绿色植物、藻类和某些细菌利用光能，把二氧化碳和水转化为有机物并释放氧气的过程。\
它主要在叶绿体中进行，分为两个阶段：\n\n\
1. **光反应**：发生在类囊体膜上。叶绿素吸收光能，水分子被分解，释放出氧气，同时产生ATP和NADPH。\n\
2. **暗反应（卡尔文循环）**：发生在叶绿体基质中。植物利用光反应产生的ATP和NADPH，把二氧化碳固定下来，最终合成葡萄糖。\n\n\
光合作用的总反应式可以写成：6CO₂ + 6H₂O → C₆H₁₂O₆ + 6O₂。\
它是地球上几乎所有食物链的基础，也是大气中氧气的主要来源。光照强度、温度和二氧化碳浓度都会影响光合作用的速率，\
所以温室种植时常常会补充二氧化碳来提高产量。";

const RUSSIAN: &str = "Фотосинтез — это процесс, при котором зелёные растения, водоросли и некоторые бактерии \
превращают энергию света в химическую энергию. Он происходит в хлоропластах клеток листа, где пигмент \
хлорофилл поглощает красный и синий свет.\n\n\
Процесс состоит из двух стадий. В световой фазе молекулы воды расщепляются, выделяется кислород и \
образуются АТФ и НАДФН. Во второй стадии, цикле Кальвина, фермент рубиско фиксирует углекислый газ и \
из него синтезируется глюкоза.\n\n\
Суммарное уравнение: 6CO2 + 6H2O → C6H12O6 + 6O2. Фотосинтез лежит в основе почти всех пищевых цепей \
на Земле и обеспечивает атмосферу кислородом. Для работы с данными можно использовать Python и библиотеку \
NumPy.";

const ARABIC: &str = "التمثيل الضوئي هو العملية التي تحول فيها النباتات الخضراء والطحالب بعض البكتيريا \
الطاقة الضوئية إلى طاقة كيميائية. تحدث هذه العملية في البلاستيدات الخضراء، حيث يمتص الكلوروفيل الضوء \
الأحمر والأزرق. تنقسم العملية إلى مرحلتين: التفاعلات الضوئية ودورة كالفن. في النهاية ينتج النبات \
الجلوكوز ويطلق الأكسجين في الهواء، ولذلك يعد التمثيل الضوئي أساس معظم السلاسل الغذائية على الأرض.";

const JAPANESE: &str = "Pythonでリストを並べ替えるには、`sorted()`関数か`list.sort()`メソッドを使います。\
`sorted()`は新しいリストを返し、元のリストは変更しません。一方、`sort()`はリストをその場で並べ替えます。\
降順にしたい場合は`reverse=True`を指定してください。キーを指定すれば、辞書のリストなども並べ替えられます。";

const KOREAN: &str =
    "Python에서 리스트를 정렬하려면 sorted() 함수나 list.sort() 메서드를 사용합니다. \
sorted()는 새 리스트를 반환하고, sort()는 원래 리스트를 바꿉니다. API를 호출할 때는 JSON으로 \
응답을 받는 경우가 많습니다.";

const FRENCH: &str = "Pour répondre à votre question : la réunion a été déplacée à jeudi. \
Le directeur a dit : « Nous avons déjà validé le budget » et il a ajouté « c’est décidé ». \
Vous trouverez le compte rendu complet — avec les décisions prises — dans le dossier partagé. \
À bientôt ! L’équipe a également précisé que l’été prochain…";

const GERMAN: &str = "Die Rechtsschutzversicherung übernimmt die Kosten, wenn Sie vor Gericht gehen müssen. \
Für Angstschweiß gibt es keinen Grund: Die Deutschschweizer Gesellschaft hat die Regeln vereinfacht, \
und die Donaudampfschifffahrtsgesellschaft ist nur ein berühmtes Beispiel für lange Wörter.";

const JSON_OUTPUT: &str = r#"{
  "customers": [
    {"id": 1, "name": "Alice Martin", "email": "alice@example.com", "plan": "pro", "active": true},
    {"id": 2, "name": "Bob Chen", "email": "bob.chen@example.org", "plan": "free", "active": false},
    {"id": 3, "name": "Carla Diaz", "email": "carla@example.net", "plan": "team", "active": true}
  ],
  "total": 3,
  "next_cursor": null
}"#;

const MATH: &str = "We want $\\sum_{i=1}^{n} i^2$. By induction, \
$$\\sum_{i=1}^{n} i^2 = \\frac{n(n+1)(2n+1)}{6}.$$ \
For $n = 1$ both sides equal $1$. Assume it holds for $n$; then \
$\\frac{n(n+1)(2n+1)}{6} + (n+1)^2 = \\frac{(n+1)(n+2)(2n+3)}{6}$, which completes the proof. \
The error term is $O(n^2)$ and $\\lim_{n\\to\\infty} \\frac{S_n}{n^3} = \\frac{1}{3}$.";

const URLS: &str =
    "You can find the docs at https://docs.python.org/3/library/asyncio.html and the \
source at https://github.com/python/cpython/tree/main/Lib/asyncio. For HTTPS certificates, see \
https://letsencrypt.org/docs/ (use https, not plain http). The nginx config lives in \
/etc/nginx/sites-available/default and logs go to /var/log/nginx/error.log.";

const TABLE: &str = "| Model | Context | Input $/1M | Output $/1M |\n\
|-------|---------|-----------:|------------:|\n\
| gpt-4o | 128k | 2.50 | 10.00 |\n\
| gpt-4o-mini | 128k | 0.15 | 0.60 |\n\
| claude-sonnet-4-5 | 200k | 3.00 | 15.00 |\n\
| claude-haiku-4-5 | 200k | 1.00 | 5.00 |\n\n\
Prices change often; check the providers' pricing pages before you commit.";

const EMOJI: &str = "🎉 Congratulations on your new job! 🎉\n\n\
Here are a few tips for your first week:\n\
- 👋 Introduce yourself to the team early.\n\
- 📝 Take notes in every meeting — you'll forget names otherwise!\n\
- ☕ Grab coffee with your manager to align on expectations.\n\
- 🚀 Ship something small by Friday.\n\n\
You've got this! 💪😊 👨‍👩‍👧 🇫🇷 ✅";

/// A long answer whose last paragraph loops.
fn looping_answer() -> String {
    let mut s = String::from(PARAGRAPH);
    s.push_str("\n\n");
    let para = "In summary, photosynthesis converts light energy into chemical energy that \
                sustains nearly all life on Earth, and it releases the oxygen we breathe. ";
    for _ in 0..12 {
        s.push_str(para);
    }
    s
}

const REFUSAL_OPENAI: &str = "I'm sorry, but I can't help with that.";
const REFUSAL_ASSIST: &str = "I can't assist with that request.";
const REFUSAL_LONG: &str = "I'm sorry, but I can't help with creating malware or any software designed to \
damage systems or steal data. Writing that kind of code is illegal in most places and causes real harm to \
people and organisations.\n\nIf you're interested in security, I'd be glad to help you learn about \
defensive techniques, set up a home lab for practising ethical hacking, or prepare for a certification \
such as the OSCP.";
const REFUSAL_CLAUDE: &str = "I don't feel comfortable writing a fake news article about a real politician, \
since it could spread misinformation and damage someone's reputation. I'd be happy to help you write a \
clearly labelled satirical piece about a fictional politician instead, or to explain how to spot fake news.";
const REFUSAL_AS_AI: &str =
    "As an AI language model, I cannot provide medical diagnoses. Please consult a \
qualified healthcare professional about your symptoms.";
const REFUSAL_DECLINE: &str = "I must decline this request, as it goes against my guidelines.";
const REFUSAL_CURLY: &str = "I’m sorry, but I can’t provide instructions for that.";
const REFUSAL_POLICY: &str = "This request violates our content policy, so no image was generated.";
const REFUSAL_UNABLE: &str = "I'm unable to comply with that request.";
const REFUSAL_WONT: &str =
    "Unfortunately, I won't be able to help with writing that essay for your exam.";
const REFUSAL_SPANISH: &str = "Lo siento, pero no puedo ayudarte con eso.";
const REFUSAL_FRENCH: &str = "Désolé, mais je ne peux pas vous aider avec cette demande.";
const REFUSAL_GERMAN: &str = "Es tut mir leid, aber ich kann Ihnen dabei nicht helfen.";
const REFUSAL_PORTUGUESE: &str = "Desculpe, mas não posso ajudar com isso.";
const REFUSAL_CHINESE: &str = "很抱歉，我无法协助处理这个请求。";
const REFUSAL_JAPANESE: &str = "申し訳ありませんが、そのご依頼にはお応えできません。";

/// A helpful answer that hedges once.
const HEDGE: &str = "Based on the symptoms you describe, the most likely cause is a failing power supply \
rather than the motherboard. Power supplies degrade over time, and a unit that can no longer deliver stable \
voltage under load will cause exactly the random shutdowns you are seeing when you start a game.\n\n\
Here is how to narrow it down:\n\n\
1. Check the event log for Kernel-Power 41 errors around the time of each shutdown.\n\
2. Borrow a known-good power supply of at least the same wattage and swap it in.\n\
3. Run a stress test such as OCCT for 30 minutes with the new unit.\n\n\
I can't guarantee this is the cause without testing the hardware myself, but in my experience it \
accounts for most cases like yours. If the shutdowns continue with a different power supply, the next \
suspects are overheating of the CPU voltage regulators and a faulty RAM module, which you can test with \
MemTest86 overnight.";

/// An apology for a mistake, not a refusal.
const APOLOGY: &str = "I'm sorry for the confusion in my previous answer! You're right: `list.sort()` \
returns `None` and sorts in place. Here's the corrected version:\n\n```python\nnumbers = [3, 1, 2]\n\
numbers.sort()\nprint(numbers)  # [1, 2, 3]\n```";

/// An answer suggesting what to say, with the refusal in quotes.
const QUOTED_REFUSAL: &str =
    "To turn down the invitation politely, you could write: \"I'm sorry, but I can't \
make it on Saturday. Thank you so much for thinking of me, and I hope we can catch up soon.\" \
Keep it short and warm; you don't owe a detailed explanation.";

const TRACEBACK: &str = "Traceback (most recent call last):\n  File \"/app/server.py\", line 88, in handle\n    \
result = pipeline.run(payload)\n  File \"/app/pipeline.py\", line 41, in run\n    \
return self.model.generate(**kwargs)\n  File \"/usr/lib/python3.11/site-packages/torch/utils/_contextlib.py\", \
line 115, in decorate_context\n    return func(*args, **kwargs)\n\
torch.cuda.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 23.69 GiB total capacity)";

const JAVA_TRACE: &str =
    "Exception in thread \"main\" java.lang.NullPointerException: Cannot invoke \
\"String.length()\" because \"name\" is null\n\
\tat com.example.app.UserService.validate(UserService.java:42)\n\
\tat com.example.app.UserController.create(UserController.java:27)\n\
\tat java.base/java.lang.Thread.run(Thread.java:833)";

const JS_TRACE: &str = "TypeError: Cannot read properties of undefined (reading 'map')\n\
    at renderList (/app/src/components/List.js:12:23)\n\
    at Object.<anonymous> (/app/src/index.js:5:1)\n\
    at Module._compile (node:internal/modules/cjs/loader:1105:14)";

const RUST_PANIC: &str =
    "thread 'main' panicked at src/main.rs:14:22:\ncalled `Option::unwrap()` on a \
`None` value\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace";

const GO_PANIC: &str = "panic: runtime error: index out of range [5] with length 3\n\n\
goroutine 1 [running]:\nmain.main()\n\t/app/main.go:12 +0x1d\nexit status 2";

const HTML_502: &str = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n\
<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx/1.25.3</center>\r\n</body>\r\n</html>";

const JSON_ERROR: &str = r#"{"error": {"message": "The server had an error while processing your request. Sorry about that!", "type": "server_error", "param": null, "code": null}}"#;

const ENVOY: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: connection failure";

const PROXY_MESSAGES: &[&str] = &[
    "Rate limit exceeded. Please try again in 20s.",
    "Error: The model is overloaded. Please try again later.",
    "This model's maximum context length is 8192 tokens. However, your messages resulted in 9021 tokens. (context_length_exceeded)",
    "RuntimeError: CUDA out of memory. Tried to allocate 1.50 GiB",
    "Internal Server Error",
    "no healthy upstream",
    "Service Unavailable",
];

const KEYERROR_PROMPT: &str =
    "why does my code raise KeyError? config = load(); print(config['timeout'])";

/// An answer explaining an error the user asked about, quoting it.
const KEYERROR_ANSWER: &str = "A `KeyError` means you asked a dictionary for a key it does not contain. \
Your traceback will look like this:\n\n```\nTraceback (most recent call last):\n  File \"app.py\", line 2, in \
<module>\n    print(config['timeout'])\nKeyError: 'timeout'\n```\n\n\
So `config` has no `'timeout'` entry — probably because your YAML file spells it `time_out`, or because \
`load()` returned the defaults section only. You can fix it in one of three ways:\n\n\
1. Use a default: `config.get('timeout', 30)`.\n\
2. Check first: `if 'timeout' in config: ...`.\n\
3. Fix the file so the key exists, and validate the config when you load it.\n\n\
The second approach is clearest when a missing key should be handled differently from a present one.";

/// An answer about rate limits that mentions the error message in passing.
const RATE_LIMIT_ADVICE: &str = "When you send too many requests in a short time, the API answers with \
HTTP 429 and a message like \"Rate limit exceeded\". The usual fix is exponential backoff: wait one second, \
retry, then double the wait after each failure up to a cap of about a minute. Most SDKs, including the \
official OpenAI Python client, already retry 429s twice by default, so first check whether you are \
creating a new client for every request. Batching several prompts into fewer, larger requests and caching \
answers to repeated questions also keep you well under the limit.";

const MOJIBAKE: &str =
    "The cafÃ© on the corner serves the best crÃ¨me brÃ»lÃ©e in town. Donâ€™t miss \
the Sunday brunch â€” itâ€™s worth the wait.";

const MOJIBAKE_CJK: &str = "ç”¨æˆ·åç§°ä¸èƒ½ä¸ºç©º";

/// What a broken sampler or quantisation produces.
const TOKEN_SOUP: &str = "The capital of France is Parisxkcdq vbnmrt zxcvbn sdfghj qwrtp plkmn \
#@!$ ~^&% lkjhgf mnbvcx trwq prstlk ,.;' qzxv bcdfgh jklmn wxyzq frtgh dfgtrhnmbvcx ok";

const ZALGO: &str = "H̷̢̛e̸̡͝l̴̨̛l̵̢͘o̶̧͞ w̷̢͘o̸̡͝r̴̨̛l̵̢͘ḑ̶͞";

const SPECIAL_TOKENS: &str =
    "The answer is 42.<|im_end|>\n<|im_start|>assistant\nThe answer is 42.<|endoftext|>";

const MIXED_SCRIPTS: &str =
    "Thе рrісе оf thе itеm is $40 аnd it shiрs tоmоrrоw frоm оur wаrеhоusе.";

const LONG_JSON_PREFIX: &str = "[\n";

/// A JSON array of similar records (structured output): repetitive keys, varied values.
fn json_records() -> String {
    let names = [
        "Alice", "Bob", "Carla", "Dmitri", "Emeka", "Fatima", "Goran", "Hana", "Ivan", "Julia",
        "Kenji", "Lena", "Mateo", "Nadia", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Tariq",
    ];
    let cities = [
        "Lisbon", "Osaka", "Lagos", "Denver", "Tallinn", "Recife", "Pune",
    ];
    let mut s = String::from(LONG_JSON_PREFIX);
    for (i, n) in names.iter().enumerate() {
        s.push_str(&format!(
            "  {{\"id\": {}, \"name\": \"{} {}\", \"city\": \"{}\", \"score\": {}.{}, \"active\": {}}},\n",
            1000 + i * 37,
            n,
            (b'A' + (i as u8 * 7) % 26) as char,
            cities[i % cities.len()],
            40 + (i * 13) % 60,
            (i * 7) % 10,
            i % 3 != 0
        ));
    }
    s.push(']');
    s
}

/// Boilerplate code with many similar lines.
const ARGPARSE: &str = "```python\nimport argparse\n\n\ndef parse_args():\n    parser = argparse.ArgumentParser(description=\"Train a model\")\n\
    parser.add_argument(\"--data\", type=str, required=True, help=\"path to the training data\")\n\
    parser.add_argument(\"--epochs\", type=int, default=10, help=\"number of epochs\")\n\
    parser.add_argument(\"--batch-size\", type=int, default=32, help=\"examples per batch\")\n\
    parser.add_argument(\"--lr\", type=float, default=3e-4, help=\"learning rate\")\n\
    parser.add_argument(\"--weight-decay\", type=float, default=0.01, help=\"AdamW weight decay\")\n\
    parser.add_argument(\"--warmup\", type=int, default=500, help=\"warm-up steps\")\n\
    parser.add_argument(\"--seed\", type=int, default=42, help=\"random seed\")\n\
    parser.add_argument(\"--output\", type=str, default=\"runs/\", help=\"where to write checkpoints\")\n\
    parser.add_argument(\"--fp16\", action=\"store_true\", help=\"use mixed precision\")\n\
    return parser.parse_args()\n```";

/// A long helpful answer with a refusal of one part buried in the middle.
fn buried_refusal() -> String {
    let mut s = String::from(HEDGE);
    s.push_str("\n\n");
    s.push_str(PARAGRAPH);
    s.push_str("\n\nI'm sorry, but I can't help with bypassing the manufacturer's warranty seal. ");
    s.push_str(PARAGRAPH_2);
    s
}

/// Another normal paragraph.
const PARAGRAPH_2: &str = "If you do decide to replace the power supply yourself, switch the computer off, \
unplug it and press the power button for a few seconds to drain any remaining charge. Note which cables \
go where before you remove anything: the 24-pin motherboard connector, the 8-pin CPU connector, the PCIe \
cables for the graphics card and the SATA cables for your drives. A modular unit makes the job easier, \
because you only connect the cables you need. Once the new unit is in, route the cables so they do not \
block the fans, close the case and run the same stress test again to confirm the problem is gone.";

const BOX_TABLE: &str = "┌──────────┬──────────┬──────────┐\n│ Region   │ Requests │ Errors   │\n\
├──────────┼──────────┼──────────┤\n│ eu-west  │   12,400 │       31 │\n│ us-east  │   48,210 │      102 │\n\
│ ap-south │    7,925 │       12 │\n└──────────┴──────────┴──────────┘";

// ---------------------------------------------------------------------------------------------
// Helpers

fn answer(text: &str) -> ExchangeRecord {
    ExchangeRecord {
        id: "ex-1".into(),
        api: Api::ChatCompletions,
        status: 200,
        outcome: Outcome::Complete,
        response: text.to_string(),
        finish_reasons: vec!["stop".into()],
        ..ExchangeRecord::default()
    }
}

fn score_of(rec: &ExchangeRecord, flag: Flag) -> CheckScore {
    let all = run_checks(rec, &CheckConfig::default());
    match all.into_iter().find(|s| s.flag == flag) {
        Some(s) => s,
        None => panic!("no {flag} score"),
    }
}

/// Answers that must fire nothing.
fn normal_texts() -> Vec<(&'static str, String)> {
    vec![
        ("paragraph", PARAGRAPH.to_string()),
        ("markdown list", MARKDOWN_LIST.to_string()),
        ("python", PYTHON_ANSWER.to_string()),
        ("test code", TEST_CODE.to_string()),
        ("argparse", ARGPARSE.to_string()),
        ("chinese", CHINESE.to_string()),
        ("russian", RUSSIAN.to_string()),
        ("arabic", ARABIC.to_string()),
        ("japanese", JAPANESE.to_string()),
        ("korean", KOREAN.to_string()),
        ("french", FRENCH.to_string()),
        ("german", GERMAN.to_string()),
        ("json", JSON_OUTPUT.to_string()),
        ("json records", json_records()),
        ("math", MATH.to_string()),
        ("urls", URLS.to_string()),
        ("table", TABLE.to_string()),
        ("emoji", EMOJI.to_string()),
        ("hedge", HEDGE.to_string()),
        ("apology", APOLOGY.to_string()),
        ("quoted refusal", QUOTED_REFUSAL.to_string()),
        ("rate limit advice", RATE_LIMIT_ADVICE.to_string()),
        ("buried refusal", buried_refusal()),
        ("short", "Paris.".to_string()),
        ("yes", "Yes".to_string()),
        ("number", "42".to_string()),
        ("emoji only", "👍".to_string()),
    ]
}

fn fired(rec: &ExchangeRecord) -> Vec<&'static str> {
    run_checks(rec, &CheckConfig::default())
        .into_iter()
        .filter(CheckScore::fired)
        .map(|s| s.flag.as_str())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// All checks

#[test]
fn normal_answers_fire_nothing() {
    for (name, text) in normal_texts() {
        let rec = answer(&text);
        let scores = run_checks(&rec, &CheckConfig::default());
        for s in &scores {
            assert!(
                !s.fired(),
                "{name}: {} fired ({:.3} >= {})",
                s.flag,
                s.score,
                s.threshold
            );
            assert!(
                (0.0..=1.0).contains(&s.score),
                "{name}: {} = {}",
                s.flag,
                s.score
            );
        }
    }
}

#[test]
fn run_checks_returns_the_six_cheap_checks_in_order() {
    let cfg = CheckConfig {
        refusal: 0.7,
        ..CheckConfig::default()
    };
    let scores = run_checks(&answer(PARAGRAPH), &cfg);
    let flags: Vec<Flag> = scores.iter().map(|s| s.flag).collect();
    assert_eq!(
        flags,
        vec![
            Flag::Blank,
            Flag::Refusal,
            Flag::Repetition,
            Flag::Garbled,
            Flag::ErrorText,
            Flag::Truncated
        ]
    );
    assert_eq!(scores[1].threshold, 0.7);
    assert_eq!(scores[0].threshold, 0.5);
}

#[test]
fn check_score_fires_at_the_threshold() {
    let at = CheckScore {
        flag: Flag::Garbled,
        score: 0.5,
        threshold: 0.5,
    };
    assert!(at.fired());
    let below = CheckScore {
        score: 0.4999,
        ..at
    };
    assert!(!below.fired());
}

#[test]
fn flag_names_are_stable() {
    let names: Vec<&str> = Flag::ALL.iter().map(|f| f.as_str()).collect();
    assert_eq!(
        names,
        [
            "blank",
            "refusal",
            "repetition",
            "garbled",
            "error_text",
            "truncated",
            "off_topic",
            "outlier",
            "length"
        ]
    );
    for f in Flag::ALL {
        let json = serde_json::to_string(&f).unwrap();
        assert_eq!(json, format!("\"{}\"", f.as_str()));
        let back: Flag = serde_json::from_str(&json).unwrap();
        assert_eq!(back, f);
        assert_eq!(f.to_string(), f.as_str());
    }
}

#[test]
fn check_config_defaults_and_partial_config() {
    let d = CheckConfig::default();
    for t in [
        d.blank,
        d.refusal,
        d.repetition,
        d.garbled,
        d.error_text,
        d.truncated,
    ] {
        assert_eq!(t, 0.5);
    }
    let c: CheckConfig = serde_json::from_str(r#"{"refusal": 0.8}"#).unwrap();
    assert_eq!(c.refusal, 0.8);
    assert_eq!(c.garbled, 0.5);
    let round: CheckConfig = serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
    assert_eq!(round, d);
}

#[test]
fn text_checks_only_score_successful_answers() {
    // A traceback with a 500 is an ordinary error, not an error hidden in a 200.
    for (api, status) in [
        (Api::ChatCompletions, 500),
        (Api::ChatCompletions, 429),
        (Api::ChatCompletions, 0),
        (Api::Embeddings, 200),
        (Api::Other, 200),
    ] {
        let mut rec = answer(TRACEBACK);
        rec.api = api;
        rec.status = status;
        rec.response.push_str(MOJIBAKE);
        rec.response.push_str(REFUSAL_OPENAI);
        for s in run_checks(&rec, &CheckConfig::default()) {
            assert_eq!(s.score, 0.0, "{api:?} {status}: {}", s.flag);
        }
    }
    for api in [
        Api::ChatCompletions,
        Api::Responses,
        Api::Completions,
        Api::Messages,
    ] {
        let mut rec = answer(TRACEBACK);
        rec.api = api;
        assert_eq!(fired(&rec), vec!["error_text"], "{api:?}");
    }
}

#[test]
fn no_panic_on_empty_huge_and_lossy_input() {
    let mut bytes = Vec::with_capacity(1 << 20);
    let mut x: u32 = 0x1234_5678;
    for _ in 0..(1 << 20) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        bytes.push((x >> 11) as u8);
    }
    let lossy = String::from_utf8_lossy(&bytes).into_owned();
    let ten_mb = 10 * 1024 * 1024;
    let prose = PARAGRAPH.repeat(ten_mb / PARAGRAPH.len() + 1);
    let texts: Vec<(&str, String)> = vec![
        ("empty", String::new()),
        ("lossy", lossy.clone()),
        (
            "lossy short",
            String::from_utf8_lossy(&bytes[..100]).into_owned(),
        ),
        ("10 MB prose", prose),
        ("10 MB spaces", " ".repeat(ten_mb)),
        ("10 MB newlines", "\n".repeat(ten_mb)),
        ("10 MB one char", "a".repeat(ten_mb)),
        ("10 MB multibyte", "é日🙂".repeat(ten_mb / 9)),
        ("10 MB no spaces", "ab1".repeat(ten_mb / 3)),
        ("10 MB fences", "```\n".repeat(ten_mb / 4)),
        ("10 MB quotes", "\"I can't\" ".repeat(ten_mb / 10)),
        (
            "10 MB braces",
            format!("{{{}}}", "\"error\": ".repeat(ten_mb / 9)),
        ),
        (
            "lone surrogate-ish",
            "\u{FFFD}\u{FFFE}\u{0}\u{1b}[31m".to_string(),
        ),
    ];
    for (name, text) in &texts {
        let mut rec = answer(text);
        rec.prompt = Some(text.clone());
        let scores = run_checks(&rec, &CheckConfig::default());
        assert_eq!(scores.len(), 6, "{name}");
        for s in scores {
            assert!(
                (0.0..=1.0).contains(&s.score),
                "{name}: {} = {}",
                s.flag,
                s.score
            );
        }
    }
    // Lossy-decoded garbage is garbled.
    assert!(garbled(&lossy, None) >= 0.5);
}

// ---------------------------------------------------------------------------------------------
// blank

#[test]
fn blank_is_exactly_no_content() {
    let blank_texts = [
        "",
        " ",
        "\n\n\t \r\n",
        "...",
        "…",
        "-",
        "—",
        "**",
        "* * *",
        "#",
        "> ",
        "```",
        "```\n```",
        "```json\n\n```",
        "```python\n   \n```\n",
        "   ```\n   ```",
        "~~~\n~~~",
        "\u{200B}",
        "\u{FEFF}\u{200B}\u{200C}\u{200D}\u{2060}",
        "\u{00A0}\u{3000}",
        "\u{0301}",
        "。、！？",
        "→ ← ∞ ±",
        "\"\"",
        "()[]{}",
    ];
    for t in blank_texts {
        assert!(is_blank_text(t), "{t:?} should be blank");
        assert_eq!(score_of(&answer(t), Flag::Blank).score, 1.0, "{t:?}");
        assert!(fired(&answer(t)).contains(&"blank"), "{t:?}");
    }
    let content = [
        "a",
        "0",
        "Paris",
        "。你好",
        "Да",
        "👍",
        "✅",
        "🇫🇷",
        "...no",
        "```\nx\n```",
        "```python print(1)```",
        "`x`",
        "- [ ] todo",
        "\u{200B}a",
        "e\u{0301}",
        "² ",
    ];
    for t in content {
        assert!(!is_blank_text(t), "{t:?} should not be blank");
        assert_eq!(score_of(&answer(t), Flag::Blank).score, 0.0, "{t:?}");
    }
}

#[test]
fn blank_only_for_successful_chat_answers_without_tool_calls() {
    let mut tool = answer("");
    tool.tool_calls = vec![ToolCall {
        id: Some("call_1".into()),
        name: "get_weather".into(),
        arguments: "{\"city\":\"Paris\"}".into(),
    }];
    tool.finish_reasons = vec!["tool_calls".into()];
    assert_eq!(blank(&tool), 0.0, "tool-call-only answers are not blank");

    let mut emb = answer("");
    emb.api = Api::Embeddings;
    assert_eq!(blank(&emb), 0.0);
    let mut other = answer("");
    other.api = Api::Other;
    assert_eq!(blank(&other), 0.0);
    for status in [0u16, 199, 300, 400, 429, 500, 503] {
        let mut r = answer("");
        r.status = status;
        assert_eq!(blank(&r), 0.0, "status {status}");
    }
    for outcome in [
        Outcome::StreamInterrupted,
        Outcome::ClientCancelled,
        Outcome::UpstreamTimeout,
        Outcome::UpstreamUnreachable,
    ] {
        let mut r = answer("");
        r.outcome = outcome;
        assert_eq!(blank(&r), 0.0, "{outcome:?}");
    }
    for api in [
        Api::ChatCompletions,
        Api::Responses,
        Api::Completions,
        Api::Messages,
    ] {
        for status in [200u16, 201, 299] {
            let mut r = answer("  \n");
            r.api = api;
            r.status = status;
            assert_eq!(blank(&r), 1.0, "{api:?} {status}");
        }
    }
}

#[test]
fn blank_reads_to_the_end() {
    let mut t = " \n".repeat(5 * 1024 * 1024);
    assert!(is_blank_text(&t));
    t.push('x');
    assert!(!is_blank_text(&t));
    let fenced = format!("```json\n{}\n```", "\n".repeat(100_000));
    assert!(is_blank_text(&fenced));
    let late = format!("{}```\nz", ".-*".repeat(1000));
    assert!(!is_blank_text(&late));
}

// ---------------------------------------------------------------------------------------------
// refusal

#[test]
fn refusals_in_several_styles_fire() {
    for (name, t) in [
        ("openai", REFUSAL_OPENAI),
        ("assist", REFUSAL_ASSIST),
        ("long", REFUSAL_LONG),
        ("claude", REFUSAL_CLAUDE),
        ("as an ai", REFUSAL_AS_AI),
        ("decline", REFUSAL_DECLINE),
        ("curly apostrophes", REFUSAL_CURLY),
        ("content policy", REFUSAL_POLICY),
        ("unable", REFUSAL_UNABLE),
        ("won't", REFUSAL_WONT),
        ("spanish", REFUSAL_SPANISH),
        ("french", REFUSAL_FRENCH),
        ("german", REFUSAL_GERMAN),
        ("portuguese", REFUSAL_PORTUGUESE),
        ("chinese", REFUSAL_CHINESE),
        ("japanese", REFUSAL_JAPANESE),
        ("shouting", "I CAN'T HELP WITH THAT."),
        ("no apostrophe", "sorry, i cant do that"),
        ("cannot", "I cannot assist with this request."),
    ] {
        let s = score_of(&answer(t), Flag::Refusal);
        assert!(s.fired(), "{name}: {:.3}", s.score);
        assert_eq!(fired(&answer(t)), vec!["refusal"], "{name}");
    }
}

#[test]
fn hedges_apologies_and_quotes_stay_below() {
    for (name, t, max) in [
        ("hedge", HEDGE.to_string(), 0.25),
        ("apology", APOLOGY.to_string(), 0.35),
        ("quoted", QUOTED_REFUSAL.to_string(), 0.45),
        ("buried", buried_refusal(), 0.3),
        ("paragraph", PARAGRAPH.to_string(), 0.0),
        (
            "aid",
            "As an aid to memory, write the steps down.".to_string(),
            0.0,
        ),
    ] {
        let s = refusal(&t);
        assert!(s <= max, "{name}: {s:.3} > {max}");
    }
}

#[test]
fn refusal_weighs_position_and_length() {
    let short = refusal("I'm sorry, but I can't help with that.");
    let opening_long = refusal(&format!(
        "I'm sorry, but I can't help with that. {}",
        PARAGRAPH.repeat(3)
    ));
    let closing_long = refusal(&format!(
        "{} I'm sorry, but I can't help with that.",
        PARAGRAPH.repeat(3)
    ));
    assert!(short > opening_long, "{short} vs {opening_long}");
    assert!(
        opening_long > closing_long,
        "{opening_long} vs {closing_long}"
    );
    assert!(closing_long < 0.5, "{closing_long}");
}

#[test]
fn refusal_exemplars_are_refusals() {
    let ex = refusal_exemplars();
    assert!((18..=30).contains(&ex.len()), "{}", ex.len());
    let mut seen = std::collections::HashSet::new();
    for t in ex {
        assert!(seen.insert(*t), "duplicate exemplar {t}");
        assert!(refusal(t) >= 0.5, "{t}: {}", refusal(t));
    }
}

// ---------------------------------------------------------------------------------------------
// repetition

#[test]
fn loops_fire_repetition() {
    let sentence = "I will always help you with your request. ".repeat(30);
    let lines = "- Check the logs for errors\n".repeat(40);
    let chars = format!("The answer is {}", "a".repeat(60));
    let bangs = format!("Great question{}", "!".repeat(40));
    let haha = "ha".repeat(600);
    for (name, t) in [
        ("looping answer", looping_answer()),
        ("sentence", sentence),
        ("lines", lines),
        ("chars", chars),
        ("bangs", bangs),
        ("one long token", haha),
    ] {
        let s = score_of(&answer(&t), Flag::Repetition);
        assert!(s.fired(), "{name}: {:.3}", s.score);
    }
}

#[test]
fn structure_and_emphasis_are_not_loops() {
    for (name, t) in [
        ("list", MARKDOWN_LIST.to_string()),
        ("code", PYTHON_ANSWER.to_string()),
        ("tests", TEST_CODE.to_string()),
        ("argparse", ARGPARSE.to_string()),
        ("json records", json_records()),
        ("table", TABLE.to_string()),
        (
            "emphasis",
            "Nooooooo, that's not it! Sooo close...".to_string(),
        ),
        ("rule", format!("Title\n{}\nText", "=".repeat(80))),
        ("dashes", format!("a\n{}\nb", "-".repeat(200))),
        ("long number", format!("x = {}", "0".repeat(100))),
        ("box table", BOX_TABLE.to_string()),
        (
            "progress",
            format!("Progress: [{}{}] 60%", "█".repeat(30), "░".repeat(20)),
        ),
    ] {
        let s = repetition(&t);
        assert!(s < 0.25, "{name}: {s:.3}");
    }
}

#[test]
fn a_loop_at_the_end_of_a_long_answer_is_found() {
    // The loop is a fraction of the whole but most of its second half.
    let s = repetition(&looping_answer());
    assert!(s >= 0.5, "{s}");
    // And beyond the 16 KiB window, only the end counts.
    let long = format!("{}{}", "x y z w ".repeat(100_000), looping_answer());
    assert!(repetition(&long) >= 0.5);
}

// ---------------------------------------------------------------------------------------------
// garbled

#[test]
fn garbled_text_fires() {
    let fffd = "The result is \u{FFFD}\u{FFFD} and the rest is fine.";
    let ctrl = "Line one\u{0}\u{7}\u{1b}[0m line two";
    for (name, t) in [
        ("mojibake", MOJIBAKE),
        ("cjk mojibake", MOJIBAKE_CJK),
        ("replacement chars", fffd),
        ("control chars", ctrl),
        ("token soup", TOKEN_SOUP),
        ("zalgo", ZALGO),
        ("special tokens", SPECIAL_TOKENS),
        ("mixed scripts", MIXED_SCRIPTS),
        (
            "latin+cyrillic+cjk",
            "the пр日ice is gооd and the рrісe is lоw",
        ),
        (
            "symbol noise",
            "Sure #@!$ ~^&% ]{;< >|\\ +=@% $%^& *&^% !@#$ the",
        ),
    ] {
        let s = score_of(&answer(t), Flag::Garbled);
        assert!(s.fired(), "{name}: {:.3}", s.score);
    }
}

#[test]
fn legit_text_in_any_script_is_not_garbled() {
    for (name, t) in normal_texts() {
        let s = garbled(&t, None);
        assert!(s < 0.2, "{name}: {s:.3}");
    }
    for (name, t) in [
        (
            "greek",
            "Η φωτοσύνθεση είναι η διαδικασία με την οποία τα φυτά παράγουν ενέργεια.",
        ),
        (
            "hebrew",
            "פוטוסינתזה היא התהליך שבו צמחים הופכים אור לאנרגיה כימית.",
        ),
        ("hindi", "प्रकाश संश्लेषण वह प्रक्रिया है जिससे पौधे भोजन बनाते हैं।"),
        ("thai", "การสังเคราะห์ด้วยแสงเป็นกระบวนการที่พืชสร้างอาหาร"),
        (
            "vietnamese",
            "Quang hợp là quá trình cây xanh chuyển hóa năng lượng ánh sáng.",
        ),
        (
            "units",
            "The latency is 250 μs and the wavelength 550 nm; Δt = 0.5 s, λ = 2πr.",
        ),
        (
            "acronyms",
            "Use HTTPS, HTML, CSS, XML and NGINX; the CPU and GPU share PCIe lanes.",
        ),
        (
            "interjections",
            "Hmmm, brrr, shhh, pfft, grrr, zzz: all fine.",
        ),
        (
            "hex and ids",
            "Commit 3f9a2c1d, UUID 123e4567-e89b-12d3-a456-426614174000, SHA-256.",
        ),
        (
            "shell",
            "Run `ls -la /etc/nginx` and then `sudo systemctl restart nginx`.",
        ),
        (
            "cjk punctuation",
            "「こんにちは」と彼は言った。『はい』——そうですね…",
        ),
        (
            "french typography",
            "Il a dit : « Déjà fait ! » — c’est « génial ».",
        ),
    ] {
        let s = garbled(t, None);
        assert!(s < 0.2, "{name}: {s:.3}");
    }
}

#[test]
fn one_stray_replacement_char_stays_below() {
    let t = format!("{PARAGRAPH} The caf\u{FFFD} was closed.");
    let s = garbled(&t, None);
    assert!(s > 0.0 && s < 0.5, "{s}");
}

#[test]
fn garbled_text_the_user_pasted_counts_less() {
    let prompt = "Why does my CSV show cafÃ© and donâ€™t instead of café and don't?";
    let ans = "Your file is UTF-8 but was opened as Windows-1252: \"cafÃ©\" is \"café\" \
               decoded with the wrong charset, and â€™ is a curly apostrophe. Re-open it as UTF-8.";
    assert!(garbled(ans, None) >= 0.5);
    assert!(
        garbled(ans, Some(prompt)) < 0.5,
        "{}",
        garbled(ans, Some(prompt))
    );
    let tpl_prompt = "What does <|im_end|> mean in a ChatML template?";
    let tpl_ans = "In ChatML, <|im_start|> opens a turn and <|im_end|> closes it.";
    assert!(garbled(tpl_ans, None) >= 0.5);
    assert!(garbled(tpl_ans, Some(tpl_prompt)) < 0.5);
}

// ---------------------------------------------------------------------------------------------
// error_text

#[test]
fn errors_delivered_as_answers_fire() {
    let anthropic =
        r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
    let vllm = r#"{"object":"error","message":"This model's maximum context length is 4096 tokens.","type":"BadRequestError","param":null,"code":400}"#;
    let cloudflare = "<!DOCTYPE html>\n<html lang=\"en-US\">\n<head>\n<title>Just a moment...</title>\n</head>\n<body>\n<h1>Error 522</h1>\n<p>Connection timed out</p>\n<p>Cloudflare Ray ID: 8c1f2e3d4b5a6978</p>\n</body>\n</html>";
    let mut cases: Vec<(&str, &str)> = vec![
        ("python traceback", TRACEBACK),
        ("java", JAVA_TRACE),
        ("node", JS_TRACE),
        ("rust panic", RUST_PANIC),
        ("go panic", GO_PANIC),
        ("nginx 502", HTML_502),
        ("openai json", JSON_ERROR),
        ("anthropic json", anthropic),
        ("vllm json", vllm),
        ("cloudflare", cloudflare),
        ("envoy", ENVOY),
    ];
    for p in PROXY_MESSAGES {
        cases.push(("proxy message", p));
    }
    for (name, t) in cases {
        let s = score_of(&answer(t), Flag::ErrorText);
        assert!(s.fired(), "{name} ({t}): {:.3}", s.score);
    }
}

#[test]
fn explaining_an_error_stays_below() {
    // Without the prompt, quoting the traceback in a fence is already below...
    let alone = error_text(KEYERROR_ANSWER, None);
    assert!(alone < 0.5, "{alone}");
    // ...and the question about the error lowers it further.
    let with_prompt = error_text(KEYERROR_ANSWER, Some(KEYERROR_PROMPT));
    assert!(with_prompt < alone && with_prompt < 0.3, "{with_prompt}");
    let mut rec = answer(KEYERROR_ANSWER);
    rec.prompt = Some(KEYERROR_PROMPT.into());
    assert!(fired(&rec).is_empty(), "{:?}", fired(&rec));

    let advice = error_text(RATE_LIMIT_ADVICE, None);
    assert!(advice < 0.5, "{advice}");
    let try_except = "Wrap the conversion in try/except:\n\n```python\ntry:\n    n = int(text)\nexcept ValueError:\n    n = 0\n```\n\nA `ValueError` is raised when the string is not a number.";
    assert!(error_text(try_except, None) < 0.2);
    let json_ok = r#"{"result": {"total": 3}, "error": null}"#;
    assert_eq!(error_text(json_ok, None), 0.0);
    let detail = r#"{"name": "detail", "detail": "a field called detail"}"#;
    assert_eq!(error_text(detail, None), 0.0);
}

#[test]
fn a_pasted_traceback_discounts_the_same_traceback() {
    let prompt = format!("My server prints this, what is wrong?\n\n{TRACEBACK}");
    let bare = error_text(TRACEBACK, None);
    let discounted = error_text(TRACEBACK, Some(&prompt));
    assert!(bare >= 0.9, "{bare}");
    assert!(discounted < 0.5, "{discounted}");
    let topical = error_text(TRACEBACK, Some("Show me what a CUDA OOM error looks like"));
    assert!(topical < bare, "{topical}");
}

// ---------------------------------------------------------------------------------------------
// truncated

#[test]
fn truncated_by_finish_reason_outcome_or_incomplete_stream() {
    for reason in [
        "length",
        "max_tokens",
        "MAX_TOKENS",
        "max_output_tokens",
        "stream_interrupted",
    ] {
        let mut r = answer(PARAGRAPH);
        r.finish_reasons = vec!["stop".into(), reason.into()];
        assert_eq!(truncated(&r), 1.0, "{reason}");
        assert_eq!(fired(&r), vec!["truncated"], "{reason}");
    }
    for reason in [
        "stop",
        "end_turn",
        "tool_calls",
        "tool_use",
        "content_filter",
        "incomplete",
    ] {
        let mut r = answer(PARAGRAPH);
        r.finish_reasons = vec![reason.into()];
        assert_eq!(truncated(&r), 0.0, "{reason}");
    }
    let mut cut = answer(PARAGRAPH);
    cut.finish_reasons.clear();
    cut.outcome = Outcome::StreamInterrupted;
    assert_eq!(truncated(&cut), 1.0);

    let mut incomplete = answer(PARAGRAPH);
    incomplete.finish_reasons.clear();
    incomplete.stream = true;
    incomplete.error_type = Some("stream_incomplete".into());
    assert_eq!(truncated(&incomplete), 1.0);
    incomplete.stream = false;
    assert_eq!(truncated(&incomplete), 0.0, "not a stream");
    incomplete.stream = true;
    incomplete.status = 502;
    assert_eq!(truncated(&incomplete), 0.0, "not 2xx");
}
