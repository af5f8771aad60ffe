"""The ``kfnb`` command line. Subcommands: ``predict`` (see `kfnb.serving.predict_cli`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    from kfnb.serving import predict_cli

    parser = argparse.ArgumentParser(prog="kfnb", description="kfnb from a terminal.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    predict = commands.add_parser(
        "predict",
        help="ask a model server what digit an image shows (the tutorials' mnist_client.py)",
        description="Ask a model server what digit an image shows.",
    )
    predict_cli.add_arguments(predict)
    args = parser.parse_args(argv)
    return predict_cli.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
