"""Schemathesis against all five OpenAPI schemas, valid and invalid inputs alike, with every
check in every phase: no input yields a 5xx, every response (status, headers, body) is one the
service documents, an undeclared method is a 405 with Allow, and valid input is accepted.

The few exceptions the checks cannot know are in ``schemathesis.toml`` beside this file, each
with its reason."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import answers_200, port_free, until_sync

from services._kit.roster import SERVICE_PORTS

pytestmark = pytest.mark.slow

PORTS = SERVICE_PORTS
CONFIG = Path(__file__).with_name("schemathesis.toml")


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    if not all(port_free(p) for p in PORTS.values()):
        pytest.skip("ports 8001-8005 are taken by a running CloudMart")
    directory = tmp_path_factory.mktemp("fuzz")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDMART_")}
    env.update(CLOUDMART_SQLITE_PATH=str(directory / "fuzz.db"), CLOUDMART_LOG_LEVEL="WARNING")
    log = (directory / "up.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cloudmart", "up"],
        env=env,
        cwd=directory,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        for port in PORTS.values():

            def healthy(port: int = port) -> bool:
                assert proc.poll() is None, (directory / "up.log").read_text()
                return answers_200(f"http://127.0.0.1:{port}/health")

            until_sync(healthy, timeout=30, interval=0.05, what="cloudmart up healthy")
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)


@pytest.mark.parametrize("service", list(PORTS))
def test_every_schemathesis_check_passes(embedded: None, service: str, tmp_path: Path) -> None:
    st = shutil.which("st", path=str(Path(sys.executable).parent))
    assert st, "schemathesis is a test dependency"
    result = subprocess.run(
        [
            st,
            "--config-file",
            str(CONFIG),
            "run",
            f"http://127.0.0.1:{PORTS[service]}/openapi.json",
            "--checks",
            "all",
            "--phases",
            "examples,coverage,fuzzing,stateful",
            "--mode",
            "all",
            "--max-examples",
            "30",
            "--seed",
            "20261126",
            "--request-timeout",
            "10",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
