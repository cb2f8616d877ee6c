"""The trainer: what `finetune run`, `finetune export` and `finetune validate-data` run, in a pod and on
a workstation alike.

Settings come one way:

- From the API models (``finetune_api``). A component takes the validated spec, or the section of it
  that it reads (``ModelSpec``, ``MethodSpec``, ``TrainingSpec``, ``EvaluationSpec``, ...); a field of
  another section comes as a keyword argument of its own (the model loader's
  ``precision=spec.training.precision``). Never a raw dict of spec fields, never the same field twice.
- The data worker (``data``) alone has a typed view of its own: ``DatasetConfig`` and
  ``ProcessingConfig``, frozen dataclasses unpacked from the API models once (``data.from_api``:
  ``dataset_config``, ``job_processing_config``), so that its loaders and processors never reach
  into pydantic models.
- Manifests are parsed into the API models where they are read (``run.plan_run``,
  ``export.plan.plan_export``, ``datacheck``) and handed on typed; the raw documents go on only to be
  saved as they are (job.yaml and the model card).
- The environment says where and how the process runs, never what a spec field says: the pod
  contract's variables (``finetune_api.pod``), torchrun's ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``,
  and the process's own knobs, also named there, that the operator leaves unset
  (``FINETUNE_WORK_DIR``, ``FINETUNE_KEEP_WORK_DIR``, ``FINETUNE_LOG_LEVEL``, ``FINETUNE_DATA_NUM_PROC``).

The parts depend on each other one way, no import cycle between them
(tests/unit/test_trainer_layering.py): ``storage`` and ``progress`` under ``workspace`` (a run's
output location and its layout), ``evaluate`` writing through it, ``train`` calling ``evaluate``,
``run`` calling ``train``, ``cli`` over all.
"""
