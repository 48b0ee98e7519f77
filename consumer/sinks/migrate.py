"""`aetherstream migrate`: create what the sinks write into. Idempotent; safe on every start.

- Redshift: the schema, the raw-records and window-results tables (no primary keys: Redshift
  would not enforce them) and the view that merges partial results from several shards.
- OpenSearch: the index templates behind the daily indices and their aliases.
Both as consumer/sinks/schema.py derives them from the settings' contract, and for each
declared aggregation (the settings file's [[aggregation]] tables) its own results table,
merged view and index template.
Fencing needs no table of ours: processors read KCL's own lease table, and the Redshift
fence rows are created with the schema.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from consumer.config import Settings
from consumer.sinks.schema import output_schema

log = logging.getLogger(__name__)


def migrate_all(settings: Settings, aggregations: Sequence[str] = ()) -> list[str]:
    schema = output_schema(settings.contract.key_fields)  # the same tables the sinks write
    done = []
    if settings.redshift.enabled:
        import psycopg2

        from consumer.sinks.redshift import migrate

        conn = psycopg2.connect(settings.redshift.connect_dsn())
        try:
            migrate(conn, settings.redshift.schema, schema, aggregations)
        finally:
            conn.close()
        done.append(f"redshift schema {settings.redshift.schema}")
    if settings.opensearch.enabled:
        from consumer.sinks.opensearch import install_templates
        from consumer.sinks.routes import opensearch_for

        install_templates(opensearch_for(settings), settings.opensearch.index_prefix,
                          schema=schema, aggregations=aggregations)
        done.append(f"opensearch templates {settings.opensearch.index_prefix}-*")
    for item in done:
        log.info("migrated", extra={"what": item})
    return done
