// Signals, watchdog and fault injection (see resilience.h).
#include "runtime/resilience.h"

#include <signal.h>
#include <unistd.h>

#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <vector>

#include "runtime/core/error.h"

namespace dirmoe {
namespace {

volatile sig_atomic_t g_stop_signal = 0;

void on_stop_signal(int sig) { g_stop_signal = sig; }

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

int64_t parse_int(const std::string& s, const std::string& whole) {
  DIRMOE_CHECK(!s.empty() && s.find_first_not_of("0123456789") == std::string::npos,
               "DIRMOE_FAULT='", whole, "': '", s, "' is not a non-negative integer");
  return std::stoll(s);
}

}  // namespace

void install_stop_signal_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGUSR1, &sa, nullptr);
  signal(SIGXFSZ, SIG_IGN);
}

int pending_stop_signal() { return g_stop_signal; }

FaultPlan FaultPlan::from_env() {
  FaultPlan f;
  const char* v = std::getenv("DIRMOE_FAULT");
  if (!v || !*v) return f;
  std::string s(v);
  std::vector<std::string> parts;
  std::stringstream ss(s);
  for (std::string p; std::getline(ss, p, ':');) parts.push_back(p);
  if (parts.size() == 3 && (parts[0] == "kill" || parts[0] == "hang")) {
    f.kind = parts[0] == "kill" ? Kind::kKill : Kind::kHang;
    f.rank = static_cast<int>(parse_int(parts[1], s));
    f.step = parse_int(parts[2], s);
  } else if (parts.size() == 4 && parts[0] == "nan" && !parts[3].empty()) {
    f.kind = Kind::kNan;
    f.step = parse_int(parts[1], s);
    f.last = parse_int(parts[2], s);
    f.tensor = parts[3];
  } else {
    DIRMOE_FAIL("DIRMOE_FAULT='", s,
                "': expected kill:RANK:STEP, hang:RANK:STEP or nan:FIRST:LAST:TENSOR");
  }
  return f;
}

void FaultPlan::maybe_fire(int r, int64_t step1) const {
  if (step1 != step || (kind != Kind::kKill && kind != Kind::kHang) || r != rank) return;
  std::fprintf(stderr, "[rank %d] DIRMOE_FAULT: %s in step %lld\n", r,
               kind == Kind::kKill ? "SIGKILL" : "hang", static_cast<long long>(step1));
  std::fflush(stderr);
  if (kind == Kind::kKill) ::kill(::getpid(), SIGKILL);
  for (;;) ::pause();
}

Watchdog::Watchdog(double timeout_s, int rank) : timeout_s_(timeout_s), rank_(rank) {
  if (timeout_s_ > 0) thread_ = std::thread([this] { loop(); });
}

Watchdog::~Watchdog() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
}

void Watchdog::beat(int64_t step, const char* phase) {
  step_ = step;
  phase_ = phase;
  last_ns_ = now_ns();
  paused_ = false;
}

void Watchdog::pause() { paused_ = true; }

void Watchdog::loop() {
  const int64_t limit = static_cast<int64_t>(timeout_s_ * 1e9);
  while (!stop_) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    if (paused_ || stop_) continue;
    int64_t age = now_ns() - last_ns_.load();
    if (age > limit) {
      std::fprintf(stderr,
                   "[rank %d] error: watchdog: step %lld (%s) made no progress for %.1f s "
                   "(train.watchdog_s = %g): a rank was lost or a collective hangs; ending the "
                   "job\n",
                   rank_, static_cast<long long>(step_.load()), phase_.load(), age / 1e9,
                   timeout_s_);
      std::fflush(stderr);
      std::_Exit(3);
    }
  }
}

template <class T>
std::string first_nonfinite(const std::vector<Parameter<T>*>& params, int num_layers,
                            Communicator& world, int* owner) {
  const int L = num_layers;
  auto layer_of = [&](const std::string& n) {  // 0 embedding, 1..L blocks, L+1 output head
    if (n.rfind("layers.", 0) == 0) return std::atoi(n.c_str() + 7) + 1;
    return n == "embed" ? 0 : L + 1;
  };
  int64_t best = INT64_MAX;
  std::string what;
  for (int pass = 0; pass < 2; ++pass)  // values, then gradients
    for (size_t i = 0; i < params.size(); ++i) {
      const auto* p = params[i];
      const Buffer<T>& b = pass == 0 ? p->value : p->grad;
      bool bad = false;
      for (int64_t j = 0; j < p->numel() && !bad; ++j) bad = !std::isfinite(b[j]);
      if (!bad) continue;
      const int layer = layer_of(p->name);
      const int64_t key = pass * (int64_t{1} << 40) +
                          (pass == 0 ? layer : L + 1 - layer) * (int64_t{1} << 20) +
                          static_cast<int64_t>(pass == 0 ? i : params.size() - i);
      if (key < best) {
        best = key;
        std::string where = layer == 0       ? "embedding"
                            : layer == L + 1 ? "output head"
                                             : "layer " + std::to_string(layer - 1);
        what =
            std::string(pass == 0 ? "parameter " : "gradient of ") + p->name + " (" + where + ")";
      }
    }
  const int64_t mine[2] = {best, world.rank()};
  std::vector<int64_t> all(2 * static_cast<size_t>(world.size()));
  world.all_gather(mine, all.data(), 2, DType::kI64);
  int o = 0;
  for (int r = 1; r < world.size(); ++r)
    if (all[2 * r] < all[2 * o]) o = r;
  *owner = o;
  if (all[2 * o] == INT64_MAX) return "";
  return world.rank() == o ? what : std::string("(on rank ") + std::to_string(o) + ")";
}

template std::string first_nonfinite<float>(const std::vector<Parameter<float>*>&, int,
                                            Communicator&, int*);
template std::string first_nonfinite<double>(const std::vector<Parameter<double>*>&, int,
                                             Communicator&, int*);

}  // namespace dirmoe
