"""Condition types and CamelCase reasons, as named constants (the vocabulary of `kubectl describe`)."""

from __future__ import annotations

from typing import Final

# Condition types of a FineTuneJob.
ACCEPTED: Final = "Accepted"
READY: Final = "Ready"
RUNNING: Final = "Running"
SUCCEEDED: Final = "Succeeded"
FAILED: Final = "Failed"
SUSPENDED: Final = "Suspended"
JOB_CONDITIONS: Final = (ACCEPTED, READY, RUNNING, SUCCEEDED, FAILED, SUSPENDED)
# Set on a FineTuneJob only once reading its progress record failed.
PROGRESS_UNAVAILABLE: Final = "ProgressUnavailable"
# Condition type of a Dataset.
VALIDATED: Final = "Validated"

# Refusals: the spec cannot run as written (terminal).
INVALID_SPEC: Final = "InvalidSpec"
DATASET_INVALID: Final = "DatasetInvalid"
INSUFFICIENT_GPU_MEMORY: Final = "InsufficientGPUMemory"
REFUSALS: Final = (INVALID_SPEC, DATASET_INVALID, INSUFFICIENT_GPU_MEMORY)

# Waiting and running.
SPEC_ACCEPTED: Final = "SpecAccepted"
DATASET_NOT_READY: Final = "DatasetNotReady"
DATASETS_READY: Final = "DatasetsReady"
JOB_CREATED: Final = "JobCreated"
PODS_PENDING: Final = "PodsPending"
WAITING_FOR_ADMISSION: Final = "WaitingForAdmission"
IMAGE_PULL_FAILED: Final = "ImagePullFailed"
RESTARTING: Final = "Restarting"
TRAINING_RUNNING: Final = "TrainingRunning"
SUSPENDED_BY_USER: Final = "SuspendedByUser"
PROGRESS_READ_FAILED: Final = "ProgressReadFailed"
PROGRESS_READABLE: Final = "ProgressReadable"

# Endings.
TRAINING_SUCCEEDED: Final = "TrainingSucceeded"
OUT_OF_MEMORY: Final = "OutOfMemory"
OUTPUT_IN_USE: Final = "OutputInUse"
BACKOFF_LIMIT_EXCEEDED: Final = "BackoffLimitExceeded"
DEADLINE_EXCEEDED: Final = "DeadlineExceeded"
POD_FAILURE_POLICY: Final = "PodFailurePolicy"
JOB_FAILED: Final = "JobFailed"

# Datasets.
VALIDATING: Final = "Validating"
VALID: Final = "Valid"
INVALID_ROWS: Final = "InvalidRows"
VALIDATION_FAILED: Final = "ValidationFailed"

# Exports.
WAITING_FOR_FINETUNEJOB: Final = "WaitingForFineTuneJob"
FINETUNEJOB_NOT_FOUND: Final = "FineTuneJobNotFound"
FINETUNEJOB_FAILED: Final = "FineTuneJobFailed"
EXPORT_RUNNING: Final = "ExportRunning"
EXPORT_SUCCEEDED: Final = "ExportSucceeded"
EXPORT_FAILED: Final = "ExportFailed"
