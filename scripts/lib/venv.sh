# Sourced by scripts/run and scripts/test: a virtual environment in .venv with one pinned set installed.
#
# venv_install main|dev installs requirements/<set>.txt only when it, pyproject.toml or the Python
# changed since the last install into this .venv (a SHA-256 of the three is kept in .venv), so a
# restart runs no pip at all. When it does install, pip shows what it fetches and installs.
# dev pins every package of main at the same version (scripts/lock), so installing dev covers main.

venv_install() {
  local set=$1
  local lock="requirements/$set.txt"
  if [ ! -x .venv/bin/python ]; then
    echo "==> creating .venv"
    "${PYTHON:-python3}" -m venv .venv
  fi
  local digest
  digest=$( { cat "$lock" pyproject.toml; .venv/bin/python -VV; } | sha256sum | cut -d' ' -f1)
  if [ "$(cat ".venv/.installed-$set" 2>/dev/null)" = "$digest" ]; then
    echo "==> $lock already installed"
    return 0
  fi
  echo "==> installing $lock (new, or changed since the last install)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  # --require-hashes: exactly the pinned files, or nothing.
  .venv/bin/python -m pip install --require-hashes --progress-bar on -r "$lock"
  echo "$digest" > ".venv/.installed-$set"
  if [ "$set" = dev ]; then
    digest=$( { cat requirements/main.txt pyproject.toml; .venv/bin/python -VV; } | sha256sum | cut -d' ' -f1)
    echo "$digest" > .venv/.installed-main
  fi
}
