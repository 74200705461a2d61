#!/bin/sh
# The steps of deploy/images/Dockerfile that install Python packages (run in the build
# stages only; the runtime stages copy /opt/pixelbus and nothing else):
#   install-venv.sh wheels        when the context brought no third-party wheels: every
#                                 pin of requirements/all.txt as a wheel, from the index
#   install-venv.sh deps NAME     /opt/pixelbus: a virtualenv with image NAME's third-party
#                                 pins, from /wheels/third-party only (--no-index)
#   install-venv.sh own DIST...   pixelbus' own wheels into it (--no-index), then pip and
#                                 setuptools out of it: nothing that builds is left behind
set -eu
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
venv=/opt/pixelbus
offline="--no-index --find-links /wheels/third-party"

case "$1" in
wheels)
    if ls /wheels/third-party/*.whl >/dev/null 2>&1; then exit 0; fi
    python3 -m venv /opt/wheel-builder
    /opt/wheel-builder/bin/pip wheel --wheel-dir /wheels/third-party \
        --constraint /wheels/constraints.txt --requirement /wheels/requirements/all.txt
    rm -rf /opt/wheel-builder
    ;;
deps)
    python3 -m venv "$venv"
    # shellcheck disable=SC2086
    "$venv/bin/pip" install --quiet $offline --constraint /wheels/constraints.txt \
        --requirement "/wheels/requirements/$2.txt"
    ;;
own)
    shift
    wheels=""
    for dist in "$@"; do
        wheels="$wheels $(ls "/wheels/pixelbus/$(echo "$dist" | tr - _)"-*.whl)"
    done
    # shellcheck disable=SC2086
    "$venv/bin/pip" install --quiet $offline --find-links /wheels/pixelbus \
        --constraint /wheels/constraints.txt $wheels
    "$venv/bin/python" -m pip uninstall --quiet --yes pip setuptools
    ;;
*)
    echo "usage: install-venv.sh wheels | deps NAME | own DIST..." >&2
    exit 2
    ;;
esac
