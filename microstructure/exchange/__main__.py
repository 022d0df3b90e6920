"""`python -m microstructure.exchange serve ...`: the exchange command group on its own."""

from __future__ import annotations

import argparse
import logging
import sys

from microstructure.exchange.cli import add_parser


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m microstructure.exchange", description="the local exchange"
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logs (-v info, -vv debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_parser(sub)
    args = parser.parse_args(["exchange", *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)])
    return int(args.handler(args, None) or 0)


if __name__ == "__main__":
    sys.exit(main())
