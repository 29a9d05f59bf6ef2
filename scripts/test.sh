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
# llama.cpp's own tokenizer test cases (real vocabularies, texts, the ids they must
# give), from the llama.cpp inside PyPI's llama-cpp-python source archive: too large to
# commit, so fetched (checked against its hash) and then required.
VOCAB=.downloads/llama.cpp-vocab
if [ ! -f "$VOCAB/ggml-vocab-mpt.gguf.out" ]; then
  echo "test: fetching llama.cpp's tokenizer test vocabularies (llama-cpp-python 0.3.36, 77 MB)"
  python3 - "$VOCAB" <<'PY'
import hashlib, io, os, sys, tarfile, urllib.request
url = ("https://files.pythonhosted.org/packages/ec/e9/"
       "e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca773a59fe7cf3/llama_cpp_python-0.3.36.tar.gz")
sha256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
data = urllib.request.urlopen(url, timeout=600).read()
if hashlib.sha256(data).hexdigest() != sha256:
    sys.exit("llama-cpp-python 0.3.36: the download does not match its hash")
out = sys.argv[1]
os.makedirs(out, exist_ok=True)
names = ["llama-spm", "phi-3", "gpt-2", "qwen2", "llama-bpe", "starcoder", "refact", "mpt"]
with tarfile.open(fileobj=io.BytesIO(data)) as archive:
    for member in archive.getmembers():
        base = os.path.basename(member.name)
        if any(base.startswith(f"ggml-vocab-{n}.gguf") for n in names) and "/models/" in member.name:
            with open(os.path.join(out, base), "wb") as f:
                f.write(archive.extractfile(member).read())
PY
fi
export QEXP_REQUIRE_LLAMA_CPP_VOCAB=1
cargo fmt --check
cargo clippy --release --all-targets --quiet -- -D warnings
log=$(mktemp)
QEXP_REQUIRE_REAL_MODEL=1 cargo test --release 2>&1 | tee "$log"
# One closing line for the whole suite, summed over every test binary.
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "tests: %d passed, %d failed\n", passed, failed }' "$log"
rm -f "$log"
