"""What a platform team sets for every pod the operator creates (training, validation, export): security
contexts, image pull Secrets and the validation pod's compute; the chart passes them as FINETUNE_* variables."""

from __future__ import annotations

import json
from typing import Any

import pytest

from finetune_api.resources import Export
from finetune_operator.builders.common import Owner
from finetune_operator.builders.tasks import build_export, build_validation
from finetune_operator.builders.training import build_trainer_job
from finetune_operator.settings import Settings, settings_from_env
from tests.unit.test_operator_builders import OWNER, container, make_dataset, make_job


def make_export(**spec: Any) -> Export:
    return Export.model_validate(
        {"metadata": {"name": "merged", "namespace": "team"},
         "spec": {"fineTuneJobRef": "demo", "output": {"uri": "s3://b/merged"}, **spec}}
    )  # fmt: skip


def all_pods(settings: Settings, job_spec: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """The Job of each workload kind, built with ``settings``."""
    job = make_job(**(job_spec or {}))
    export_spec = {"imagePullSecrets": job_spec["imagePullSecrets"]} if job_spec else {}
    return {
        "trainer": build_trainer_job(job, [make_dataset()], OWNER, settings),
        "validator": build_validation(make_dataset(), Owner("Dataset", "chats", "team", "u2"), settings)[1],
        "exporter": build_export(make_export(**export_spec), job, Owner("Export", "merged", "team", "u3"), settings)[1],
    }  # fmt: skip


def test_defaults_are_non_root_as_the_images_user_and_locked_down() -> None:
    for kind, job in all_pods(Settings()).items():
        pod = job["spec"]["template"]["spec"]
        assert pod["securityContext"] == {
            "runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
            "seccompProfile": {"type": "RuntimeDefault"},
        }, kind  # fmt: skip
        assert container(job)["securityContext"] == {
            "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        }, kind  # fmt: skip
        assert "imagePullSecrets" not in pod, kind
    validator = all_pods(Settings())["validator"]
    assert container(validator)["resources"]["limits"] == {"cpu": "1", "memory": "4Gi"}


def test_settings_from_the_chart_reach_every_pod_and_a_specs_pull_secrets_add_to_them() -> None:
    # OpenShift's restricted SCC assigns the uid itself: the chart leaves runAsUser and fsGroup out.
    pod_context = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    container_context = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    settings = settings_from_env(
        {
            "FINETUNE_POD_SECURITY_CONTEXT": json.dumps(pod_context),
            "FINETUNE_CONTAINER_SECURITY_CONTEXT": json.dumps(container_context),
            "FINETUNE_IMAGE_PULL_SECRETS": "registry-a, registry-b",
            "FINETUNE_VALIDATION_CPU": "500m",
            "FINETUNE_VALIDATION_MEMORY": "2Gi",
        }
    )
    pods = all_pods(settings, {"imagePullSecrets": ["registry-b", "team-registry"]})
    for kind, job in pods.items():
        pod = job["spec"]["template"]["spec"]
        assert pod["securityContext"] == pod_context, kind
        assert container(job)["securityContext"] == container_context, kind
    pulls = {kind: [s["name"] for s in job["spec"]["template"]["spec"]["imagePullSecrets"]]
             for kind, job in pods.items()}  # fmt: skip
    assert pulls == {
        "trainer": ["registry-a", "registry-b", "team-registry"],
        "validator": ["registry-a", "registry-b"],  # a Dataset names no image of its own
        "exporter": ["registry-a", "registry-b", "team-registry"],
    }
    assert container(pods["validator"])["resources"] == {
        "requests": {"cpu": "500m", "memory": "2Gi"}, "limits": {"cpu": "500m", "memory": "2Gi"},
    }  # fmt: skip
    # Each pod gets its own copy: a later change to one manifest never leaks into the next.
    pods["trainer"]["spec"]["template"]["spec"]["securityContext"]["runAsUser"] = 0
    assert "runAsUser" not in all_pods(settings)["exporter"]["spec"]["template"]["spec"]["securityContext"]


@pytest.mark.parametrize(
    ("value", "message"),
    [("{runAsUser: 1}", "FINETUNE_POD_SECURITY_CONTEXT is not valid JSON"),
     ("[1]", "FINETUNE_POD_SECURITY_CONTEXT must be a JSON object, not list")],
)  # fmt: skip
def test_a_malformed_security_context_is_refused_at_start_up(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        settings_from_env({"FINETUNE_POD_SECURITY_CONTEXT": value})
