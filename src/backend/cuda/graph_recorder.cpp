#include "backend/cuda/graph_recorder.h"

#include <chrono>
#include <cstring>

#include "core/error.h"

namespace doppler::cuda {

namespace {
void ck(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fail("cuda graph: {}: {}", what, cudaGetErrorString(e));
}
bool sameDim(dim3 a, dim3 b) { return a.x == b.x && a.y == b.y && a.z == b.z; }
double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }
}  // namespace

GraphRecorder::~GraphRecorder() {
  for (auto& v : segments_)
    for (auto& s : v) destroy(s);
  for (StepTimes& t : times_) {
    for (auto& [a, b] : t.launches) {
      cudaEventDestroy(a);
      cudaEventDestroy(b);
    }
    if (t.end) cudaEventDestroy(t.end);
  }
}

void GraphRecorder::collect(StepTimes& t) {
  if (!t.pending) return;
  t.pending = false;
  auto seconds = [](cudaEvent_t a, cudaEvent_t b) {
    float ms = 0;
    const bool ok = cudaEventSynchronize(b) == cudaSuccess && cudaEventElapsedTime(&ms, a, b) == cudaSuccess;
    cudaGetLastError();
    return ok ? double(ms) * 1e-3 : 0.0;
  };
  if (t.used == 0) return;
  for (size_t i = 0; i < t.used; i++) stats_.gpuSeconds += seconds(t.launches[i].first, t.launches[i].second);
  stats_.gpuSpanSeconds += seconds(t.launches[0].first, t.launches[t.used - 1].second);
  const StepTimes& p = times_[(t.step + 2) % 3];  // the step before (its slot is reused two steps after this one)
  if (t.step >= 1 && p.step == t.step - 1 && p.ended) {  // the GPU's idle time between the two
    stats_.gpuGapSeconds += seconds(p.end, t.launches[0].first);
    stats_.gaps++;
  }
}

const GraphStats& GraphRecorder::stats() {
  const uint64_t k = stats_.steps;  // steps begun; the last two may not be collected yet
  for (uint64_t j = k >= 2 ? k - 2 : 0; j < k; j++) {
    StepTimes& t = times_[j % 3];
    if (t.step == j && !(recording_ && j + 1 == k)) collect(t);
  }
  return stats_;
}

void GraphRecorder::begin(bool whole) {
  // Step k - 2's times (its GPU work has finished by now in every caller: its token reached the host before step
  // k was issued), never step k - 1's: collecting it would make the host wait for the GPU.
  const uint64_t k = stats_.steps;
  if (k >= 2) collect(times_[(k - 2) % 3]);
  StepTimes& t = times_[k % 3];
  collect(t);  // step k - 3 (collected already unless steps were aborted)
  t.used = 0;
  t.ended = false;
  t.pending = true;
  t.step = k;
  t0_ = now();
  launched_ = false;
  lastLaunch_ = 0;
  recording_ = true;
  whole_ = whole;
  segment_ = 0;
  count_ = 0;
  stats_.steps++;
  setLaunchSink(this);
}

GraphRecorder::Op& GraphRecorder::next() {
  if (count_ == ops_.size()) ops_.emplace_back();
  return ops_[count_++];
}

void GraphRecorder::kernel(const void* func, dim3 grid, dim3 block, size_t smem, void** args, const size_t* sizes,
                           int count) {
  Op& op = next();
  op.func = func;
  op.grid = grid;
  op.block = block;
  op.smem = smem;
  op.params.clear();
  op.offsets.clear();
  for (int i = 0; i < count; i++) {
    const size_t off = (op.params.size() + 15) / 16 * 16;  // every parameter 16-byte aligned in the copy
    op.offsets.push_back(uint32_t(off));
    op.params.resize(off + sizes[i]);
    std::memcpy(op.params.data() + off, args[i], sizes[i]);
  }
  if (count_ >= segmentOps()) flush();
}

cudaKernelNodeParams GraphRecorder::nodeParams(Op& op, std::vector<void*>& argv) {
  argv.clear();
  for (uint32_t off : op.offsets) argv.push_back(op.params.data() + off);
  cudaKernelNodeParams p{};
  p.func = const_cast<void*>(op.func);
  p.gridDim = op.grid;
  p.blockDim = op.block;
  p.sharedMemBytes = unsigned(op.smem);
  p.kernelParams = argv.data();
  return p;
}

void GraphRecorder::destroy(Segment& s) noexcept {
  if (s.exec) cudaGraphExecDestroy(s.exec);
  if (s.graph) cudaGraphDestroy(s.graph);
  s.exec = nullptr;
  s.graph = nullptr;
  s.nodes.clear();
}

void GraphRecorder::build(Segment& s) {
  destroy(s);
  s.ops.resize(count_);
  for (size_t i = 0; i < count_; i++) std::swap(s.ops[i], ops_[i]);
  ck(cudaGraphCreate(&s.graph, 0), "cudaGraphCreate");
  // A chain in issue order; with programmatic edges (every kernel here waits for its predecessor itself, see
  // pdlBegin() in kernels.cu) the next kernel is scheduled, and prefetches its weights, while this one runs.
  cudaGraphEdgeData edge{};
  edge.from_port = cudaGraphKernelNodePortProgrammatic;
  edge.type = cudaGraphDependencyTypeProgrammatic;
  cudaGraphNode_t prev = nullptr;
  for (Op& op : s.ops) {
    cudaGraphNode_t node = nullptr;
    cudaKernelNodeParams p = nodeParams(op, argv_);
    ck(cudaGraphAddKernelNode(&node, s.graph, nullptr, 0, &p), "cudaGraphAddKernelNode");
    if (prev)
      ck(cudaGraphAddDependencies(s.graph, &prev, &node, programmatic_ ? &edge : nullptr, 1),
         "cudaGraphAddDependencies");
    s.nodes.push_back(node);
    prev = node;
  }
  ck(cudaGraphInstantiate(&s.exec, s.graph, 0), "cudaGraphInstantiate");
  stats_.builds++;
}

void GraphRecorder::update(Segment& s) {
  const double t = now();
  for (size_t i = 0; i < count_; i++) {
    Op& now = ops_[i];
    Op& was = s.ops[i];
    if (!sameDim(now.grid, was.grid) || !sameDim(now.block, was.block) || now.smem != was.smem ||
        now.offsets != was.offsets || now.params != was.params) {
      cudaKernelNodeParams p = nodeParams(now, argv_);
      ck(cudaGraphExecKernelNodeSetParams(s.exec, s.nodes[i], &p), "cudaGraphExecKernelNodeSetParams");
      stats_.nodeUpdates++;
    }
    std::swap(now, was);
  }
  stats_.updateSeconds += now() - t;
}

void GraphRecorder::flush() {
  if (!recording_ || count_ == 0) return;
  std::vector<Segment>& segs = segments_[whole_ ? 1 : 0];
  if (segs.size() <= segment_) segs.resize(segment_ + 1);
  Segment& s = segs[segment_++];
  bool same = s.exec && s.ops.size() == count_;
  for (size_t i = 0; same && i < count_; i++)
    same = ops_[i].func == s.ops[i].func;
  const size_t n = count_;
  if (same) {
    update(s);
  } else {
    build(s);
  }
  count_ = 0;
  stats_.nodes += n;
  stats_.launches++;
  StepTimes& t = times_[(stats_.steps - 1) % 3];
  if (t.used == t.launches.size()) {
    std::pair<cudaEvent_t, cudaEvent_t> e{};
    ck(cudaEventCreate(&e.first), "cudaEventCreate");
    ck(cudaEventCreate(&e.second), "cudaEventCreate");
    t.launches.push_back(e);
  }
  const auto& ev = t.launches[t.used++];
  ck(cudaEventRecord(ev.first, stream_), "cudaEventRecord");
  ck(cudaGraphLaunch(s.exec, stream_), "cudaGraphLaunch");
  ck(cudaEventRecord(ev.second, stream_), "cudaEventRecord");
  lastLaunch_ = now() - t0_;
  if (!launched_) {
    launched_ = true;
    stats_.firstLaunchSeconds += lastLaunch_;
  }
}

void GraphRecorder::end() {
  if (!recording_) return;
  setLaunchSink(nullptr);
  // Launching directly again before the flush: a failure below must not leave the sink set.
  try {
    flush();
  } catch (...) {
    recording_ = false;
    count_ = 0;
    throw;
  }
  recording_ = false;
  stats_.hostSeconds += now() - t0_;
  stats_.lastLaunchSeconds += lastLaunch_;
  StepTimes& t = times_[(stats_.steps - 1) % 3];
  if (t.used == 0) return;  // nothing launched: no end to time
  if (!t.end) ck(cudaEventCreate(&t.end), "cudaEventCreate");
  ck(cudaEventRecord(t.end, stream_), "cudaEventRecord");
  t.ended = true;
}

void GraphRecorder::abort() noexcept {
  if (!recording_) return;
  setLaunchSink(nullptr);
  recording_ = false;
  count_ = 0;
}

}  // namespace doppler::cuda
