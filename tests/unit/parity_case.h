// One parity test case (a fixture architecture converted with a layout) and its gtest name ("llama_row"), shared
// by the CPU (engine_test, archs_test) and GPU (cuda_parity_test) parity suites.
#pragma once
#include <gtest/gtest.h>

#include <string>

#include "core/tensor.h"

namespace doppler::test {

struct ParityCase {
  std::string arch;
  Layout layout;
};

inline std::string parityCaseName(const ::testing::TestParamInfo<ParityCase>& i) {
  return i.param.arch + (i.param.layout == Layout::Row ? "_row" : "_column");
}

}  // namespace doppler::test
