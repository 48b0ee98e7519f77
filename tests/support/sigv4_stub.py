"""An HTTP stub that, like an IAM-protected OpenSearch domain, answers 403 to any request
without a valid AWS Signature Version 4, and records every request with its verdict.

The signature is checked independently of botocore (the signer under test), by recomputing
it from the request as it arrived on the wire with the secret of the access key it names:
canonical request, string to sign, the derived signing key, and the payload hash against
the body. Valid requests get a small OpenSearch-like JSON answer.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl, quote, urlsplit

from tests.support.stub_servers import Answer, Seen, json_answer, scripted_http_server

_AUTH = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/"
    r"(?P<service>[^/]+)/aws4_request, ?SignedHeaders=(?P<signed>[^,]+), ?"
    r"Signature=(?P<sig>[0-9a-f]{64})$"
)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str
    access_key: str | None = None
    region: str | None = None
    service: str | None = None
    scope: str | None = None
    signed_headers: tuple[str, ...] = ()


@dataclass
class SigV4Stub:
    url: str
    seen: list[tuple[Seen, Verdict]] = field(default_factory=list)


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def _canonical_query(query: str) -> str:
    pairs = sorted(parse_qsl(query, keep_blank_values=True))
    return "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in pairs)


def verify(request: Seen, secrets: dict[str, str], tokens: dict[str, str]) -> Verdict:
    header = request.headers.get("authorization")
    if header is None:
        return Verdict(False, "no Authorization header")
    m = _AUTH.match(header)
    if m is None:
        return Verdict(False, f"not a SigV4 Authorization header: {header[:40]}")
    key, region, service = m["key"], m["region"], m["service"]
    signed = tuple(m["signed"].split(";"))
    scope = f"{m['date']}/{region}/{service}/aws4_request"
    base = Verdict(False, "", key, region, service, scope, signed)
    if key not in secrets:
        return _with(base, "unknown access key")
    amz_date = request.headers.get("x-amz-date", "")
    try:
        when = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        return _with(base, "missing or malformed X-Amz-Date")
    if abs(datetime.now(UTC) - when) > timedelta(minutes=15) or amz_date[:8] != m["date"]:
        return _with(base, "X-Amz-Date outside 15 minutes or not the scope's date")
    if "host" not in signed or "x-amz-date" not in signed:
        return _with(base, "host and x-amz-date must be signed")
    if key in tokens and (
        request.headers.get("x-amz-security-token") != tokens[key]
        or "x-amz-security-token" not in signed
    ):
        return _with(base, "session token missing, wrong or unsigned")
    payload_hash = hashlib.sha256(request.body).hexdigest()
    if request.headers.get("x-amz-content-sha256", payload_hash) != payload_hash:
        return _with(base, "X-Amz-Content-SHA256 does not match the body")
    parts = urlsplit(request.path)
    canonical = "\n".join(
        [
            request.method,
            quote(parts.path or "/", safe="/~"),  # non-S3 services: encode the path again
            _canonical_query(parts.query),
            "".join(f"{h}:{' '.join(request.headers.get(h, '').split())}\n" for h in signed),
            ";".join(signed),
            payload_hash,
        ]
    )
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    k = _hmac(("AWS4" + secrets[key]).encode(), m["date"])
    for part in (region, service, "aws4_request"):
        k = _hmac(k, part)
    expected = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, m["sig"]):
        return _with(base, "signature does not match")
    return Verdict(True, "ok", key, region, service, scope, signed)


def _with(v: Verdict, reason: str) -> Verdict:
    return Verdict(False, reason, v.access_key, v.region, v.service, v.scope, v.signed_headers)


def _ok_body(request: Seen) -> Answer:
    if request.method in ("GET", "HEAD") and urlsplit(request.path).path == "/":
        version = {"number": "2.17.0", "distribution": "opensearch"}
        return json_answer(200, {"cluster_name": "stub", "version": version})
    if request.method == "PUT" and "/_doc/" in request.path:
        index, _, doc_id = urlsplit(request.path).path.strip("/").partition("/_doc/")
        doc = {"_index": index, "_id": doc_id, "_version": 1, "result": "created"}
        return json_answer(201, doc)
    return json_answer(200, {"acknowledged": True})


@contextmanager
def sigv4_stub(
    secrets: dict[str, str], tokens: dict[str, str] | None = None
) -> Iterator[SigV4Stub]:
    """`secrets`: access key -> secret key; `tokens`: access key -> required session token."""
    records: list[tuple[Seen, Verdict]] = []
    required_tokens = tokens or {}

    def answer(request: Seen) -> Answer:
        verdict = verify(request, secrets, required_tokens)
        records.append((request, verdict))
        if not verdict.ok:
            # What the AWS front end of an OpenSearch domain answers an unsigned request with.
            message = f"User: anonymous is not authorized ({verdict.reason})"
            return json_answer(403, {"message": message})
        return _ok_body(request)

    with scripted_http_server(answer) as http:
        yield SigV4Stub(http.url, records)
