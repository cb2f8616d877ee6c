"""Thin kopf handlers: register, build the reconciles' view of the cluster, lock, delegate to reconcile/, map outcomes to kopf errors.

The handlers register in a plain :class:`kopf.OperatorRegistry`, set as kopf's default before any
of them is declared. kopf's own default (the "smart" registry) probes for the ``kubernetes``
package to offer it as a login fallback, and that probe alone imports the whole generated client
(~56 MB) into the operator. Logging in is ours instead (``startup.login``).
"""

import kopf

kopf.set_default_registry(kopf.OperatorRegistry())
