#!/usr/bin/env bash
# Prints the CPU a benchmark runs on: its model, cores, and the widest vector
# instruction set it has. Every bench script starts with this line, because ONNX
# Runtime's and torch's kernels (and so every ratio here) depend on it.
set -euo pipefail
model=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
flags=$(grep -m1 '^flags' /proc/cpuinfo)
isa="SSE only"
for candidate in avx2 avx512f amx_tile; do
  case " $flags " in *" $candidate "*) isa=$candidate ;; esac
done
case $isa in
  avx512f) isa="AVX-512" ;;
  amx_tile) isa="AVX-512 + AMX" ;;
  avx2) isa="AVX2, no AVX-512" ;;
esac
echo "CPU: ${model:-unknown} ($(uname -m)), $(nproc) cores, $isa"
