"""The transform stage: an ordered chain of steps, declared in the settings file's
`[[transform]]` tables, applied to decoded records between decode and windows. Pure
(consumer/transform/tables.py and plugin.py are the shell's parts: files, S3, imports).

Input and output: TRecord, a record's fields (a dict) with its RawRecord for provenance. A
chain returns a ChainResult: the records that came through, the Rejected ones (stage
"transform", reason "<step>:<class>", the raw record whole), and how many records each filter
removed. A record is never dropped silently and a step never raises for a record.

Steps: rename, drop, set, derive (an expression), convert (a unit or a type), filter (an
expression), lookup (a CSV / NDJSON table from a file or S3), route (to named aggregations,
in the record's `_aggregations`), plugin (`module:function`, a batch in and a batch out).

Expressions are CEL (github.com/google/cel-spec), run by common-expression-language (Rust).
Compared on one derive over 100,000 records (examples/transform/expr_bench.py, one run):
  - CEL, common-expression-language 0.10.0: 815,000 records/s (passing the fields the
    expression names; 173,000/s passing the whole record, hence expr.py passes only those);
  - simpleeval 1.0.8: 595,000 records/s, but it is a deny-list over Python: it reaches
    attributes and methods of the values (`name.upper()`, `d.keys`) and can change them
    (`d.pop('k')` removed a field from the record in our test);
  - cel-python 0.5.0 (pure Python): 5,700 records/s;
  - JMESPath 1.1.0: no arithmetic at all, so no derive.
CEL is safe by design, not by a deny-list: no attribute access on host objects, no imports,
no side effects, no unbounded loops (macros range over finite lists), and a spec shared with
Kubernetes, Envoy and IAM conditions. Its cost: the wheel requires its REPL's libraries
(typer, rich, prompt-toolkit, pygments and theirs, pydantic among them: 13 more packages in
requirements.lock), and `import cel` loads them (~0.13 s), paid only by a processor whose
chain has an expression (expr.py imports it on first use). simpleeval has no dependencies;
if the image's size matters more than the sandbox, it is the fallback.
"""

from consumer.transform.chain import Chain
from consumer.transform.model import ROUTE_FIELD, STAGE, ChainResult, Reject, TRecord

__all__ = ["ROUTE_FIELD", "STAGE", "Chain", "ChainResult", "Reject", "TRecord"]
