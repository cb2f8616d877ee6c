{{/*
What the operator does in a namespace it watches; each rule names the code that needs it.
The same rules go into a ClusterRole (cluster-wide) or into a Role per watched namespace.
*/}}
{{- define "finetune-operator.namespacedRules" -}}
# Our kinds: kopf lists and watches them and patches its annotations and finalizer onto them;
# the reconcilers read referenced objects (Datasets, an Export's FineTuneJob) by name.
- apiGroups: [finetune.dev]
  resources: [finetunejobs, datasets, exports]
  verbs: [get, list, watch, patch]
# Status is the only part of our objects the reconcilers write (merge patch on /status).
- apiGroups: [finetune.dev]
  resources: [finetunejobs/status, datasets/status, exports/status]
  verbs: [patch]
# Children carry blockOwnerDeletion: with the OwnerReferencesPermissionEnforcement admission
# plugin (e.g. OpenShift) setting it needs update on the owner's finalizers.
- apiGroups: [finetune.dev]
  resources: [finetunejobs/finalizers, datasets/finalizers, exports/finalizers]
  verbs: [update]
# Training, validation and export Jobs: created (or adopted), watched for changes, suspended
# and resumed, deleted after ttlSecondsAfterFinished.
- apiGroups: [batch]
  resources: [jobs]
  verbs: [create, get, list, watch, patch, delete]
# A job's resolved spec (ConfigMap) and a multi-node job's headless Service: created or adopted,
# patched on adoption, deleted after ttlSecondsAfterFinished. Never listed nor watched.
- apiGroups: [""]
  resources: [configmaps, services]
  verbs: [create, get, patch, delete]
# A Job's pods, for exit codes and reasons (OOMKilled, image pull failures).
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
# A multi-node job's group restart: the peers of a failed pod are evicted (never deleted), so
# they restart with its replacement without using up retries.
- apiGroups: [""]
  resources: [pods/eviction]
  verbs: [create]
# The output credentials named by spec.output.credentialsSecret, to read the progress record.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
# Events on our objects (kopf posts core/v1 Events only).
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end }}
