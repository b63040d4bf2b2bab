#!/usr/bin/env python3
"""Builds semtap's evaluation streams from real text found on this machine.

Sources (see docs/EVALUATION.md):
  * Python standard library docstrings (functions, methods, classes, modules) via `inspect`,
    and the language reference topics in `pydoc_data.topics`;
  * man pages in /usr/share/man/man1 (DESCRIPTION sections, rendered with groff);
  * gettext catalogs /usr/share/locale/<lang>/LC_MESSAGES/*.mo (read with `gettext`);
  * refusal sentences: the exemplars in src/semantic/checks/refusal.rs;
  * Python tracebacks and command error messages produced by actually running failing code,
    and HTTP error pages served by Python's own `http.server`.

Writes under eval/data/ (not committed):
  corpus.json                    the extracted texts (cached; delete to re-extract)
  anomalies.jsonl / .labels.jsonl   3 keys, normal answers + injected anomalies, and labels
  drift.jsonl / drift.labels.json   4 keys, one drift segment each, onset position
  stationary_static.jsonl          clean stationary traffic for the false-incident rate
  stationary_transformer.jsonl     (smaller: the transformer tier embeds ~50-100 texts/s)

Deterministic for a given machine (seeded RNG, sorted sources). Python 3 stdlib only.
"""

import argparse
import contextlib
import gettext
import glob
import gzip
import http.client
import http.server
import importlib
import inspect
import io
import json
import os
import random
import re
import subprocess
import sys
import threading
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DATA = os.path.join(HERE, "data")

MIN_CHARS, MAX_CHARS = 200, 1500  # a "normal" answer's length range
CORPUS_VERSION = 2

# Modules whose import has side effects (opens a browser, prints, starts a GUI) or is slow.
SKIP_MODULES = {
    "antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "__main__",
    "ensurepip", "lib2to3", "pydoc", "xxsubtype", "_xxsubinterpreters", "xxlimited",
}

# Topic drift: operating system, files and concurrency -> internet protocols, mail and markup.
TOPIC_A = ("os", "posix", "posixpath", "shutil", "pathlib", "subprocess", "tempfile", "glob",
           "fnmatch", "io", "_pyio", "stat", "filecmp", "tarfile", "zipfile", "gzip", "bz2", "lzma",
           "zipimport", "shlex", "pty", "fcntl", "termios", "tty", "signal", "_signal", "select",
           "selectors", "resource", "mmap", "asyncio", "_asyncio", "threading", "_thread",
           "multiprocessing", "concurrent", "queue", "sched", "sys", "sysconfig", "platform",
           "time", "dbm", "fileinput")
TOPIC_B = ("email", "http", "urllib", "xml", "html", "xmlrpc", "smtplib", "imaplib", "ftplib",
           "poplib", "mailbox", "mimetypes", "wsgiref", "nntplib", "cgi", "json", "ssl", "socket",
           "_socket", "socketserver", "telnetlib", "base64", "binascii", "quopri", "uu", "ipaddress",
           "pyexpat", "webbrowser", "smtpd", "mailcap", "netrc")


def norm_ws(text):
    """Paragraphs kept, whitespace inside each paragraph collapsed."""
    paras = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text)]
    return "\n\n".join(p for p in paras if p)


# ---------------------------------------------------------------------------------------------
# Extraction


def python_docstrings():
    """(kind, module, qualname, docstring) for public stdlib objects."""
    out = []
    seen = set()
    names = sorted(n for n in sys.stdlib_module_names if n not in SKIP_MODULES)
    mods = []
    warnings.filterwarnings("ignore")  # deprecated modules warn when their docstrings are read
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        for name in names:
            try:
                mods.append(importlib.import_module(name))
            except BaseException:  # noqa: BLE001 - platform modules that do not import
                continue
        # public submodules of packages (email.message, http.client, xml.dom.minidom, ...)
        import pkgutil
        for m in list(mods):
            if not hasattr(m, "__path__") or m.__name__ in SKIP_MODULES:
                continue
            for info in sorted(pkgutil.walk_packages(m.__path__, m.__name__ + "."),
                               key=lambda i: i.name):
                if any(p.startswith("_") or p in ("test", "tests", "idle_test")
                       for p in info.name.split(".")[1:]):
                    continue
                try:
                    mods.append(importlib.import_module(info.name))
                except BaseException:  # noqa: BLE001
                    continue
    for m in mods:
        doc = inspect.getdoc(m)
        if doc:
            out.append(("module", m.__name__, m.__name__, doc))
        for attr in sorted(vars(m)):
            if attr.startswith("_"):
                continue
            obj = vars(m)[attr]
            if getattr(obj, "__module__", None) != m.__name__:
                continue
            if inspect.isclass(obj):
                d = obj.__doc__
                if d and id(obj) not in seen:
                    seen.add(id(obj))
                    out.append(("class", m.__name__, attr, inspect.cleandoc(d)))
                for meth in sorted(vars(obj)):
                    if meth.startswith("_"):
                        continue
                    f = vars(obj)[meth]
                    if (inspect.isfunction(f) or inspect.ismethoddescriptor(f)) and f.__doc__:
                        out.append(("function", m.__name__, f"{attr}.{meth}",
                                    inspect.cleandoc(f.__doc__)))
            elif inspect.isfunction(obj) or inspect.isbuiltin(obj):
                if obj.__doc__:
                    out.append(("function", m.__name__, attr, inspect.cleandoc(obj.__doc__)))
    return out


def pydoc_topics():
    from pydoc_data.topics import topics
    out = []
    for name in sorted(topics):
        for para in re.split(r"\n\s*\n", topics[name]):
            p = " ".join(para.split())
            if MIN_CHARS <= len(p) <= MAX_CHARS and not p.startswith("***"):
                out.append((name, p))
    return out


def man_descriptions(limit):
    """DESCRIPTION sections of man1 pages, rendered with groff (one long line per paragraph)."""
    files = sorted(glob.glob("/usr/share/man/man1/*.1*.gz"))
    step = max(1, len(files) // limit)
    out = []
    for f in files[::step][:limit]:
        cmd = os.path.basename(f).split(".")[0]
        try:
            src = gzip.open(f).read()
            r = subprocess.run(["groff", "-man", "-Tutf8", "-rLL=4000n", "-P-cbou"],
                               input=src, capture_output=True, timeout=20)
        except Exception:  # noqa: BLE001
            continue
        lines = r.stdout.decode("utf-8", "replace").splitlines()
        body, on = [], False
        for line in lines:
            if re.match(r"^[A-Z][A-Z ]+$", line.strip()) and not line.startswith(" "):
                on = line.strip() == "DESCRIPTION"
                continue
            if on:
                body.append(line.strip())
        text = norm_ws("\n".join(body))
        if len(text) > MAX_CHARS:  # keep whole paragraphs up to the limit
            keep = []
            for p in text.split("\n\n"):
                if sum(len(k) + 2 for k in keep) + len(p) > MAX_CHARS:
                    break
                keep.append(p)
            text = "\n\n".join(keep)
        if MIN_CHARS <= len(text) <= MAX_CHARS:
            out.append((cmd, text))
    return out


def mo_catalogs():
    """{lang: [(domain, msgid, msgstr)]} for messages of 150+ characters."""
    out = {}
    for f in sorted(glob.glob("/usr/share/locale/*/LC_MESSAGES/*.mo")):
        lang = f.split("/")[4]
        domain = os.path.basename(f)[:-3]
        try:
            with open(f, "rb") as fh:
                cat = gettext.GNUTranslations(fh)._catalog
        except Exception:  # noqa: BLE001 - catalogs not in UTF-8
            continue
        for k, v in cat.items():
            if isinstance(k, tuple):
                k = k[0]
            if not isinstance(k, str) or not k or not isinstance(v, str):
                continue
            if len(v) >= 150 and v != k:
                out.setdefault(lang, []).append((domain, k, v))
    return out


def refusal_exemplars():
    src = open(os.path.join(ROOT, "src/semantic/checks/refusal.rs"), encoding="utf-8").read()
    body = src[src.index("pub fn refusal_exemplars"):]
    body = body[:body.index("]\n}")]
    return [json.loads('"' + s + '"') for s in re.findall(r'^\s*"((?:[^"\\]|\\.)*)",\s*$',
                                                          body, re.M)]


# Failing code, run for real: the answers carry the interpreter's own traceback.
FAILING_SNIPPETS = [
    "import json; json.loads('{\"a\": 1,')",
    "int('twelve')",
    "open('/nonexistent/config.yaml')",
    "import os; os.listdir('/no/such/dir')",
    "d = {'model': 'x'}; d['temperature']",
    "[1, 2, 3][7]",
    "1 / 0",
    "None.strip()",
    "import importlib; importlib.import_module('definitely_not_installed')",
    "import socket; socket.create_connection(('127.0.0.1', 1), timeout=1)",
    "import urllib.request; urllib.request.urlopen('http://127.0.0.1:1/v1/chat', timeout=1)",
    "import base64; base64.b64decode('abc')",
    "import datetime; datetime.datetime.strptime('2024-13-45', '%Y-%m-%d')",
    "import struct; struct.unpack('>I', b'ab')",
    "b'\\xff\\xfe'.decode('utf-8')",
    "'%d items' % 'many'",
    "import re; re.compile('(unclosed')",
    "import decimal; decimal.Decimal('1.2.3')",
    "import csv, io; list(csv.reader(io.StringIO('a,\"b'), strict=True))",
    "import ast; ast.literal_eval('os.system(1)')",
    "import subprocess; subprocess.run(['false'], check=True)",
    "import shutil; shutil.copy('/no/src.txt', '/tmp')",
    "import sqlite3; sqlite3.connect(':memory:').execute('select * from users')",
    "def f(n): return f(n + 1)\nf(0)",
    "import pickle; pickle.loads(b'not a pickle')",
    "import zlib; zlib.decompress(b'garbage')",
    "import xml.etree.ElementTree as ET; ET.fromstring('<a><b></a>')",
    "import uuid; uuid.UUID('1234')",
    "import math; math.sqrt(-1)",
    "class C: pass\nC().missing_method()",
    "import tomllib; tomllib.loads('key = ')",
    "import ipaddress; ipaddress.ip_address('300.1.1.1')",
    "import gzip; gzip.decompress(b'not gzip data')",
    "import threading; threading.Lock().release()",
    "assert 2 + 2 == 5, 'arithmetic is broken'",
    "import asyncio; asyncio.run(asyncio.wait_for(asyncio.sleep(1), 0.01))",
]

FAILING_COMMANDS = [
    ["ls", "/no/such/dir"],
    ["cat", "/etc/does-not-exist.conf"],
    ["git", "-C", "/", "status"],
    ["python3", "/no/script.py"],
    ["grep", "-E", "(", "/etc/hostname"],
    ["tar", "-xf", "/no/archive.tar"],
    ["gzip", "-d", "/no/file.gz"],
    ["sort", "--no-such-option"],
    ["date", "-d", "not a date"],
    ["mkdir", "/proc/x/y"],
]


def real_errors():
    """Tracebacks, command errors and HTTP error pages, produced by running things."""
    errs = []
    for s in FAILING_SNIPPETS:
        r = subprocess.run([sys.executable, "-c", s], capture_output=True, text=True,
                           timeout=30, cwd="/tmp")
        if r.stderr.strip():
            errs.append(("traceback", r.stderr.strip()))
    for c in FAILING_COMMANDS:
        try:
            r = subprocess.run(c, capture_output=True, text=True, timeout=30, cwd="/tmp")
        except FileNotFoundError:
            continue
        if r.returncode != 0 and r.stderr.strip():
            errs.append(("command", r.stderr.strip()))
    # HTTP error pages from Python's own server.
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    srv.RequestHandlerClass.log_message = lambda *a, **k: None
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    port = srv.server_address[1]
    for method, path in [("GET", "/v1/chat/completions"), ("POST", "/v1/chat/completions"),
                         ("PUT", "/v1/models"), ("GET", "/%zz/../../etc/passwd"),
                         ("DELETE", "/v1/files/abc"), ("GET", "/missing/page.html")]:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request(method, path)
        resp = c.getresponse()
        body = resp.read().decode("utf-8", "replace").strip()
        if resp.status >= 400 and body:
            errs.append(("http", body))
        c.close()
    srv.shutdown()
    return errs


def extract(man_limit, old=None):
    corpus = {}
    if old:  # reuse the slow parts (man pages rendered with groff, commands run)
        corpus.update({k: old[k] for k in ("man_pages", "mo", "refusals", "errors")})
    corpus["version"] = CORPUS_VERSION
    docs = python_docstrings()
    fn, ref = [], []
    seen = set()
    for kind, mod, qual, doc in docs:
        text = norm_ws(doc)
        if not (MIN_CHARS <= len(text) <= MAX_CHARS) or text in seen:
            continue
        seen.add(text)
        first = doc.strip().split("\n")[0].strip()
        item = {"module": mod, "name": qual, "kind": kind, "text": text, "first_line": first}
        (fn if kind == "function" else ref).append(item)
    corpus["py_functions"] = fn
    corpus["py_reference"] = ref + [{"module": "pydoc_data.topics", "name": t, "kind": "topic",
                                     "text": p, "first_line": p.split(". ")[0]}
                                    for t, p in pydoc_topics()]
    if not old:
        corpus["man_pages"] = [{"name": c, "text": t} for c, t in man_descriptions(man_limit)]
        corpus["mo"] = mo_catalogs()
        corpus["refusals"] = refusal_exemplars()
        corpus["errors"] = real_errors()
    # one-line summaries (the first line of function docstrings), for the style drift
    corpus["py_oneliners"] = sorted({(d[1], d[2], d[3].strip().split("\n")[0].strip())
                                     for d in docs if d[0] == "function"
                                     and 20 <= len(d[3].strip().split("\n")[0].strip()) <= 120})
    return corpus


# ---------------------------------------------------------------------------------------------
# Prompts and records


def prompt_of(key, item):
    if key == "man_pages":
        return f"What does the `{item['name']}` command do?"
    if item.get("kind") == "topic":
        return f"Explain the Python language reference topic `{item['name']}`."
    if item.get("kind") == "module":
        return f"What is the Python `{item['module']}` module for?"
    if item.get("kind") == "class":
        return f"Describe the class `{item['name']}` of the Python `{item['module']}` module."
    return f"Explain what `{item['name']}` in the Python `{item['module']}` module does."


def est_tokens(text):
    return max(1, round(len(text) / 4))


class Sampler:
    """A key's answers: the first `warm` draws are distinct (the reference is learned there),
    later draws are uniform, with replacement, over the texts the warm-up did not use. A later
    answer is then never a copy of a reference answer: with the reference it forms a sample
    drawn without replacement, which is exchangeable, as conformal p-values assume."""

    def __init__(self, rng, pool, warm):
        self.rng = rng
        order = list(pool)
        rng.shuffle(order)
        if len(order) < warm + 50:
            raise SystemExit(f"pool of {len(order)} texts too small for a warm-up of {warm}")
        self.warm = order[:warm]
        self.rest = order[warm:]
        self.n = 0

    def __call__(self):
        self.n += 1
        if self.n <= len(self.warm):
            return self.warm[self.n - 1]
        return self.rng.choice(self.rest)

    def other(self):
        return self.rng.choice(self.rest)


class Clock:
    def __init__(self, rng, start=1_767_225_600_000):
        self.t = start
        self.rng = rng

    def next(self):
        self.t += 1000
        return self.t


def record(rng, clock, rid, model, prompt, response, finish="stop"):
    tokens = est_tokens(response)
    rate = max(15.0, rng.gauss(60.0, 8.0))  # tokens/s, so throughput stays stationary
    latency = 300.0 + 1000.0 * tokens / rate
    return {"id": rid, "ts_ms": clock.next(), "model": model, "prompt": prompt,
            "response": response, "finish_reason": finish, "latency_ms": round(latency, 1)}


# ---------------------------------------------------------------------------------------------
# Anomalies


def vocab_tokens():
    path = os.path.join(ROOT, "models/all-MiniLM-L6-v2/vocab.txt")
    if not os.path.exists(path):
        path = "/work/main/models/all-MiniLM-L6-v2/vocab.txt"
    toks = [t.strip() for t in open(path, encoding="utf-8")]
    return [t for t in toks if t and not t.startswith("[") and not t.startswith("[unused")]


def sentences(text):
    return [s for s in re.split(r"(?<=[.!?])\s+", text.replace("\n\n", " ")) if len(s) > 20]


class Injector:
    def __init__(self, rng, corpus):
        self.rng = rng
        self.c = corpus
        self.vocab = vocab_tokens()
        langs = ["de", "fr", "es", "it", "pt_BR", "ru", "uk", "pl", "ja", "zh_CN", "ko", "sv"]
        self.foreign = [(lang, v) for lang in langs for (_, _, v) in corpus["mo"].get(lang, [])]
        self.accented = [(lang, v) for lang in ("fr", "de", "es", "pt_BR", "ru", "pl")
                         for (_, _, v) in corpus["mo"].get(lang, [])]

    def blank(self, item):
        return self.rng.choice(["", " ", "\n\n", "   \n", ".", "...", "\u200b", "-", "``` ```",
                                "\n", "?"]), "blank", "stop"

    def refusal(self, item):
        return self.rng.choice(self.c["refusals"]), "refusal", "stop"

    def repetition(self, item):
        r = self.rng.random()
        text = item["text"]
        if r < 1 / 3:
            n = self.rng.randint(3, 8)
            return "\n\n".join([text] * n), "paragraph_loop", "stop"
        ss = sentences(text) or [text]
        s = self.rng.choice(ss)
        if r < 2 / 3:
            n = self.rng.randint(8, 30)
            return " ".join([s] * n), "sentence_repeat", "stop"
        # degenerate tail: normal start, then the last sentence over and over
        n = self.rng.randint(6, 20)
        return " ".join(ss + [ss[-1]] * n), "tail_loop", "stop"

    def garbled(self, item):
        r = self.rng.random()
        if r < 0.25:  # random bytes in the UTF-8 stream, decoded with replacement
            b = bytearray(item["text"].encode("utf-8"))
            for i in range(len(b)):
                if self.rng.random() < 0.06:
                    b[i] = self.rng.randint(0x80, 0xFF)
            return bytes(b).decode("utf-8", "replace"), "fffd", "stop"
        if r < 0.5:  # UTF-8 read as Latin-1 (text with non-ASCII letters)
            lang, v = self.rng.choice(self.accented)
            return v.encode("utf-8").decode("latin-1"), f"mojibake_{lang}", "stop"
        if r < 0.75:  # degenerate sampling: random tokens of the model's vocabulary
            n = self.rng.randint(40, 200)
            out = ""
            for _ in range(n):
                t = self.rng.choice(self.vocab)
                out += t[2:] if t.startswith("##") else " " + t
            return out.strip(), "vocab_soup", "stop"
        words = item["text"].split()  # the answer's own words, shuffled
        self.rng.shuffle(words)
        return " ".join(words), "word_shuffle", "stop"

    def error_text(self, item):
        kind, body = self.rng.choice(self.c["errors"])
        return body, f"error_{kind}", "stop"

    def truncated(self, item):
        text = item["text"]
        cut = int(len(text) * self.rng.uniform(0.3, 0.8))
        return text[:cut], "truncated", "length"

    def off_topic(self, item, other):
        return other["text"], "off_topic", "stop"

    def non_english(self, item):
        lang, v = self.rng.choice(self.foreign)
        return v, f"lang_{lang}", "stop"

    def length(self, item, pool):
        if self.rng.random() < 0.5:
            words = item["text"].split()
            return " ".join(words[:self.rng.randint(2, 4)]).rstrip(".,:;") + ".", "short", "stop"
        same = [x for x in pool if x.get("module", x.get("name")) == item.get("module", item.get("name"))]
        if len(same) < 6:
            same = pool
        parts = [item["text"]] + [x["text"] for x in self.rng.sample(same, min(len(same), 12))]
        return "\n\n".join(parts), "long", "stop"


# expected flag per injected kind
EXPECTED = {"blank": "blank", "refusal": "refusal", "repetition": "repetition",
            "garbled": "garbled", "error_text": "error_text", "truncated": "truncated",
            "off_topic": "off_topic", "non_english": "outlier", "length": "length"}
KINDS = list(EXPECTED)


def anomaly_streams(rng, corpus, per_key, rate, skip):
    inj = Injector(rng, corpus)
    pools = {k: corpus[k] for k in ("py_functions", "man_pages", "py_reference")}
    samplers = {k: Sampler(rng, v, skip) for k, v in pools.items()}
    clock = Clock(rng)
    recs, labels = [], []
    counters = {k: 0 for k in pools}
    order = [k for k in pools for _ in range(per_key)]
    rng.shuffle(order)
    for key in order:
        pool = pools[key]
        i = counters[key]
        counters[key] += 1
        item = samplers[key]()
        prompt = prompt_of(key, item)
        rid = f"{key}-{i:06d}"
        kind, sub, finish, response = "normal", "normal", "stop", item["text"]
        if i >= skip and rng.random() < rate * len(KINDS):
            kind = rng.choice(KINDS)
            if kind == "off_topic":
                while True:
                    other = samplers[key].other()
                    if other.get("module", other["name"]) != item.get("module", item["name"]):
                        break
                response, sub, finish = inj.off_topic(item, other)
            elif kind == "length":
                response, sub, finish = inj.length(item, pool)
            else:
                response, sub, finish = getattr(inj, kind)(item)
        recs.append(record(rng, clock, rid, key, prompt, response, finish))
        labels.append({"id": rid, "key": key, "kind": kind, "sub": sub, "index": i,
                       "expected_flag": EXPECTED.get(kind)})
    return recs, labels


# ---------------------------------------------------------------------------------------------
# Drift segments


def drift_streams(rng, corpus, pre, post, only=None):
    clock = Clock(rng, start=1_767_225_600_000 + 10**9)
    fn = corpus["py_functions"]
    py = fn + [x for x in corpus["py_reference"] if x["kind"] != "topic"]
    topic_a = [x for x in py if x["module"].split(".")[0] in TOPIC_A]
    topic_b = [x for x in py if x["module"].split(".")[0] in TOPIC_B]
    de = corpus["mo"].get("de", [])
    en_pairs = [(d, k, v) for d, k, v in de if 150 <= len(k) <= MAX_CHARS]
    full = [x for x in fn if len(sentences(x["text"])) >= 2]
    terse = corpus["py_oneliners"]
    segs = {}

    def fn_item(x):
        return prompt_of("py_reference", x), x["text"]

    warm = 250
    a_s, b_s = Sampler(rng, topic_a, warm), Sampler(rng, topic_b, 0)
    segs["topic_change"] = (lambda: fn_item(a_s()), lambda: fn_item(b_s()),
                            f"{len(topic_a)} docstrings of {'/'.join(TOPIC_A)} -> "
                            f"{len(topic_b)} of {'/'.join(TOPIC_B)}")

    en_s, de_s = Sampler(rng, en_pairs, warm), Sampler(rng, en_pairs, 0)

    def en():
        d, k, v = en_s()
        return f"Show the `{d}` help text about: {' '.join(k.split()[:6])}", k

    def german():
        d, k, v = de_s()
        return f"Show the `{d}` help text about: {' '.join(k.split()[:6])}", v

    segs["language_change"] = (en, german, f"{len(en_pairs)} English msgids -> their German msgstr")

    full_s, terse_s, fn_s = Sampler(rng, full, warm), Sampler(rng, terse, 0), Sampler(rng, fn, warm)

    def terse_item():
        mod, name, line = terse_s()
        return f"Explain what `{name}` in the Python `{mod}` module does.", line

    segs["style_change"] = (lambda: fn_item(full_s()), terse_item,
                            f"{len(full)} full docstrings -> {len(terse)} first-line summaries")
    segs["blank_rate_ramp"] = (lambda: fn_item(fn_s()), None,
                               "blank rate 0 -> 20% linearly over the post-onset segment")
    recs, meta = [], {}
    streams = {}
    if only:
        segs = {k: v for k, v in segs.items() if k in only}
    for name, (before, after, desc) in segs.items():
        rows = []
        for i in range(pre + post):
            if i < pre:
                p, r = before()
            elif after is None:
                p, r = before()
                if rng.random() < 0.2 * (i - pre + 1) / post:
                    r = rng.choice(["", " ", "\n", "."])
            else:
                p, r = after()
            rows.append((p, r))
        streams[name] = rows
        meta[name] = {"key_model": f"drift-{name}", "onset_index": pre, "records": pre + post,
                      "description": desc}
    # interleave the segments in time, each keeps its own order
    idx = {n: 0 for n in streams}
    order = [n for n in streams for _ in range(pre + post)]
    rng.shuffle(order)
    for n in order:
        i = idx[n]
        idx[n] += 1
        p, r = streams[n][i]
        recs.append(record(rng, clock, f"drift-{n}-{i:06d}", f"drift-{n}", p, r))
    return recs, meta


def stationary_stream(rng, corpus, keys, per_key, offset, warm):
    clock = Clock(rng, start=1_767_225_600_000 + offset)
    pools = ["py_functions", "man_pages", "py_reference"]
    recs = []
    samplers = [Sampler(rng, corpus[pools[k % 3]], warm) for k in range(keys)]
    for i in range(per_key):
        for k in range(keys):
            src = pools[k % 3]
            item = samplers[k]()
            recs.append(record(rng, clock, f"st{k:02d}-{i:07d}", f"stationary-{k:02d}-{src}",
                               prompt_of(src, item), item["text"]))
    return recs


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--per-key", type=int, default=3000, help="records per key (anomaly streams)")
    ap.add_argument("--rate", type=float, default=0.01, help="injection rate per anomaly kind")
    ap.add_argument("--skip", type=int, default=250,
                    help="first records of each key left clean (the reference is learned there)")
    ap.add_argument("--drift-pre", type=int, default=500)
    ap.add_argument("--drift-post", type=int, default=1000)
    ap.add_argument("--stationary-keys", type=int, default=6)
    ap.add_argument("--stationary-static", type=int, default=100_000,
                    help="records per key (static tier)")
    ap.add_argument("--stationary-transformer", type=int, default=1000,
                    help="records per key (transformer tier)")
    ap.add_argument("--stationary-transformer-keys", type=int, default=3)
    ap.add_argument("--man-pages", type=int, default=2500, help="man1 pages to render")
    ap.add_argument("--only-stationary", metavar="NAME",
                    help="write only a stationary stream of --stationary-transformer-keys keys x "
                         "--stationary-transformer records (a longer false-alarm run)")
    ap.add_argument("--only-drift", metavar="NAME",
                    help="write only the drift streams, as NAME.jsonl / NAME.labels.json")
    ap.add_argument("--drift-segments", help="comma-separated subset of the drift segments")
    ap.add_argument("--only-anomalies", metavar="NAME",
                    help="write only the anomaly streams, as NAME.jsonl / NAME.labels.jsonl "
                         "(e.g. a second rate)")
    args = ap.parse_args()
    os.makedirs(DATA, exist_ok=True)
    cpath = os.path.join(DATA, "corpus.json")
    corpus = json.load(open(cpath, encoding="utf-8")) if os.path.exists(cpath) else None
    if not corpus or corpus.get("version") != CORPUS_VERSION:
        corpus = extract(args.man_pages, corpus)
        with open(cpath, "w", encoding="utf-8") as f:
            json.dump(corpus, f, ensure_ascii=False)
    sizes = {k: len(v) for k, v in corpus.items() if k not in ("mo", "version")}
    sizes["mo_languages"] = len(corpus["mo"])
    sizes["mo_messages"] = sum(len(v) for v in corpus["mo"].values())
    print("corpus:", json.dumps(sizes), file=sys.stderr)

    rng = random.Random(args.seed)
    if args.only_stationary:
        recs = stationary_stream(rng, corpus, args.stationary_transformer_keys,
                                 args.stationary_transformer, 6 * 10**9, args.skip)
        write_jsonl(os.path.join(DATA, f"{args.only_stationary}.jsonl"), recs)
        print(f"{args.only_stationary}:", len(recs), file=sys.stderr)
        return
    if args.only_drift:
        recs, meta = drift_streams(rng, corpus, args.drift_pre, args.drift_post,
                                   args.drift_segments.split(",") if args.drift_segments else None)
        write_jsonl(os.path.join(DATA, f"{args.only_drift}.jsonl"), recs)
        with open(os.path.join(DATA, f"{args.only_drift}.labels.json"), "w") as f:
            json.dump(meta, f, indent=1)
        print(f"{args.only_drift}:", len(recs), file=sys.stderr)
        return
    name = args.only_anomalies or "anomalies"
    recs, labels = anomaly_streams(rng, corpus, args.per_key, args.rate, args.skip)
    write_jsonl(os.path.join(DATA, f"{name}.jsonl"), recs)
    write_jsonl(os.path.join(DATA, f"{name}.labels.jsonl"), labels)
    counts = {}
    for lab in labels:
        counts[lab["kind"]] = counts.get(lab["kind"], 0) + 1
    print(f"{name}:", len(recs), json.dumps(counts), file=sys.stderr)
    if args.only_anomalies:
        with open(os.path.join(DATA, f"{name}.meta.json"), "w") as f:
            json.dump({"seed": args.seed, "per_key": args.per_key, "rate": args.rate,
                       "skip": args.skip}, f, indent=1)
        return

    recs, meta = drift_streams(rng, corpus, args.drift_pre, args.drift_post)
    write_jsonl(os.path.join(DATA, "drift.jsonl"), recs)
    with open(os.path.join(DATA, "drift.labels.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print("drift:", len(recs), json.dumps({k: v["description"] for k, v in meta.items()}),
          file=sys.stderr)

    write_jsonl(os.path.join(DATA, "stationary_static.jsonl"),
                stationary_stream(rng, corpus, args.stationary_keys, args.stationary_static,
                                  2 * 10**9, args.skip))
    write_jsonl(os.path.join(DATA, "stationary_transformer.jsonl"),
                stationary_stream(rng, corpus, args.stationary_transformer_keys,
                                  args.stationary_transformer,
                                  4 * 10**9, args.skip))
    meta = {"seed": args.seed, "per_key": args.per_key, "rate": args.rate, "skip": args.skip,
            "drift_pre": args.drift_pre, "drift_post": args.drift_post,
            "stationary_keys": args.stationary_keys,
            "stationary_static_per_key": args.stationary_static,
            "stationary_transformer_per_key": args.stationary_transformer,
            "stationary_transformer_keys": args.stationary_transformer_keys,
            "corpus_sizes": sizes, "python": sys.version.split()[0]}
    with open(os.path.join(DATA, "build_meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print("stationary: static", args.stationary_keys * args.stationary_static, "transformer",
          args.stationary_transformer_keys * args.stationary_transformer, file=sys.stderr)


if __name__ == "__main__":
    main()
