#!/usr/bin/env bash
# Dashboards for all 4096 features of the flagship's query SAE over 200k tokens, end to
# end (model load, forward passes, collection, 4097 pages written), in tokens per minute.
# Reads the SAE the flagship pins in experiments/query_composition.saes/ (committed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash bench/cpu.sh
start=$(date +%s.%N)
target/release/qexp run bench/dashboards.qexp --reports bench/.reports > /dev/null
seconds=$(echo "$(date +%s.%N) - $start" | bc)
tokens=$(python3 -c "import re; print(re.search(r', (\\d+) tokens read', open(next(__import__('glob').iglob('bench/.reports/dashboards_bench/dashboards/*/index.html'))).read()).group(1))")
pages=$(ls bench/.reports/dashboards_bench/dashboards/all_features | wc -l)
python3 -c "print(f'dashboards: {$pages} pages over {$tokens} tokens in {$seconds:.1f} s: {$tokens / $seconds * 60:,.0f} tokens per minute')"
