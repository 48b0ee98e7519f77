"""Rendered KCL properties use only names the daemon knows: checked against the real jar.

`javap` lists the setters of MultiLangDaemonConfiguration in the installed KCL multilang jar;
a property the daemon does not know would otherwise be ignored silently.
"""

import re
import shutil
import subprocess

import pytest

from consumer.config import load_settings, with_overrides
from consumer.kcl.daemon import jars_dir
from consumer.kcl.properties import processor_command, render_properties

# Read by MultiLangDaemonConfig itself rather than through a setter.
DIRECT_KEYS = {"executableName", "processingLanguage"}


def daemon_members() -> set[str]:
    javap = shutil.which("javap")
    if javap is None:
        pytest.skip("javap (JDK) not on PATH")
    jar = next(jars_dir().glob("amazon-kinesis-client-multilang-*.jar"))
    out = subprocess.run(
        [
            javap,
            "-cp",
            str(jar),
            "software.amazon.kinesis.multilang.config.MultiLangDaemonConfiguration",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return set(re.findall(r" (?:set|get)(\w+)\(", out))


def parse(text: str) -> dict[str, str]:
    return dict(
        (k.strip(), v.strip())
        for k, v in (
            line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#")
        )
    )


def test_every_rendered_property_is_known_to_the_daemon() -> None:
    settings = with_overrides(
        load_settings(None, env={}), kcl={"metrics_level": "SUMMARY", "max_leases_for_worker": 3}
    )
    env = {
        "AWS_ENDPOINT_URL_KINESIS": "http://127.0.0.1:1",
        "AWS_ENDPOINT_URL_DYNAMODB": "http://127.0.0.1:2",
        "AWS_ENDPOINT_URL_CLOUDWATCH": "http://127.0.0.1:3",
        "AWS_REGION": "eu-west-1",
    }
    props = parse(render_properties(settings, env, processor_command("/usr/bin/python3")))
    members = {m.lower() for m in daemon_members()}
    for key in props:
        if key in DIRECT_KEYS:
            continue
        head = key.split(".")[0]
        assert head.lower() in members, f"KCL does not know property {key}"
    assert props["kinesisEndpoint"] == "http://127.0.0.1:1"
    assert props["cloudWatchClient.endpointOverride"] == "http://127.0.0.1:3"
    assert props["regionName"] == "eu-west-1"
    assert props["retrievalMode"] == "POLLING"
    assert int(props["shutdownGraceMillis"]) > 0


def test_production_render_has_no_endpoint_overrides() -> None:
    props = parse(
        render_properties(load_settings(None, env={}), {}, processor_command("/usr/bin/python3"))
    )
    assert not {"kinesisEndpoint", "dynamoDBEndpoint", "cloudWatchClient.endpointOverride"} & set(
        props
    )


def test_interpreter_path_with_space_is_refused() -> None:
    with pytest.raises(ValueError, match="space"):
        processor_command("/opt/my python/bin/python")
