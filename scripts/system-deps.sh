#!/usr/bin/env bash
# System packages the book uses beyond pip: libaio-dev, for DeepSpeed's async_io op (NVMe
# offload, chapter 05). Installed with apt where missing and running as root; otherwise a
# note says what to install (the NVMe cells then report that the op is unavailable).
set -uo pipefail
if [ -e /usr/include/libaio.h ]; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends libaio-dev >/dev/null 2>&1 \
    || { apt-get update >/dev/null 2>&1 && apt-get install -y --no-install-recommends libaio-dev >/dev/null 2>&1; } \
    || echo "note: could not install libaio-dev; NVMe offload (chapter 05) will be unavailable" >&2
else
  echo "note: install libaio-dev (e.g. sudo apt-get install libaio-dev) for NVMe offload (chapter 05)" >&2
fi
exit 0
