"""Conditions in the metav1.Condition shape, with lastTransitionTime kept while the status holds."""

from __future__ import annotations

from dataclasses import dataclass

from finetune_api.common import Condition, ConditionStatus


@dataclass(frozen=True)
class Verdict:
    """The one-line outcome of a reconcile: the phase, a CamelCase reason and a message for people."""

    phase: str
    reason: str
    message: str


def set_conditions(
    old: list[Condition], desired: dict[str, tuple[bool, str, str]], generation: int | None, now: str
) -> list[Condition]:
    """``desired`` (type → (true?, reason, message)) as Conditions, in the order given.

    The transition time moves only when a condition's status flips, as metav1.Condition requires;
    conditions of other types in ``old`` are kept.
    """
    previous = {c.type: c for c in old}
    out = []
    for kind, (true, reason, message) in desired.items():
        status = ConditionStatus.TRUE if true else ConditionStatus.FALSE
        before = previous.pop(kind, None)
        moved = before is None or before.status != status
        out.append(
            Condition(
                type=kind,
                status=status,
                observed_generation=generation,
                last_transition_time=now if moved or before is None else before.last_transition_time,
                reason=reason,
                message=message[:32768],
            )
        )
    return out + list(previous.values())
