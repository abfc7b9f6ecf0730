// GoogleTest main for multi-rank tests: MPI up for the whole run, only rank 0 prints the usual
// output (other ranks print failures), and the failure count is all-reduced so every rank exits
// with the same verdict and none is left waiting in a collective.
#include <gtest/gtest.h>
#include <mpi.h>

#include "comm/bootstrap.h"

namespace {
class FailuresOnly : public testing::EmptyTestEventListener {
  void OnTestPartResult(const testing::TestPartResult& r) override {
    if (r.failed()) {
      int rank = 0;
      MPI_Comm_rank(MPI_COMM_WORLD, &rank);
      std::printf("[rank %d] %s:%d: failure\n%s\n", rank, r.file_name() ? r.file_name() : "?",
                  r.line_number(), r.summary());
      std::fflush(stdout);
    }
  }
};
}  // namespace

int main(int argc, char** argv) {
  testing::InitGoogleTest(&argc, argv);
  dirmoe::MpiRuntime mpi(&argc, &argv);
  if (mpi.topology().rank != 0) {
    auto& listeners = testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new FailuresOnly);
  }
  int failed = RUN_ALL_TESTS() != 0 ? 1 : 0;
  MPI_Allreduce(MPI_IN_PLACE, &failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (mpi.topology().rank == 0 && failed) std::printf("FAILED on at least one rank\n");
  return failed;
}
