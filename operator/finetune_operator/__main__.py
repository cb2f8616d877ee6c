"""`python -m finetune_operator`: run the operator with the settings from the environment."""

from __future__ import annotations

import logging

import kopf

from . import main as _handlers  # noqa: F401  (registers the handlers)
from .handlers.runtime import RUNTIME


def run() -> None:
    """Run until SIGTERM/SIGINT: watched namespaces, peering and liveness come from the settings."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ours = RUNTIME.settings
    kopf.run(
        standalone=ours.peering_name is None,
        peering_name=ours.peering_name,
        clusterwide=not ours.namespaces,
        namespaces=ours.namespaces,
        liveness_endpoint=ours.liveness_endpoint or None,
    )


if __name__ == "__main__":
    run()
