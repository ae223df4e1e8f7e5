#!/bin/sh
# Build a C library with the flags live patching needs, prepare every shared library it built,
# gate on `ulp check`, then run the project's own tests against the prepared libraries.
#
#   docs/ci/prepare-and-test.sh SOURCE_DIR
#
# Written for configure/make projects (zlib here in the tests); change the three build lines
# for yours. Needs gcc, make and `ulp` (pip install ulp_build) on PATH.
set -eu
cd "$1"

CFLAGS="-O2 -g $(ulp cflags)" ./configure
make -j"$(nproc)"

status=0
for lib in $(find . -maxdepth 2 -name '*.so*' -type f); do
    ulp rewrite "$lib"
    # The gate: prepared, consistent, and every exported function patchable.
    if ! ulp check --strict --json "$lib" > "$lib.ulp-check.json"; then
        echo "ulp check failed for $lib:" >&2
        cat "$lib.ulp-check.json" >&2
        status=1
    fi
done
[ "$status" -eq 0 ]

make test
