# Sourced by setup-env.sh and operator-env.sh: one checkout's virtual environment, layered on a cached
# one that holds the dependencies.
#
# ensure_venv PREFIX EXTRAS DEST
#   1. $cache/PREFIX-<key>: the dependencies of ".[EXTRAS]" and nothing of the project itself, built once
#      (the key hashes the dependency lists) and shared read-only by every checkout on the machine.
#   2. DEST (a folder of this checkout): a small venv of its own whose site-packages adds the shared one's
#      (a .pth line running site.addsitedir), with the shared tools beside its python and the project
#      installed editable. It runs this checkout's code and no other: the shared environment never
#      points at a checkout, so two checkouts on one machine never run each other's code.
# Sets $venv (the shared environment) and $dest (DEST, absolute). Needs $cache; run from the repository root.

ensure_venv() {
  local prefix=$1 extras=$2 key requirements
  dest="$PWD/$3"
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
    requirements=$(mktemp)
    # The dependency lists of pyproject.toml, not ".[extras]": the project itself stays out of the
    # shared environment.
    EXTRAS="$extras" python3 - >"$requirements" <<'PY'
import os, tomllib
p = tomllib.load(open("pyproject.toml", "rb"))["project"]
extras = p["optional-dependencies"]
print("\n".join(p["dependencies"] + [d for e in os.environ["EXTRAS"].split(",") for d in extras[e]]))
PY
    # The project's build backend too, so each checkout's editable install needs no isolated build.
    "$venv/bin/pip" install -q --upgrade pip "setuptools>=77" wheel
    "$venv/bin/pip" install -q -r "$requirements"
    rm -f "$requirements"
    touch "$venv/.complete"
  elif [ -n "$(find "$venv"/lib/python*/site-packages -maxdepth 1 -name 'finetune_operator-*.dist-info' -print -quit)" ]; then
    # Made by an earlier set-up, which installed the project into the shared environment itself.
    "$venv/bin/python" -m pip uninstall -q -y finetune-operator
  fi
  touch "$venv/.last-used"
  exec 9>&-
  layer_venv
}

# layer_venv: (re)creates $dest on $venv when it is not already layered on it, then installs the
# project editable into it (cheap: no dependencies, no isolated build).
layer_venv() {
  local site tool first
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
  if [ -L "$dest" ] || [ "$(cat "$dest/.layered-on" 2>/dev/null)" != "$venv" ]; then
    rm -rf "$dest"
    python3 -m venv --without-pip "$dest"
    local own_site
    own_site=$("$dest/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
    # addsitedir (not a bare path line) so the shared site-packages' own .pth files are processed too.
    echo "import site; site.addsitedir('$site')" >"$own_site/_shared_dependencies.pth"
    # The shared tools (ruff, mypy, pytest, kubectl, weed, …) beside this python: Python scripts are
    # copied with their interpreter line pointing here, so they see this checkout's code; binaries are
    # linked. pip is left out: `$dest/bin/python -m pip` installs into this venv, the shared pip would not.
    for tool in "$venv"/bin/*; do
      local name=${tool##*/}
      case "$name" in python* | pip* | activate* | Activate*) continue ;; esac
      [ -f "$tool" ] && [ ! -e "$dest/bin/$name" ] || continue
      first=""  # a binary's bytes never go through a command substitution (bash warns of NULs)
      [ "$(head -c 2 "$tool")" = "#!" ] && first=$(head -n 1 "$tool")
      if [ "$first" = "#!$venv/bin/python" ] || [ "$first" = "#!$venv/bin/python3" ]; then
        { echo "#!$dest/bin/python"; tail -n +2 "$tool"; } >"$dest/bin/$name"
        chmod +x "$dest/bin/$name"
      else
        ln -s "$tool" "$dest/bin/$name"
      fi
    done
    echo "$venv" >"$dest/.layered-on"
  fi
  # Once per pyproject.toml (entry points, packages): the editable install follows source edits by itself.
  local installed log
  installed=$(sha256sum pyproject.toml | cut -c1-16)
  [ "$(cat "$dest/.installed" 2>/dev/null)" = "$installed" ] && return 0
  log=$(mktemp)
  # Quiet unless it fails: setuptools warns about every editable install, a page of noise before a run.
  if ! "$dest/bin/python" -m pip install -q --no-deps --no-build-isolation --disable-pip-version-check -e . >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    return 1
  fi
  rm -f "$log"
  echo "$installed" >"$dest/.installed"
}
