"""Schemathesis hooks for flashsale: webhook bodies are signed as the payment provider signs them.

The signature is over the exact bytes sent, so it is computed here from the body schemathesis is
about to send (serialized as `requests` serializes `json=`). A case that leaves the header out
stays unsigned: that tests the refusal of an unsigned webhook.
"""

import hashlib
import hmac
import json
import os
import time

import schemathesis

SECRET = os.environ["FLASHSALE_WEBHOOK_SECRET"].split(",")[0].encode()
HEADER = "x-flashsale-signature"


@schemathesis.hook
def before_call(ctx, case, kwargs):
    if case.operation.path != "/api/payments/webhook" or case.body is None:
        return
    if not isinstance(case.body, (dict, list, str, int, float, bool)):
        return
    headers = dict(case.headers or {})
    if not any(name.lower() == HEADER for name in headers):
        return
    raw = json.dumps(case.body, allow_nan=False).encode()
    t = int(time.time())
    tag = hmac.new(SECRET, f"{t}.".encode() + raw, hashlib.sha256).hexdigest()
    headers = {name: value for name, value in headers.items() if name.lower() != HEADER}
    headers["X-Flashsale-Signature"] = f"t={t},v1={tag}"
    case.headers = headers
