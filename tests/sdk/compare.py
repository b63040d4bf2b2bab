"""Drive the official openai and anthropic SDKs directly and through semtap; print JSON.

Usage: compare.py DIRECT_BASE TAPPED_BASE
Each case prints the text and usage both ways; the Rust test compares them.
"""
import json
import sys

import anthropic
import openai

direct, tapped = sys.argv[1], sys.argv[2]
out = {}


def oa(base):
    return openai.OpenAI(base_url=base + "/v1", api_key="sk-sdk-test", max_retries=0)


def an(base):
    return anthropic.Anthropic(base_url=base, api_key="sk-ant-sdk-test", max_retries=0)


for name, base in (("direct", direct), ("tapped", tapped)):
    r = {}
    msgs = [{"role": "user", "content": "How do tides work?"}]
    c = oa(base).chat.completions.create(model="gpt-4o-mini", messages=msgs)
    r["openai_chat"] = {"text": c.choices[0].message.content, "usage": [c.usage.prompt_tokens, c.usage.completion_tokens]}

    parts, usage = [], None
    stream = oa(base).chat.completions.create(
        model="gpt-4o-mini", messages=msgs, stream=True, stream_options={"include_usage": True}
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
        if chunk.usage:
            usage = [chunk.usage.prompt_tokens, chunk.usage.completion_tokens]
    r["openai_chat_stream"] = {"text": "".join(parts), "usage": usage}

    resp = oa(base).responses.create(model="gpt-4.1", input="Define entropy.")
    r["openai_responses"] = {"text": resp.output_text, "usage": [resp.usage.input_tokens, resp.usage.output_tokens]}

    m = an(base).messages.create(model="claude-sonnet-4-5", max_tokens=300, messages=msgs)
    r["anthropic"] = {"text": m.content[0].text, "usage": [m.usage.input_tokens, m.usage.output_tokens]}

    with an(base).messages.stream(model="claude-sonnet-4-5", max_tokens=300, messages=msgs) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    r["anthropic_stream"] = {"text": text, "usage": [final.usage.input_tokens, final.usage.output_tokens]}

    # Errors surface as the SDKs' usual exceptions, direct or not.
    try:
        oa(base).chat.completions.create(
            model="gpt-4o-mini", messages=msgs, extra_headers={"x-mock-fault": "status=429"}
        )
        r["openai_429"] = "no error"
    except openai.RateLimitError as e:
        r["openai_429"] = type(e).__name__
    try:
        an(base).messages.create(
            model="claude-sonnet-4-5", max_tokens=10, messages=msgs, extra_headers={"x-mock-fault": "status=529"}
        )
        r["anthropic_529"] = "no error"
    except anthropic.APIStatusError as e:
        r["anthropic_529"] = f"{type(e).__name__}:{e.status_code}"
    out[name] = r

print(json.dumps(out))
