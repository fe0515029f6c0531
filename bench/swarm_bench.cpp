// Pull throughput on loopback, in one run: the HTTP origin alone vs one seeding peer vs two seeding peers.
//
//   swarm_bench DOPPLER_BIN [DIR] [--layers N] [--vocab V] [--keep]
//
// Writes a synthetic Qwen3-30B-A3B-shaped checkpoint (bf16, real layer dimensions, N layers (default 1), vocabulary
// V (default 32000): about 1.5 GB) under a fresh directory in DIR (default /tmp; never the repository), converts
// it to RDRR (64 MiB shards) and publishes its torrent (swarm.torrent), starts an HTTP origin on 127.0.0.1
// (cpp-httplib, Range support) and two `doppler seed` processes on 127.0.0.1, then times
//   origin:  doppler pull URL                                (HTTP only)
//   1 peer:  doppler pull MAGNET --peer S1 --no-origin
//   2 peers: doppler pull MAGNET --peer S1 --peer S2 --no-origin
// each into an empty cache under DIR (removed after each run), and prints wall time, MB/s and the bytes each peer
// sent. Pulls are complete and verified (SHA-256 of every shard; fsync of every blob) as any pull is.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <httplib.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "convert/convert.h"
#include "convert/synthetic.h"
#include "core/error.h"
#include "core/fs_util.h"
#include "core/json_util.h"
#include "core/size.h"
#include "core/spawn.h"
#include "storage/swarm.h"

using namespace doppler;
using Clock = std::chrono::steady_clock;

namespace {

double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::string slurp(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

pid_t spawn(const std::string& bin, const std::vector<std::string>& args, const std::string& out,
            const std::string& err) {
  const pid_t pid = spawnProcess(bin, args, out, err);
  check(pid > 0, "cannot start {}", bin);
  return pid;
}

int waitPid(pid_t pid) {
  int st = 0;
  ::waitpid(pid, &st, 0);
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

std::string waitFor(const std::string& file, const std::string& re, double seconds) {
  std::regex rx(re);
  auto t0 = Clock::now();
  while (since(t0) < seconds) {
    std::smatch m;
    std::string s = slurp(file);
    if (std::regex_search(s, m, rx)) return m[1].str();
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  fail("{}: no line matching {} within {} s", file, re, seconds);
}

}  // namespace

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  try {
    std::string bin, base = "/tmp";
    int layers = 1;
    int64_t vocab = 32000;
    bool keep = false;
    std::vector<std::string> pos;
    for (int i = 1; i < argc; i++) {
      std::string a = argv[i];
      if (a == "--layers" && i + 1 < argc) layers = std::stoi(argv[++i]);
      else if (a == "--vocab" && i + 1 < argc) vocab = std::stoll(argv[++i]);
      else if (a == "--keep") keep = true;
      else pos.push_back(a);
    }
    check(!pos.empty(), "usage: swarm_bench DOPPLER_BIN [DIR] [--layers N] [--vocab V] [--keep]");
    bin = std::filesystem::absolute(pos[0]).string();
    if (pos.size() > 1) base = pos[1];
    std::string work = joinPath(base, fmt::format("doppler-swarm-bench-{}", ::getpid()));
    std::filesystem::create_directories(work);
    struct Cleanup {
      std::string p;
      bool keep;
      ~Cleanup() {
        if (!keep) removeAll(p);
      }
    } cleanup{work, keep};

    auto t0 = Clock::now();
    uint64_t ckpt = writeSyntheticCheckpoint(joinPath(work, "hf"), syntheticConfig("qwen3-30b-a3b", layers, vocab));
    std::printf("checkpoint: %s in %.1f s\n", formatSize(ckpt).c_str(), since(t0));
    t0 = Clock::now();
    ConvertOptions co;
    co.modelId = "qwen3-30b-a3b-synthetic";
    const std::string model = joinPath(work, "model.rdrr");
    convertHfToRdrr(joinPath(work, "hf"), model, co, nullptr);
    removeAll(joinPath(work, "hf"));
    uint64_t total = 0;
    int files = 0;
    for (const auto& e : std::filesystem::directory_iterator(model))
      if (e.path().filename() != kSwarmTorrentName) {
        total += e.file_size();
        files++;
      }
    std::printf("converted: %d files, %s in %.1f s\n", files, formatSize(total).c_str(), since(t0));
    t0 = Clock::now();
    ModelTorrent t = modelTorrentOf(model, true);
    std::printf("torrent: %s, %zu files, hashed in %.1f s\n", t.infoHashV2.c_str(), t.files.size(), since(t0));

    httplib::Server origin;
    origin.set_mount_point("/m", model);
    int port = origin.bind_to_any_port("127.0.0.1");
    std::thread srv([&] { origin.listen_after_bind(); });
    while (!origin.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    const std::string url = fmt::format("http://127.0.0.1:{}/m/manifest.json", port);

    struct Seeds {  // stopped whatever happens
      std::vector<pid_t> pids;
      ~Seeds() {
        for (pid_t s : pids) {
          ::kill(s, SIGTERM);
          waitPid(s);
        }
      }
    } seedProcs;
    auto& seeds = seedProcs.pids;
    std::vector<std::string> eps;
    for (int i = 0; i < 2; i++) {
      std::string out = joinPath(work, fmt::format("seed{}.out", i));
      seeds.push_back(spawn(bin, {"seed", model, "--listen", "127.0.0.1:0"}, out, out + ".err"));
      eps.push_back(waitFor(out, R"(pieces\) on (127\.0\.0\.1:\d+))", 120));
    }
    std::printf("seeds on %s and %s\n", eps[0].c_str(), eps[1].c_str());

    struct Run {
      std::string name;
      std::vector<std::string> args;
    };
    // A second origin, if python3 is there: `python3 -m http.server` (no Range support; a whole-file pull does
    // not need it).
    int pyPort = 0;
    {
      int fd = ::socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      socklen_t len = sizeof a;
      check(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
                ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0,
            "cannot pick a free port");
      pyPort = ntohs(a.sin_port);
      ::close(fd);
    }
    std::string pyOut = joinPath(work, "python.out");
    pid_t py = spawn("/usr/bin/python3", {"-m", "http.server", std::to_string(pyPort), "--bind", "127.0.0.1",
                                          "--directory", model}, pyOut, pyOut + ".err");
    seeds.push_back(py);
    for (int i = 0; i < 100; i++) {
      httplib::Client c("127.0.0.1", pyPort);
      c.set_connection_timeout(1);
      c.set_read_timeout(2);
      if (c.Head("/manifest.json")) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    std::vector<Run> runs = {
        {"HTTP origin (cpp-httplib)", {"pull", url}},
        {"HTTP origin (python3 -m http.server)", {"pull", fmt::format("http://127.0.0.1:{}/manifest.json", pyPort)}},
        {"1 peer", {"pull", t.magnet(), "--peer", eps[0], "--no-origin"}},
        {"2 peers", {"pull", t.magnet(), "--peer", eps[0], "--peer", eps[1], "--no-origin"}},
    };
    std::printf("\n| source | wall | pull | MB/s (wall) | bytes per peer |\n| --- | --- | --- | --- | --- |\n");
    for (auto& r : runs) {
      std::string cache = joinPath(work, "cache");
      removeAll(cache);
      std::string stats = joinPath(work, "stats.json");
      r.args.insert(r.args.end(), {"-q", "--cache-dir", cache, "--stats-json", stats});
      auto t1 = Clock::now();
      pid_t p = spawn(bin, r.args, joinPath(work, "pull.out"), joinPath(work, "pull.err"));
      int rc = waitPid(p);
      double wall = since(t1);
      check(rc == 0, "{}: pull failed: {}", r.name, slurp(joinPath(work, "pull.err")));
      Json j = readJsonFile(stats);
      std::string perPeer;
      if (j.contains("swarm"))
        for (const auto& [ep, v] : j["swarm"]["peers"].items())
          if (v["downloaded"].get<uint64_t>() > 0)
            perPeer += fmt::format("{}{} {}", perPeer.empty() ? "" : ", ", ep,
                                   formatSize(v["downloaded"].get<uint64_t>()));
      std::printf("| %s | %.2f s | %.2f s | %.0f | %s |\n", r.name.c_str(), wall, j["pull"]["seconds"].get<double>(),
                  double(total) / wall / 1e6, perPeer.empty() ? "-" : perPeer.c_str());
      std::fflush(stdout);
      removeAll(cache);
    }
    origin.stop();
    srv.join();
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "swarm_bench: error: %s\n", e.what());
    return 1;
  }
}
