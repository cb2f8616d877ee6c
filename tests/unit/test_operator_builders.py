"""The operator's pure builders: FineTuneJob / Dataset / Export in, Kubernetes manifests out."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from finetune_api import pod
from finetune_api.manifests import load_documents
from finetune_api.resources import Dataset, Export, FineTuneJob
from finetune_api.validation import validate_documents
from finetune_operator.builders.common import QUEUE_LABEL, Owner, child_name
from finetune_operator.builders.tasks import build_export, build_validation, validation_name
from finetune_operator.builders.training import (
    build_config_map,
    build_headless_service,
    build_trainer_job,
    trainer_command,
)
from finetune_operator.settings import Settings, settings_from_env

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = Settings(trainer_image="registry.example/trainer:1")

# Every Job: preemption and eviction are retried for free; a kill at the memory limit (137) and a
# trainer refusing another run's output location (3) fail at once (the server wants the codes ordered).
POD_FAILURE_RULES = [
    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
    {"action": "FailJob", "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [3, 137]}},
]


def make_job(**spec: Any) -> FineTuneJob:
    base: dict[str, Any] = {
        "model": {"source": "tiny://llama"},
        "datasets": [{"ref": "chats"}],
        "method": {"stage": "sft", "finetuning": "lora"},
        "output": {"uri": "s3://bucket/run", "endpoint": "http://s3:9000", "credentialsSecret": "s3-creds"},
    }
    base.update(spec)
    return FineTuneJob.model_validate(
        {"metadata": {"name": "demo", "namespace": "team", "generation": 1}, "spec": base}
    )


def make_dataset(name: str = "chats", **spec: Any) -> Dataset:
    return Dataset.model_validate(
        {
            "metadata": {"name": name, "namespace": "team", "generation": 3},
            "spec": {"source": "s3://d/x.jsonl", **spec},
        }
    )


OWNER = Owner("FineTuneJob", "demo", "team", "uid-1")


def container(job: dict[str, Any]) -> dict[str, Any]:
    return job["spec"]["template"]["spec"]["containers"][0]


def env_of(job: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(job)["env"]}


def test_single_gpu_job_runs_finetune_run_hardened_and_owned() -> None:
    job = build_trainer_job(make_job(), [make_dataset()], OWNER, SETTINGS)
    pod = job["spec"]["template"]["spec"]
    c = container(job)
    assert job["metadata"]["name"] == "demo-train"
    assert job["metadata"]["ownerReferences"] == [OWNER.reference()]
    assert job["metadata"]["ownerReferences"][0]["controller"] is True
    assert c["command"] == ["finetune", "run", "/etc/finetune/job.yaml"]
    assert c["image"] == "registry.example/trainer:1"
    assert c["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    assert pod["restartPolicy"] == "Never"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert {"/tmp", "/var/cache/finetune", "/etc/finetune", "/dev/shm"} <= mounts
    assert job["spec"]["backoffLimit"] == 2
    # Preemption and eviction are retried for free; a kill at the memory limit (137) fails at once.
    assert job["spec"]["podFailurePolicy"]["rules"] == POD_FAILURE_RULES
    assert job["spec"]["suspend"] is False
    assert "completionMode" not in job["spec"]
    assert "ttlSecondsAfterFinished" not in job["spec"]  # the operator expires children itself


def test_credentials_are_references_never_values() -> None:
    ds = make_dataset(credentialsSecret="hf")
    job = build_trainer_job(
        make_job(model={"source": "hf://org/m-1B", "credentialsSecret": "hf"}), [ds], OWNER, SETTINGS
    )
    env = env_of(job)
    # The output's URI reaches the trainer in its manifest; the environment carries how to reach it.
    docs = yaml.safe_load_all(build_config_map(make_job(), [ds], OWNER)["data"]["job.yaml"])
    config = next(d for d in docs if d["kind"] == "FineTuneJob")
    assert config["spec"]["output"]["uri"] == "s3://bucket/run"
    assert env["AWS_ENDPOINT_URL_S3"] == "http://s3:9000"
    assert env["AWS_ACCESS_KEY_ID"] == {"secretKeyRef": {"name": "s3-creds", "key": "accessKeyId"}}
    assert env["AWS_SECRET_ACCESS_KEY"] == {"secretKeyRef": {"name": "s3-creds", "key": "secretAccessKey"}}
    assert env["HF_TOKEN"] == {"secretKeyRef": {"name": "hf", "key": "HF_TOKEN", "optional": True}}
    secrets = [v["secret"]["secretName"] for v in job["spec"]["template"]["spec"]["volumes"] if "secret" in v]
    assert sorted(set(secrets)) == ["hf", "s3-creds"]


def test_scheduling_and_resources_come_from_the_spec() -> None:
    resources = {
        "gpusPerNode": 4, "gpuResourceName": "amd.com/gpu", "cpu": "16", "memory": "128Gi",
        "nodeSelector": {"pool": "gpu"}, "priorityClassName": "high",
        "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"x": 1}},
    }  # fmt: skip
    job = build_trainer_job(make_job(resources=resources, activeDeadlineSeconds=60), [], OWNER, SETTINGS)
    pod = job["spec"]["template"]["spec"]
    assert container(job)["resources"]["limits"] == {"cpu": "16", "memory": "128Gi", "amd.com/gpu": "4"}
    assert container(job)["resources"]["requests"] == container(job)["resources"]["limits"]
    assert pod["nodeSelector"] == {"pool": "gpu"}
    assert pod["tolerations"] == [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["affinity"] == {"nodeAffinity": {"x": 1}}
    assert pod["priorityClassName"] == "high"
    assert job["spec"]["activeDeadlineSeconds"] == 60
    assert container(job)["command"][:4] == ["torchrun", "--standalone", "--nproc-per-node", "4"]


def test_multi_node_is_an_indexed_job_with_a_headless_service_and_torchrun() -> None:
    spec = make_job(resources={"nodes": 3, "gpusPerNode": 8})
    job = build_trainer_job(spec, [], OWNER, SETTINGS)
    svc = build_headless_service(spec, OWNER)
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 3
    assert job["spec"]["template"]["spec"]["subdomain"] == svc["metadata"]["name"] == "demo-train"
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"].items() <= job["spec"]["template"]["metadata"]["labels"].items()
    cmd = trainer_command(spec)
    assert cmd[cmd.index("--nnodes") + 1] == "3"
    assert cmd[cmd.index("--nproc-per-node") + 1] == "8"
    assert cmd[cmd.index("--node-rank") + 1] == "$(JOB_COMPLETION_INDEX)"
    assert env_of(job)["MASTER_ADDR"] == "demo-train-0.demo-train"
    assert cmd[-3:] == ["-m", "finetune_trainer.run", "/etc/finetune/job.yaml"]


def test_kueue_queue_label_and_created_suspended() -> None:
    job = build_trainer_job(make_job(queueName="gpu-queue"), [], OWNER, SETTINGS)
    assert job["metadata"]["labels"][QUEUE_LABEL] == "gpu-queue"
    assert job["spec"]["suspend"] is True
    assert build_trainer_job(make_job(suspend=True), [], OWNER, SETTINGS)["spec"]["suspend"] is True


def test_config_map_holds_the_job_and_resolved_datasets() -> None:
    cm = build_config_map(make_job(), [make_dataset()], OWNER)
    docs = list(yaml.safe_load_all(cm["data"]["job.yaml"]))
    assert [d["kind"] for d in docs] == ["FineTuneJob", "Dataset"]
    spec = make_job().spec  # the LoRA settings in force written out: the same job, said in full
    assert FineTuneJob.model_validate(docs[0]).spec == spec.model_copy(
        update={"method": spec.method.written_out()}
    )
    assert docs[0]["spec"]["method"]["lora"]["rank"] == 8
    assert Dataset.model_validate(docs[1]).spec == make_dataset().spec
    assert cm["metadata"]["ownerReferences"] == [OWNER.reference()]


def test_the_pod_reads_the_resolved_spec_as_strictly_as_any_manifest(tmp_path: Path) -> None:
    # The trainer pod runs `finetune run` (strict manifest validation, cluster rules) on this file.
    job = make_job(
        training={"learningRate": 1e-5, "epochs": 2}, method={"stage": "sft", "lora": {"alpha": 32}}
    )
    path = tmp_path / "job.yaml"
    path.write_text(build_config_map(job, [make_dataset()], OWNER)["data"]["job.yaml"])
    docs = load_documents([path])
    assert validate_documents([d.body for d in docs], cluster=True) == {0: [], 1: []}


@pytest.mark.parametrize("owner", ["a" * 253, "9lives", "x.y.z"])
def test_child_names_are_deterministic_dns_labels(owner: str) -> None:
    name = child_name(owner, "train")
    assert name == child_name(owner, "train")
    assert len(name) <= 52 and name[0].isalpha() and "." not in name
    assert child_name("a" * 253, "train") != child_name("a" * 252 + "b", "train")


def test_validation_job_per_generation_reports_by_termination_message() -> None:
    ds = make_dataset(credentialsSecret="s3-creds", endpoint="http://s3:9000")
    owner = Owner("Dataset", "chats", "team", "uid-2")
    cm, job = build_validation(ds, owner, SETTINGS)
    assert job["metadata"]["name"] == validation_name(ds) == "chats-validate-g3"
    assert container(job)["command"] == [
        "finetune",
        "validate-data",
        "--allow-invalid-rows",
        "/etc/finetune/dataset.yaml",
    ]
    assert container(job)["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert "nvidia.com/gpu" not in container(job)["resources"]["limits"]
    assert env_of(job)["FINETUNE_S3_CREDENTIALS_DIR"] == "/var/run/secrets/finetune/dataset"
    assert yaml.safe_load(cm["data"]["dataset.yaml"])["spec"]["source"] == "s3://d/x.jsonl"
    assert job["spec"]["podFailurePolicy"]["rules"] == POD_FAILURE_RULES


def test_export_job_carries_the_export_and_its_finetunejob() -> None:
    export = Export.model_validate(
        {"metadata": {"name": "merged", "namespace": "team"},
         "spec": {"fineTuneJobRef": "demo", "output": {"uri": "s3://b/merged", "credentialsSecret": "s3-creds"}}}
    )  # fmt: skip
    cm, job = build_export(export, make_job(), Owner("Export", "merged", "team", "u3"), SETTINGS)
    docs = list(yaml.safe_load_all(cm["data"]["export.yaml"]))
    assert [d["kind"] for d in docs] == ["Export", "FineTuneJob"]
    assert container(job)["command"] == ["finetune", "export", "/etc/finetune/export.yaml"]
    assert docs[0]["spec"]["output"]["uri"] == "s3://b/merged"
    assert job["spec"]["podFailurePolicy"]["rules"] == POD_FAILURE_RULES
    assert job["spec"]["backoffLimit"] == 2


def test_export_job_carries_the_gptq_calibration_dataset() -> None:
    export = Export.model_validate(
        {"metadata": {"name": "gptq", "namespace": "team"},
         "spec": {"fineTuneJobRef": "demo", "output": {"uri": "s3://b/gptq"},
                  "quantization": {"method": "gptq", "bits": 4, "calibrationDataset": "chats"}}}
    )  # fmt: skip
    calibration = make_dataset()
    cm, _ = build_export(export, make_job(), Owner("Export", "gptq", "team", "u4"), SETTINGS, calibration)
    docs = list(yaml.safe_load_all(cm["data"]["export.yaml"]))
    assert [d["kind"] for d in docs] == ["Export", "FineTuneJob", "Dataset"]
    assert docs[2]["metadata"]["name"] == calibration.metadata.name


def test_settings_from_env() -> None:
    s = settings_from_env(
        {"FINETUNE_WATCH_NAMESPACES": "a, b", "FINETUNE_GPU_MEMORY_GIB": "80", "FINETUNE_RESYNC_SECONDS": "2"}
    )
    assert s.namespaces == ("a", "b")
    assert s.gpu_memory_gib == 80.0
    assert s.resync_seconds == 2.0
    assert settings_from_env({}).namespaces == ()


def test_each_datasets_own_secret_is_mounted_and_named_for_the_trainer() -> None:
    job = build_trainer_job(make_job(), [make_dataset(credentialsSecret="dataset-keys")], OWNER, SETTINGS)
    folders = json.loads(env_of(job)["FINETUNE_DATASET_CREDENTIALS"])
    assert list(folders) == ["chats"]
    mounts = {m["mountPath"] for m in container(job)["volumeMounts"]}
    assert folders["chats"] in mounts


def test_every_finetune_variable_a_pod_gets_is_one_the_trainer_reads() -> None:
    """The pod contract (finetune_api.pod) names every FINETUNE_* variable the builders set, and the
    trainer's code reads each one it names: no variable is set for nobody."""
    contract = {value for name, value in vars(pod).items() if name.endswith("_ENV")}
    ds = make_dataset(credentialsSecret="hf")
    training = build_trainer_job(make_job(model={"source": "hf://org/m-1B", "credentialsSecret": "hf"}),
                                 [ds], OWNER, SETTINGS)  # fmt: skip
    _, validation = build_validation(
        make_dataset(source="s3://d/x.jsonl", credentialsSecret="s3"),
        Owner("Dataset", "d", "team", "u2"),
        SETTINGS,
    )
    export = Export.model_validate(
        {"metadata": {"name": "merged", "namespace": "team"},
         "spec": {"fineTuneJobRef": "demo", "output": {"uri": "s3://b/merged", "credentialsSecret": "s3-creds"}}}
    )  # fmt: skip
    _, exporting = build_export(export, make_job(), Owner("Export", "merged", "team", "u3"), SETTINGS)
    for job in (training, validation, exporting):
        names = {name for name in env_of(job) if name.startswith("FINETUNE_")}
        assert names and names <= contract, names - contract
    trainer = "\n".join(p.read_text() for p in (ROOT / "trainer_image" / "finetune_trainer").rglob("*.py"))
    named = {name for name in vars(pod) if name.endswith("_ENV")}
    unread = {name for name in named if not re.search(rf"\b{name}\b", trainer)}
    # These two are read by the contract's own helpers, which the trainer calls
    # (pod.dataset_credentials_dirs, pod.write_termination_message).
    assert unread <= {"DATASET_CREDENTIALS_ENV", "TERMINATION_LOG_ENV"}, unread


def test_each_pvc_claim_the_pod_reads_is_mounted_once_read_only() -> None:
    job = make_job(model={"source": "pvc://weights/llama/8b"})
    datasets = [
        make_dataset(source="pvc://weights/sets/qa.jsonl"),
        make_dataset("more", source="pvc://data/x"),
    ]
    trainer = build_trainer_job(job, datasets, OWNER, SETTINGS)
    claims = [v for v in trainer["spec"]["template"]["spec"]["volumes"] if "persistentVolumeClaim" in v]
    assert sorted(v["persistentVolumeClaim"]["claimName"] for v in claims) == ["data", "weights"]
    assert all(v["persistentVolumeClaim"]["readOnly"] for v in claims)
    mounts = {m["name"]: m for m in container(trainer)["volumeMounts"]}
    for volume in claims:
        mount = mounts[volume["name"]]
        assert mount["mountPath"] == f"{pod.PVC_ROOT}/{volume['persistentVolumeClaim']['claimName']}"
        assert mount["readOnly"] is True


def test_only_an_s3_dataset_gets_its_secret_as_s3_credentials() -> None:
    ds = make_dataset(source="pvc://data/x.jsonl", credentialsSecret="keys")
    _, job = build_validation(ds, Owner("Dataset", "chats", "team", "uid-2"), SETTINGS)
    assert "FINETUNE_S3_CREDENTIALS_DIR" not in env_of(job)
    volumes = job["spec"]["template"]["spec"]["volumes"]
    assert [v["persistentVolumeClaim"]["claimName"] for v in volumes if "persistentVolumeClaim" in v] == [
        "data"
    ]
