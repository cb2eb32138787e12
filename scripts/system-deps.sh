#!/usr/bin/env bash
# System packages the book uses beyond pip, installed with apt where missing and running as root;
# otherwise a note says what to install:
#   libaio-dev        DeepSpeed's async_io op (NVMe offload, chapter 05)
#   chromium, chromium-driver   the browser tests (the book's site, JupyterLab, the MLflow UI);
#                     Selenium drives /usr/bin/chromedriver and downloads nothing
set -uo pipefail
missing=()
[ -e /usr/include/libaio.h ] || missing+=(libaio-dev)
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
[ ${#missing[@]} = 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
    || { apt-get update >/dev/null 2>&1 && apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1; } \
    || echo "note: could not install ${missing[*]}: NVMe offload (chapter 05) or the browser tests will be skipped" >&2
else
  echo "note: install ${missing[*]} (e.g. sudo apt-get install ${missing[*]}): NVMe offload (chapter 05)" \
       "and the browser tests need them" >&2
fi
exit 0
