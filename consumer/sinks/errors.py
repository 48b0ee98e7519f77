"""Which errors are worth retrying: fatal by default (modelled on Flink's FatalExceptionClassifier).

`classify` names the kind of an error; only throttling, an unavailable server, a lost or
refused connection, a timeout and a serialization conflict are retryable. Everything else,
auth and permission errors, missing resources, bad data or schema, and our own programming
errors, is fatal: retrying it can only hang the shard. Pure functions: no I/O, no logging.

Each library is read by its own structured fields (AWS error code and HTTP status, SQLSTATE,
OpenSearch status), falling back to message text only where the library gives nothing else
(libpq reports connect-time failures without a SQLSTATE). An error we do not recognise but
that was raised `from` another is judged by its cause, so a wrapper keeps its cause's verdict.
"""

from __future__ import annotations

import errno
import re
import socket
import ssl
import sys
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import botocore.exceptions as boto_exc
import urllib3.exceptions as u3_exc

if TYPE_CHECKING:
    import psycopg2


class ErrorKind(StrEnum):
    THROTTLING = "throttling"
    UNAVAILABLE = "unavailable"  # 5xx, internal error, server out of resources
    CONNECTION = "connection"  # refused, reset, closed, lost
    TIMEOUT = "timeout"
    CONFLICT = "conflict"  # serialization failure, deadlock
    LEASE_LOST = "lease_lost"  # KCL: another worker owns the shard; stop, do not retry
    AUTH = "auth"  # authentication, authorization, untrusted certificate
    NOT_FOUND = "not_found"  # bucket, stream, table, column, schema, index
    INVALID = "invalid"  # bad request, data or schema
    PROGRAMMING = "programming"  # a bug on our side
    UNCLASSIFIED = "unclassified"  # nothing says it is transient, so it is fatal


RETRYABLE_KINDS = frozenset(
    {
        ErrorKind.THROTTLING,
        ErrorKind.UNAVAILABLE,
        ErrorKind.CONNECTION,
        ErrorKind.TIMEOUT,
        ErrorKind.CONFLICT,
    }
)


def is_retryable(exc: BaseException) -> bool:
    return classify(exc) in RETRYABLE_KINDS


def classify(exc: BaseException) -> ErrorKind:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        kind = _own_kind(current)
        if kind is not None:
            return kind
        current = current.__cause__  # explicit `raise X from cause` only, never __context__
    return ErrorKind.UNCLASSIFIED


def _own_kind(exc: BaseException) -> ErrorKind | None:
    # Order matters: botocore's timeouts are also urllib3 errors and OSErrors.
    readers = (psycopg2_kind, botocore_kind, opensearch_kind, kcl_kind, urllib3_kind, os_kind)
    for reader in readers:
        kind = reader(exc)
        if kind is not None:
            return kind
    if isinstance(exc, _PROGRAMMING_ERRORS):
        return ErrorKind.PROGRAMMING
    return None


_PROGRAMMING_ERRORS = (
    LookupError,
    TypeError,
    ValueError,  # includes UnicodeError
    AttributeError,
    NameError,
    AssertionError,
    NotImplementedError,
    ArithmeticError,
    RecursionError,
    ImportError,
)

# ---------------------------------------------------------------- AWS (codes and HTTP status)

# botocore's standard retry mode lists (retries/standard.py), plus service-specific ones.
THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "TransactionInProgressException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "LimitExceededException",
        "RequestThrottled",
        "SlowDown",
        "PriorRequestNotComplete",
        "EC2ThrottledException",
        "KMSThrottlingException",
        "RequestLimitExceededException",
    }
)
UNAVAILABLE_CODES = frozenset(
    {
        "InternalError",
        "InternalFailure",
        "InternalServerError",
        "InternalServerException",
        "InternalServiceError",
        "InternalServiceException",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "ServiceException",
        "KMSInternalException",
    }
)
TIMEOUT_CODES = frozenset({"RequestTimeout", "RequestTimeoutException"})
CONFLICT_CODES = frozenset({"TransactionConflictException"})
AUTH_CODES = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "ExpiredTokenException",
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "InvalidToken",
        "InvalidSignatureException",
        "IncompleteSignature",
        "MissingAuthenticationToken",
        "MissingAuthenticationTokenException",
        "AuthFailure",
        "UnauthorizedOperation",
        "NotAuthorized",
        "KMSAccessDeniedException",
        "AllAccessDisabled",
    }
)
NOT_FOUND_CODES = frozenset(
    {
        "NoSuchBucket",
        "NoSuchKey",
        "NoSuchUpload",
        "NoSuchEntity",
        "NotFound",
        "ResourceNotFoundException",
        "ResourceNotFound",
        "KMSNotFoundException",
    }
)

_CODE_KINDS: tuple[tuple[frozenset[str], ErrorKind], ...] = (
    (THROTTLING_CODES, ErrorKind.THROTTLING),
    (UNAVAILABLE_CODES, ErrorKind.UNAVAILABLE),
    (TIMEOUT_CODES, ErrorKind.TIMEOUT),
    (CONFLICT_CODES, ErrorKind.CONFLICT),
    (AUTH_CODES, ErrorKind.AUTH),
    (NOT_FOUND_CODES, ErrorKind.NOT_FOUND),
)


def http_status_kind(status: int) -> ErrorKind:
    """The kind an HTTP error status means on its own (OpenSearch and AWS alike)."""
    if status == 429:
        return ErrorKind.THROTTLING
    if status >= 500:
        return ErrorKind.UNAVAILABLE
    if status in (401, 403):
        return ErrorKind.AUTH
    if status == 404:
        return ErrorKind.NOT_FOUND
    if status == 408:
        return ErrorKind.TIMEOUT
    return ErrorKind.INVALID


def aws_code_kind(code: str | None, status: int | None = None) -> ErrorKind:
    """An AWS error code (also PutRecords' per-entry ErrorCode), else its HTTP status."""
    for codes, kind in _CODE_KINDS:
        if code in codes:
            return kind
    if status is not None and status >= 400:
        return http_status_kind(status)
    return ErrorKind.INVALID


def _ssl_kind(cause: object) -> ErrorKind:
    # An untrusted certificate will not fix itself; a TLS session torn down mid-way may.
    if isinstance(cause, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(
        cause
    ):
        return ErrorKind.AUTH
    return ErrorKind.CONNECTION


def botocore_kind(exc: BaseException) -> ErrorKind | None:
    if isinstance(exc, boto_exc.ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return aws_code_kind(error.get("Code"), status)
    if not isinstance(exc, boto_exc.BotoCoreError):
        return None
    if isinstance(exc, boto_exc.ConnectTimeoutError | boto_exc.ReadTimeoutError):
        return ErrorKind.TIMEOUT
    if isinstance(exc, boto_exc.SSLError):
        return _ssl_kind(exc.kwargs.get("error"))
    if isinstance(
        exc,
        boto_exc.ConnectionError
        | boto_exc.HTTPClientError
        | boto_exc.IncompleteReadError,
    ):
        return ErrorKind.CONNECTION  # includes EndpointConnectionError, ConnectionClosedError
    if isinstance(
        exc,
        boto_exc.NoCredentialsError
        | boto_exc.PartialCredentialsError
        | boto_exc.CredentialRetrievalError
        | boto_exc.TokenRetrievalError,
    ):
        return ErrorKind.AUTH
    if isinstance(exc, boto_exc.ParamValidationError):
        return ErrorKind.PROGRAMMING
    return ErrorKind.UNCLASSIFIED


# ---------------------------------------------------------------- PostgreSQL / Redshift


def _sqlstate_kind(code: str) -> ErrorKind | None:
    if code in ("40001", "40P01"):  # serialization_failure, deadlock_detected
        return ErrorKind.CONFLICT
    if code.startswith("08") or code in ("57P01", "57P02", "57P03"):  # connection; shutdowns
        return ErrorKind.CONNECTION
    if code in ("57014", "55P03"):  # query_canceled (statement_timeout), lock_not_available
        return ErrorKind.TIMEOUT
    if code.startswith("53"):  # insufficient resources: too many connections, disk, memory
        return ErrorKind.UNAVAILABLE
    if code.startswith("28") or code == "42501":  # invalid authorization; insufficient_privilege
        return ErrorKind.AUTH
    if code in ("42P01", "42703", "3F000", "3D000", "42883", "42704"):
        return ErrorKind.NOT_FOUND  # table, column, schema, database, function, object
    if code[:2] in ("22", "23", "42", "0A"):  # data, integrity, syntax/access, unsupported
        return ErrorKind.INVALID
    return None


# Redshift reports its serializable isolation violation as SQLSTATE XX000, message "1023".
_REDSHIFT_1023 = re.compile(r"serializable isolation violation", re.IGNORECASE)

# libpq's connect-time and lost-connection failures carry no SQLSTATE: only text. The fatal
# ones come first, because a connect failure's text also starts "connection to server ...".
_PG_TEXT_KINDS = (
    (
        r"password authentication failed|no pg_hba\.conf entry|role \".*\" does not exist"
        r"|authentication failed|certificate verify failed",
        ErrorKind.AUTH,
    ),
    (r"database \".*\" does not exist|name or service not known", ErrorKind.NOT_FOUND),
    (r"invalid dsn|invalid connection option|does not support ssl|ssl.* required",
     ErrorKind.INVALID),
    (r"timeout expired|timed out", ErrorKind.TIMEOUT),
    (
        r"connection refused|could not connect|server closed the connection"
        r"|connection already closed|terminating connection|could not receive data"
        r"|could not send data|ssl syscall error|eof detected|no route to host"
        r"|network is unreachable|connection reset|broken pipe|could not translate host name"
        r"|lost synchronization|the connection is closed|connection to server .* failed",
        ErrorKind.CONNECTION,
    ),
)
_PG_TEXT = tuple((re.compile(p, re.IGNORECASE), kind) for p, kind in _PG_TEXT_KINDS)


def _pg_text(exc: psycopg2.Error) -> str:
    diag = exc.diag
    parts = (str(exc), diag.message_primary or "", diag.message_detail or "")
    return "\n".join(parts)


def _psycopg2() -> Any:
    """psycopg2 if it is loaded: as with opensearchpy below, a PostgreSQL error can only come
    from a loaded driver, and a processor with Redshift off need not import it."""
    return sys.modules.get("psycopg2")


def psycopg2_kind(exc: BaseException) -> ErrorKind | None:
    psycopg2 = _psycopg2()
    if psycopg2 is None or not isinstance(exc, psycopg2.Error):
        return None
    text = _pg_text(exc)
    internal = isinstance(exc, psycopg2.InternalError) or exc.pgcode == "XX000"
    if internal and _REDSHIFT_1023.search(text):  # not in a data error quoting that text
        return ErrorKind.CONFLICT
    if exc.pgcode:
        kind = _sqlstate_kind(exc.pgcode)
        if kind is not None:
            return kind
    if isinstance(exc, psycopg2.OperationalError | psycopg2.InterfaceError) and not exc.pgcode:
        for pattern, kind in _PG_TEXT:
            if pattern.search(text):
                return kind
        if _connection_lost(exc):
            return ErrorKind.CONNECTION
    if isinstance(exc, psycopg2.DataError | psycopg2.IntegrityError | psycopg2.ProgrammingError):
        return ErrorKind.INVALID
    if isinstance(exc, psycopg2.NotSupportedError):
        return ErrorKind.INVALID
    return ErrorKind.UNCLASSIFIED


def _connection_lost(exc: psycopg2.Error) -> bool:
    # psycopg2 marks a connection whose socket broke as closed (2) on the cursor's connection.
    cursor = exc.cursor
    return cursor is not None and bool(cursor.connection.closed)


# ---------------------------------------------------------------- KCL checkpoints

# The MultiLangDaemon answers a failed checkpoint with the Java exception's simple name.
_KCL_KINDS = {
    "ThrottlingException": ErrorKind.THROTTLING,  # the lease table is busy
    "KinesisClientLibDependencyException": ErrorKind.UNAVAILABLE,  # DynamoDB failed
    "ShutdownException": ErrorKind.LEASE_LOST,
    "InvalidStateException": ErrorKind.INVALID,
}


def kcl_checkpoint_kind(name: str) -> ErrorKind:
    return _KCL_KINDS.get(name, ErrorKind.UNCLASSIFIED)


def kcl_kind(exc: BaseException) -> ErrorKind | None:
    # amazon-kclpy is installed apart from the wheel pins (scripts/install-kclpy.sh): match by
    # name and module rather than import it here.
    cls = type(exc)
    if cls.__name__ == "CheckpointError" and cls.__module__.startswith("amazon_kclpy"):
        return kcl_checkpoint_kind(str(getattr(exc, "value", "")))
    return None


# ---------------------------------------------------------------- OpenSearch, urllib3, OS


def _opensearch_exceptions() -> Any:
    """opensearchpy's exceptions module if it is loaded: an OpenSearch error can only come
    from a loaded client, and importing opensearchpy (with aiohttp) costs a processor ~0.2 s
    of start-up when OpenSearch is off."""
    return sys.modules.get("opensearchpy.exceptions")


def opensearch_kind(exc: BaseException) -> ErrorKind | None:
    os_exc = _opensearch_exceptions()
    if os_exc is None:
        return None
    if isinstance(exc, os_exc.ConnectionTimeout):
        return ErrorKind.TIMEOUT
    if isinstance(exc, os_exc.SSLError):
        return _ssl_kind(exc.info)
    if isinstance(exc, os_exc.ConnectionError):
        return ErrorKind.CONNECTION
    if isinstance(exc, os_exc.TransportError):
        status = exc.status_code
        if isinstance(status, int):
            return http_status_kind(status)
        return ErrorKind.CONNECTION  # "N/A": no response at all
    if isinstance(exc, os_exc.SerializationError):
        return ErrorKind.INVALID
    if isinstance(exc, os_exc.ImproperlyConfigured):
        return ErrorKind.PROGRAMMING
    return None


def opensearch_item_kind(status: int) -> ErrorKind:
    """A _bulk item's failure: 429 (es_rejected_execution_exception) and 5xx retry."""
    return http_status_kind(status)


def urllib3_kind(exc: BaseException) -> ErrorKind | None:
    if not isinstance(exc, u3_exc.HTTPError):
        return None
    if isinstance(exc, u3_exc.MaxRetryError):
        return classify(exc.reason) if exc.reason is not None else ErrorKind.CONNECTION
    if isinstance(exc, u3_exc.NewConnectionError):  # before ConnectTimeoutError, its base
        return ErrorKind.CONNECTION
    if isinstance(exc, u3_exc.TimeoutError):
        return ErrorKind.TIMEOUT
    if isinstance(exc, u3_exc.SSLError):
        return _ssl_kind(exc.args[0] if exc.args else exc)
    if isinstance(
        exc,
        u3_exc.ProtocolError | u3_exc.ProxyError | u3_exc.IncompleteRead | u3_exc.ClosedPoolError,
    ):
        return ErrorKind.CONNECTION
    return None


_NETWORK_ERRNOS = frozenset(
    {
        errno.ECONNRESET,
        errno.ECONNREFUSED,
        errno.ECONNABORTED,
        errno.EPIPE,
        errno.ENETUNREACH,
        errno.ENETDOWN,
        errno.EHOSTUNREACH,
        errno.EHOSTDOWN,
        errno.ENOTCONN,
    }
)


def os_kind(exc: BaseException) -> ErrorKind | None:
    # Only the network side of OSError: FileNotFoundError or PermissionError are not transient.
    if isinstance(exc, ssl.SSLError):  # an OSError too
        return _ssl_kind(exc)
    if isinstance(exc, TimeoutError) or (isinstance(exc, OSError) and exc.errno == errno.ETIMEDOUT):
        return ErrorKind.TIMEOUT
    if isinstance(exc, ConnectionError):
        return ErrorKind.CONNECTION
    if isinstance(exc, socket.gaierror):
        return ErrorKind.CONNECTION if exc.errno == socket.EAI_AGAIN else ErrorKind.NOT_FOUND
    if isinstance(exc, OSError) and exc.errno in _NETWORK_ERRNOS:
        return ErrorKind.CONNECTION
    return None


# ---------------------------------------------------------------- one-line description


def error_code(exc: BaseException) -> str | None:
    """The library's own code: AWS error code, SQLSTATE, OpenSearch status and error type."""
    if isinstance(exc, boto_exc.ClientError):
        code = exc.response.get("Error", {}).get("Code")
        return str(code) if code else None
    pg = _psycopg2()
    if pg is not None and isinstance(exc, pg.Error):
        return str(exc.pgcode) if exc.pgcode else None
    os_exc = _opensearch_exceptions()
    if (os_exc is not None and isinstance(exc, os_exc.TransportError)
            and not isinstance(exc, os_exc.ConnectionError)):
        return f"{exc.status_code} {exc.error}".strip()
    if kcl_kind(exc) is not None:
        return str(getattr(exc, "value", ""))
    return None


def describe(exc: BaseException, max_chars: int = 300) -> str:
    """`Class[code] (kind): message` on one line, for logs and /readyz."""
    code = error_code(exc)
    name = type(exc).__name__  # botocore names modeled errors after their code
    head = name + (f"[{code}]" if code and code != name else "")
    message = " ".join(str(exc).split())
    if len(message) > max_chars:
        message = message[: max_chars - 3] + "..."
    return f"{head} ({classify(exc)}): {message}" if message else f"{head} ({classify(exc)})"
