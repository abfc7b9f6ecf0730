#!/usr/bin/env bash
# The GPU suite's carry folder: everything the GPU machine needs beyond its driver, CUDA toolkit and
# PyTorch's wheels (cuBLAS, NCCL, cuDNN), in one folder under the device tool's 64 MiB.
#   tests/gpu/carry.sh pack  [BUILD_DIR [OUT_DIR]]   build machine: BUILD_DIR/gpu-carry, and what
#                                                     travels, BUILD_DIR/gpu-pack/carry.tar.xz
#   tests/gpu/carry.sh check [CARRY_DIR [PACK_DIR]]   size, stamp and library closure (CI runs it)
#   tests/gpu/carry.sh hide-mpi CMD...                run CMD with this machine's MPI and the carried
#                                                     libraries hidden (a mount namespace; root)
# Layout of a carry folder:
#   STAMP            commit, source digest, CUDA architectures, build dir, date
#   sources.sha256   digest of every tracked source file: the GPU machine checks its tree against it
#   bin/             dirmoe and the test binaries
#   lib/             shared libraries the binaries load that a minimal system lacks (closure of ldd)
#   fallback/        libstdc++ and libgcc_s, used only where the GPU machine's own are too old
#   mpi/             Debian's Open MPI and PMIx, relocated with OPAL_PREFIX / PMIX_PREFIX
#   data/            the bundled corpus (brown_gpt2.bin/.idx), for the suite's short CPU runs
#   hf_check/        four Mixtral exports with dirmoe's logits (tests/runtime/hf_transformers_check.sh)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
MAX_BYTES=$((64 * 1024 * 1024))
# What the carry leaves to the GPU machine: the C runtime, the driver, and CUDA's own libraries
# (its toolkit, or PyTorch's nvidia-* wheels). Everything else a carried binary loads is carried.
MINIMAL_SYSTEM='^(linux-vdso\.so\.1|ld-linux-x86-64\.so\.2|libc\.so\.6|libm\.so\.6|libdl\.so\.2|libpthread\.so\.0|librt\.so\.1|libutil\.so\.1|libresolv\.so\.2|libstdc\+\+\.so\.6|libgcc_s\.so\.1|libcuda\.so\.1|libnvidia-ml\.so\.1|libcudart\.so\.[0-9]+|libcublas\.so\.[0-9]+|libcublasLt\.so\.[0-9]+|libnccl\.so\.2|libcudnn[a-z_]*\.so\.[0-9]+|libnvrtc[a-z-]*\.so\.[0-9.]+|libnvJitLink\.so\.[0-9]+)$'
# Binaries: the GPU tests (every test_*cuda* the build made, test_comm_nccl), dirmoe, and one CPU
# MPI test that shows the carried Open MPI works before any GPU test runs.
BIN_GLOBS="test_*cuda* test_comm_nccl dirmoe test_comm_mpi"
# Open MPI and PMIx as Debian installs them (their files under /usr and /etc/openmpi).
MPI_PACKAGES="openmpi-bin libopenmpi3 openmpi-common libpmix2"
# Open MPI components not carried: fabrics a one-node GPU machine has no use for (their libraries
# would take most of the 64 MiB), OpenSHMEM, MPI-IO and the debugger/monitoring plugins.
MPI_SKIP='(ucx|ofi|openib|psm|verbs|_atomic_|memheap|scoll|spml|sshmem|romio|ompio|fcoll|fbtl|_fs_|sharedfp|monitoring|dbg_msgq|treematch|vprotocol|java|mpifh|usempi|oshmem|flux|gridengine|jsm)'

die() { echo "carry: $*" >&2; exit 1; }

# soname_ok NAME: true when NAME is left to the GPU machine.
soname_ok() { [[ $1 =~ $MINIMAL_SYSTEM ]]; }

# elf_files DIR: every ELF file below DIR.
elf_files() {
  find "$1" -type f | while read -r f; do
    [ "$(head -c 4 "$f" 2>/dev/null | od -An -c | tr -d ' ')" = '177ELF' ] && echo "$f"
  done
}

# carry_ld_path DIR: the library path a carried binary runs with (carried folders only).
carry_ld_path() {
  local d=$1
  echo "$d/lib:$d/mpi/lib/x86_64-linux-gnu:$d/mpi/lib/x86_64-linux-gnu/pmix2/lib"
}

# The tracked files a carried binary or a suite step depends on: the sources, the build files, the
# configs and the suite's scripts (a README edit after packing does not make the carry stale).
SOURCES=('*.cpp' '*.h' '*.cu' '*.cuh' '*CMakeLists.txt' '*.cmake' 'configs/*' 'tests/gpu/*' '*.py')

# ---- pack ------------------------------------------------------------------------------------------
pack() {
  local build=${1:-build}
  local out=${2:-$build/gpu-carry}
  [ -f "$build/CMakeCache.txt" ] || die "$build is not a CMake build directory"
  local archs
  # The SASS targets nvcc was given (sm_80 sm_90 ...), read off the build's own command lines.
  archs=$(grep -o -- '--generate-code=arch=compute_[0-9]*,code=\[[a-z_0-9,]*\]' "$build/build.ninja" |
          grep -o 'sm_[0-9]*' | sort -u | tr '\n' ' ' | sed 's/ $//')
  [ -n "$archs" ] || die "$build was configured without CUDA (no nvcc targets in build.ninja)"
  rm -rf "$out"
  mkdir -p "$out/bin" "$out/lib" "$out/fallback" "$out/mpi"

  local g f n=0
  for g in $BIN_GLOBS; do
    for f in "$build"/bin/$g; do
      [ -x "$f" ] || continue
      cp "$f" "$out/bin/" && strip --strip-unneeded "$out/bin/$(basename "$f")" && n=$((n + 1))
    done
  done
  [ -x "$out/bin/dirmoe" ] || die "$build/bin/dirmoe is missing: build it first (ninja -C $build)"
  [ -x "$out/bin/test_kernels_cuda" ] || die "$build/bin/test_kernels_cuda is missing: build it first"

  # Open MPI and PMIx, files under /usr moved under mpi/, /etc/openmpi under mpi/etc/openmpi.
  local p
  for p in $MPI_PACKAGES; do
    dpkg -s "$p" >/dev/null 2>&1 || die "Debian package $p is not installed (launch/setup.sh installs it)"
    dpkg -L "$p" | while read -r f; do
      { [ -L "$f" ] || [ -f "$f" ]; } || continue
      case "$f" in
        /usr/share/doc/* | /usr/share/man/* | /usr/share/lintian/* | */include/* | */pkgconfig/*) continue ;;
      esac
      [[ $(basename "$f") =~ $MPI_SKIP ]] && continue
      local dst
      case "$f" in
        /usr/*) dst="$out/mpi/${f#/usr/}" ;;
        /etc/openmpi/*) dst="$out/mpi/etc/openmpi/${f#/etc/openmpi/}" ;;
        *) continue ;;
      esac
      mkdir -p "$(dirname "$dst")"
      cp -P "$f" "$dst"
    done
  done
  # Debian's libraries sit in /usr/lib/x86_64-linux-gnu, with symlinks in openmpi/lib: resolve the
  # real files (openmpi3 plugins link to them by soname through LD_LIBRARY_PATH).
  local libdir=$out/mpi/lib/x86_64-linux-gnu
  for f in "$libdir"/openmpi/lib/*.so; do [ -L "$f" ] && rm -f "$f"; done
  # mpirun is an alternatives symlink: orterun is the program.
  [ -x "$out/mpi/bin/orterun" ] || die "orterun not found in openmpi-bin"
  ln -sf orterun "$out/mpi/bin/mpirun"
  rm -f "$out/mpi/bin/"*.openmpi "$out/mpi/bin/"mpi{cc,cxx,c++,fort,f77,f90,CC,javac}* \
        "$out/mpi/bin/"oshmem* "$out/mpi/bin/"shmem* "$out/mpi/bin/"opal_wrapper "$out/mpi/bin/"ortecc
  find "$out/mpi" -xtype l -delete

  # The closure: every library an ELF here loads, not in the minimal system, copied into lib/.
  local ldp round=0 missing added
  ldp=$(carry_ld_path "$out")
  while :; do
    round=$((round + 1))
    [ "$round" -le 8 ] || die "library closure did not settle"
    added=0
    while read -r so path; do
      soname_ok "$so" && continue
      case "$path" in "$out"/*) continue ;; esac
      if [ "$path" = "not" ] || [ ! -f "$path" ]; then
        echo "carry: cannot resolve $so on this machine" >&2
        missing=1
        continue
      fi
      [ -e "$out/lib/$so" ] || { cp -L "$path" "$out/lib/$so"; added=1; }
    done < <(elf_files "$out" | while read -r f; do
               LD_LIBRARY_PATH=$ldp ldd "$f" 2>/dev/null | awk '$2 == "=>" {print $1, $3}'
             done | sort -u)
    [ "$added" -eq 1 ] || break
  done
  [ -z "${missing:-}" ] || die "unresolved libraries (above)"
  # The C++ runtime of this build machine, for a GPU machine whose own is older.
  for so in libstdc++.so.6 libgcc_s.so.1; do
    cp -L "$(ldconfig -p | awk -v s="$so" '$1 == s && /x86-64/ {print $NF; exit}')" "$out/fallback/"
  done

  # The bundled corpus (data/ does not travel with the tree): the CPU runs the suite makes there.
  if [ -f data/brown/brown_gpt2.bin ]; then
    mkdir -p "$out/data" && cp data/brown/brown_gpt2.bin data/brown/brown_gpt2.idx "$out/data/"
  fi
  # The Mixtral exports and dirmoe's own logits the transformers check compares against.
  if [ -x "$build/bin/test_checkpoint" ] && [ -f tests/runtime/hf_transformers_check.sh ]; then
    bash tests/runtime/hf_transformers_check.sh prepare "$build" >"$out/hf_check.log" 2>&1 &&
      cp -r "$build/hf_check" "$out/hf_check" ||
      echo "carry: WARNING: hf_transformers_check.sh prepare failed (see $out/hf_check.log)" >&2
  fi
  git ls-files -z -- "${SOURCES[@]}" | xargs -0 sha256sum >"$out/sources.sha256"
  {
    echo "commit $(git rev-parse HEAD)$(git diff --quiet HEAD -- "${SOURCES[@]}" || echo ' (with uncommitted changes)')"
    echo "source_digest $(sha256sum "$out/sources.sha256" | cut -c1-16)"
    echo "cuda_architectures $archs"
    echo "build_dir $build"
    echo "build_type $(sed -n 's/^CMAKE_BUILD_TYPE:[A-Z]*=//p' "$build/CMakeCache.txt")"
    echo "nvcc $(sed -n 's/^set(CMAKE_CUDA_COMPILER_VERSION "\(.*\)")/\1/p' "$build/CMakeFiles/"*/CMakeCUDACompiler.cmake 2>/dev/null | head -1)"
    echo "glibc_needed $(elf_files "$out/bin" | xargs objdump -T 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sort -Vu | tail -1)"
    echo "glibcxx_needed $(elf_files "$out/bin" | xargs objdump -T 2>/dev/null | grep -o 'GLIBCXX_[0-9.]*' | sort -Vu | tail -1)"
    echo "packed $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)"
    echo "binaries $(ls "$out/bin" | tr '\n' ' ')"
  } >"$out/STAMP"
  echo "carry: packed $n binaries into $out: $(du -sb "$out" | cut -f1) bytes ($(du -sh "$out" | cut -f1))"
  # What travels: one xz tarball (the libraries and fatbins compress about 6x), with the stamp.
  local pk=${out%-carry}-pack
  [ "$pk" != "$out" ] || pk=$out-pack
  rm -rf "$pk" && mkdir -p "$pk"
  tar -C "$(dirname "$out")" -cf - "$(basename "$out")" | xz -T2 "-${CARRY_XZ_LEVEL:-6}" >"$pk/carry.tar.xz"
  cp "$out/STAMP" "$out/sources.sha256" "$pk/"
  echo "carry: $pk/carry.tar.xz: $(du -sb "$pk/carry.tar.xz" | cut -f1) bytes"
  check "$out" "$pk"
}

# ---- check -----------------------------------------------------------------------------------------
# Size (with the working tree, which travels too), stamp, and that every carried ELF resolves its
# libraries against the carry plus the minimal system, and nothing else.
check() {
  local dir=${1:-build/gpu-carry} bad=0
  local pk=${2:-${dir%-carry}-pack}
  [ -f "$dir/STAMP" ] || die "$dir has no STAMP: not a carry folder (tests/gpu/carry.sh pack)"
  [ -f "$pk/carry.tar.xz" ] || die "$pk/carry.tar.xz is missing (tests/gpu/carry.sh pack)"
  local carry_bytes tree_bytes total
  carry_bytes=$(du -sb "$pk" | cut -f1)
  tree_bytes=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
  [ -d ../shared ] && tree_bytes=$((tree_bytes + $(du -sb ../shared | cut -f1)))
  total=$((carry_bytes + tree_bytes))
  printf 'carry: %s %d bytes (%.1f MiB) + working tree %d bytes = %.1f MiB of %d MiB\n' "$pk" \
    "$carry_bytes" "$(echo "$carry_bytes / 1048576" | bc -l)" "$tree_bytes" \
    "$(echo "$total / 1048576" | bc -l)" $((MAX_BYTES / 1048576))
  [ "$total" -le "$MAX_BYTES" ] || { echo "carry: FAIL: over the device tool's 64 MiB"; bad=1; }

  local ldp f line so path nelf=0
  ldp=$(carry_ld_path "$dir")
  while read -r f; do
    nelf=$((nelf + 1))
    while read -r line; do
      so=$(echo "$line" | awk '{print $1}')
      path=$(echo "$line" | awk '{print $3}')
      soname_ok "$so" && continue
      case "$path" in
        "$dir"/*) ;;
        *) echo "carry: FAIL: ${f#$dir/} loads $so from ${path:-nowhere} (neither carried nor minimal system)"; bad=1 ;;
      esac
    done < <(LD_LIBRARY_PATH=$ldp ldd "$f" 2>/dev/null | grep '=>')
  done < <(elf_files "$dir" | grep -v "/fallback/")
  echo "carry: $nelf ELF files resolve against the carry plus the minimal system"
  for f in bin/dirmoe bin/test_kernels_cuda mpi/bin/orterun mpi/share/openmpi/help-mpi-runtime.txt; do
    [ -e "$dir/$f" ] || { echo "carry: FAIL: $f missing"; bad=1; }
  done
  # The tree it was packed from: the digest the GPU machine checks again.
  if ! (sha256sum --quiet -c "$dir/sources.sha256" >/dev/null 2>&1); then
    echo "carry: WARNING: sources changed since packing ($(sha256sum --quiet -c "$dir/sources.sha256" 2>/dev/null | wc -l) files): repack"
  fi
  [ "$bad" -eq 0 ] && echo "carry: OK ($dir)" || { echo "carry: FAILED ($dir)"; return 1; }
}

# ---- hide-mpi --------------------------------------------------------------------------------------
# Runs CMD in a private mount namespace where this machine's Open MPI, PMIx and every library the
# carry holds are hidden, as on a GPU machine without them.
hide_mpi() {
  local carry=${CARRY_DIR:-build/gpu-carry}
  unshare -m --propagation private bash -c '
    set -e
    carry=$1; shift
    # A hard-linked copy of the system library folder without the hidden libraries, mounted over
    # it: to the loader they are absent (not found), as on a machine that never had them.
    lib=/usr/lib/x86_64-linux-gnu
    shadow=$(mktemp -d /tmp/dirmoe-hide.XXXXXX)
    cp -al "$lib" "$shadow/lib"
    # The libraries the shell tools themselves load stay (a GPU machine has its own).
    keep=$(for t in sh bash mkdir cp rm tar xz find awk sed grep sha256sum timeout python3 ldd env; do
             p=$(command -v "$t") && ldd "$p" 2>/dev/null | awk "\$2 == \"=>\" {print \$1}"
           done | sort -u)
    for so in "$carry"/lib/*.so*; do
      b=$(basename "$so")
      echo "$keep" | grep -qx "$b" && continue
      rm -f "$shadow/lib/$b" "$shadow/lib/${b%%.so*}.so"*
    done
    rm -rf "$shadow/lib/openmpi" "$shadow/lib/pmix2" "$shadow/lib/openmpi3" "$shadow"/lib/libmpi* \
           "$shadow"/lib/libopen-rte* "$shadow"/lib/libopen-pal* "$shadow"/lib/libpmix*
    mount --bind "$shadow/lib" "$lib"
    empty=$(mktemp -d)
    for d in /usr/share/openmpi /etc/openmpi; do [ -d "$d" ] && mount --bind "$empty" "$d"; done
    for f in /usr/bin/mpirun /usr/bin/mpiexec /usr/bin/orterun /usr/bin/orted; do
      [ -e "$f" ] && mount --bind /dev/null "$(readlink -f "$f")"
    done
    ldconfig -C "$shadow/ld.so.cache" 2>/dev/null && mount --bind "$shadow/ld.so.cache" /etc/ld.so.cache
    trap "rm -rf $shadow $empty" EXIT
    "$@"' hide-mpi "$(cd "$carry" && pwd)" "$@"
}

case "${1:-}" in
  pack) shift; pack "$@" ;;
  check) shift; check "$@" ;;
  hide-mpi) shift; hide_mpi "$@" ;;
  *) sed -n '2,16p' "$0"; exit 2 ;;
esac
