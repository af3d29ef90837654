"""`mailsync simulator` takes the flags the README documents."""

from __future__ import annotations

import os
import ssl
import subprocess
import time
from pathlib import Path

import httpx

from tests.ops.support import MAILSYNC, ROOT, free_port


def test_mailsync_simulator_port_and_env_file(tmp_path: Path) -> None:
    port = free_port()
    env_file = tmp_path / "sim.env"
    process = subprocess.Popen(  # noqa: S603
        [
            *MAILSYNC,
            "simulator",
            "--port",
            str(port),
            "--env-file",
            str(env_file),
            "--state-dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert f"simulator on https://localhost:{port}" in first, first
        env = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
        assert env["GRAPH_BASE_URL"] == f"https://localhost:{port}/v1.0"
        ca = env["SSL_CERT_FILE"].strip("'")
        deadline = time.monotonic() + 15
        while True:
            try:
                response = httpx.get(
                    f"https://localhost:{port}/_sim/healthz",
                    verify=ssl.create_default_context(cafile=ca),
                )
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "simulator never answered"
                time.sleep(0.05)
        assert response.json() == {"status": "ok"}
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_unknown_flags_are_refused_with_the_usage() -> None:
    result = subprocess.run(  # noqa: S603
        [*MAILSYNC, "simulator", "--prot", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "unrecognized arguments: --prot" in result.stderr
