"""The chart's settings for the pods the operator starts (validation, training, export), rendered by the real
`helm` and read back by the operator's own `settings_from_env`, and the chart's README (`helm show readme`)."""

from __future__ import annotations

import re
from pathlib import Path

from finetune_operator.settings import Settings, settings_from_env
from tests.unit.test_chart_render import CHART, FULLNAME, env_of, find, helm, render


def operator_settings(tmp_path: Path, *extra: str) -> Settings:
    """The Settings the rendered Deployment's operator would start with."""
    (deployment,) = find(render(tmp_path, None, *extra), "Deployment", FULLNAME)
    return settings_from_env(env_of(deployment))


def test_chart_defaults_are_the_operators_safe_defaults(tmp_path: Path) -> None:
    ours, built_in = operator_settings(tmp_path), Settings()
    assert ours.pod_security_context == built_in.pod_security_context
    assert ours.pod_security_context["runAsNonRoot"] is True
    assert ours.container_security_context == built_in.container_security_context
    assert ours.container_security_context["capabilities"] == {"drop": ["ALL"]}
    assert ours.image_pull_secrets == ()
    assert (ours.validation_cpu, ours.validation_memory) == ("1", "4Gi")


def test_pull_secrets_compute_and_security_contexts_reach_the_operator(tmp_path: Path) -> None:
    settings = operator_settings(
        tmp_path,
        "--set", "trainer.imagePullSecrets[0].name=registry-a",
        "--set", "trainer.imagePullSecrets[1].name=registry-b",
        "--set", "trainer.validation.cpu=500m", "--set", "trainer.validation.memory=2Gi",
        # OpenShift's restricted SCC assigns uid and fsGroup itself.
        "--set", "trainer.podSecurityContext.runAsUser=null", "--set", "trainer.podSecurityContext.fsGroup=null",
        "--set", "trainer.podSecurityContext.runAsGroup=null",
        "--set", "trainer.securityContext.readOnlyRootFilesystem=false",
    )  # fmt: skip
    assert settings.image_pull_secrets == ("registry-a", "registry-b")
    assert (settings.validation_cpu, settings.validation_memory) == ("500m", "2Gi")
    assert settings.pod_security_context == {
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert settings.container_security_context["readOnlyRootFilesystem"] is False
    assert settings.container_security_context["allowPrivilegeEscalation"] is False


def test_values_schema_checks_the_trainer_pod_values(tmp_path: Path) -> None:
    for wrong in ("trainer.validation.memory=lots", "trainer.podSecurityContext=none"):
        result = helm("template", "ft", str(CHART), "--set", wrong, check=False)
        assert result.returncode != 0, wrong
        assert "schema" in result.stderr and wrong.split("=")[0].rsplit(".", 1)[-1] in result.stderr


def test_helm_show_readme_prints_the_charts_readme() -> None:
    readme = helm("show", "readme", str(CHART)).stdout
    assert readme.strip() == (CHART / "README.md").read_text().strip()  # helm adds a newline
    for topic in (
        "crds.enabled=false",
        "trainer.imagePullSecrets",
        "trainer.podSecurityContext",
        "helm install",
    ):
        assert topic in readme, topic


def test_the_docs_use_one_release_name() -> None:
    repo = CHART.parents[1]
    docs = [repo / "README.md", CHART / "README.md", *sorted((repo / "docs").glob("*.md"))]
    named = {
        (doc.name, match.group(1))
        for doc in docs
        for match in re.finditer(
            r"helm (?:install|upgrade|uninstall|test) ([a-z0-9][-a-z0-9]*)", doc.read_text()
        )
    }
    assert named and {name for _, name in named} == {"finetune-operator"}, sorted(named)
