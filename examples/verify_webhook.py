#!/usr/bin/env python3
"""Verify semtap webhook signatures (standard library only).

semtap signs every delivery attempt with

    X-Semtap-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>

where the secret is used as its raw UTF-8 bytes. Verify against the *raw* request body
(before any JSON parsing), compare in constant time, and reject timestamps more than 300 s
from your clock. Deduplicate on the payload's `id`: delivery is at least once.

Usage (the secret is read from SEMTAP_WEBHOOK_SECRET):

    # check one payload: the body on stdin, the header value as the argument
    python3 verify_webhook.py check 't=1700000000,v1=…' < body.json    # exit 0 ok, 1 rejected

    # a minimal idempotent receiver on port 8000
    python3 verify_webhook.py serve --port 8000
"""

import hashlib
import hmac
import json
import os
import sys
import time

TOLERANCE_SECS = 300


def verify(secret, header, body, now=None,
           tolerance=TOLERANCE_SECS):
    """True if `header` is a valid, fresh semtap signature of `body` under `secret`."""
    t = None
    sigs = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            return False
        if key == "t":
            try:
                t = int(value)
            except ValueError:
                return False
        elif key == "v1":
            sigs.append(value)
    if t is None or not sigs:
        return False
    now = time.time() if now is None else now
    if abs(now - t) > tolerance:
        return False
    expected = hmac.new(secret.encode("utf-8"), str(t).encode() + b"." + body,
                        hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, s) for s in sigs)


def serve(port, secret):
    from http.server import BaseHTTPRequestHandler, HTTPServer

    seen = set()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            if not verify(secret, self.headers.get("x-semtap-signature", ""), body):
                self.send_response(401)
                self.end_headers()
                return
            event = json.loads(body)
            if event["id"] not in seen:  # idempotent: act once per event id
                seen.add(event["id"])
                action = event["suggested_action"]
                print(f'{event["type"]} {event["incident"]["kind"]} '
                      f'{action["action"]} {action["provider"]}/{action["model"]}', flush=True)
            self.send_response(204)
            self.end_headers()

    HTTPServer(("127.0.0.1", port), Handler).serve_forever()


def main(argv):
    secret = os.environ.get("SEMTAP_WEBHOOK_SECRET", "")
    if not secret:
        print("SEMTAP_WEBHOOK_SECRET is not set", file=sys.stderr)
        return 2
    if len(argv) >= 2 and argv[0] == "check":
        ok = verify(secret, argv[1], sys.stdin.buffer.read())
        print("ok" if ok else "rejected")
        return 0 if ok else 1
    if argv and argv[0] == "serve":
        port = int(argv[2]) if len(argv) >= 3 and argv[1] == "--port" else 8000
        serve(port, secret)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
