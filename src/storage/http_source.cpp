#include "storage/http_source.h"

#include <curl/curl.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <exception>
#include <thread>

#include "core/error.h"

namespace doppler {

namespace {
double nowSeconds() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

void globalInit() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) fail("libcurl: global initialisation failed");
  });
}

constexpr uint64_t kToEnd = ~uint64_t(0);

bool transientCurlError(CURLcode rc) {
  switch (rc) {
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
    case CURLE_TOO_MANY_REDIRECTS:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_LOGIN_DENIED:
    case CURLE_REMOTE_ACCESS_DENIED:
    case CURLE_OUT_OF_MEMORY:
      return false;
    default:
      return true;
  }
}

std::string statusText(long s) {
  switch (s) {
    case 400: return "400 Bad Request";
    case 401: return "401 Unauthorized";
    case 403: return "403 Forbidden";
    case 404: return "404 Not Found";
    case 408: return "408 Request Timeout";
    case 410: return "410 Gone";
    case 416: return "416 Range Not Satisfiable";
    case 429: return "429 Too Many Requests";
    case 500: return "500 Internal Server Error";
    case 502: return "502 Bad Gateway";
    case 503: return "503 Service Unavailable";
    case 504: return "504 Gateway Timeout";
    default: return std::to_string(s);
  }
}

// A printable excerpt of an error body (one line).
std::string excerpt(const std::string& body) {
  std::string s;
  for (char c : body.substr(0, 120)) s += (c >= 32 && c < 127) ? c : ' ';
  while (!s.empty() && s.back() == ' ') s.pop_back();
  return s.empty() ? "" : ": \"" + s + "\"";
}
}  // namespace

// One GET: what was asked, what came back.
struct HttpSource::Attempt {
  uint64_t offset = 0;           // first byte wanted (absolute)
  uint64_t want = 0;             // bytes wanted, kToEnd = the rest of the file
  const ByteSink* sink = nullptr;
  double stallTimeout = 30;
  void* curl = nullptr;

  long status = 0;               // final HTTP status (0: no response)
  std::string contentRange;      // of the final response
  bool decided = false;          // status checked at the first body byte
  uint64_t skip = 0;             // bytes before the range (the server ignored Range)
  uint64_t delivered = 0;
  bool complete = false;         // got everything asked for and stopped the transfer
  bool stalled = false;
  std::string errBody, protocolError;
  std::exception_ptr sinkError;
  double lastActivity = 0;
};

namespace {
size_t onHeader(char* data, size_t size, size_t n, void* user) {
  auto* a = static_cast<HttpSource::Attempt*>(user);
  size_t len = size * n;
  a->lastActivity = nowSeconds();
  std::string line(data, len);
  while (!line.empty() && (line.back() == '\r' || line.back() == '\n')) line.pop_back();
  if (line.rfind("HTTP/", 0) == 0) {
    a->contentRange.clear();  // a new response (after a redirect or 100-continue)
  } else if (line.size() > 14 && strncasecmp(line.c_str(), "content-range:", 14) == 0) {
    a->contentRange = line.substr(14);
    a->contentRange.erase(0, a->contentRange.find_first_not_of(' '));
  }
  return len;
}

size_t onBody(char* data, size_t size, size_t n, void* user) {
  auto* a = static_cast<HttpSource::Attempt*>(user);
  size_t len = size * n;
  a->lastActivity = nowSeconds();
  if (!a->decided) {
    a->decided = true;
    curl_easy_getinfo(static_cast<CURL*>(a->curl), CURLINFO_RESPONSE_CODE, &a->status);
    if (a->status == 206) {
      unsigned long long first = 0, last = 0;
      if (std::sscanf(a->contentRange.c_str(), "bytes %llu-%llu", &first, &last) != 2 || first != a->offset) {
        a->protocolError = "answered 206 with Content-Range '" + a->contentRange + "' for a request from byte " +
                           std::to_string(a->offset);
        return 0;
      }
    } else if (a->status == 200) {
      a->skip = a->offset;  // the whole file came back: skip to the range
    }
  }
  if (a->status != 200 && a->status != 206) {
    if (a->errBody.size() < 512) a->errBody.append(data, std::min(len, size_t(512) - a->errBody.size()));
    return len;
  }
  const char* p = data;
  size_t m = len;
  if (a->skip > 0) {
    size_t k = size_t(std::min<uint64_t>(a->skip, m));
    a->skip -= k;
    p += k;
    m -= k;
  }
  uint64_t left = a->want == kToEnd ? kToEnd : a->want - a->delivered;
  size_t take = size_t(std::min<uint64_t>(left, m));
  if (take > 0) {
    try {
      (*a->sink)(reinterpret_cast<const uint8_t*>(p), take);
    } catch (...) {
      a->sinkError = std::current_exception();
      return 0;
    }
    a->delivered += take;
  }
  if (a->want != kToEnd && a->delivered == a->want && (take < m || a->status == 200)) {
    a->complete = true;  // all we asked for; stop the rest of a whole-file answer
    return 0;
  }
  return len;
}

}  // namespace

HttpSource::HttpSource(const std::string& manifestUrl, const FetchOptions& opts) : manifestUrl_(manifestUrl), opts_(opts) {
  globalInit();
  std::string u = manifestUrl.substr(0, manifestUrl.find_first_of("?#"));
  base_ = u.substr(0, u.rfind('/') + 1);
  curl_ = curl_easy_init();
  multi_ = curl_multi_init();
  check(curl_ != nullptr && multi_ != nullptr, "{}: libcurl could not create a handle", manifestUrl);
}

HttpSource::~HttpSource() {
  if (multi_) curl_multi_cleanup(static_cast<CURLM*>(multi_));
  if (curl_) curl_easy_cleanup(static_cast<CURL*>(curl_));
}

void HttpSource::perform(const std::string& url, Attempt& a) {
  CURL* c = static_cast<CURL*>(curl_);
  a.curl = c;
  a.stallTimeout = opts_.stallTimeout;
  a.lastActivity = nowSeconds();
  std::string range;
  if (a.offset > 0 || a.want != kToEnd)
    range = std::to_string(a.offset) + "-" + (a.want == kToEnd ? "" : std::to_string(a.offset + a.want - 1));
  curl_easy_setopt(c, CURLOPT_URL, url.c_str());
  curl_easy_setopt(c, CURLOPT_RANGE, range.empty() ? nullptr : range.c_str());
  curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
  curl_easy_setopt(c, CURLOPT_MAXREDIRS, 10L);
  curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(c, CURLOPT_USERAGENT, "doppler/" DOPPLER_VERSION);
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, long(opts_.connectTimeout * 1000));
  curl_easy_setopt(c, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(c, CURLOPT_BUFFERSIZE, 512L * 1024);
  curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, onHeader);
  curl_easy_setopt(c, CURLOPT_HEADERDATA, &a);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, onBody);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &a);
  curl_easy_setopt(c, CURLOPT_NOPROGRESS, 1L);
  requests_++;
  // Driven through the multi interface so that a stall is noticed within ~50 ms (libcurl's own progress
  // callback runs only about once a second on an idle transfer).
  CURLM* m = static_cast<CURLM*>(multi_);
  CURLcode rc = CURLE_OK;
  curl_multi_add_handle(m, c);
  for (;;) {
    int running = 0;
    CURLMcode mc = curl_multi_perform(m, &running);
    if (mc != CURLM_OK) {
      rc = CURLE_RECV_ERROR;
      break;
    }
    if (running == 0) {
      int left = 0;
      while (CURLMsg* msg = curl_multi_info_read(m, &left))
        if (msg->msg == CURLMSG_DONE && msg->easy_handle == c) rc = msg->data.result;
      break;
    }
    if (nowSeconds() - a.lastActivity > opts_.stallTimeout) {
      a.stalled = true;
      rc = CURLE_OPERATION_TIMEDOUT;
      break;
    }
    curl_multi_poll(m, nullptr, 0, 50, nullptr);
  }
  curl_multi_remove_handle(m, c);
  if (!a.decided) curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &a.status);
  if (a.sinkError) std::rethrow_exception(a.sinkError);
  if (a.complete) return;
  if (!a.protocolError.empty()) fail("{}: {}", url, a.protocolError);
  if (a.status >= 400) {
    bool transient = a.status >= 500 || a.status == 408 || a.status == 429;
    std::string msg = "HTTP " + statusText(a.status) + excerpt(a.errBody);
    if (a.status == 416) msg += " (is the file there shorter than the manifest says?)";
    if (!transient) fail("{}: {}", url, msg);
    throw std::runtime_error(msg);  // transient: the caller retries
  }
  if (rc != CURLE_OK) {
    std::string msg = a.stalled ? fmt::format("no data for {:.1f} s (stalled)", opts_.stallTimeout)
                                : std::string(curl_easy_strerror(rc));
    if (!transientCurlError(rc)) fail("{}: {}", url, msg);
    throw std::runtime_error(msg);
  }
  if (a.status != 200 && a.status != 206) fail("{}: unexpected HTTP status {}", url, a.status);
  if (a.want != kToEnd && a.delivered < a.want)
    throw std::runtime_error(fmt::format("the body ended {} bytes early", a.want - a.delivered));
}

void HttpSource::fetchRange(const std::string& name, uint64_t offset, uint64_t size, const ByteSink& sink) {
  if (size == 0) return;
  std::lock_guard<std::mutex> lk(mu_);
  const std::string url = locate(name);
  uint64_t got = 0;
  int failures = 0, attempts = 0;
  std::string last;
  while (got < size) {
    Attempt a;
    a.offset = offset + got;
    a.want = size - got;
    a.sink = &sink;
    attempts++;
    try {
      perform(url, a);
      got += a.delivered;
      continue;
    } catch (const Error&) {
      throw;  // permanent, or the sink's own error
    } catch (const std::exception& e) {
      got += a.delivered;
      last = e.what();
    }
    if (a.delivered > 0) failures = 0;  // progress: the retry budget counts consecutive failures
    failures++;
    if (failures > opts_.retries || attempts > 100 + opts_.retries)
      fail("{}: {} (gave up after {} attempt{}; {} of {} bytes received)", url, last, attempts,
           attempts == 1 ? "" : "s", got, size);
    double delay = std::min(10.0, opts_.retryDelay * std::pow(2.0, failures - 1));
    std::this_thread::sleep_for(std::chrono::duration<double>(delay));
  }
}

std::string HttpSource::fetchFile(const std::string& name, uint64_t maxBytes) {
  std::lock_guard<std::mutex> lk(mu_);
  const std::string url = name == manifestUrl_.substr(base_.size()) ? manifestUrl_ : locate(name);
  std::string out;
  ByteSink sink = [&](const uint8_t* p, size_t n) {
    if (out.size() + n > maxBytes) fail("{}: larger than the {} bytes allowed", url, maxBytes);
    out.append(reinterpret_cast<const char*>(p), n);
  };
  int failures = 0;
  for (;;) {
    out.clear();
    Attempt a;
    a.offset = 0;
    a.want = kToEnd;
    a.sink = &sink;
    try {
      perform(url, a);
      return out;
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {
      failures++;
      if (failures > opts_.retries)
        fail("{}: {} (gave up after {} attempt{})", url, e.what(), failures, failures == 1 ? "" : "s");
    }
    double delay = std::min(10.0, opts_.retryDelay * std::pow(2.0, failures - 1));
    std::this_thread::sleep_for(std::chrono::duration<double>(delay));
  }
}

}  // namespace doppler
