"""The embedded local stack against real servers: one round trip per service, then a full stop."""

from __future__ import annotations

import json
import os
import select
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import botocore.exceptions
import psutil
import psycopg2
import pytest
from opensearchpy import OpenSearch

from consumer.local.emulators import (
    Endpoints,
    LocalStack,
    StartupError,
    boto3_client,
    find_java,
    find_node,
)
from consumer.local.procs import port_is_open
from consumer.local.reconcile import ObjectCounter
from consumer.local.tooling import patched_kinesis_mock

pytestmark = pytest.mark.integration

STREAM = "it-stream"
BUCKET = "it-bucket"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    st = LocalStack(tmp_path_factory.mktemp("stack"), stream=STREAM, bucket=BUCKET)
    st.start()
    yield st
    st.stop()


@pytest.fixture(scope="module")
def ep(stack: LocalStack) -> Endpoints:
    return stack.endpoints


def _tcp_ports(ep: Endpoints) -> list[int]:
    urls = [ep.kinesis_endpoint, ep.dynamodb_endpoint, ep.s3_endpoint, ep.opensearch_url]
    return [p for p in (urlsplit(u).port for u in urls) if p is not None]


def test_start_up_times_are_measured(stack: LocalStack) -> None:
    names = {"kinesis-mock", "dynalite", "moto", "osmem", "postgres", "total"}
    assert names <= stack.startup_seconds.keys()


def test_servers_listen_on_localhost_only(stack: LocalStack) -> None:
    for pid in stack.pids:
        for conn in psutil.Process(pid).net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN:
                assert conn.laddr.ip == "127.0.0.1", (pid, conn)


def test_kinesis_put_and_get_record(ep: Endpoints) -> None:
    kinesis = boto3_client("kinesis", ep)
    shards = kinesis.list_shards(StreamName=STREAM)["Shards"]
    assert len(shards) == 4
    put = kinesis.put_record(StreamName=STREAM, Data=b'{"n": 1}', PartitionKey="pk-1")
    iterator = kinesis.get_shard_iterator(
        StreamName=STREAM, ShardId=put["ShardId"], ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    records = kinesis.get_records(ShardIterator=iterator)["Records"]
    assert [(r["Data"], r["SequenceNumber"]) for r in records] == [
        (b'{"n": 1}', put["SequenceNumber"])
    ]


def test_kinesis_speaks_h2c_for_the_kcl(ep: Endpoints) -> None:
    # The KCL talks HTTP/2 with prior knowledge to an http:// endpoint; the server must answer
    # the connection preface with a SETTINGS frame (werkzeug-style servers answer HTTP/1.1).
    port = urlsplit(ep.kinesis_endpoint).port
    assert port is not None
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes(9)[:3] + b"\x04" + bytes(5))
        header = sock.recv(9)
    assert len(header) == 9 and header[3] == 0x04, header


def test_dynamodb_table_round_trip(ep: Endpoints) -> None:
    ddb = boto3_client("dynamodb", ep)
    ddb.create_table(
        TableName="leases",
        KeySchema=[{"AttributeName": "leaseKey", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "leaseKey", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    deadline = time.monotonic() + 10
    while ddb.describe_table(TableName="leases")["Table"]["TableStatus"] != "ACTIVE":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    item = {"leaseKey": {"S": "shardId-000000000000"}, "checkpoint": {"S": "TRIM_HORIZON"}}
    ddb.put_item(TableName="leases", Item=item)
    got = ddb.get_item(TableName="leases", Key={"leaseKey": item["leaseKey"]}, ConsistentRead=True)
    assert got["Item"] == item


def test_dynamodb_survives_a_client_that_drops_a_request_mid_body(stack: LocalStack,
                                                                 ep: Endpoints) -> None:
    # A SIGKILLed KCL worker closes its socket mid-request. dynalite itself rethrows that
    # error and exits, taking every worker's leases with it; the stack preloads a guard.
    port = urlsplit(ep.dynamodb_endpoint).port
    assert port is not None
    with socket.create_connection(("127.0.0.1", port)) as half:
        half.sendall(b"POST / HTTP/1.1\r\nHost: dynamodb\r\nContent-Length: 100\r\n"
                     b"Content-Type: application/x-amz-json-1.0\r\n\r\n{\"TableName\":")
        time.sleep(0.2)  # the server has read the partial body before the socket closes
    time.sleep(0.3)
    boto3_client("dynamodb", ep).list_tables()  # refused if dynalite exited
    log = (stack.log_dir / "dynalite.log").read_text()
    assert "a client dropped a request mid-body" in log


def test_s3_conditional_put_refuses_second_create(ep: Endpoints) -> None:
    s3 = boto3_client("s3", ep)
    s3.put_object(Bucket=BUCKET, Key="a/part-0", Body=b"first", IfNoneMatch="*")
    with pytest.raises(botocore.exceptions.ClientError) as err:
        s3.put_object(Bucket=BUCKET, Key="a/part-0", Body=b"second", IfNoneMatch="*")
    assert err.value.response["Error"]["Code"] == "PreconditionFailed"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert s3.get_object(Bucket=BUCKET, Key="a/part-0")["Body"].read() == b"first"


def test_cloudwatch_metric_round_trip(ep: Endpoints) -> None:
    cw = boto3_client("cloudwatch", ep)
    now = datetime.now(UTC)
    cw.put_metric_data(
        Namespace="AetherStream/IT",
        MetricData=[{"MetricName": "rows", "Value": v, "Timestamp": now} for v in (2.0, 3.0)],
    )
    res = cw.get_metric_data(
        MetricDataQueries=[{
            "Id": "rows",
            "MetricStat": {
                "Metric": {"Namespace": "AetherStream/IT", "MetricName": "rows"},
                "Period": 60,
                "Stat": "Sum",
            },
        }],
        StartTime=now - timedelta(minutes=5),
        EndTime=now + timedelta(minutes=1),
    )
    assert sum(res["MetricDataResults"][0]["Values"]) == 5.0


def test_postgres_select_and_create_table(ep: Endpoints) -> None:
    conn = psycopg2.connect(ep.postgres_dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT 1, current_database()")
            assert cur.fetchone() == (1, "aetherstream")
            cur.execute("CREATE TABLE it_rows (id bigint, payload varchar(256))")
            cur.execute("INSERT INTO it_rows VALUES (1, 'x')")
            cur.execute("SELECT count(*) FROM it_rows")
            assert cur.fetchone() == (1,)
    finally:
        conn.close()


def test_opensearch_index_and_get(ep: Endpoints) -> None:
    client = OpenSearch(hosts=[ep.opensearch_url])
    client.index(index="it-events", id="e1", body={"n": 1, "kind": "click"}, refresh=True)
    assert client.get(index="it-events", id="e1")["_source"] == {"n": 1, "kind": "click"}


def test_find_java_and_node_are_executable() -> None:
    node, npm = find_node()
    for exe in (find_java(), node, npm):
        assert os.access(exe, os.X_OK), exe


def test_prepare_leases_writes_one_unowned_lease_per_shard(stack: LocalStack,
                                                           ep: Endpoints) -> None:
    shards = boto3_client("kinesis", ep).list_shards(StreamName=STREAM)["Shards"]
    assert stack.prepare_leases(STREAM, "it-app") == len(shards) == 4
    items = boto3_client("dynamodb", ep).scan(TableName="it-app", ConsistentRead=True)["Items"]
    got = {i["leaseKey"]["S"]: (i["startingHashKey"]["S"], i["endingHashKey"]["S"]) for i in items}
    assert got == {s["ShardId"]: (s["HashKeyRange"]["StartingHashKey"],
                                  s["HashKeyRange"]["EndingHashKey"]) for s in shards}
    assert not any("leaseOwner" in i for i in items)
    table = boto3_client("dynamodb", ep).describe_table(TableName="it-app")["Table"]
    assert table["KeySchema"] == [{"AttributeName": "leaseKey", "KeyType": "HASH"}]
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    assert stack.prepare_leases(STREAM, "it-app") == 0  # leases exist: KCL resumes from them


# Keep this last in the file: it stops the module's stack.
def test_stop_leaves_nothing_running(stack: LocalStack, ep: Endpoints) -> None:
    pids, ports = stack.pids, _tcp_ports(ep)
    assert len(pids) == 5 and all(psutil.pid_exists(p) for p in pids)
    assert all(port_is_open(p) for p in ports)
    stack.stop()
    stack.stop()  # idempotent
    assert [p for p in pids if _alive(p)] == []
    assert [p for p in ports if port_is_open(p)] == []
    assert _in_groups(pids) == []
    with pytest.raises(RuntimeError):
        _ = stack.endpoints


def _in_groups(leaders: list[int]) -> list[int]:
    """Live processes in the process groups our servers led (stragglers after a stop)."""
    left = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) in leaders and proc.status() != psutil.STATUS_ZOMBIE:
                left.append(proc.pid)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return left


def _alive(pid: int) -> bool:
    try:
        status: str = psutil.Process(pid).status()
    except psutil.NoSuchProcess:
        return False
    return bool(status != psutil.STATUS_ZOMBIE)


def test_port_taken_names_the_server_and_cleans_up(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        before = _children()
        st = LocalStack(tmp_path, ports={"dynamodb": taken})
        with pytest.raises(StartupError, match=r"dynalite exited with code \d+") as err:
            st.start()
    assert str(tmp_path / "logs" / "dynalite.log") in str(err.value)
    assert "EADDRINUSE" in str(err.value)
    assert st.pids == []
    assert _children() - before == set()
    assert not (tmp_path / "postgres" / "postmaster.pid").exists()


def test_unreachable_external_postgres_is_named(tmp_path: Path) -> None:
    dead = "postgresql://postgres@127.0.0.1:1/none"
    before = _children()
    st = LocalStack(tmp_path, postgres_dsn=dead)
    with pytest.raises(StartupError, match="external PostgreSQL: cannot connect"):
        st.start()
    assert _children() - before == set()


def _children() -> set[int]:
    return {c.pid for c in psutil.Process().children(recursive=True) if _alive(c.pid)}


_CRASHING_CALLER = """
import json, os, signal, sys
from pathlib import Path
from consumer.local.emulators import LocalStack
st = LocalStack(Path(sys.argv[1]))
st.start()
Path(sys.argv[2]).write_text(json.dumps(st.pids))
os.kill(os.getpid(), signal.SIGKILL)  # no atexit, no context manager
"""


def test_killed_caller_leaks_no_server(tmp_path: Path) -> None:
    pid_file = tmp_path / "pids.json"
    proc = subprocess.run(
        [sys.executable, "-c", _CRASHING_CALLER, str(tmp_path / "run"), str(pid_file)],
        capture_output=True, timeout=120, check=False,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    pids = json.loads(pid_file.read_text())
    assert len(pids) == 5
    deadline = time.monotonic() + 20
    while [p for p in pids if _alive(p)] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [p for p in pids if _alive(p)] == []


def test_restart_in_same_run_dir_keeps_postgres_data(tmp_path: Path) -> None:
    st = LocalStack(tmp_path)
    with st:
        first = st.endpoints
        with psycopg2.connect(first.postgres_dsn) as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE kept (id int)")
        conn.close()
    with st:  # same object: same ports, appended logs, existing pgdata
        assert st.endpoints == first
        assert "postgres initdb" in st.startup_seconds
        with psycopg2.connect(first.postgres_dsn) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM kept")
            assert cur.fetchone() == (0,)
        conn.close()
        client = OpenSearch(hosts=[first.opensearch_url])
        assert client.info()["version"]["number"]


@pytest.mark.parametrize("occurrences", [0, 2])
def test_kinesis_bind_patch_must_apply_exactly_once(tmp_path: Path, occurrences: int) -> None:
    src = tmp_path / "node_modules" / "kinesis-local"
    src.mkdir(parents=True)
    (src / "server.json").write_text("{}")
    (src / "main.js").write_text('x = em("0.0.0.0");\n' * occurrences)
    with pytest.raises(StartupError, match=f"found {occurrences}"):
        patched_kinesis_mock(tmp_path / "node_modules")
    assert not (tmp_path / "kinesis-local-127.0.0.1" / "main.js").exists()


# -- `local up`, `local env` and workers, with the real KCL daemon ------------------------------

CLI = [sys.executable, "-m", "consumer.cli"]


def _local_up(run_dir: Path, *extra: str) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    proc = subprocess.Popen([*CLI, "local", "up", "--run-dir", str(run_dir), "--shards", "2",
                             *extra], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 120)
    line = proc.stdout.readline() if ready else b""
    if not line:
        proc.kill()
        pytest.fail(f"local up printed nothing; log {run_dir / 'aetherstream.log'}")
    return proc, json.loads(line)


def _local_env(run_dir: Path) -> dict[str, str]:
    out = subprocess.run([*CLI, "local", "env", "--run-dir", str(run_dir)], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    pairs = [shlex.split(line)[1].split("=", 1) for line in out.splitlines()]
    return dict((k, v) for k, v in pairs)


def _stop(proc: subprocess.Popen[bytes], timeout: float = 90) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout)


def _put(ep: Endpoints, stream: str, first: int, n: int) -> None:
    records = [{"PartitionKey": f"dev-{i}", "Data": json.dumps(
        {"device_id": f"dev-{i % 7}", "metric": "t", "value": i, "ts": 1_795_000_000_000 + i}
    ).encode()} for i in range(first, first + n)]
    assert boto3_client("kinesis", ep).put_records(StreamName=stream, Records=records)[
        "FailedRecordCount"] == 0


def _archived(ep: Endpoints, bucket: str, expected: int, timeout: float) -> ObjectCounter:
    archive = ObjectCounter(boto3_client("s3", ep), bucket, "raw/")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        archive.refresh()
        if archive.distinct >= expected:
            break
        time.sleep(0.2)
    return archive


def _endpoints(info: dict[str, str]) -> Endpoints:
    return Endpoints(**{f: info[f] for f in Endpoints.__dataclass_fields__})


def test_workers_take_prepared_leases_at_once_and_restart_without_loss(tmp_path: Path) -> None:
    """Real servers and the real KCL daemon under `aetherstream run`; `local up --no-consumer`
    prepared the lease table, so KCL must skip its 1-30 s empty-table wait."""
    stack_dir = tmp_path / "stack"
    up, info = _local_up(stack_dir, "--no-consumer")
    workers: list[subprocess.Popen[bytes]] = []
    try:
        env = {**os.environ, **_local_env(stack_dir)}
        assert env["AWS_ENDPOINT_URL_KINESIS"] == info["kinesis_endpoint"]
        assert env["AETHERSTREAM_REDSHIFT_DSN"] == info["postgres_dsn"]
        # The restarted worker takes the old one's leases as they expire, on the taker's
        # passes (every 2 x failover time): shorter than local up's 5 s, to keep this fast.
        # Every sink timeout must stay below it (a setting rule).
        env.update(AETHERSTREAM_KCL_FAILOVER_TIME_MS="3000",
                   AETHERSTREAM_REDSHIFT_CONNECT_TIMEOUT_S="2",
                   AETHERSTREAM_REDSHIFT_STATEMENT_TIMEOUT_MS="2500",
                   AETHERSTREAM_OPENSEARCH_TIMEOUT_S="2.5")
        ep = _endpoints(info)
        _put(ep, info["stream"], 0, 40)

        def worker(name: str) -> subprocess.Popen[bytes]:
            workers.append(subprocess.Popen([*CLI, "run", "--run-dir", str(tmp_path / name)],
                                            env=env, stderr=subprocess.DEVNULL))
            return workers[-1]

        first, started = worker("w1"), time.monotonic()
        assert _archived(ep, info["bucket"], 40, 60).distinct == 40
        first_s = time.monotonic() - started
        daemon_log = (tmp_path / "w1" / "kcl-daemon.log").read_text()
        assert "Lease table is still empty" not in daemon_log
        assert "successfully took 2 leases" in daemon_log
        leases = boto3_client("dynamodb", ep).scan(TableName=info["app_name"])["Items"]
        assert len({i["leaseOwner"]["S"] for i in leases}) == 1, leases
        assert first_s < 30, f"first records archived {first_s:.1f} s after the worker started"

        assert _stop(first) == 0  # a worker restart: the stack keeps the stream and the tables
        _put(ep, info["stream"], 40, 40)
        worker("w2")
        archive = _archived(ep, info["bucket"], 80, 90)
        assert archive.distinct == 80
    finally:
        for w in workers:
            if w.poll() is None:
                _stop(w)
        assert _stop(up) == 0
    assert not (stack_dir / "stack.json").exists()
    assert not port_is_open(urlsplit(info["kinesis_endpoint"]).port or 0)


def test_emulators_outlive_a_dead_consumer_until_sigterm(tmp_path: Path) -> None:
    run_dir = tmp_path / "local"
    up, info = _local_up(run_dir)
    try:
        (java,) = [c for c in psutil.Process(up.pid).children() if c.name() == "java"]
        java.kill()
        log_path = run_dir / "aetherstream.log"
        deadline = time.monotonic() + 30
        while "the emulators stay up" not in log_path.read_text():
            assert time.monotonic() < deadline, "no log line about the consumer's death"
            time.sleep(0.2)
        assert up.poll() is None
        ep = _endpoints(info)
        assert info["stream"] in boto3_client("kinesis", ep).list_streams()["StreamNames"]
        assert _local_env(run_dir)["AWS_ENDPOINT_URL_S3"] == info["s3_endpoint"]
    finally:
        code = _stop(up)
    assert code == 1  # the consumer died: say so in the exit code, after Ctrl-C/SIGTERM
    assert not (run_dir / "stack.json").exists()
    assert not port_is_open(urlsplit(info["kinesis_endpoint"]).port or 0)
