// The only translation unit that includes libtorrent (it is slow to compile). See storage/swarm.h.
#include "storage/swarm.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>
#include <set>
#include <thread>

// Debian's libtorrent is a release build; its CMake target adds TORRENT_USE_ASSERTS to Debug builds of ours
// (e.g. scripts/test's ASan stage), which must match the library's build. Keep it off.
#undef TORRENT_USE_ASSERTS
#define TORRENT_USE_ASSERTS 0
#include <libtorrent/add_torrent_params.hpp>
#include <libtorrent/alert_types.hpp>
#include <libtorrent/bencode.hpp>
#include <libtorrent/create_torrent.hpp>
#include <libtorrent/ip_filter.hpp>
#include <libtorrent/magnet_uri.hpp>
#include <libtorrent/peer_info.hpp>
#include <libtorrent/session.hpp>
#include <libtorrent/session_params.hpp>
#include <libtorrent/settings_pack.hpp>
#include <libtorrent/torrent_handle.hpp>
#include <libtorrent/torrent_info.hpp>
#include <libtorrent/torrent_status.hpp>

#include "core/error.h"
#include "core/fs_util.h"
#include "format/rdrr_manifest.h"
#include "storage/file_lock.h"
#include "storage/store.h"

namespace doppler {

namespace lt = libtorrent;
using Clock = std::chrono::steady_clock;

namespace {

constexpr uint64_t kMaxTorrentBytes = uint64_t(64) << 20;

double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::string hexOf(const char* p, size_t n) {
  static const char* d = "0123456789abcdef";
  std::string s;
  for (size_t i = 0; i < n; i++) {
    s += d[(uint8_t(p[i]) >> 4) & 15];
    s += d[uint8_t(p[i]) & 15];
  }
  return s;
}

bool isHex(const std::string& s) {
  for (char c : s)
    if (!std::isxdigit((unsigned char)c)) return false;
  return !s.empty();
}

std::string endpointStr(const lt::tcp::endpoint& ep) {
  if (ep.address().is_v6()) return "[" + ep.address().to_string() + "]:" + std::to_string(ep.port());
  return ep.address().to_string() + ":" + std::to_string(ep.port());
}

// "HOST:PORT" or "[V6]:PORT" -> host, port. Error naming `what` if malformed.
std::pair<std::string, int> splitHostPort(const std::string& s, const std::string& what) {
  auto colon = s.rfind(':');
  check(colon != std::string::npos && colon > 0 && colon + 1 < s.size(), "{} '{}': expected HOST:PORT", what, s);
  std::string host = s.substr(0, colon), port = s.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  check(port.find_first_not_of("0123456789") == std::string::npos && port.size() <= 5 && std::stoi(port) <= 65535,
        "{} '{}': the port must be a number 0-65535", what, s);
  return {host, std::stoi(port)};
}

// Resolves HOST:PORT (names through getaddrinfo) to one endpoint.
lt::tcp::endpoint resolvePeer(const std::string& s) {
  auto [host, port] = splitHostPort(s, "--peer");
  check(port > 0, "--peer '{}': port 0 is not a peer's port", s);
  lt::error_code ec;
  auto addr = lt::make_address(host, ec);
  if (!ec) return {addr, uint16_t(port)};
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  int rc = ::getaddrinfo(host.c_str(), nullptr, &hints, &res);
  check(rc == 0 && res, "--peer '{}': cannot resolve {}: {}", s, host, rc ? gai_strerror(rc) : "no address");
  char buf[INET6_ADDRSTRLEN] = {};
  if (res->ai_family == AF_INET6)
    ::inet_ntop(AF_INET6, &reinterpret_cast<sockaddr_in6*>(res->ai_addr)->sin6_addr, buf, sizeof buf);
  else
    ::inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(res->ai_addr)->sin_addr, buf, sizeof buf);
  ::freeaddrinfo(res);
  return {lt::make_address(buf), uint16_t(port)};
}

// The piece size: 16 KiB .. 16 MiB, a power of two, about 2000 pieces at most.
int pieceSizeFor(uint64_t total) {
  uint64_t p = 16 << 10;
  while (p < (uint64_t(16) << 20) && total / p > 2000) p *= 2;
  return int(p);
}

// The files of a model directory in torrent order: manifest.json, shards, tokenizer files.
std::vector<std::pair<std::string, uint64_t>> modelFiles(const std::string& manifestBytes, const Manifest& m) {
  std::vector<std::pair<std::string, uint64_t>> out;
  out.emplace_back(kRdrrManifestName, manifestBytes.size());
  for (const auto& s : m.shards) out.emplace_back(s.filename, s.size);
  for (const auto& f : m.tokenizerFiles) out.emplace_back(f.filename, f.size);
  return out;
}

lt::settings_pack sessionSettings(const SwarmOptions& o) {
  auto [host, port] = splitHostPort(o.listen, "--listen");
  lt::error_code ec;
  lt::make_address(host, ec);
  check(!ec, "--listen '{}': HOST must be an IP address (e.g. 127.0.0.1, 0.0.0.0, [::1])", o.listen);
  lt::settings_pack p;
  p.set_str(lt::settings_pack::listen_interfaces, o.listen);
  p.set_bool(lt::settings_pack::enable_dht, o.dht);
  p.set_bool(lt::settings_pack::enable_lsd, o.lsd);
  p.set_bool(lt::settings_pack::enable_upnp, false);
  p.set_bool(lt::settings_pack::enable_natpmp, false);
  if (!o.dht) p.set_str(lt::settings_pack::dht_bootstrap_nodes, "");
  // Several doppler processes on one host (or behind one NAT) are distinct peers.
  p.set_bool(lt::settings_pack::allow_multiple_connections_per_ip, true);
  // uTP over loopback crawls (~5 MB/s vs ~150 MB/s TCP): TCP only.
  p.set_bool(lt::settings_pack::enable_outgoing_utp, false);
  p.set_bool(lt::settings_pack::enable_incoming_utp, false);
  // Keep seed-to-seed connections: a lazy load raising one more file's priority must not wait to reconnect.
  p.set_bool(lt::settings_pack::close_redundant_connections, false);
  p.set_int(lt::settings_pack::min_reconnect_time, 1);
  p.set_int(lt::settings_pack::urlseed_wait_retry, 2);
  p.set_int(lt::settings_pack::upload_rate_limit, int(std::min<uint64_t>(o.uploadLimit, INT32_MAX)));
  p.set_int(lt::settings_pack::download_rate_limit, int(std::min<uint64_t>(o.downloadLimit, INT32_MAX)));
  // Rate-limit quota is handed out once per tick (500 ms by default): every round trip of a new connection
  // (handshake, bitfield, requests) then waits for a tick, ~1.5 s before the first byte. 100 ms ticks fix that.
  if (o.uploadLimit || o.downloadLimit) p.set_int(lt::settings_pack::tick_interval, 100);
  p.set_int(lt::settings_pack::connections_limit, std::max(2, o.maxConnections));
  p.set_int(lt::settings_pack::alert_mask, int(lt::alert_category::status | lt::alert_category::error |
                                               lt::alert_category::peer | lt::alert_category::storage |
                                               lt::alert_category::piece_progress));  // wakes the wait per piece
  p.set_int(lt::settings_pack::alert_queue_size, 100000);
  p.set_str(lt::settings_pack::peer_fingerprint, "-DP0100-");
  p.set_str(lt::settings_pack::user_agent, "doppler/" DOPPLER_VERSION);
  p.set_int(lt::settings_pack::peer_connect_timeout, 3);
  return p;
}

std::unique_ptr<lt::session> makeSession(const SwarmOptions& o) {
  lt::session_params params(sessionSettings(o));
  auto ses = std::make_unique<lt::session>(std::move(params));
  // By default peers on loopback and the LAN are exempt from rate limits; ours apply to every peer.
  lt::ip_filter f;
  const std::uint32_t global = 1u << static_cast<std::uint32_t>(lt::session::global_peer_class_id);
  f.add_rule(lt::make_address("0.0.0.0"), lt::make_address("255.255.255.255"), global);
  f.add_rule(lt::make_address("::"), lt::make_address("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"), global);
  ses->set_peer_class_filter(f);
  return ses;
}

// A private directory that only this process uses, under `root`, locked; stale ones (their process gone) are
// removed.
struct StagingDir {
  std::string path;
  FileLock lock;
  StagingDir() = default;
  explicit StagingDir(const std::string& root) {
    std::error_code ec;
    std::filesystem::create_directories(root, ec);
    check(isDirectory(root), "{}: cannot create the directory: {}", root, ec ? ec.message() : "not a directory");
    for (const auto& e : std::filesystem::directory_iterator(root, ec)) {
      std::string n = e.path().filename().string();
      if (n.size() > 5 && n.compare(n.size() - 5, 5, ".lock") == 0) {
        std::string d = e.path().string().substr(0, e.path().string().size() - 5);
        if (auto lk = FileLock::tryAcquire(e.path().string(), FileLock::Mode::Exclusive)) {
          removeAll(d);
          ::unlink(e.path().c_str());
        }
      }
    }
    std::random_device rd;
    path = joinPath(root, fmt::format("{}-{:08x}", ::getpid(), rd()));
    lock = FileLock::acquire(path + ".lock", FileLock::Mode::Exclusive);
    std::filesystem::create_directories(path, ec);
    check(isDirectory(path), "{}: cannot create the directory: {}", path, ec ? ec.message() : "not a directory");
  }
  ~StagingDir() {
    if (path.empty()) return;
    removeAll(path);
    ::unlink((path + ".lock").c_str());
  }
};

lt::add_torrent_params baseParams(const std::string& savePath) {
  lt::add_torrent_params atp;
  atp.save_path = savePath;
  atp.flags &= ~lt::torrent_flags::auto_managed;
  atp.flags &= ~lt::torrent_flags::paused;
  atp.flags |= lt::torrent_flags::duplicate_is_error;
  return atp;
}

std::shared_ptr<lt::torrent_info> loadTorrentInfo(const std::string& bytes, const std::string& what) {
  try {
    return std::make_shared<lt::torrent_info>(lt::span<char const>(bytes.data(), long(bytes.size())), lt::from_span);
  } catch (const std::exception& e) {
    fail("{}: not a valid .torrent: {}", what, e.what());
  }
}

ModelTorrent describe(const lt::torrent_info& ti, std::string bytes, const std::string& what) {
  ModelTorrent t;
  t.name = ti.name();
  const auto& ih = ti.info_hashes();
  if (ih.has_v1()) t.infoHashV1 = hexOf(ih.v1.data(), ih.v1.size());
  if (ih.has_v2()) t.infoHashV2 = hexOf(ih.v2.data(), ih.v2.size());
  t.bytes = std::move(bytes);
  const auto& fs = ti.files();
  for (auto i : fs.file_range()) {
    if (fs.pad_file_at(i)) continue;
    std::string path = fs.file_path(i);
    std::string prefix = t.name + "/";
    check(path.compare(0, prefix.size(), prefix) == 0 && isSafeFileName(path.substr(prefix.size())),
          "{}: torrent file '{}' is not a plain file name under {}/", what, path, t.name);
    t.files.emplace_back(path.substr(prefix.size()), uint64_t(fs.file_size(i)));
  }
  return t;
}

void waitAlerts(lt::session& ses, double seconds) {
  ses.wait_for_alert(std::chrono::milliseconds(int(seconds * 1000)));
}

}  // namespace

// ---- stats ----

nlohmann::json SwarmStats::toJson() const {
  nlohmann::json peersJ = nlohmann::json::object();
  for (const auto& [ep, p] : peers)
    peersJ[ep] = {{"client", p.client}, {"downloaded", p.downloaded}, {"uploaded", p.uploaded}, {"banned", p.banned}};
  return {{"info_hash", infoHash},
          {"listen", listen},
          {"bytes_from_peers", bytesFromPeers},
          {"bytes_from_origin", bytesFromOrigin},
          {"bytes_uploaded", bytesUploaded},
          {"files_from_peers", filesFromPeers},
          {"files_from_origin", filesFromOrigin},
          {"peers_seen", peers.size()},
          {"hash_failures", hashFailures},
          {"banned", banned},
          {"peers", peersJ}};
}

// ---- torrents ----

std::string ModelTorrent::magnet() const {
  std::string m = "magnet:?";
  if (!infoHashV1.empty()) m += "xt=urn:btih:" + infoHashV1 + "&";
  if (!infoHashV2.empty()) m += "xt=urn:btmh:1220" + infoHashV2 + "&";
  return m + "dn=" + name;
}

bool isSwarmSpec(const std::string& s) {
  if (s.compare(0, 7, "magnet:") == 0) return true;
  return (s.size() == 40 || s.size() == 64) && isHex(s);
}

ModelTorrent makeModelTorrent(const std::string& dir) {
  const std::string mpath = joinPath(dir, kRdrrManifestName);
  std::string mbytes = readFile(mpath);
  Manifest m = parseManifest(mbytes, mpath);
  auto files = modelFiles(mbytes, m);
  uint64_t total = 0;
  for (const auto& [name, size] : files) {
    std::string p = joinPath(dir, name);
    struct stat st {};
    check(::stat(p.c_str(), &st) == 0, "{}: cannot make the model's torrent: {} is missing", dir, name);
    check(uint64_t(st.st_size) == size, "{}: {} has {} bytes, the manifest says {}", dir, name, st.st_size, size);
    total += size;
  }
  const std::string name = safeModelId(m.modelId);
  lt::file_storage fs;
  for (const auto& [fname, size] : files) fs.add_file(name + "/" + fname, std::int64_t(size));
  // Hybrid (v1 + v2): v1-only clients can join; v2 gives per-file Merkle roots. No dates, creator or web seeds in
  // the info dictionary: the info-hash depends only on the files.
  lt::create_torrent ct(fs, pieceSizeFor(total));
  ct.set_creation_date(0);
  // libtorrent reads the files as <save path>/<name>/<file>: point <tmp>/<name> at the directory.
  std::string tmpl = joinPath(std::filesystem::temp_directory_path().string(), "doppler-torrent-XXXXXX");
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back(0);
  check(::mkdtemp(buf.data()) != nullptr, "{}: cannot create a temp directory: {}", tmpl, std::strerror(errno));
  std::string tmp = buf.data();
  std::string abs = std::filesystem::absolute(dir).string();
  if (::symlink(abs.c_str(), joinPath(tmp, name).c_str()) != 0) {
    int e = errno;
    removeAll(tmp);
    fail("{}: cannot create a symlink: {}", tmp, std::strerror(e));
  }
  lt::error_code ec;
  lt::set_piece_hashes(ct, tmp, ec);
  removeAll(tmp);
  check(!ec, "{}: hashing the model's files for its torrent failed: {}", dir, ec.message());
  std::vector<char> out = ct.generate_buf();
  std::string bytes(out.begin(), out.end());
  auto ti = loadTorrentInfo(bytes, dir + " (generated torrent)");
  return describe(*ti, std::move(bytes), dir);
}

ModelTorrent parseModelTorrent(const std::string& bytes, const std::string& what) {
  auto ti = loadTorrentInfo(bytes, what);
  return describe(*ti, bytes, what);
}

void checkTorrentMatchesManifest(const ModelTorrent& t, const std::string& manifestBytes, const std::string& what) {
  Manifest m = parseManifest(manifestBytes, what);
  auto want = modelFiles(manifestBytes, m);
  auto got = t.files;
  std::sort(want.begin(), want.end());
  std::sort(got.begin(), got.end());
  check(want == got, "{}: the torrent's files do not match the manifest (a stale swarm.torrent?)", what);
}

ModelTorrent modelTorrentOf(const std::string& dir, bool writeSidecar) {
  const std::string side = joinPath(dir, kSwarmTorrentName);
  if (isRegularFile(side)) {
    try {
      ModelTorrent t = parseModelTorrent(readFile(side), side);
      checkTorrentMatchesManifest(t, readFile(joinPath(dir, kRdrrManifestName)), side);
      return t;
    } catch (const Error&) {
      // stale or broken: rebuilt below
    }
  }
  ModelTorrent t = makeModelTorrent(dir);
  if (writeSidecar) {
    try {
      std::string tmp = side + fmt::format(".tmp-{}", ::getpid());
      writeFile(tmp, t.bytes, false);
      if (::rename(tmp.c_str(), side.c_str()) != 0) ::unlink(tmp.c_str());
    } catch (const Error&) {
      // a read-only directory: the torrent is recomputed next time
    }
  }
  return t;
}

// ---- seeding ----

void seedModel(const std::string& dir, const ModelTorrent& t, const SwarmOptions& o, const std::function<bool()>& stop,
               const std::function<void(const std::string&, int, int)>& onReady, SwarmStats* statsOut) {
  SwarmStats st;
  st.infoHash = t.infoHashV2.empty() ? t.infoHashV1 : t.infoHashV2;
  // <staging>/<name> -> the model directory (its name on disk need not be the torrent's). The staging dir is
  // locked while this process lives; a killed seed's is removed by the next one.
  StagingDir staging(joinPath(std::filesystem::temp_directory_path().string(), "doppler-seed"));
  std::string abs = std::filesystem::absolute(dir).string();
  check(::symlink(abs.c_str(), joinPath(staging.path, t.name).c_str()) == 0, "{}: cannot create a symlink: {}",
        staging.path, std::strerror(errno));

  auto ses = makeSession(o);
  lt::add_torrent_params atp = baseParams(staging.path);
  atp.ti = loadTorrentInfo(t.bytes, dir);
  const int totalPieces = atp.ti->num_pieces();
  // Upload only: a partial model (lazily pulled) shares what it has and never writes into the directory.
  atp.flags |= lt::torrent_flags::upload_mode;
  lt::torrent_handle h = ses->add_torrent(std::move(atp));
  std::vector<lt::tcp::endpoint> peers;
  for (const auto& p : o.peers) peers.push_back(resolvePeer(p));
  for (const auto& ep : peers) h.connect_peer(ep);

  bool ready = false;
  auto lastPoll = Clock::now() - std::chrono::seconds(1);
  auto lastConnect = Clock::now();
  std::vector<lt::alert*> alerts;
  std::vector<lt::peer_info> pinfo;
  while (!stop()) {
    waitAlerts(*ses, 0.1);
    ses->pop_alerts(&alerts);
    for (lt::alert* a : alerts) {
      if (auto* ls = lt::alert_cast<lt::listen_succeeded_alert>(a)) {
        if (ls->socket_type == lt::socket_type_t::tcp) st.listen = endpointStr({ls->address, uint16_t(ls->port)});
      } else if (auto* lf = lt::alert_cast<lt::listen_failed_alert>(a)) {
        fail("seed: cannot listen on {}: {}", o.listen, lf->error.message());
      } else if (auto* fe = lt::alert_cast<lt::file_error_alert>(a)) {
        fail("seed: {}: {}: {}", dir, fe->filename(), fe->error.message());
      } else if (auto* te = lt::alert_cast<lt::torrent_error_alert>(a)) {
        fail("seed: {}: {}", dir, te->error.message());
      }
    }
    if (since(lastPoll) >= 0.25) {
      lastPoll = Clock::now();
      lt::torrent_status s = h.status();
      st.bytesUploaded = uint64_t(s.total_payload_upload);
      h.get_peer_info(pinfo);
      for (const auto& p : pinfo) {
        auto& e = st.peers[endpointStr(p.ip)];
        e.endpoint = endpointStr(p.ip);
        e.client = p.client;
        e.downloaded = std::max(e.downloaded, uint64_t(p.total_download));
        e.uploaded = std::max(e.uploaded, uint64_t(p.total_upload));
      }
      if (!ready && s.state != lt::torrent_status::checking_files &&
          s.state != lt::torrent_status::checking_resume_data && !st.listen.empty()) {
        ready = true;
        if (onReady) onReady(st.listen, s.num_pieces, totalPieces);
      }
    }
    if (!peers.empty() && since(lastConnect) > 2) {
      lastConnect = Clock::now();
      for (const auto& ep : peers) h.connect_peer(ep);
    }
    if (statsOut) *statsOut = st;
  }
  if (statsOut) *statsOut = st;
}

// ---- fetching ----

struct SwarmSource::Impl {
  std::string spec, torrentBytes;
  std::unique_ptr<Source> origin;
  SwarmOptions o;
  std::unique_ptr<StagingDir> staging;
  std::unique_ptr<lt::session> ses;
  lt::torrent_handle h;
  std::shared_ptr<const lt::torrent_info> ti;
  std::map<std::string, lt::file_index_t> index;  // file name -> index
  std::vector<lt::tcp::endpoint> peers;
  std::set<std::string> bannedEps;
  SwarmStats st;
  uint64_t requests = 0;
  Clock::time_point started = Clock::now(), lastConnect = Clock::now(), lastPoll = Clock::now();
  Clock::time_point lastPeerSeen = Clock::now();  // the last time at least one peer was connected
  bool swarmFailed = false;  // no metadata: everything from the origin
  std::string swarmError;
  std::vector<lt::alert*> alerts;
  std::vector<lt::peer_info> pinfo;
  std::vector<lt::download_priority_t> prio;

  std::string peersText() const {
    std::string s;
    for (const auto& p : o.peers) s += (s.empty() ? "" : ", ") + p;
    return s.empty() ? std::string("no explicit peers") : s;
  }

  void refresh() {
    lastPoll = Clock::now();
    lt::torrent_status s = h.status();
    if (s.num_peers > 0) lastPeerSeen = Clock::now();
    st.bytesFromPeers = uint64_t(s.total_payload_download);
    st.bytesUploaded = uint64_t(s.total_payload_upload);
    h.get_peer_info(pinfo);
    for (const auto& p : pinfo) {
      if (p.connection_type & (lt::peer_info::web_seed | lt::peer_info::http_seed)) continue;
      std::string ep = endpointStr(p.ip);
      auto& e = st.peers[ep];
      e.endpoint = ep;
      e.client = p.client;
      e.downloaded = std::max(e.downloaded, uint64_t(p.total_download));
      e.uploaded = std::max(e.uploaded, uint64_t(p.total_upload));
    }
    if (since(lastConnect) > 2) {
      lastConnect = Clock::now();
      for (const auto& ep : peers)
        if (!bannedEps.count(endpointStr(ep))) h.connect_peer(ep);
    }
  }

  void pump(double seconds) {
    waitAlerts(*ses, seconds);
    ses->pop_alerts(&alerts);
    for (lt::alert* a : alerts) {
      if (auto* ls = lt::alert_cast<lt::listen_succeeded_alert>(a)) {
        if (ls->socket_type == lt::socket_type_t::tcp) {
          st.listen = endpointStr({ls->address, uint16_t(ls->port)});
          std::fprintf(stderr, "swarm: listening on %s\n", st.listen.c_str());
          std::fflush(stderr);
        }
      } else if (auto* lf = lt::alert_cast<lt::listen_failed_alert>(a)) {
        fail("swarm: cannot listen on {}: {}", o.listen, lf->error.message());
      } else if (lt::alert_cast<lt::hash_failed_alert>(a)) {
        st.hashFailures++;
      } else if (auto* pb = lt::alert_cast<lt::peer_ban_alert>(a)) {
        std::string ep = endpointStr(pb->endpoint);
        if (bannedEps.insert(ep).second) {
          st.banned.push_back(ep);
          std::fprintf(stderr, "swarm: banned peer %s (sent data that failed the piece hash check)\n", ep.c_str());
        }
        st.peers[ep].endpoint = ep;
        st.peers[ep].banned = true;
      } else if (auto* fe = lt::alert_cast<lt::file_error_alert>(a)) {
        swarmError = fmt::format("{}: {}", fe->filename(), fe->error.message());
      } else if (auto* te = lt::alert_cast<lt::torrent_error_alert>(a)) {
        swarmError = te->error.message();
      }
    }
    if (since(lastPoll) >= 0.2) refresh();
  }

  // Waits for the torrent's metadata (magnet links get it from peers). False (swarmFailed) on timeout.
  bool ensureMetadata() {
    if (ti) return true;
    if (swarmFailed) return false;
    auto t0 = Clock::now();
    while (!(ti = h.torrent_file())) {
      if (since(t0) > o.metadataTimeout) {
        swarmFailed = true;
        swarmError = fmt::format("no metadata from peers ({}) within {:.0f} s", peersText(), o.metadataTimeout);
        return false;
      }
      pump(0.1);
    }
    const auto& fs = ti->files();
    for (auto i : fs.file_range()) {
      if (fs.pad_file_at(i)) continue;
      std::string p = fs.file_path(i);
      auto slash = p.find('/');
      index[slash == std::string::npos ? p : p.substr(slash + 1)] = i;
    }
    prio = h.get_file_priorities();
    return true;
  }

  lt::file_index_t fileOf(const std::string& name) {
    auto it = index.find(name);
    check(it != index.end(), "swarm {}: the torrent has no file '{}'", st.infoHash, name);
    return it->second;
  }

  void setPriority(lt::file_index_t i, lt::download_priority_t p) {
    if (prio.size() <= size_t(static_cast<int>(i))) prio = h.get_file_priorities();
    if (prio[size_t(static_cast<int>(i))] == p) return;
    prio[size_t(static_cast<int>(i))] = p;
    h.prioritize_files(prio);
  }

  bool fileDone(lt::file_index_t i) {
    auto fp = h.file_progress(lt::torrent_handle::piece_granularity);
    return fp[size_t(static_cast<int>(i))] == ti->files().file_size(i);
  }
};

SwarmSource::SwarmSource(std::string spec, std::string torrentBytes, std::unique_ptr<Source> origin, SwarmOptions opts,
                         std::string stagingRoot)
    : impl_(std::make_unique<Impl>()) {
  Impl& d = *impl_;
  d.spec = std::move(spec);
  d.torrentBytes = std::move(torrentBytes);
  d.origin = std::move(origin);
  d.o = std::move(opts);
  for (const auto& p : d.o.peers) d.peers.push_back(resolvePeer(p));
  lt::add_torrent_params atp;
  if (!d.torrentBytes.empty()) {
    auto ti = loadTorrentInfo(d.torrentBytes, d.spec);
    ModelTorrent t = describe(*ti, "", d.spec);
    d.st.infoHash = t.infoHashV2.empty() ? t.infoHashV1 : t.infoHashV2;
    atp = baseParams("");
    atp.file_priorities.assign(size_t(ti->num_files()), lt::dont_download);
    atp.ti = ti;
  } else {
    std::string uri = d.spec;
    if (uri.compare(0, 7, "magnet:") != 0)
      uri = uri.size() == 40 ? "magnet:?xt=urn:btih:" + uri : "magnet:?xt=urn:btmh:1220" + uri;
    lt::error_code ec;
    lt::add_torrent_params m = lt::parse_magnet_uri(uri, ec);
    check(!ec, "{}: not a valid magnet link: {}", d.spec, ec.message());
    atp = baseParams("");
    atp.info_hashes = m.info_hashes;
    atp.name = m.name;
    atp.peers = m.peers;
    atp.flags |= lt::torrent_flags::default_dont_download;
    const auto& ih = m.info_hashes;
    d.st.infoHash = ih.has_v2() ? hexOf(ih.v2.data(), ih.v2.size()) : hexOf(ih.v1.data(), ih.v1.size());
  }
  d.staging = std::make_unique<StagingDir>(stagingRoot);
  atp.save_path = d.staging->path;
  d.ses = makeSession(d.o);
  d.h = d.ses->add_torrent(std::move(atp));
  for (const auto& ep : d.peers) d.h.connect_peer(ep);
  d.pump(0.05);
}

SwarmSource::~SwarmSource() {
  if (impl_ && impl_->ses) {
    impl_->ses->remove_torrent(impl_->h);
    impl_->ses.reset();  // waits for libtorrent to close its files before the staging dir goes
  }
}

std::string SwarmSource::spec() const { return impl_->spec; }

std::string SwarmSource::locate(const std::string& name) const {
  return fmt::format("swarm {}.. ({})/{}", impl_->st.infoHash.substr(0, 16), impl_->peersText(), name);
}

uint64_t SwarmSource::requests() const { return impl_->requests; }

SwarmStats SwarmSource::stats() const { return impl_->st; }

std::string SwarmSource::torrentBytes() const {
  Impl& d = *impl_;
  if (d.torrentBytes.empty() && d.ti) {
    // A magnet link's metadata: the .torrent with the v2 piece layers learnt while downloading (complete once
    // every file was fetched). Best effort: empty if libtorrent cannot produce it.
    try {
      if (auto t = d.h.torrent_file_with_hashes()) {
        lt::create_torrent ct(*t);
        std::vector<char> out = ct.generate_buf();
        d.torrentBytes.assign(out.begin(), out.end());
      }
    } catch (const std::exception&) {
    }
  }
  return d.torrentBytes;
}

std::string SwarmSource::fetchFile(const std::string& name, uint64_t maxBytes) {
  Impl& d = *impl_;
  if (d.origin) return d.origin->fetchFile(name, maxBytes);
  if (!d.ensureMetadata()) fail("{}: {}", locate(name), d.swarmError);
  auto i = d.fileOf(name);
  uint64_t size = uint64_t(d.ti->files().file_size(i));
  check(size <= maxBytes, "{}: {} bytes, more than the {} allowed", locate(name), size, maxBytes);
  std::string out;
  fetchRange(name, 0, size, [&](const uint8_t* p, size_t n) { out.append(reinterpret_cast<const char*>(p), n); });
  return out;
}

void SwarmSource::plan(const std::vector<std::string>& names) {
  Impl& d = *impl_;
  if (!d.ensureMetadata()) return;
  bool changed = false;
  if (d.prio.empty()) d.prio = d.h.get_file_priorities();
  for (const auto& n : names) {
    auto it = d.index.find(n);
    if (it == d.index.end()) continue;
    auto& p = d.prio[size_t(static_cast<int>(it->second))];
    if (p == lt::dont_download) {
      p = lt::default_priority;
      changed = true;
    }
  }
  if (changed) d.h.prioritize_files(d.prio);
}

void SwarmSource::fetchRange(const std::string& name, uint64_t offset, uint64_t size, const ByteSink& sink) {
  Impl& d = *impl_;
  d.requests++;
  auto fromOrigin = [&](const std::string& why) {
    if (!d.origin)
      fail("{}: {}; --no-origin forbids the origin", locate(name), why);
    std::fprintf(stderr, "swarm: %s: %s; fetching it from the origin\n", name.c_str(), why.c_str());
    d.st.filesFromOrigin++;
    d.origin->fetchRange(name, offset, size, [&](const uint8_t* p, size_t n) {
      d.st.bytesFromOrigin += n;
      sink(p, n);
    });
  };
  if (!d.ensureMetadata()) return fromOrigin(d.swarmError);
  if (!d.index.count(name)) return fromOrigin("not in the swarm's torrent");
  auto i = d.fileOf(name);
  const uint64_t fileSize = uint64_t(d.ti->files().file_size(i));
  check(offset <= fileSize && size <= fileSize - offset, "{}: range {}+{} is outside the file ({} bytes)",
        locate(name), offset, size, fileSize);
  if (size == 0) return;
  d.setPriority(i, lt::top_priority);
  const auto fetchStart = Clock::now();
  // Peers gone for a while (a long run between two lazy fetches: idle connections get closed): ask again now and
  // give them a few seconds before deciding nobody is there.
  const double reconnectGrace = since(d.lastPeerSeen) > 60 ? 3.0 : 0.0;
  if (d.h.status().num_peers == 0)
    for (const auto& ep : d.peers)
      if (!d.bannedEps.count(endpointStr(ep))) d.h.connect_peer(ep);
  auto lastProgress = Clock::now();
  int64_t lastBytes = -1;
  std::vector<std::int64_t> fp;
  for (;;) {
    if (d.fileDone(i)) break;
    d.h.file_progress(fp);
    int64_t have = fp[size_t(static_cast<int>(i))];
    if (have != lastBytes) {
      lastBytes = have;
      lastProgress = Clock::now();
    }
    lt::torrent_status s = d.h.status();
    if (s.num_peers > 0) d.lastPeerSeen = Clock::now();
    // Nobody to get it from: no peer connected for peerTimeout (and the reconnect grace has passed).
    bool nobody = s.num_peers == 0 && since(d.started) > d.o.peerTimeout && since(d.lastPeerSeen) > d.o.peerTimeout &&
                  since(fetchStart) >= reconnectGrace;
    if (nobody || since(lastProgress) > d.o.peerTimeout || !d.swarmError.empty()) {
      d.setPriority(i, lt::dont_download);
      std::string why = !d.swarmError.empty() ? d.swarmError
                        : nobody             ? fmt::format("no peer connected ({})", d.peersText())
                                             : fmt::format("peers sent nothing for {:.0f} s ({} connected, {} "
                                                           "hash failure(s), {} banned)",
                                                           d.o.peerTimeout, s.num_peers, d.st.hashFailures,
                                                           d.st.banned.size());
      return fromOrigin(why);
    }
    d.pump(0.05);
  }
  d.refresh();
  // The file is complete and libtorrent verified every piece of it; hand it over (the store checks our SHA-256).
  std::string path = joinPath(joinPath(d.staging->path, d.ti->name()), name);
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  check(fd >= 0, "{}: cannot open the downloaded file {}: {}", locate(name), path, std::strerror(errno));
  std::vector<uint8_t> buf(size_t(1) << 20);
  uint64_t at = offset, end = offset + size;
  try {
    while (at < end) {
      ssize_t n = ::pread(fd, buf.data(), size_t(std::min<uint64_t>(buf.size(), end - at)), off_t(at));
      if (n < 0 && errno == EINTR) continue;
      check(n > 0, "{}: read error: {}", path, n < 0 ? std::strerror(errno) : "unexpected end of file");
      sink(buf.data(), size_t(n));
      at += uint64_t(n);
    }
  } catch (...) {
    ::close(fd);
    throw;
  }
  ::close(fd);
  d.st.filesFromPeers++;
}

void SwarmSource::linger(double seconds, const std::function<bool()>& stop) {
  Impl& d = *impl_;
  auto t0 = Clock::now();
  while (since(t0) < seconds && !(stop && stop())) d.pump(0.1);
  d.refresh();
}

std::unique_ptr<Source> openPullSource(const std::string& spec, const SwarmOptions& swarm, bool noOrigin,
                                       const FetchOptions& fetch, const std::string& stagingRoot, bool quiet) {
  bool torrentFile = spec.size() > 8 && spec.compare(spec.size() - 8, 8, ".torrent") == 0 && isRegularFile(spec);
  bool wantSwarm = !swarm.peers.empty() || swarm.lsd || swarm.dht || isSwarmSpec(spec) || torrentFile;
  if (!wantSwarm) {
    check(!noOrigin, "{}: --no-origin needs peers (--peer HOST:PORT, or --lsd)", spec);
    return openSource(spec, fetch);
  }
  if (isSwarmSpec(spec)) return std::make_unique<SwarmSource>(spec, "", nullptr, swarm, stagingRoot);
  if (torrentFile) {
    std::string bytes = readFile(spec);
    ModelTorrent t = parseModelTorrent(bytes, spec);
    return std::make_unique<SwarmSource>(t.magnet(), bytes, nullptr, swarm, stagingRoot);
  }
  auto origin = openSource(spec, fetch);
  if (!origin->remote()) return origin;  // a local directory: nothing to get from peers
  std::string bytes;
  try {
    bytes = origin->fetchFile(kSwarmTorrentName, kMaxTorrentBytes);
    parseModelTorrent(bytes, origin->locate(kSwarmTorrentName));
  } catch (const Error& e) {
    check(!noOrigin, "{}: the origin has no usable {} ({}), so the swarm is unknown; pull a magnet link instead",
          spec, kSwarmTorrentName, e.what());
    if (!quiet) std::fprintf(stderr, "swarm: no %s at the origin (%s); pulling from the origin only\n",
                             kSwarmTorrentName, e.what());
    return origin;
  }
  std::string originSpec = origin->spec();
  return std::make_unique<SwarmSource>(originSpec, bytes, noOrigin ? nullptr : std::move(origin), swarm, stagingRoot);
}

}  // namespace doppler
