"""The reconcile logic, free of kopf: each function takes its view of the cluster (:class:`~.cluster.Cluster`)
as its first argument, so the handlers pass the process's one view and the unit tests an in-memory one."""
