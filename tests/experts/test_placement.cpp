// Placement: contiguous and explicit lists, and every malformed input named in its error.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "experts/placement.h"
#include "runtime/core/error.h"

namespace dirmoe {
namespace {

template <class F>
void expect_error(F&& f, const std::vector<std::string>& needles) {
  try {
    f();
    ADD_FAILURE() << "expected a dirmoe::Error";
  } catch (const Error& e) {
    for (const std::string& n : needles)
      EXPECT_NE(std::string(e.what()).find(n), std::string::npos)
          << "message '" << e.what() << "' does not mention '" << n << "'";
  }
}

TEST(Placement, Contiguous) {
  Placement p = Placement::contiguous(8, 4);
  EXPECT_EQ(p.num_experts(), 8);
  EXPECT_EQ(p.ep_size(), 4);
  EXPECT_EQ(p.max_local_experts(), 2);
  for (int e = 0; e < 8; ++e) {
    EXPECT_EQ(p.owner(e), e / 2);
    EXPECT_EQ(p.local_index(e), e % 2);
  }
  EXPECT_EQ(p.local_experts(3), (std::vector<int>{6, 7}));
  EXPECT_NO_THROW(p.check_ep_size(4));
  Placement one = Placement::contiguous(5, 1);
  EXPECT_EQ(one.local_experts(0), (std::vector<int>{0, 1, 2, 3, 4}));
}

TEST(Placement, ExplicitUneven) {
  Placement p = Placement::explicit_lists(8, {{0, 1, 2}, {3}, {5, 4}, {6, 7}});
  EXPECT_EQ(p.ep_size(), 4);
  EXPECT_EQ(p.max_local_experts(), 3);
  EXPECT_EQ(p.owner(3), 1);
  EXPECT_EQ(p.owner(4), 2);
  EXPECT_EQ(p.local_index(4), 1);
  EXPECT_EQ(p.local_index(5), 0);
  EXPECT_EQ(p.local_experts(2), (std::vector<int>{5, 4}));
}

TEST(Placement, ContiguousNeedsDivisibility) {
  expect_error([] { Placement::contiguous(6, 4); }, {"ep size (4)", "num_experts (6)"});
  expect_error([] { Placement::contiguous(4, 0); }, {"ep size"});
  expect_error([] { Placement::contiguous(0, 1); }, {"num_experts"});
}

TEST(Placement, ExplicitMissingExpert) {
  expect_error([] { Placement::explicit_lists(4, {{0, 1}, {3}}); }, {"expert 2", "not listed"});
}

TEST(Placement, ExplicitDuplicateExpert) {
  expect_error(
      [] {
        Placement::explicit_lists(4, {{0, 1}, {1, 2, 3}});
      },
      {"expert 1", "listed twice"});
  expect_error(
      [] {
        Placement::explicit_lists(4, {{0, 0, 1}, {2, 3}});
      },
      {"expert 0", "listed twice"});
}

TEST(Placement, ExplicitOutOfRange) {
  expect_error([] { Placement::explicit_lists(4, {{0, 1}, {2, 4}}); }, {"expert 4", "[0, 4)"});
  expect_error([] { Placement::explicit_lists(4, {{0, -1}, {1, 2, 3}}); }, {"expert -1"});
}

TEST(Placement, ExplicitEmptyLists) {
  expect_error([] { Placement::explicit_lists(2, {{0, 1}, {}}); }, {"EP rank 1", "empty"});
  expect_error([] { Placement::explicit_lists(2, {}); }, {"no EP ranks"});
}

TEST(Placement, ListCountMustMatchEpSize) {
  Placement p = Placement::explicit_lists(4, {{0, 1}, {2, 3}});
  expect_error([&] { p.check_ep_size(4); }, {"2 expert lists", "EP group of size 4"});
}

}  // namespace
}  // namespace dirmoe
