// Training loop (see trainer.h). Data indexing: global micro-batch g = step*(accum*world) +
// a*world + rank holds samples [g*B, (g+1)*B), so N ranks with EP=N and one rank accumulating N
// micro-batches see the same samples in the same roles (and the same router noise, which is keyed
// by global token index g*B*S + ...).
#include "runtime/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "kernels/cpu/ops.h"
#include "runtime/core/error.h"
#include "runtime/core/logging.h"
#include "runtime/core/trace.h"
#include "runtime/data/dataset.h"
#include "kernels/routing/remoe.h"
#include "runtime/checkpoint.h"
#include "runtime/model.h"
#include "runtime/resilience.h"
#include "runtime/monitor.h"
#include "runtime/profiler.h"
#include "runtime/schedule.h"
#include "runtime/tensorboard.h"

namespace dirmoe {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

std::string fmt_duration(double s) {
  char buf[32];
  int64_t t = static_cast<int64_t>(std::max(0.0, s) + 0.5);
  if (t >= 3600) std::snprintf(buf, sizeof buf, "%ldh%02ldm", t / 3600, (t % 3600) / 60);
  else if (t >= 60) std::snprintf(buf, sizeof buf, "%ldm%02lds", t / 60, t % 60);
  else std::snprintf(buf, sizeof buf, "%lds", t);
  return buf;
}

std::string fmt_rate(double r) {
  char buf[32];
  if (r >= 1e6) std::snprintf(buf, sizeof buf, "%.2fM", r / 1e6);
  else if (r >= 1e3) std::snprintf(buf, sizeof buf, "%.1fk", r / 1e3);
  else std::snprintf(buf, sizeof buf, "%.0f", r);
  return buf;
}

template <class T>
class Trainer {
 public:
  Trainer(const Config& cfg, MpiRuntime& mpi) : cfg_(cfg), mpi_(mpi), world_(mpi.world()) {
    const auto& topo = mpi.topology();
    rank_ = topo.rank;
    W_ = topo.world_size;
    validate_for_world(cfg_, W_);
    install_stop_signal_handlers();
    const int ep = cfg_.parallel.ep;
    ep_comm_ = world_.split(rank_ / ep, rank_, "ep");
    replica_comm_ = world_.split(rank_ % ep, rank_, "expert-replica");
    placement_ = cfg_.parallel.placement.empty()
                     ? Placement::contiguous(cfg_.moe.num_experts, ep)
                     : Placement::explicit_lists(cfg_.moe.num_experts, cfg_.parallel.placement);
    unsigned cores = std::max(1u, std::thread::hardware_concurrency());
    cpu::set_blas_threads(std::max(1, static_cast<int>(cores) / std::max(1, topo.local_size)));

    const auto& m = cfg_.model;
    train_data_ = std::make_unique<data::TrainingData>(cfg_.data, data::Split::kTrain, m.seq_len,
                                                       cfg_.train.seed, m.vocab_size);
    valid_data_ = std::make_unique<data::TrainingData>(cfg_.data, data::Split::kValid, m.seq_len,
                                                       cfg_.train.seed, m.vocab_size);
    model_ = std::make_unique<Model<T>>(cfg_, ep_comm_.get(), placement_);
    model_->init_weights(cfg_.train.seed);
    params_ = model_->parameters();
    for (auto* p : params_) {
      (p->kind == ParamKind::kExpert ? expert_ : replicated_).push_back(p);
      int64_t n = p->numel();
      (p->kind == ParamKind::kExpert ? expert_numel_ : replicated_numel_) += n;
    }
    adam_m_.resize(params_.size());
    adam_v_.resize(params_.size());
    for (size_t i = 0; i < params_.size(); ++i) {
      adam_m_[i].resize(params_[i]->numel());
      adam_v_[i].resize(params_[i]->numel());
    }
    flat_.resize(replicated_numel_);
    tokens_.resize(cfg_.train.micro_batch * (m.seq_len + 1));
    fault_ = FaultPlan::from_env();
    std::vector<Buffer<T>*> mp, vp;
    for (size_t i = 0; i < params_.size(); ++i) {
      mp.push_back(&adam_m_[i]);
      vp.push_back(&adam_v_[i]);
    }
    ckpt_ = std::make_unique<Checkpointer<T>>(cfg_, world_, *ep_comm_, rank_ / cfg_.parallel.ep,
                                              params_, mp, vp);
    if (rank_ == 0) {  // the profiler opens its files here; metrics.jsonl comes in run()
      std::error_code ec;
      fs::create_directories(cfg_.output.run_dir, ec);
      DIRMOE_CHECK(!ec, "cannot create run directory '", cfg_.output.run_dir, "': ", ec.message());
    }
    monitor_ = std::make_unique<LoadMonitor>(cfg_.monitor, placement_, model_->num_layers(), W_,
                                             rank_, train_data_->num_sources());
    profiler_ = std::make_unique<Profiler>(cfg_.profile, world_, cfg_.parallel.ep,
                                           cfg_.output.run_dir,
                                           cfg_.train.stop_at > 0 ? cfg_.train.stop_at : cfg_.train.steps);
  }

  TrainSummary run() {
    const auto& t = cfg_.train;
    const int64_t B = t.micro_batch, S = cfg_.model.seq_len;
    const int64_t global_tokens = B * S * t.grad_accum * W_;
    const int64_t last = t.stop_at > 0 ? t.stop_at : t.steps;
    TrainSummary sum;
    Watchdog watchdog(t.watchdog_s, rank_);
    int64_t first = 0;
    if (!cfg_.checkpoint.resume.empty()) {
      TrainerState st;
      std::string from;
      if (ckpt_->resume(cfg_.checkpoint.resume, &st, &from)) {
        first = st.step;
        nonfinite_ = st.consecutive_nonfinite;
        if (remoe_) remoe_lambda_ = static_cast<float>(st.remoe_lambda);
        log_info("resumed from ", from, " at step ", first);
      }
    }
    sum.steps_run = first;
    if (rank_ == 0) open_run_dir(first);
    log_info("dirmoe: ", W_, " rank(s), ep ", cfg_.parallel.ep, ", ", cfg_.moe.num_experts,
             " experts (", placement_.local_experts(ep_comm_->rank()).size(),
             " on rank 0), global batch ", B * t.grad_accum * W_, " x ", S, " tokens, ",
             train_data_->num_samples(), " train / ", valid_data_->num_samples(),
             " held-out samples");
    sum.initial_eval_loss = sum.final_eval_loss = NAN;
    if (first == 0) {
      sum.initial_eval_loss = evaluate();
      log_info("eval  step ", 0, " | loss ", fixed(sum.initial_eval_loss, 4));
      write_json({{"step", 0}, {"eval_loss", sum.initial_eval_loss}});
    }
    auto start = Clock::now();
    for (int64_t step = first; step < last; ++step) {
      auto t0 = Clock::now();
      watchdog.beat(step + 1, "training step");
      const bool profiled = profiler_->begin_step(step + 1);
      trace::Scope step_scope(trace::Phase::kStep);
      monitor_->begin_step();
      for (auto* p : params_) p->grad.zero();
      const int L = model_->num_layers(), E = cfg_.moe.num_experts;
      std::vector<int64_t> counts(static_cast<size_t>(L) * E + L, 0);  // tokens/expert, dropped
      // ce, router loss, then per layer: aux, z, mean active experts, the router's named scalars
      // (the same names in the same order on every rank), each averaged over the global batch.
      std::vector<double> scalars(2, 0.0);
      std::vector<size_t> layer_off(L + 1, 0);
      const double scale = 1.0 / static_cast<double>(t.grad_accum * W_);
      for (int a = 0; a < t.grad_accum; ++a) {
        int64_t g = step * t.grad_accum * W_ + static_cast<int64_t>(a) * W_ + rank_;
        load_batch(*train_data_, g * B);
        RouterContext ctx{t.seed, step, 0, g * B * S, true};
        ctx.remoe_lambda = static_cast<double>(remoe_lambda_);
        MicroBatchResult r = model_->forward_backward(tokens_.data(), B, ctx, scale, true);
        if (a == 0) fault_.maybe_fire(rank_, step + 1);
        observe_micro_batch(g * B);
        scalars[0] += r.ce_loss * scale;
        scalars[1] += r.router_loss * scale;
        if (a == 0) {
          for (int l = 0; l < L; ++l) {
            layer_off[l] = scalars.size() - 2;
            scalars.resize(scalars.size() + 3 + model_->moe_stats(l).router.scalars.size(), 0.0);
          }
          layer_off[L] = scalars.size() - 2;
        }
        for (int l = 0; l < L; ++l) {
          const MoEStats& st = model_->moe_stats(l);
          for (int e = 0; e < E; ++e) counts[l * E + e] += st.tokens_per_expert[e];
          counts[L * E + l] += st.dropped;
          double* ls = scalars.data() + 2 + layer_off[l];
          ls[0] += st.router.aux_loss * scale;
          ls[1] += st.router.z_loss * scale;
          ls[2] += st.router.mean_active * scale;
          for (size_t j = 0; j < st.router.scalars.size(); ++j)
            ls[3 + j] += st.router.scalars[j].second * scale;
        }
      }
      world_.all_reduce(scalars.data(), scalars.size(), DType::kF64, ReduceOp::kSum);
      world_.all_reduce(counts.data(), counts.size(), DType::kI64, ReduceOp::kSum);
      // ReMoE controller: the share of zero gates over every layer, micro-batch and rank (from the
      // reduced integer counts, so the comparison with 1 - k/E is exact), one update per step.
      const float lambda_used = remoe_lambda_;
      double sparsity = 0;
      if (remoe_) {
        int64_t nnz = 0;
        for (int64_t i = 0; i < static_cast<int64_t>(L) * E; ++i) nnz += counts[i];
        const double slots = static_cast<double>(L) * E * static_cast<double>(global_tokens);
        sparsity = 1.0 - static_cast<double>(nnz) / slots;
        remoe_lambda_ =
            remoe_next_lambda(remoe_lambda_, sparsity, remoe_target_sparsity(cfg_.moe.router.k, E),
                              static_cast<float>(cfg_.moe.router.remoe.alpha));
      }
      for (auto* p : params_)
        if (fault_.poisons(p->name, step + 1)) p->grad[0] = std::numeric_limits<T>::quiet_NaN();
      monitor_->reduce(world_);
      trace::Scope optimizer_scope(trace::Phase::kOptimizer);
      double gnorm = reduce_gradients();
      double lr = lr_at(step, t.steps, t.lr, t.min_lr, t.warmup);
      bool finite = std::isfinite(gnorm) && std::isfinite(scalars[0]);
      if (finite) {
        nonfinite_ = 0;
        double clip = (t.clip > 0 && gnorm > t.clip) ? t.clip / (gnorm + 1e-6) : 1.0;
        apply_adamw(lr, clip, step + 1);
      } else {
        handle_nonfinite(step + 1, scalars[0], gnorm);
      }
      optimizer_scope.end();
      step_scope.end();
      double dt = std::chrono::duration<double>(Clock::now() - t0).count();
      const double alltoall_s = profiler_->end_step(step + 1);
      double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
      sum.losses.push_back(scalars[0]);
      sum.final_train_loss = scalars[0];
      sum.steps_run = step + 1;

      nlohmann::json rec = {{"step", step + 1},         {"loss", scalars[0]},
                            {"router_loss", scalars[1]}, {"lr", lr},
                            {"grad_norm", gnorm},        {"tokens_per_s", global_tokens / dt},
                            {"step_time_s", dt},         {"tokens", global_tokens}};
      double worst = 0, mean_active = 0;
      nlohmann::json layers = nlohmann::json::array();
      for (int l = 0; l < L; ++l) {
        std::vector<int64_t> tpe(counts.begin() + l * E, counts.begin() + (l + 1) * E);
        double total = 0, mx = 0;
        for (int64_t c : tpe) {
          total += c;
          mx = std::max(mx, static_cast<double>(c));
        }
        double ratio = total > 0 ? mx / (total / E) : 0.0;
        worst = std::max(worst, ratio);
        const double* ls = scalars.data() + 2 + layer_off[l];
        nlohmann::json lj = {{"layer", l},
                             {"tokens_per_expert", tpe},
                             {"load_max_over_mean", ratio},
                             {"aux_loss", ls[0]},
                             {"z_loss", ls[1]},
                             {"active_experts", ls[2]},
                             {"dropped", counts[L * E + l]}};
        const auto& names = model_->moe_stats(l).router.scalars;
        for (size_t j = 0; j < names.size(); ++j) lj[names[j].first] = ls[3 + j];
        layers.push_back(lj);
        mean_active += ls[2] / L;
      }
      rec["layers"] = layers;
      rec["load_max_over_mean"] = worst;
      rec["active_experts"] = mean_active;
      if (remoe_) {
        rec["sparsity"] = sparsity;
        rec["remoe_lambda"] = static_cast<double>(lambda_used);
        rec["remoe_lambda_next"] = static_cast<double>(remoe_lambda_);
      }
      if (!finite) rec["skipped"] = true;
      const std::string load_line = monitor_->finish_step(step + 1, counts.data(), rec);
      if (profiled) rec["alltoall_time_s"] = alltoall_s;
      bool do_eval = (t.eval_interval > 0 && (step + 1) % t.eval_interval == 0) || step + 1 == last;
      if (do_eval) {
        double ev = evaluate();
        rec["eval_loss"] = ev;
        sum.final_eval_loss = ev;
      }
      write_json(rec);
      if ((step + 1) % t.log_interval == 0 || step == 0 || step + 1 == last) {
        double eta = elapsed / (step + 1) * (last - step - 1);
        log_info("step ", pad(step + 1, last), "/", last, " | loss ", fixed(scalars[0], 4),
                 " | lr ", sci(lr), " | gnorm ", fixed(gnorm, 3), " | ",
                 fmt_rate(global_tokens / dt), " tok/s | active ", fixed(mean_active, 2),
                 router_progress(layers), " | ", load_line, " | ETA ",
                 fmt_duration(eta));
      }
      if (do_eval)
        log_info("eval  step ", step + 1, " | loss ", fixed(sum.final_eval_loss, 4));
      if (checkpoint_after(step + 1, last, lr, watchdog)) break;
    }
    profiler_->finish();
    sum.seconds = std::chrono::duration<double>(Clock::now() - start).count();
    auto ev = [](double v) { return std::isfinite(v) ? fixed(v, 4) : std::string("-"); };
    log_info("done: ", sum.steps_run - first, " steps in ", fixed(sum.seconds, 1), " s | eval loss ",
             ev(sum.initial_eval_loss), " -> ", ev(sum.final_eval_loss));
    return sum;
  }

 private:
  static std::string fixed(double v, int digits) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.*f", digits, v);
    return buf;
  }
  // " / k 1 (sum z 1.02, tau 0.134, binary 97%)" for routers whose activity is a learned quantity.
  std::string router_progress(const nlohmann::json& layers) const {
    if (cfg_.moe.router.type == "topk" || layers.empty()) return "";
    auto mean = [&](const char* key) {
      double v = 0;
      for (const auto& l : layers) v += l.value(key, 0.0);
      return v / static_cast<double>(layers.size());
    };
    std::string s = " / k " + std::to_string(cfg_.moe.router.k);
    if (cfg_.moe.router.type == "dirmoe")
      s += " (sum z " + fixed(mean("sum_gates"), 2) + ", tau " + fixed(mean("tau"), 3) +
           ", binary " + fixed(100 * mean("near_binary"), 0) + "%)";
    else if (cfg_.moe.router.type == "probmoe")
      s += " (E[k] " + fixed(mean("expected_k"), 2) + ")";
    else if (cfg_.moe.router.type == "remoe")
      s += " (sparsity " + fixed(mean("sparsity"), 3) + ", lambda " + sci(mean("lambda")) +
           ", no expert " + fixed(100 * mean("no_expert"), 1) + "%)";
    return s;
  }
  static std::string sci(double v) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.2e", v);
    return buf;
  }
  static std::string pad(int64_t v, int64_t width_of) {
    std::string s = std::to_string(v), w = std::to_string(width_of);
    return std::string(w.size() > s.size() ? w.size() - s.size() : 0, ' ') + s;
  }

  // After step s1: checkpoint every checkpoint.interval steps, at train.stop_at, at the end, and
  // when any rank got SIGTERM/SIGUSR1 (agreed by an all-reduce); returns true to stop on a signal.
  bool checkpoint_after(int64_t s1, int64_t last, double lr, Watchdog& watchdog) {
    int64_t sig = pending_stop_signal();
    world_.all_reduce(&sig, 1, DType::kI64, ReduceOp::kMax);
    const auto& ck = cfg_.checkpoint;
    bool due = (ck.interval > 0 && s1 % ck.interval == 0) ||
               (cfg_.train.stop_at > 0 && s1 == cfg_.train.stop_at) || (ck.at_end && s1 == last) ||
               sig != 0;
    if (due) {
      watchdog.pause();
      TrainerState st;
      st.step = s1;
      st.global_batch = cfg_.train.micro_batch * cfg_.train.grad_accum * W_;
      st.next_sample = s1 * st.global_batch;
      st.seed = cfg_.train.seed;
      st.lr = lr;
      st.consecutive_nonfinite = nonfinite_;
      if (remoe_) st.remoe_lambda = static_cast<double>(remoe_lambda_);
      auto t0 = Clock::now();
      std::string path = ckpt_->save(st);
      double secs = std::chrono::duration<double>(Clock::now() - t0).count();
      log_info("checkpoint: ", path, " (", fixed(secs, 2), " s)");
      watchdog.beat(s1, "after checkpoint");
    }
    if (sig != 0)
      log_info("signal ", sig, " received: stopping after step ", s1, " with its checkpoint");
    return sig != 0;
  }

  // A non-finite step was skipped: report where it first appears (parameter values in forward
  // order, else gradients in backward order, over all ranks), abort after too many in a row.
  void handle_nonfinite(int64_t s1, double loss, double gnorm) {
    ++nonfinite_;
    int owner = 0;
    const std::string what = first_nonfinite(params_, model_->num_layers(), world_, &owner);
    const bool found = !what.empty();
    if (rank_ == owner)
      log_warn("step ", s1, ": non-finite ", std::isfinite(loss) ? "gradient" : "loss", " (loss ",
               loss, ", gradient norm ", gnorm, "); first non-finite ",
               found ? what : std::string("tensor: none (only the loss)"), "; step skipped (",
               nonfinite_, " in a row, limit train.max_nonfinite_steps = ",
               cfg_.train.max_nonfinite_steps, ")");
    world_.barrier();
    DIRMOE_CHECK(nonfinite_ < cfg_.train.max_nonfinite_steps, "step ", s1, ": ", nonfinite_,
                 " non-finite steps in a row (train.max_nonfinite_steps = ",
                 cfg_.train.max_nonfinite_steps, "); ending the run, see the warnings above");
  }

  // Monitor input of one training micro-batch: rows received per layer, routing per data source.
  void observe_micro_batch(int64_t first_sample) {
    const int64_t S = cfg_.model.seq_len;
    for (int l = 0; l < model_->num_layers(); ++l) {
      monitor_->add_received(l, model_->moe_stats(l).received);
      const Routing<T>& r = model_->routing(l);
      for (int64_t b = 0; b < cfg_.train.micro_batch; ++b) {
        int64_t* sc = monitor_->source_counts(l, train_data_->source_of(first_sample + b));
        for (int64_t a = r.offsets[b * S]; a < r.offsets[(b + 1) * S]; ++a) ++sc[r.experts[a]];
      }
    }
  }

  void load_batch(const data::TrainingData& data, int64_t first_sample) {
    const int64_t S1 = cfg_.model.seq_len + 1;
    for (int64_t b = 0; b < cfg_.train.micro_batch; ++b)
      data.sample(first_sample + b, tokens_.data() + b * S1);
  }

  // Mean cross-entropy over eval_batches micro-batches per rank of the held-out split.
  double evaluate() {
    const auto& t = cfg_.train;
    const int64_t B = t.micro_batch, S = cfg_.model.seq_len;
    double total = 0;
    for (int64_t j = 0; j < t.eval_batches; ++j) {
      int64_t g = j * W_ + rank_;
      load_batch(*valid_data_, g * B);
      RouterContext ctx{t.seed, -1, 0, g * B * S, false};
      total += model_->forward_backward(tokens_.data(), B, ctx, 0.0, false).ce_loss;
    }
    world_.all_reduce(&total, 1, DType::kF64, ReduceOp::kSum);
    return total / static_cast<double>(t.eval_batches * W_);
  }

  // Sums replicated gradients over the world and expert gradients over their replicas; returns
  // the global gradient norm (every parameter counted once).
  double reduce_gradients() {
    int64_t off = 0;
    for (auto* p : replicated_) {
      std::copy(p->grad.begin(), p->grad.end(), flat_.data() + off);
      off += p->numel();
    }
    if (W_ > 1) world_.all_reduce(flat_.data(), off, dtype_of<T>(), ReduceOp::kSum);
    off = 0;
    for (auto* p : replicated_) {
      std::copy(flat_.data() + off, flat_.data() + off + p->numel(), p->grad.data());
      off += p->numel();
    }
    double rep_sq = cpu::sum_squares(flat_.data(), replicated_numel_);
    if (replica_comm_->size() > 1)
      for (auto* p : expert_)
        replica_comm_->all_reduce(p->grad.data(), p->numel(), dtype_of<T>(), ReduceOp::kSum);
    double exp_sq = 0;
    for (auto* p : expert_) exp_sq += cpu::sum_squares(p->grad.data(), p->numel());
    ep_comm_->all_reduce(&exp_sq, 1, DType::kF64, ReduceOp::kSum);
    return std::sqrt(rep_sq + exp_sq);
  }

  void apply_adamw(double lr, double clip_scale, int64_t t1) {
    const auto& t = cfg_.train;
    for (size_t i = 0; i < params_.size(); ++i) {
      auto* p = params_[i];
      if (clip_scale != 1.0) cpu::scale_inplace(p->grad.data(), p->numel(), clip_scale);
      cpu::AdamWParams ap{lr, t.beta1, t.beta2, t.eps, p->decay ? t.weight_decay : 0.0, t1};
      cpu::adamw_update(p->value.data(), p->grad.data(), adam_m_[i].data(), adam_v_[i].data(),
                        p->numel(), ap);
    }
  }

  // On a resume (first > 0) metrics.jsonl keeps its records up to step `first`, then grows.
  void open_run_dir(int64_t first) {
    fs::path dir(cfg_.output.run_dir);
    std::error_code ec;
    fs::create_directories(dir, ec);
    DIRMOE_CHECK(!ec, "cannot create run directory '", dir.string(), "': ", ec.message());
    std::ofstream cfg_out(dir / "config.resolved.yaml");
    DIRMOE_CHECK(cfg_out.good(), "cannot write ", (dir / "config.resolved.yaml").string());
    cfg_out << to_yaml(cfg_);
    std::vector<std::string> kept;
    if (first > 0) {
      std::ifstream old(dir / "metrics.jsonl");
      for (std::string line; std::getline(old, line);) {
        auto j = nlohmann::json::parse(line, nullptr, false);
        if (!j.is_discarded() && j.value("step", int64_t{-1}) <= first) kept.push_back(line);
      }
    }
    metrics_.open(dir / "metrics.jsonl", std::ios::trunc);
    for (const auto& line : kept) metrics_ << line << '\n';
    DIRMOE_CHECK(metrics_.good(), "cannot write ", (dir / "metrics.jsonl").string());
    // A new event file per (re)start; TensorBoard drops older files' steps from first + 1 on.
    if (cfg_.output.tensorboard)
      tensorboard_ = std::make_unique<TensorBoardWriter>(dir, first > 0 ? first + 1 : 0);
    log_info("run directory: ", dir.string());
  }

  void write_json(const nlohmann::json& j) {
    if (rank_ != 0) return;
    metrics_ << j.dump() << '\n';
    metrics_.flush();
    if (tensorboard_) tensorboard_->write_record(j);
  }

  Config cfg_;
  MpiRuntime& mpi_;
  Communicator& world_;
  int rank_ = 0, W_ = 1;
  std::unique_ptr<Communicator> ep_comm_, replica_comm_;
  Placement placement_;
  std::unique_ptr<data::TrainingData> train_data_, valid_data_;
  std::unique_ptr<Model<T>> model_;
  std::vector<Parameter<T>*> params_, replicated_, expert_;
  int64_t replicated_numel_ = 0, expert_numel_ = 0;
  std::vector<Buffer<T>> adam_m_, adam_v_;
  Buffer<T> flat_;
  Buffer<int32_t> tokens_;
  std::ofstream metrics_;
  std::unique_ptr<TensorBoardWriter> tensorboard_;  // rank 0, unless output.tensorboard=false
  std::unique_ptr<Checkpointer<T>> ckpt_;
  FaultPlan fault_;
  int nonfinite_ = 0;  // consecutive non-finite steps
  // ReMoE: one lambda for every layer, in fp32, updated once per optimizer step.
  bool remoe_ = cfg_.moe.router.type == "remoe";
  float remoe_lambda_ = static_cast<float>(cfg_.moe.router.remoe.lambda_init);
  std::unique_ptr<LoadMonitor> monitor_;
  std::unique_ptr<Profiler> profiler_;
};

}  // namespace

TrainSummary train(const Config& cfg, MpiRuntime& mpi) {
  return dispatch_float(cfg.model.dtype == "f64" ? DType::kF64 : DType::kF32, [&](auto tag) {
    using T = decltype(tag);
    Trainer<T> trainer(cfg, mpi);
    return trainer.run();
  });
}

}  // namespace dirmoe
