"""`python -m sab.data fetch NAME --to DIR` / `python -m sab.data verify NAME --in DIR`."""

from __future__ import annotations

import argparse
import sys

from sab.data.readers import DataError
from sab.data.registry import DATASETS, check, fetch


def main(argv: list[str] | None = None) -> int:
    """Fetch or verify one dataset; one error line and exit 2 on failure."""
    parser = argparse.ArgumentParser(prog="python -m sab.data", description="Download and verify the standard dataset files.")
    sub = parser.add_subparsers(dest="command", required=True)
    get = sub.add_parser("fetch", help="download, verify and unpack")
    get.add_argument("name", help=", ".join(DATASETS))
    get.add_argument("--to", required=True, help="target folder")
    ver = sub.add_parser("verify", help="check files already in a folder")
    ver.add_argument("name", help=", ".join(DATASETS))
    ver.add_argument("--in", dest="folder", required=True, help="folder holding the files")
    args = parser.parse_args(argv)
    if args.name not in DATASETS:
        print(f"error: unknown dataset {args.name!r}; valid: {', '.join(DATASETS)}", file=sys.stderr)
        return 2
    try:
        unverified = fetch(args.name, args.to) if args.command == "fetch" else check(args.name, args.folder)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for name in unverified:
        print(f"warning: {name}: no published checksum is known; not verified", file=sys.stderr)
    print(f"{args.name}: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
