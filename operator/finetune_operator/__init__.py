"""The finetune-operator: kopf handlers, pure builders and status logic. Run: `python -m finetune_operator`."""
