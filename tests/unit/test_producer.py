"""The producer: deterministic records, KPL aggregates per partition key that deaggregate back."""

from aws_kinesis_agg.deaggregator import deaggregate_records

from consumer.local.producer import (
    KPL_MAGIC,
    POISON_KINDS,
    ProducerSpec,
    generate,
    to_kinesis_entries,
)


def test_generation_is_deterministic_and_exact() -> None:
    spec = ProducerSpec(records=500, poison_ratio=0.1, kpl_fraction=0.5)
    a, b = list(generate(spec)), list(generate(spec))
    assert a == b
    assert len(a) == 500
    assert {r.poison for r in a if r.poison} <= set(POISON_KINDS)
    assert 20 < sum(r.poison is not None for r in a) < 80


def test_aggregates_hold_one_partition_key_and_deaggregate_exactly() -> None:
    records = list(generate(ProducerSpec(records=400, devices=7, kpl_fraction=1.0)))
    entries = to_kinesis_entries(records, per_aggregate=25)
    assert len(entries) < len(records)
    recovered = []
    for e in entries:
        assert e["Data"].startswith(KPL_MAGIC)
        import base64

        user = deaggregate_records(
            [
                {
                    "kinesis": {
                        "data": base64.b64encode(e["Data"]).decode(),
                        "partitionKey": e["PartitionKey"],
                        "sequenceNumber": "1",
                        "kinesisSchemaVersion": "1.0",
                        "approximateArrivalTimestamp": 1.0,
                    }
                }
            ]
        )
        assert {u["kinesis"]["partitionKey"] for u in user} == {e["PartitionKey"]}
        recovered += [base64.b64decode(u["kinesis"]["data"]) for u in user]
    assert sorted(recovered) == sorted(r.data for r in records)
