# Sourced by setup-env.sh and operator-env.sh: one cached virtual environment per dependency set.
# ensure_venv PREFIX EXTRAS: creates (once) $cache/PREFIX-<key> with ".[EXTRAS]" installed, the key
# hashing the base dependencies and those extras; then points it (editable) at this checkout's sources
# and marks it used. Sets $venv. Needs $cache; run from the repository root.
ensure_venv() {
  local prefix=$1 extras=$2 key
  key=$(EXTRAS="$extras" python3 - <<'PY'
import hashlib, os, tomllib
p = tomllib.load(open("pyproject.toml", "rb"))["project"]
wanted = set(os.environ["EXTRAS"].split(","))
deps = repr((p["dependencies"], sorted(i for i in p["optional-dependencies"].items() if i[0] in wanted)))
print(hashlib.sha256(deps.encode()).hexdigest()[:12])
PY
  )
  venv="$cache/$prefix-$key"
  mkdir -p "$cache"
  # One build at a time (parallel runs would remove each other's half-built venv): wait for the lock.
  exec 9>"$cache/.setup-env.lock"
  flock 9
  if [ ! -f "$venv/.complete" ]; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    # The project's build backend too, so the editable install below needs no isolated build.
    "$venv/bin/pip" install -q --upgrade pip "setuptools>=77" wheel
    "$venv/bin/pip" install -q ".[$extras]"
    touch "$venv/.complete"
  fi
  "$venv/bin/pip" install -q --no-deps --no-build-isolation -e .
  touch "$venv/.last-used"
  exec 9>&-
}
