"""Serve the simulator over HTTPS with a certificate from its own CA.

HTTPS is not optional: MSAL refuses an authority that is not https, and httpx/requests
must trust the simulator the same way they trust Microsoft and Google, through
SSL_CERT_FILE and REQUESTS_CA_BUNDLE.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import trustme
import uvicorn

from app.simulator import outbound
from app.simulator.app import Simulator, create_simulator_app


class SimulatorServer:
    """Runs the simulator in a background thread; `start()` returns once it accepts TLS."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, state_dir: Path | None = None):
        self.host = host
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.port: int = self._sock.getsockname()[1]
        self.base_url = f"https://localhost:{self.port}"
        self.state_dir = state_dir or Path(tempfile.mkdtemp(prefix="mailsync-sim-"))
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.ca_path = self.state_dir / "simulator-ca.pem"
        ca = trustme.CA()
        ca.cert_pem.write_to_path(str(self.ca_path))
        leaf = ca.issue_cert("localhost", "127.0.0.1")
        self._cert_path = self.state_dir / "simulator-cert.pem"
        self._key_path = self.state_dir / "simulator-key.pem"
        leaf.cert_chain_pems[0].write_to_path(str(self._cert_path))
        for extra in leaf.cert_chain_pems[1:]:
            extra.write_to_path(str(self._cert_path), append=True)
        leaf.private_key_pem.write_to_path(str(self._key_path))
        self.sim = Simulator(base_url=self.base_url)
        self.app = create_simulator_app(self.sim)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def env(self) -> dict[str, str]:
        """The environment a mailsync process needs to use this simulator."""
        base = self.base_url
        return {
            "GRAPH_BASE_URL": f"{base}/v1.0",
            "MICROSOFT_AUTHORITY_HOST": base,
            "MICROSOFT_CLIENT_ID": self.sim.client_id,
            "MICROSOFT_CLIENT_SECRET": self.sim.client_secret,
            "GMAIL_BASE_URL": base,
            "GOOGLE_TOKEN_URL": f"{base}/token",
            "GOOGLE_CLIENT_ID": self.sim.client_id,
            "GOOGLE_CLIENT_SECRET": self.sim.client_secret,
            "GOOGLE_PUSH_CERTS_URL": f"{base}/oauth2/v3/certs",
            "GOOGLE_PUSH_SERVICE_ACCOUNT": "gmail-push@mailsync-sim.iam.gserviceaccount.com",
            "GMAIL_PUBSUB_TOPIC": "projects/mailsync-sim/topics/gmail",
            "SSL_CERT_FILE": str(self.ca_path),
            "REQUESTS_CA_BUNDLE": str(self.ca_path),
        }

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts this simulator (for tests that build their own)."""
        return ssl.create_default_context(cafile=str(self.ca_path))

    def start(self) -> SimulatorServer:
        outbound.tls_context()  # now, not in the middle of serving requests
        config = uvicorn.Config(
            self.app,
            ssl_certfile=str(self._cert_path),
            ssl_keyfile=str(self._key_path),
            log_level="warning",
            access_log=False,
            lifespan="off",
            # Many clients keep connections open across slow pages.
            timeout_keep_alive=30,
            # Clients keep idle connections open; do not wait on them when stopping.
            timeout_graceful_shutdown=1,
            backlog=4096,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("simulator did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        with contextlib.suppress(OSError):
            self._sock.close()

    def serve_forever(self) -> None:
        self.start()
        assert self._thread is not None
        try:
            while self._thread.is_alive():
                self._thread.join(timeout=1)
        except KeyboardInterrupt:
            self.stop()


@contextlib.contextmanager
def running_simulator(port: int = 0) -> Iterator[SimulatorServer]:
    server = SimulatorServer(port=port).start()
    try:
        yield server
    finally:
        server.stop()
