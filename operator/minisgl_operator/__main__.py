"""python -m minisgl_operator: run the operator (kopf) with this package's handlers."""
from __future__ import annotations

import logging
import sys
from typing import Sequence

import kopf

from minisgl_operator.handlers import register
from minisgl_operator.settings import parse_args


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = parse_args(argv)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=getattr(logging, config.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    registry = kopf.OperatorRegistry()
    register(registry, config)
    kopf.run(
        registry=registry,
        clusterwide=config.clusterwide,
        namespaces=config.namespaces,
        liveness_endpoint=config.liveness,
        standalone=config.peering is None,
        peering_name=config.peering,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
