// CUDA graphs for decode steps (issue #8). A decode step issues ~15 small launches per layer; on the GPU each
// costs 3.5-5.5 us of host time, more than the small kernels run. The recorder takes the step's launches (through
// the kernels' LaunchSink; device-to-device copies are kernels too) instead of issuing them, and at flush()
// launches them as one graph. The graph of a segment (the ops between two flushes; a step is usually one segment)
// is built once; later steps compare each op with the one recorded before and update only the nodes whose
// arguments changed (positions, KV blocks, scratch addresses), which costs microseconds, and rebuild only when
// the sequence of kernels differs. The graph is a chain in issue order, so results are bit-identical to launching
// one by one; its edges are programmatic (sm_90), so each kernel is scheduled while its predecessor runs and waits
// for it inside (pdlBegin() in kernels.cu), which hides part of the gap between two small kernels.
// A segment is also closed after segmentOps() ops (8 for a step's first segment, then 16, then up to 128), so the
// GPU starts on the first part of a step while the host still records the rest (the boundaries depend on the op
// count only, so every step splits the same way). The host records an op in ~1.6 us and the GPU runs one in ~9
// (Qwen3 shape), so from the third segment on the host stays ahead with few boundaries (each costs the GPU ~10 us).
// A step begun as whole (pipelined greedy decoding: the GPU still runs the previous step while this one is recorded)
// is one segment: there the boundaries would only cost.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <cstddef>
#include <vector>

#include "backend/backend.h"
#include "backend/cuda/kernels.h"

namespace doppler::cuda {

class GraphRecorder final : public LaunchSink {
 public:
  // programmatic: kernel-to-kernel edges let the next kernel start early (programmatic dependent launch).
  GraphRecorder(cudaStream_t stream, bool programmatic) : stream_(stream), programmatic_(programmatic) {}
  ~GraphRecorder() override;
  GraphRecorder(const GraphRecorder&) = delete;
  GraphRecorder& operator=(const GraphRecorder&) = delete;

  // The calling thread's launches are recorded from now on (segment 0 of a step). whole: the GPU is still busy with
  // earlier work, so nothing is gained by starting early: the step is one segment, launched at end() (or at the
  // first op that needs the host). Whole and segmented steps keep their graphs apart.
  void begin(bool whole = false);
  bool recording() const { return recording_; }
  size_t segmentOps() const { return whole_ ? SIZE_MAX : segment_ >= 2 ? 128 : size_t(8) << segment_; }
  void kernel(const void* func, dim3 grid, dim3 block, size_t smem, void** args, const size_t* sizes,
              int count) override;
  // Launches the ops recorded since the last flush on the stream (nothing when there are none); the next ops form
  // the step's next segment. Throws Error on a CUDA failure.
  void flush();
  void end();             // flush(), then launch directly again
  void abort() noexcept;  // drop what was recorded, launch directly again
  const GraphStats& stats();  // collects the GPU times not collected yet (waits for those steps' GPU work)

 private:
  struct Op {
    const void* func = nullptr;
    dim3 grid, block;
    size_t smem = 0;
    std::vector<uint8_t> params;   // the kernel's parameters, packed
    std::vector<uint32_t> offsets; // where each parameter starts in params
  };
  struct Segment {
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    std::vector<Op> ops;
    std::vector<cudaGraphNode_t> nodes;
  };
  Op& next();
  // GPU timing of one step: an event pair per graph launch and one at its end. Step k's are in times_[k % 3] and are
  // added to the stats when step k + 2 begins, so that recording step k + 1 never waits for step k's GPU work
  // (pipelined decoding issues it while step k runs).
  struct StepTimes {
    std::vector<std::pair<cudaEvent_t, cudaEvent_t>> launches;  // start, stop
    size_t used = 0;              // launches of this step
    cudaEvent_t end = nullptr;    // recorded at end()
    bool ended = false;           // end recorded
    bool pending = false;         // not yet added to the stats
    uint64_t step = 0;
  };
  void collect(StepTimes& t);  // adds a step's GPU times to the stats (waits for its events)
  void build(Segment& s);
  void update(Segment& s);
  static void destroy(Segment& s) noexcept;
  static cudaKernelNodeParams nodeParams(Op& op, std::vector<void*>& argv);

  cudaStream_t stream_;
  bool programmatic_;
  bool recording_ = false;
  size_t segment_ = 0;          // index of the segment being recorded within the step
  std::vector<Op> ops_;         // recorded ops of the current segment (storage reused)
  size_t count_ = 0;            // how many of ops_ are in use
  std::vector<Segment> segments_[2];  // the graphs of segmented steps [0] and of whole steps [1]
  bool whole_ = false;
  std::vector<void*> argv_;
  GraphStats stats_;
  StepTimes times_[3];
  double t0_ = 0;                // begin() wall time
  bool launched_ = false;        // the current step launched its first segment
  double lastLaunch_ = 0;        // host time from begin() to the step's latest launch
};

}  // namespace doppler::cuda
