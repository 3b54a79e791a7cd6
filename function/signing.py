"""Standard Webhooks signatures for callbacks (https://www.standardwebhooks.com/).

Each signed callback carries `webhook-id` (the job's CloudEvent id, the same on every retry, so a receiver
can drop duplicates), `webhook-timestamp` (Unix seconds of this attempt) and
`webhook-signature: v1,<base64 HMAC-SHA256 over "<id>.<timestamp>.<body>">`. The secret is a
`whsec_<base64>` string, as the spec's libraries generate.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from datetime import UTC, datetime

from standardwebhooks import Webhook

SECRET_PREFIX = "whsec_"
# A header value the id is sent as unchanged: printable ASCII, no spaces, bounded.
SAFE_ID = re.compile(r"[\x21-\x7e]{1,256}", re.ASCII)


def secret_bytes(secret: str) -> bytes:
    """The key inside a `whsec_<base64>` (or bare base64) secret; raises ValueError without echoing it."""
    encoded = secret[len(SECRET_PREFIX) :] if secret.startswith(SECRET_PREFIX) else secret
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("must be 'whsec_' followed by base64") from None
    if len(key) < 24:
        raise ValueError(f"must hold at least 24 bytes of key (the spec asks for 24 to 64), got {len(key)}")
    return key


def webhook_id(event_id: str) -> str:
    """The `webhook-id` for an event: the id itself when it is a safe header value, else a stable digest."""
    if SAFE_ID.fullmatch(event_id):
        return event_id
    return "evt_" + hashlib.sha256(event_id.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def signature_headers(secret: str | None, msg_id: str, body: bytes, when: datetime | None = None) -> dict[str, str]:
    """The Standard Webhooks headers for one attempt; without a secret only `webhook-id` is sent."""
    if secret is None:
        return {"webhook-id": msg_id}
    moment = (when or datetime.now(UTC)).astimezone(UTC)
    signature = Webhook(secret_bytes(secret)).sign(msg_id, moment, body.decode("utf-8"))
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(moment.timestamp())),
        "webhook-signature": signature,
    }
