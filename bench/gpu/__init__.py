"""The GPU check: one prepared command for a GPU machine that reaches no package registry.

``python -m bench.gpu prepare`` (here) puts the wheels it needs into a git-ignored folder and prints
what a device call will carry; ``python -m bench.gpu check`` (there, or here with ``--dry-run``)
installs them into scratch paths and runs each part under its own time budget. bench/README.md
has the exact device command.
"""
