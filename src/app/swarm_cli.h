// Options of the swarm tier shared by `doppler pull` and `doppler seed` (docs/swarm.md).
#pragma once
#include <CLI/CLI.hpp>
#include <cstdio>
#include <fmt/format.h>
#include <string>

#include "core/size.h"
#include "storage/swarm.h"

namespace doppler::app {

inline void addSwarmOptions(CLI::App& sub, SwarmOptions& o, bool pulling) {
  sub.add_option("--peer", o.peers, "A peer to exchange pieces with, HOST:PORT (repeatable)");
  sub.add_option("--listen", o.listen,
                 pulling ? "HOST:PORT to accept peers on while pulling (default 127.0.0.1:0: loopback, any port)"
                         : "HOST:PORT to accept peers on (default 127.0.0.1:6881: loopback only; 0.0.0.0:6881 shares "
                           "with the network)");
  sub.add_option_function<std::string>(
      "--upload-limit", [&o](const std::string& s) { o.uploadLimit = parseSize(s, "--upload-limit"); },
      "Upload rate limit in bytes/s, e.g. 10M (default: unlimited)");
  sub.add_option_function<std::string>(
      "--download-limit", [&o](const std::string& s) { o.downloadLimit = parseSize(s, "--download-limit"); },
      "Download rate limit in bytes/s, e.g. 50M (default: unlimited)");
  sub.add_option("--max-connections", o.maxConnections, "Most peer connections (default 200)")
      ->check(CLI::Range(2, 100000));
  sub.add_flag("--lsd", o.lsd, "Find peers on the LAN with local service discovery (multicast)");
  sub.add_flag("--dht", o.dht, "Find peers through the mainline DHT");
  if (pulling) {
    sub.add_option("--peer-timeout", o.peerTimeout,
                   "Seconds a file may go without data from peers before the origin is used (default 20)")
        ->check(CLI::PositiveNumber);
    sub.add_option("--metadata-timeout", o.metadataTimeout,
                   "Seconds to get a magnet link's metadata from peers (default 30)")
        ->check(CLI::PositiveNumber);
  }
}

// One line per peer plus the totals.
inline std::string formatSwarmStats(const SwarmStats& s) {
  std::string out = fmt::format(
      "swarm {}: from peers {} ({} files), from origin {} ({} files), uploaded {}, peers seen {}, hash failures {}, "
      "banned {}\n",
      s.infoHash.substr(0, 16), formatSize(s.bytesFromPeers), s.filesFromPeers, formatSize(s.bytesFromOrigin),
      s.filesFromOrigin, formatSize(s.bytesUploaded), s.peers.size(), s.hashFailures, s.banned.size());
  for (const auto& [ep, p] : s.peers)
    out += fmt::format("  peer {:<22} down {:>10}  up {:>10}  {}{}\n", ep, formatSize(p.downloaded),
                       formatSize(p.uploaded), p.client, p.banned ? "  BANNED" : "");
  return out;
}

}  // namespace doppler::app
