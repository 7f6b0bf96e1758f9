"""``python -m tunery.catalog prepare NAME --cache-dir DIR [--all]``: prepare a base model ahead of time.

NAME is anything ``parse_model_ref`` reads (a bundled name, ``name=/path``, ``name=hub:org/model``). Prints
the prepared folder. The ``tunery`` CLI offers the same through settings; this entry needs no settings.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tunery.catalog.models import Catalog, parse_model_ref
from tunery.domain.errors import ServiceError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tunery.catalog", description="Prepare base models ahead of time.")
    commands = parser.add_subparsers(dest="command", required=True)
    prepare_cmd = commands.add_parser("prepare", help="convert/download a base model into the model cache")
    prepare_cmd.add_argument("name", help="bundled model name, name=/path/to/folder or name=hub:org/model")
    prepare_cmd.add_argument("--cache-dir", type=Path, required=True, help="the model cache folder")
    prepare_cmd.add_argument("--all", action="store_true", help="weights too, not only the tokenizer")
    args = parser.parse_args(argv)
    try:
        spec = parse_model_ref(args.name)
    except ValueError as exc:
        parser.error(str(exc))
    catalog = Catalog([spec], args.cache_dir)
    if catalog.is_prepared(spec.name, "weights" if args.all else "tokenizer"):
        folder = catalog.weights_dir(spec.name) if args.all else catalog.tokenizer_dir(spec.name)
    else:
        from tunery.catalog.materialize import prepare  # torch and transformers: ~5 s, only when needed

        try:
            folder = prepare(spec, args.cache_dir, "all" if args.all else "tokenizer")
        except ServiceError as exc:
            sys.stderr.write(f"error: {exc.message}\n")
            return 1
    sys.stdout.write(f"{folder}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
