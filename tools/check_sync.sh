#!/usr/bin/env bash
# Fails when nbdev_clean, nbdev_export or the README generator would change any file:
# committed notebooks must be clean, and drbook/ and README.md generated from them.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
snap() { find nbs drbook README.md -type f \( -name '*.ipynb' -o -name '*.py' -o -name '*.md' \) -not -path '*/__pycache__/*' -not -path '*/.ipynb_checkpoints/*' -print0 | sort -z | xargs -0 md5sum; }
before=$(snap)
"$BIN/nbdev_clean" >/dev/null
"$BIN/nbdev_export"
"$BIN/python" tools/make_readme.py >/dev/null
after=$(snap)
if [ "$before" != "$after" ]; then
  echo "check-sync: FAILED. These files changed under nbdev_clean / nbdev_export / tools/make_readme.py:" >&2
  { diff <(echo "$before") <(echo "$after") || true; } | grep '^[<>]' | awk '{print "  " $3}' | sort -u >&2
  echo "Run 'make readme' after 'nbdev_clean && nbdev_export', then commit the result." >&2
  exit 1
fi
"$BIN/python" tools/check_notebooks.py
echo "check-sync: notebooks clean, library and README in sync"
