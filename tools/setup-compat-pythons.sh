#!/usr/bin/env bash
# Give the pyenv interpreters that stand in for the Jetson system Pythons the one package the
# isolated worker needs there: numpy, at exactly the version the device ships, so the tests
# exercise the oldest numpy the worker code will meet in the field:
#   Python 3.6 = Ubuntu 18.04 / JetPack 4.6: python3-numpy 1:1.13.3
#   Python 3.8 = Ubuntu 20.04 / JetPack 5:   python3-numpy 1:1.17.4
# Plus one venv of the 3.8 interpreter with numpy 1.24.4 at $root/edged-compat/py3.8-numpy1.24:
# JetPack 5.1 after `pip3 install -U numpy`, where TensorRT 8.5's trt.nptype fails (numpy 1.24
# removed np.bool). A venv that cannot be made is a warning: those tests skip saying so.
# Idempotent: an interpreter that already has exactly that numpy is left alone; any other numpy
# (or none) is replaced. An interpreter that does not exist is reported and skipped (the tests
# then skip with the same message), never installed from source: only binary wheels are taken.
#
# Usage: tools/setup-compat-pythons.sh [PYENV_ROOT]      (default: $PYENV_ROOT or /root/.pyenv)
set -u
root="${1:-${PYENV_ROOT:-/root/.pyenv}}"
status=0

# version prefix -> the numpy version that Ubuntu release (and so JetPack) ships
want() {
    case "$1" in
        3.6) echo '1.13.3' ;;
        3.8) echo '1.17.4' ;;
    esac
}

have() {  # numpy version importable by "$1", empty when none
    "$1" -c 'import numpy; print(numpy.__version__)' 2>/dev/null
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
    version="$(want "$minor")"
    current="$(have "$py")"
    if [ "$current" = "$version" ]; then
        echo "compat-pythons: $py already has numpy $version"
        continue
    fi
    echo "compat-pythons: installing numpy==$version into $py (had: ${current:-none})"
    # --force-reinstall also replaces a newer numpy that pip would otherwise refuse to downgrade
    # when another package pins it; --no-deps because numpy has none and nothing else may move.
    if "$py" -m pip install --disable-pip-version-check --quiet --only-binary=:all: --no-deps \
            --force-reinstall "numpy==$version" && [ "$(have "$py")" = "$version" ]; then
        echo "compat-pythons: $py now has numpy $version"
    else
        echo "compat-pythons: FAILED to install numpy==$version into $py (has: $(have "$py" || true))" >&2
        status=1
    fi
done

venv="$root/edged-compat/py3.8-numpy1.24"
py38=""
for cand in "$root"/versions/3.8.*/bin/python; do
    [ -x "$cand" ] && py38="$cand"
done
if [ -x "$venv/bin/python" ] && [ "$(have "$venv/bin/python")" = "1.24.4" ]; then
    echo "compat-pythons: $venv already has numpy 1.24.4"
elif [ -n "$py38" ] && "$py38" -m venv --clear "$venv" >/dev/null 2>&1 && \
        "$venv/bin/python" -m pip install --disable-pip-version-check --quiet --only-binary=:all: --no-deps \
            "numpy==1.24.4" && [ "$(have "$venv/bin/python")" = "1.24.4" ]; then
    echo "compat-pythons: $venv now has numpy 1.24.4"
else
    echo "compat-pythons: no venv with numpy 1.24.4 at $venv (its test will skip)" >&2
fi
exit $status
