"""Print, or write into docs/cluster/rayservice.yaml, the Serve config a cluster runs (`serving.ops.cluster`).

    .venv/bin/python docs/cluster/make_serve_config.py                  # print it (the manifest's pins)
    .venv/bin/python docs/cluster/make_serve_config.py --write          # rewrite the manifest's serveConfigV2
    .venv/bin/python docs/cluster/make_serve_config.py --pin linear=v4:linear --write

Each arm (and a shadow) needs a pin, ARM=VERSION:KIND: the registry version it serves and the model's kind
(`mailroute models show linear:champion` says both). Pins not given are the ones the manifest has now.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from serving.config import ConfigError
from serving.ops.cluster import ArmPin, embed, embedded, pins_of, render, serve_config

ROOT = Path(__file__).resolve().parents[2]


def _pin(text: str) -> tuple[str, ArmPin]:
    arm, sep, pin = text.partition("=")
    if not sep or not arm:
        raise argparse.ArgumentTypeError(f"'{text}': expected ARM=VERSION:KIND, e.g. linear=v3:linear")
    try:
        return arm, ArmPin.parse(pin)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", type=Path, default=ROOT / "configs", help="the configs directory")
    parser.add_argument("--manifest", type=Path, default=ROOT / "docs/cluster/rayservice.yaml", help="the manifest")
    parser.add_argument("--pin", type=_pin, action="append", default=[], help="ARM=VERSION:KIND (repeatable)")
    parser.add_argument("--write", action="store_true", help="rewrite the manifest's serveConfigV2 block")
    args = parser.parse_args(argv)

    import yaml

    manifest = args.manifest.read_text(encoding="utf-8")
    pins = {**pins_of(yaml.safe_load(embedded(manifest)) or {}), **dict(args.pin)}
    try:
        text = render(serve_config(args.configs, pins))
    except (ConfigError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not args.write:
        print(text, end="")
        return 0
    updated = embed(manifest, text)
    if updated != manifest:
        args.manifest.write_text(updated, encoding="utf-8")
    print(f"{args.manifest}: serveConfigV2 {'rewritten' if updated != manifest else 'already up to date'} "
          f"({', '.join(f'{arm}={pin}' for arm, pin in sorted(pins.items()))})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
