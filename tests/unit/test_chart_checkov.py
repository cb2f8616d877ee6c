"""checkov on the rendered chart (default and non-default values). Without a Prisma Cloud account
checkov reports no severities, so this is stricter than "no HIGH finding": every failed check
fails the test unless it is on the short list below, each entry with the reason it is accepted.

checkov lives in its own venv (hack/packaging/install-checkov.sh): its pinned dependencies would
clash with the project's."""

from __future__ import annotations

import functools
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_chart_render import FULLNAME, NAMESPACE, NON_DEFAULT, REPO, render_text

DEPLOYMENT = f"Deployment.{NAMESPACE}.{FULLNAME}"
TEST_POD = f"Pod.{NAMESPACE}.{FULLNAME}-test-metrics"
ACCEPTED: dict[tuple[str, str], str] = {
    ("CKV_K8S_38", DEPLOYMENT): "the operator is an API client: it needs its ServiceAccount token",
    ("CKV_K8S_15", DEPLOYMENT): "IfNotPresent with a versioned tag or a digest is what pinning means",
    ("CKV_K8S_15", TEST_POD): "same image and policy as the operator",
    ("CKV_K8S_8", TEST_POD): "a run-to-completion `helm test` pod serves nothing to probe",
    ("CKV_K8S_9", TEST_POD): "a run-to-completion `helm test` pod serves nothing to probe",
}
# No image is published under a digest yet; values.image.digest pins one (and passes CKV_K8S_43).
NO_DIGEST = {
    ("CKV_K8S_43", DEPLOYMENT): "no digest by default",
    ("CKV_K8S_43", TEST_POD): "no digest by default",
}


@functools.cache
def checkov_binary() -> str:
    out = subprocess.run(
        ["bash", str(REPO / "hack" / "packaging" / "install-checkov.sh")],
        capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    if out.returncode != 0:
        pytest.skip(f"checkov could not be installed (needs PyPI):\n{out.stderr[-2000:]}")
    return out.stdout.strip().splitlines()[-1]


def failed_checks(manifest: Path) -> dict[tuple[str, str], str]:
    """(check id, resource) → check name, for every failed check."""
    result = subprocess.run(
        [checkov_binary(), "-f", str(manifest), "--framework", "kubernetes", "--output", "json",
         "--quiet", "--compact", "--skip-download"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    # checkov exits 1 when a check fails; anything else without JSON is a crash.
    assert result.returncode in (0, 1) and result.stdout.strip(), result.stderr[-3000:]
    report: Any = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    return {
        (c["check_id"], c["resource"]): c["check_name"]
        for r in reports
        for c in r.get("results", {}).get("failed_checks", [])
    }


@pytest.mark.parametrize(("values", "accepted"), [(None, {**ACCEPTED, **NO_DIGEST}), (NON_DEFAULT, ACCEPTED)],
                         ids=["default", "non-default"])  # fmt: skip
def test_rendered_chart_has_no_unaccepted_checkov_finding(
    tmp_path: Path, values: dict[str, Any] | None, accepted: dict[tuple[str, str], str]
) -> None:
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(render_text(tmp_path, values))
    failed = failed_checks(manifest)
    unexpected = {k: v for k, v in failed.items() if k not in accepted}
    assert unexpected == {}
    assert failed, "checkov failed nothing at all: did it scan the manifest?"
