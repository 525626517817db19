"""`python -m minisgl --model-path ...` (or the `minisgl` console script)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    from minisgl.server.args import parse_args

    args = parse_args(argv)  # exits 2 with a one-line reason on bad flags
    from minisgl.server.launch import launch

    sys.exit(launch(args))


if __name__ == "__main__":
    main()
