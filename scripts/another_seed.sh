#!/usr/bin/env bash
# Do the shipped experiment's claims hold for another SAE? Trains its SAE again with
# another seed (default 7) in a scratch copy of the project and checks every claim
# there. The committed report and the pinned SAE are not touched. About 10 minutes on
# 2 cores (most of it training); exits 3 when a claim does not hold.
#   bash scripts/another_seed.sh [SEED]
set -euo pipefail
cd "$(dirname "$0")/.."
SEED="${1:-7}"
bash scripts/setup.sh
PROJECT="$PWD"
SCRATCH="$(mktemp -d)"
trap 'rm -rf "$SCRATCH"' EXIT
mkdir -p "$SCRATCH/experiments"
ln -s "$PROJECT/models" "$SCRATCH/models"
ln -s "$PROJECT/data" "$SCRATCH/data"
sed -e "s/^    seed = 42,\$/    seed = $SEED,/" experiments/query_composition.qexp \
  > "$SCRATCH/experiments/query_composition.qexp"
if ! grep -q "^    seed = $SEED,\$" "$SCRATCH/experiments/query_composition.qexp"; then
  echo "another_seed: the experiment's SAE no longer says 'seed = 42'; update this script" >&2
  exit 1
fi
cd "$SCRATCH"
status=0
"$PROJECT/target/release/qexp" run experiments/query_composition.qexp || status=$?
echo "another_seed: the SAE trained with seed $SEED chose these features:"
for table in strongest_here strongest; do
  echo "  $table: $(tail -n +2 "reports/query_composition/results/$table.csv" | cut -d, -f1 | paste -sd' ')"
done
exit "$status"
