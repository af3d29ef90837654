"""`python -m app.simulator [--port N] [--state-dir DIR]`: serve the provider simulator."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from app.simulator.server import SimulatorServer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mailsync simulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8443)
    parser.add_argument("--state-dir", type=Path, default=None, help="where the CA file goes")
    parser.add_argument("--env-file", type=Path, default=None, help="also write the env here")
    args = parser.parse_args(argv)
    server = SimulatorServer(host=args.host, port=args.port, state_dir=args.state_dir)
    lines = [f"export {k}={shlex.quote(v)}" for k, v in server.env().items()]
    if args.env_file:
        args.env_file.write_text("\n".join(line.removeprefix("export ") for line in lines) + "\n")
    print(f"# mailsync provider simulator on {server.base_url}", flush=True)
    print("\n".join(lines), flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
