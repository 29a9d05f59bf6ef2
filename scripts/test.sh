#!/usr/bin/env bash
# The test suite: installs ONNX Runtime and the real model (scripts/setup.sh), checks
# formatting and lints, then runs every test. The SmolLM2 comparison against
# transformers is required here, not skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo fmt --check
cargo clippy --release --all-targets --quiet -- -D warnings
QEXP_REQUIRE_REAL_MODEL=1 cargo test --release
