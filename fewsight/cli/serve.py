"""fewsight serve: a local web page that learns new classes from a few images (fewsight.serve)."""

from __future__ import annotations

import argparse

from fewsight.cli.common import device_flag, pick_device
from fewsight.errors import FewsightError


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "serve",
        help="a local web page that learns new classes from a few images",
        description="Serve a web page (and a JSON API, described at /openapi.json) where you make "
        "classes, drop a few images into each, then drop query images to classify them. Needs "
        "pip install 'fewsight[serve]'.",
    )
    parser.add_argument(
        "model",
        nargs="?",
        default="omniglot",
        help="bundled model name, run folder or exported classifier file (default: %(default)s)",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: %(default)s, this machine only; 0.0.0.0 opens it to "
        "other machines, with no password)",
    )
    parser.add_argument("--port", type=int, default=8765, help="port (default: %(default)s; 0: any free one)")
    parser.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a host name to answer to besides loopback names, the --host address and (off loopback) "
        "any IP address; repeatable. Other names are refused, so that web sites cannot reach the "
        "server by DNS rebinding",
    )
    device_flag(parser)


def run(args: argparse.Namespace) -> None:
    try:
        from fewsight.serve import Session, serve
    except ImportError as error:
        raise FewsightError(f"fewsight serve needs {error.name}: pip install 'fewsight[serve]'") from error
    if not 0 <= args.port <= 65535:
        raise FewsightError("--port must be between 0 and 65535")
    serve(Session(args.model, pick_device(args.device)), args.host, args.port, args.allow_host)
