#!/usr/bin/env bash
# The test suite: installs ONNX Runtime and the real model (scripts/setup.sh), checks
# formatting and lints, then runs every test. The SmolLM2 comparison against
# transformers is required here, not skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The report's browser test needs Debian's Chromium; where this script can install it
# (root with apt-get, as in CI) the test is required, not skipped.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  if [ ! -x /usr/bin/chromium ]; then
    echo "test: installing Debian's chromium for the report's browser test"
    apt-get update -qq >/dev/null && apt-get install -y -qq chromium >/dev/null
  fi
  export QEXP_REQUIRE_BROWSER=1
  # The cluster test starts a one-node Slurm (scripts/slurm_cluster.sh): required here.
  if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    echo "test: installing Debian's slurmctld, slurmd and munge for the cluster test"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
  fi
  export QEXP_REQUIRE_SLURM=1
fi
cargo fmt --check
cargo clippy --release --all-targets --quiet -- -D warnings
log=$(mktemp)
QEXP_REQUIRE_REAL_MODEL=1 cargo test --release 2>&1 | tee "$log"
# One closing line for the whole suite, summed over every test binary.
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "tests: %d passed, %d failed\n", passed, failed }' "$log"
rm -f "$log"
