"""Training recipes, one per stage family, and what they share (arguments, callbacks, workspace)."""
