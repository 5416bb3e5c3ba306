#!/usr/bin/env bash
# Give the pyenv interpreters that stand in for the Jetson system Pythons (JetPack 4.6 -> 3.6,
# JetPack 5 -> 3.8) the one package the isolated worker needs there: numpy. Idempotent: an
# interpreter that already imports numpy is left alone; an interpreter that does not exist is
# reported and skipped (the tests then skip with the same message), never installed from source.
#
# Usage: tools/setup-compat-pythons.sh [PYENV_ROOT]      (default: $PYENV_ROOT or /root/.pyenv)
set -u
root="${1:-${PYENV_ROOT:-/root/.pyenv}}"
status=0

# version prefix -> pip requirement (the last numpy release with wheels for that Python)
want() {
    case "$1" in
        3.6) echo 'numpy>=1.13,<1.20' ;;
        3.8) echo 'numpy>=1.13,<1.25' ;;
    esac
}

for minor in 3.6 3.8; do
    py=""
    for cand in "$root"/versions/"$minor".*/bin/python; do
        [ -x "$cand" ] && py="$cand"
    done
    if [ -z "$py" ]; then
        echo "compat-pythons: no Python $minor under $root/versions - skipped (its tests will skip)"
        continue
    fi
    if "$py" -c 'import numpy' >/dev/null 2>&1; then
        echo "compat-pythons: $py already has numpy $("$py" -c 'import numpy; print(numpy.__version__)')"
        continue
    fi
    echo "compat-pythons: installing $(want "$minor") into $py"
    if "$py" -m pip install --disable-pip-version-check --quiet --only-binary=:all: "$(want "$minor")"; then
        echo "compat-pythons: $py now has numpy $("$py" -c 'import numpy; print(numpy.__version__)')"
    else
        echo "compat-pythons: FAILED to install numpy into $py" >&2
        status=1
    fi
done
exit $status
