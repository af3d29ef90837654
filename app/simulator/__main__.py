"""`mailsync simulator` / `python -m app.simulator`: serve the provider simulator over HTTPS."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from app.simulator.server import SimulatorServer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The simulator's flags, shared by `python -m app.simulator` and `mailsync simulator`."""
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8443, help="0 picks a free port")
    parser.add_argument("--state-dir", type=Path, default=None, help="where the CA file goes")
    parser.add_argument("--env-file", type=Path, default=None, help="also write the env here")


def run(args: argparse.Namespace) -> None:
    server = SimulatorServer(host=args.host, port=args.port, state_dir=args.state_dir)
    lines = [f"export {k}={shlex.quote(v)}" for k, v in server.env().items()]
    if args.env_file:
        # Written whole and renamed: a reader polling for the file never sees half of it.
        partial = args.env_file.with_name(args.env_file.name + ".partial")
        partial.write_text("\n".join(line.removeprefix("export ") for line in lines) + "\n")
        partial.replace(args.env_file)
    print(f"# mailsync provider simulator on {server.base_url}", flush=True)
    print("\n".join(lines), flush=True)
    server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m app.simulator", description=__doc__)
    add_arguments(parser)
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
