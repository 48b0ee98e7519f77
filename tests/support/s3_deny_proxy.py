"""An HTTP proxy in front of an S3 server that refuses one shard's writes the way S3 does.

A stand-in for a bucket policy with a Deny on `s3:PutObject` for one partition prefix: moto
serves S3 but evaluates no bucket policies. While `deny` is set, every PUT or POST whose path
holds `shard=<deny>/` is answered 403 with S3's own AccessDenied error document, without being
forwarded; everything else goes to the upstream and back, headers included. boto3 turns the
answer into the same ClientError (`AccessDenied`) a real bucket policy gives.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from tests.support.http_proxy import Answer, ForwardingProxy

ACCESS_DENIED = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
                 b"<Message>Access Denied</Message><RequestId>DENYPROXY</RequestId></Error>")


class S3DenyProxy(ForwardingProxy):
    def __init__(self, upstream: str, deny: str | None = None) -> None:
        super().__init__(upstream)
        self.deny = deny  # a shard id, or None to pass everything through
        self.denied = 0

    def refuses(self, method: str, path: str) -> bool:
        shard = self.deny
        if shard is None or method not in ("PUT", "POST"):
            return False
        if f"shard={shard}/" not in unquote(urlsplit(path).path):
            return False
        with self._lock:
            self.denied += 1
        return True

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Answer:
        if self.refuses(method, path):
            return 403, [("Content-Type", "application/xml")], ACCESS_DENIED
        return self.forward(method, path, headers, body)
