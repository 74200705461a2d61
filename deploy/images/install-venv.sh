#!/bin/sh
# The steps of deploy/images/Dockerfile that install Python packages (run in the build
# stages only; the runtime stages copy /opt/pixelbus and nothing else):
#   install-venv.sh wheels        when the context brought no third-party wheels: every
#                                 pin of requirements/all.txt as a wheel, from the index
#   install-venv.sh deps NAME     /opt/pixelbus: a virtualenv with image NAME's third-party
#                                 pins, from /wheels/third-party only (--no-index)
#   install-venv.sh own DIST...   pixelbus' own wheels into it (--no-index), then pip and
#                                 setuptools out of it: nothing that builds is left behind;
#                                 the compiled modules' debug info stripped
#   install-venv.sh prune PATH... files of installed packages that the service never reads
#                                 (relative to site-packages; each must exist, so that a
#                                 package that moves them is noticed, not silently kept)
#   install-venv.sh prune-tests PACKAGE...
#                                 the test suites (every tests/ folder) of PACKAGE
#   install-venv.sh prune-except DIR KEEP...
#                                 the folders of DIR (in site-packages) other than KEEP
set -eu
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
venv=/opt/pixelbus
offline="--no-index --find-links /wheels/third-party"

site_packages() {
    "$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'
}

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
    # debug info out of compiled modules (not of the libraries auditwheel vendored in
    # *.libs, which are stripped already)
    find "$venv" -name '*.so' -not -path '*.libs/*' -exec strip --strip-debug {} +
    ;;
prune)
    shift
    site=$(site_packages)
    for path in "$@"; do
        rm -r "${site:?}/$path"
    done
    ;;
prune-tests)
    shift
    site=$(site_packages)
    for package in "$@"; do
        test -n "$(find "${site:?}/$package" -type d -name tests -print -quit)"
        find "$site/$package" -depth -type d -name tests -exec rm -r {} +
    done
    ;;
prune-except)
    site=$(site_packages)
    dir="${site:?}/$2"
    shift 2
    for keep in "$@"; do
        test -d "$dir/$keep"  # a name that is not there is a mistake, not a no-op
    done
    for folder in "$dir"/*/; do
        name=$(basename "$folder")
        case " $* " in
        *" $name "*) ;;
        *) rm -r "$folder" ;;
        esac
    done
    ;;
*)
    echo "usage: install-venv.sh wheels | deps NAME | own DIST... | prune PATH..." \
        "| prune-tests PACKAGE... | prune-except DIR KEEP..." >&2
    exit 2
    ;;
esac
