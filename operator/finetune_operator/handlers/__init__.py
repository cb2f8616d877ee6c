"""Thin kopf handlers: parse the object once, call the reconciler, map outcomes to kopf errors."""
