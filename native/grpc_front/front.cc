// pih2t-grpc-front: the gRPC front end of `pih2t-serve --grpc-front native`.
//
// gRPC's own C++ server takes every call on --listen (HTTP/2, flow control, keepalive and limits in native
// code, outside the Python workers' GIL) and hands its method name and request bytes to the worker working on
// the fewest calls, over that worker's Unix socket; the worker's answer goes back to the client as the call's
// response or status. So calls, not connections, are spread over the workers, and a worker's event loop spends
// no time on HTTP/2.
//
// Frames on a worker's socket, both ways (pih2t_deploy/serving/handoff.py): a 4-byte payload length, an 8-byte
// call id, a 1-byte kind (all big-endian), the payload. A call goes as kind CALL: 1 byte method-name length,
// the method name ("/inference.GRPCInferenceService/ModelInfer"), the request bytes. The answer is kind ANSWER
// (response bytes) or FAILED (1-byte gRPC status code, UTF-8 message).
//
// Usage: pih2t-grpc-front --listen HOST:PORT --worker SOCKET [--worker SOCKET ...] [--max-message-bytes N]
//            [--max-in-flight N] [--call-timeout-ms N] [--arg NAME=INT ...]
// Prints "listening on PORT" once it accepts calls; exit status 2 with one line on a bad argument or a port it
// cannot bind. SIGTERM or SIGINT, or the parent's end: stop accepting, let calls in progress finish (up to 5 s),
// exit 0.

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

namespace {

constexpr uint8_t kAnswer = 0, kFailed = 1, kCall = 2;
constexpr size_t kHeader = 13;  // length, call id, kind
constexpr auto kRetry = std::chrono::seconds(1);  // a worker that could not be reached is not tried for this long
constexpr auto kShutdownGrace = std::chrono::seconds(5);

void put_be(uint8_t* out, uint64_t value, int bytes) {
  for (int i = bytes - 1; i >= 0; --i, value >>= 8) out[i] = static_cast<uint8_t>(value);
}

uint64_t get_be(const uint8_t* in, int bytes) {
  uint64_t value = 0;
  for (int i = 0; i < bytes; ++i) value = (value << 8) | in[i];
  return value;
}

bool read_fully(int fd, uint8_t* out, size_t size) {
  while (size > 0) {
    ssize_t got = read(fd, out, size);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return false;
    out += got;
    size -= static_cast<size_t>(got);
  }
  return true;
}

bool write_fully(int fd, iovec* parts, int count) {
  while (count > 0) {
    ssize_t sent = writev(fd, parts, count);
    if (sent < 0 && errno == EINTR) continue;
    if (sent <= 0) return false;
    auto left = static_cast<size_t>(sent);
    while (count > 0 && left >= parts->iov_len) {
      left -= parts->iov_len;
      ++parts;
      --count;
    }
    if (count > 0) {
      parts->iov_base = static_cast<uint8_t*>(parts->iov_base) + left;
      parts->iov_len -= left;
    }
  }
  return true;
}

class Call;

// One worker's socket: calls sent on it by id, answered by its reader thread.
class Worker {
 public:
  Worker(std::string path, size_t max_payload, std::chrono::milliseconds call_timeout)
      : path_(std::move(path)), max_payload_(max_payload), call_timeout_(call_timeout) {}

  int in_flight() const { return in_flight_.load(std::memory_order_relaxed); }
  bool usable() {
    std::lock_guard<std::mutex> lock(mu_);
    return connection_ != nullptr || std::chrono::steady_clock::now() >= down_until_;
  }
  // Sends ``call``'s request; false when the worker cannot be reached (the caller tries another).
  bool send(Call* call, const std::string& method, const std::string& request);
  // Fails the calls sent longer than the call timeout ago with DEADLINE_EXCEEDED (a worker that hangs); an
  // answer that comes later is dropped.
  void expire(std::chrono::steady_clock::time_point now);

 private:
  // A connected socket, closed when the last sender or reader lets go of it (so its number is never reused
  // while someone may still write to it).
  struct Connection {
    explicit Connection(int fd) : fd(fd) {}
    ~Connection() { close(fd); }
    const int fd;
    std::mutex write_mu;
  };

  std::shared_ptr<Connection> connect_locked();
  void read_answers(std::shared_ptr<Connection> connection);
  void lost(const std::shared_ptr<Connection>& connection);

  struct Pending {
    Call* call;
    std::chrono::steady_clock::time_point deadline;
  };

  const std::string path_;
  const size_t max_payload_;
  const std::chrono::milliseconds call_timeout_;
  std::atomic<int> in_flight_{0};
  std::mutex mu_;  // connection_, down_until_, pending_, next_id_
  std::shared_ptr<Connection> connection_;
  std::chrono::steady_clock::time_point down_until_{};
  uint64_t next_id_ = 0;
  std::unordered_map<uint64_t, Pending> pending_;
};

class Front {
 public:
  Front(std::vector<std::unique_ptr<Worker>> workers, int max_in_flight)
      : workers_(std::move(workers)), max_in_flight_(max_in_flight) {}
  void dispatch(Call* call, const std::string& method, const std::string& request);
  // Expires calls that waited too long, every 100 ms, on a thread of its own (runs until the process ends).
  void sweep() {
    for (;;) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      auto now = std::chrono::steady_clock::now();
      for (auto& worker : workers_) worker->expire(now);
    }
  }
  void started() { in_flight_.fetch_add(1, std::memory_order_relaxed); }
  void finished() { in_flight_.fetch_sub(1, std::memory_order_relaxed); }

 private:
  std::vector<std::unique_ptr<Worker>> workers_;
  const int max_in_flight_;
  std::atomic<int> in_flight_{0};
  std::atomic<unsigned> turn_{0};
};

// One gRPC call: its request read, handed to a worker, answered once with the worker's answer.
class Call : public grpc::ServerGenericBidiReactor {
 public:
  Call(Front* front, grpc::GenericCallbackServerContext* context) : front_(front), context_(context) {
    front_->started();
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      fail(grpc::StatusCode::INVALID_ARGUMENT, "the call carried no request message");
      return;
    }
    std::vector<grpc::Slice> slices;
    if (!request_.Dump(&slices).ok()) {
      fail(grpc::StatusCode::INTERNAL, "cannot read the request message");
      return;
    }
    std::string bytes;
    bytes.reserve(request_.Length());
    for (const auto& slice : slices) bytes.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
    request_.Clear();
    front_->dispatch(this, context_->method(), bytes);
  }

  // The worker's answer (kind ANSWER or FAILED and its payload); called exactly once per dispatched call.
  void answer(uint8_t kind, const std::string& payload) {
    if (kind == kAnswer) {
      grpc::Slice slice(payload);
      response_ = grpc::ByteBuffer(&slice, 1);
      StartWriteAndFinish(&response_, grpc::WriteOptions(), grpc::Status::OK);
    } else if (kind == kFailed && !payload.empty()) {
      auto code = static_cast<grpc::StatusCode>(static_cast<uint8_t>(payload[0]));
      fail(code, payload.substr(1));
    } else {
      fail(grpc::StatusCode::INTERNAL, "the worker sent an answer this front end cannot read");
    }
  }

  void fail(grpc::StatusCode code, const std::string& message) { Finish(grpc::Status(code, message)); }

  void OnWriteDone(bool) override {}
  void OnDone() override {
    front_->finished();
    delete this;
  }

 private:
  Front* front_;
  grpc::GenericCallbackServerContext* context_;
  grpc::ByteBuffer request_, response_;
};

std::shared_ptr<Worker::Connection> Worker::connect_locked() {
  if (connection_ != nullptr) return connection_;
  if (std::chrono::steady_clock::now() < down_until_) return nullptr;
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::strncpy(address.sun_path, path_.c_str(), sizeof(address.sun_path) - 1);
  if (fd < 0 || connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
    if (fd >= 0) close(fd);
    down_until_ = std::chrono::steady_clock::now() + kRetry;
    return nullptr;
  }
  connection_ = std::make_shared<Connection>(fd);
  std::thread(&Worker::read_answers, this, connection_).detach();
  return connection_;
}

bool Worker::send(Call* call, const std::string& method, const std::string& request) {
  uint64_t id;
  std::shared_ptr<Connection> connection;
  {
    std::lock_guard<std::mutex> lock(mu_);
    connection = connect_locked();
    if (connection == nullptr) return false;
    id = next_id_++;
    pending_[id] = Pending{call, std::chrono::steady_clock::now() + call_timeout_};
    in_flight_.fetch_add(1, std::memory_order_relaxed);
  }
  uint8_t header[kHeader + 1];
  put_be(header, 1 + method.size() + request.size(), 4);
  put_be(header + 4, id, 8);
  header[12] = kCall;
  header[13] = static_cast<uint8_t>(method.size());
  iovec parts[3] = {{header, sizeof(header)},
                    {const_cast<char*>(method.data()), method.size()},
                    {const_cast<char*>(request.data()), request.size()}};
  bool sent;
  {
    std::lock_guard<std::mutex> lock(connection->write_mu);
    sent = write_fully(connection->fd, parts, 3);
  }
  // the reader then sees the end of the connection and fails every call pending on it, this one too
  if (!sent) shutdown(connection->fd, SHUT_RDWR);
  return true;
}

void Worker::read_answers(std::shared_ptr<Connection> connection) {
  uint8_t header[kHeader];
  std::string payload;
  while (read_fully(connection->fd, header, kHeader)) {
    size_t length = get_be(header, 4);
    if (length > max_payload_) break;
    payload.resize(length);
    if (!read_fully(connection->fd, reinterpret_cast<uint8_t*>(payload.data()), length)) break;
    Call* call = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto found = pending_.find(get_be(header + 4, 8));
      if (found != pending_.end()) {
        call = found->second.call;
        pending_.erase(found);
        in_flight_.fetch_sub(1, std::memory_order_relaxed);
      }
    }
    if (call != nullptr) call->answer(header[12], payload);
  }
  lost(connection);
}

void Worker::lost(const std::shared_ptr<Connection>& connection) {
  std::unordered_map<uint64_t, Pending> orphans;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (connection_ == connection) connection_ = nullptr;
    orphans.swap(pending_);
    in_flight_.store(0, std::memory_order_relaxed);
    down_until_ = std::chrono::steady_clock::now() + kRetry;
  }
  shutdown(connection->fd, SHUT_RDWR);
  for (auto& [id, pending] : orphans) {
    pending.call->fail(grpc::StatusCode::UNAVAILABLE, "the worker answering this call stopped; retry");
  }
}

void Worker::expire(std::chrono::steady_clock::time_point now) {
  std::vector<Call*> late;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = pending_.begin(); it != pending_.end();) {
      if (it->second.deadline > now) {
        ++it;
        continue;
      }
      late.push_back(it->second.call);
      it = pending_.erase(it);
      in_flight_.fetch_sub(1, std::memory_order_relaxed);
    }
  }
  for (Call* call : late) call->fail(grpc::StatusCode::DEADLINE_EXCEEDED, "the worker gave no answer in time");
}

void Front::dispatch(Call* call, const std::string& method, const std::string& request) {
  if (in_flight_.load(std::memory_order_relaxed) > max_in_flight_) {
    call->fail(grpc::StatusCode::RESOURCE_EXHAUSTED, "too many calls in progress; retry shortly");
    return;
  }
  if (method.size() > 255) {
    call->fail(grpc::StatusCode::UNIMPLEMENTED, "unknown method");
    return;
  }
  // the least busy reachable worker, ties taken in turn; a worker that cannot be reached is skipped
  std::vector<bool> tried(workers_.size(), false);
  unsigned start = turn_.fetch_add(1, std::memory_order_relaxed);
  for (size_t attempt = 0; attempt < workers_.size(); ++attempt) {
    Worker* best = nullptr;
    size_t best_index = 0;
    for (size_t k = 0; k < workers_.size(); ++k) {
      size_t i = (start + k) % workers_.size();
      Worker* worker = workers_[i].get();
      if (tried[i] || !worker->usable()) continue;
      if (best == nullptr || worker->in_flight() < best->in_flight()) best = worker, best_index = i;
    }
    if (best == nullptr) break;
    tried[best_index] = true;
    if (best->send(call, method, request)) return;
  }
  call->fail(grpc::StatusCode::UNAVAILABLE, "no worker is ready to answer; retry shortly");
}

class Service : public grpc::CallbackGenericService {
 public:
  explicit Service(Front* front) : front_(front) {}
  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext* context) override {
    return new Call(front_, context);
  }

 private:
  Front* front_;
};

[[noreturn]] void usage_error(const std::string& message) {
  std::fprintf(stderr, "pih2t-grpc-front: %s\n", message.c_str());
  std::exit(2);
}

long parse_number(const std::string& flag, const std::string& text) {
  char* end = nullptr;
  long value = std::strtol(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || value < 0) usage_error(flag + " needs a whole number, got '" + text + "'");
  return value;
}

}  // namespace

int main(int argc, char** argv) {
  std::string listen;
  std::vector<std::string> worker_paths;
  std::vector<std::pair<std::string, int>> channel_args;
  long max_message = 64L << 20, max_in_flight = 1000, call_timeout_ms = 60000;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    if (i + 1 >= argc) usage_error(flag + " needs a value (see the usage in front.cc)");
    std::string value = argv[++i];
    if (flag == "--listen") {
      listen = value;
    } else if (flag == "--worker") {
      if (value.size() >= sizeof(sockaddr_un::sun_path)) usage_error("socket path too long: " + value);
      worker_paths.push_back(value);
    } else if (flag == "--max-message-bytes") {
      max_message = parse_number(flag, value);
    } else if (flag == "--max-in-flight") {
      max_in_flight = parse_number(flag, value);
    } else if (flag == "--call-timeout-ms") {
      call_timeout_ms = parse_number(flag, value);
    } else if (flag == "--arg") {
      auto equals = value.find('=');
      if (equals == std::string::npos) usage_error("--arg needs NAME=INT, got '" + value + "'");
      channel_args.emplace_back(value.substr(0, equals), parse_number(flag, value.substr(equals + 1)));
    } else {
      usage_error("unknown option " + flag);
    }
  }
  if (listen.empty() || worker_paths.empty()) usage_error("give --listen HOST:PORT and at least one --worker SOCKET");
  if (max_message > INT32_MAX) usage_error("--max-message-bytes must be below 2 GiB");

  // signals are taken by sigwait below, not by whichever of gRPC's threads happens to run
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);
  // stop with pih2t-serve even when it is killed outright: the port must not stay held by an orphan
  prctl(PR_SET_PDEATHSIG, SIGTERM);

  std::vector<std::unique_ptr<Worker>> workers;
  for (const auto& path : worker_paths) {
    workers.push_back(std::make_unique<Worker>(path, max_message + 256, std::chrono::milliseconds(call_timeout_ms)));
  }
  Front front(std::move(workers), static_cast<int>(max_in_flight));
  std::thread(&Front::sweep, &front).detach();
  Service service(&front);

  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(listen, grpc::InsecureServerCredentials(), &port);
  builder.SetMaxReceiveMessageSize(static_cast<int>(max_message));
  builder.SetMaxSendMessageSize(static_cast<int>(max_message));
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);  // another server on the port is an error, not a peer
  for (const auto& [name, value] : channel_args) builder.AddChannelArgument(name, value);
  builder.RegisterCallbackGenericService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) usage_error("cannot listen for gRPC on " + listen + " (is the port in use?)");
  std::printf("listening on %d\n", port);
  std::fflush(stdout);

  int received = 0;
  sigwait(&stop_signals, &received);
  server->Shutdown(std::chrono::system_clock::now() + kShutdownGrace);
  std::fflush(stdout);
  _exit(0);  // the readers are blocked on their sockets: no destructors to race with them
}
