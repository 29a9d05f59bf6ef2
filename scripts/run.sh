#!/usr/bin/env bash
# The main command: set everything up, then run the shipped experiment on SmolLM2 and
# write its report to reports/query_composition/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
target/release/qexp run experiments/query_composition.qexp
