"""`python -m finetune_operator`: run the operator with the settings from the environment."""

from __future__ import annotations

import logging

import kopf

from . import main as _handlers  # noqa: F401  (registers the handlers)
from .handlers.runtime import RUNTIME


def run() -> None:
    """Run until SIGTERM/SIGINT: watched namespaces, peering and liveness come from the settings."""
    # kopf's formatter starts the lines of its per-object logger with [namespace/name]; ours name the
    # object themselves.
    kopf.configure(log_format="%(asctime)s %(levelname)s %(name)s: %(message)s", log_prefix=True)
    # The kubelet probes the liveness endpoint every few seconds: aiohttp's access log would be most of
    # the operator's log, and says nothing (a failing probe shows in the pod's events).
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
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
