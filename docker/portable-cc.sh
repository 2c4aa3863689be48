#!/usr/bin/env bash
# C/C++ compiler front for the DeepSpeed op build in docker/Dockerfile (installed as portable-cc and portable-c++).
#
# Why: DeepSpeed's CPU op builder (op_builder/cpu/builder.py: cpu_arch(), simd_width()) always passes
# -march=native on x86-64, plus -D__AVX512__ when the *build machine* has AVX-512, and offers no setting to change
# either. The image runs on rented hosts with other CPUs (AMD Zen 2/3 have no AVX-512), so the prebuilt cpu_adam
# must target a portable level instead: x86-64-v3 (AVX2, FMA, F16C) and DeepSpeed's 256-bit SIMD path.
# Every rewrite is printed, and with PORTABLE_CC_LOG set every compile line is appended there (pip hides a build's
# output), so the build log can show the flags actually used.
set -euo pipefail
case "$(basename "$0")" in
  *c++ | *g++) real=${PORTABLE_REAL_CXX:-g++} ;;
  *) real=${PORTABLE_REAL_CC:-gcc} ;;
esac
level=${PORTABLE_MARCH:-x86-64-v3}
args=()
for a in "$@"; do
  case "$a" in
    -march=native | -mcpu=native | -mtune=native)
      printf 'portable-cc: %s -> -march=%s -mtune=generic\n' "$a" "$level" >&2
      args+=("-march=$level" "-mtune=generic") ;;
    -D__AVX512__)
      printf 'portable-cc: %s -> -D__AVX256__\n' "$a" >&2
      args+=("-D__AVX256__") ;;
    *) args+=("$a") ;;
  esac
done
if [ -n "${PORTABLE_CC_LOG:-}" ]; then printf '%s %s\n' "$real" "${args[*]}" >>"$PORTABLE_CC_LOG"; fi
exec "$real" "${args[@]}"
