# Shared by scripts/convert-models.sh and scripts/convert-detectors.sh (sourced, not run): a
# scratch directory removed at exit, sha256 checks of every downloaded input, venvs, Python 3.11.
# Expects PYTHON to be set and takes the scratch directory's name as $1.

WORK="$(mktemp -d -t "$1.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
log() { printf '\n== %s\n' "$*"; }

check_sha() {  # file expected-sha256
  local got
  got="$(sha256sum "$1" | cut -d' ' -f1)"
  if [[ "$got" != "$2" ]]; then
    echo "sha256 mismatch for $1: got $got, expected $2" >&2
    exit 1
  fi
}

make_venv() {  # dir packages...
  local dir="$1"; shift
  "$PYTHON" -m venv "$dir"
  "$dir/bin/pip" install --quiet --disable-pip-version-check "$@"
}

# TensorFlow 2.15 has no wheels for newer Pythons.
"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
  || { echo "need Python 3.11 (set PYTHON=...)" >&2; exit 1; }
