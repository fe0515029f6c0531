// The peer-to-peer swarm tier (docs/swarm.md): an RDRR model as a BitTorrent hybrid (v1 + v2) torrent, seeded and
// fetched with libtorrent-rasterbar. libtorrent is confined to storage/swarm.cpp; this header is all the rest of
// doppler sees.
//
//   makeModelTorrent(dir)   the model's torrent: files manifest.json + shards + tokenizer files under the name
//                           safeModelId(modelId); deterministic (fixed piece size rule, no dates, no web seeds), so
//                           whoever holds the same model computes the same info-hash. Kept beside the manifest as
//                           the sidecar swarm.torrent; the manifest's bytes (and so its revision) never change.
//   seedModel(...)          shares a model directory until told to stop.
//   SwarmSource             a Source for the store: files come from peers first (all planned files at once, each
//                           with its own file priority, so a lazy load fetches one shard), then from the origin
//                           (plain HTTP fallback) when peers deliver nothing for peerTimeout seconds; the store
//                           verifies our SHA-256 on top of libtorrent's piece hashes before a file enters the cache.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "storage/source.h"

namespace doppler {

inline constexpr const char* kSwarmTorrentName = "swarm.torrent";

struct SwarmOptions {
  std::string listen = "127.0.0.1:0";  // HOST:PORT to accept peers on (port 0: any free port); loopback by default
  std::vector<std::string> peers;      // HOST:PORT of peers to connect to
  uint64_t uploadLimit = 0;            // bytes/s, 0 = unlimited (applies to loopback/LAN peers too)
  uint64_t downloadLimit = 0;          // bytes/s, 0 = unlimited
  int maxConnections = 200;
  bool lsd = false;                    // local service discovery (LAN multicast)
  bool dht = false;                    // the mainline DHT
  double peerTimeout = 20;             // seconds a file may go without a byte from peers before the origin is used
  double metadataTimeout = 30;         // seconds to get a magnet link's metadata from peers
};

struct SwarmPeerStats {
  std::string endpoint, client;
  uint64_t downloaded = 0, uploaded = 0;  // payload bytes from / to this peer
  bool banned = false;
};

struct SwarmStats {
  std::string infoHash;                         // v2 (hex) or v1 when the torrent has no v2 hash
  std::string listen;                           // the endpoint actually listened on
  std::map<std::string, SwarmPeerStats> peers;  // by endpoint "ip:port" (one entry per connection seen)
  uint64_t bytesFromPeers = 0;                  // payload downloaded from peers (libtorrent)
  uint64_t bytesFromOrigin = 0;                 // file bytes fetched from the origin instead
  uint64_t bytesUploaded = 0;                   // payload uploaded to peers
  uint64_t filesFromPeers = 0, filesFromOrigin = 0;
  int hashFailures = 0;                         // pieces that failed libtorrent's hash check
  std::vector<std::string> banned;              // endpoints banned (bad data)
  nlohmann::json toJson() const;
};

struct ModelTorrent {
  std::string name;                    // the torrent's top directory (safe model id)
  std::string infoHashV1, infoHashV2;  // lowercase hex (40 / 64 digits)
  std::string bytes;                   // the bencoded .torrent
  std::vector<std::pair<std::string, uint64_t>> files;  // name (inside the model dir), size; no pad files
  std::string magnet() const;          // magnet:?xt=urn:btih:...&xt=urn:btmh:1220...&dn=NAME
};

// The torrent of a complete RDRR directory (reads and hashes every file). Error naming the file if one is
// missing or has the wrong size.
ModelTorrent makeModelTorrent(const std::string& dir);
// Parses .torrent bytes (Error naming `what` if malformed).
ModelTorrent parseModelTorrent(const std::string& bytes, const std::string& what);
// The torrent of DIR: its sidecar swarm.torrent if that matches the manifest (names and sizes), else built
// with makeModelTorrent and written as the sidecar when `writeSidecar` (best effort).
ModelTorrent modelTorrentOf(const std::string& dir, bool writeSidecar);
// Error unless the torrent's files are exactly manifest.json (manifestBytes' size) + the manifest's files.
void checkTorrentMatchesManifest(const ModelTorrent& t, const std::string& manifestBytes, const std::string& what);

// Swarm specs: "magnet:?..." or a bare 40/64-digit hex info-hash.
bool isSwarmSpec(const std::string& s);

// Shares the model directory `dir` (every file that is present and passes libtorrent's check) until stop()
// returns true (polled every 100 ms). onReady(listenEndpoint, havePieces, totalPieces) once checked and listening.
void seedModel(const std::string& dir, const ModelTorrent& t, const SwarmOptions& o, const std::function<bool()>& stop,
               const std::function<void(const std::string&, int, int)>& onReady, SwarmStats* stats);

class SwarmSource final : public Source {
 public:
  // torrentBytes: the .torrent when known (else `spec` must be a magnet link / info-hash and the metadata comes
  // from peers). origin: where files come from when peers fail (null: --no-origin). stagingRoot: a directory for
  // libtorrent's files (a per-process subdirectory is made and removed with this object).
  SwarmSource(std::string spec, std::string torrentBytes, std::unique_ptr<Source> origin, SwarmOptions opts,
              std::string stagingRoot);
  ~SwarmSource() override;
  SwarmSource(const SwarmSource&) = delete;
  SwarmSource& operator=(const SwarmSource&) = delete;

  std::string spec() const override;
  std::string locate(const std::string& name) const override;
  std::string fetchFile(const std::string& name, uint64_t maxBytes) override;
  void fetchRange(const std::string& name, uint64_t offset, uint64_t size, const ByteSink& sink) override;
  void plan(const std::vector<std::string>& names) override;
  uint64_t requests() const override;
  bool remote() const override { return true; }

  SwarmStats stats() const;
  // The .torrent (after the metadata is known; empty before).
  std::string torrentBytes() const;
  // Keeps serving peers for `seconds` (or until stop() returns true) before the object goes.
  void linger(double seconds, const std::function<bool()>& stop = {});

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The source `doppler pull` and runs use: with peers (or LSD) a SwarmSource (the origin as fallback unless
// noOrigin), else the plain source. For a URL spec the torrent is the origin's swarm.torrent beside the manifest;
// if the origin has none, the origin alone is used (a note on stderr unless quiet).
std::unique_ptr<Source> openPullSource(const std::string& spec, const SwarmOptions& swarm, bool noOrigin,
                                       const FetchOptions& fetch, const std::string& stagingRoot, bool quiet);

}  // namespace doppler
