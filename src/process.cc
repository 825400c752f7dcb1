#include "capnsplice/process.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/stat.h>
#include <unistd.h>

#include <charconv>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <utility>
#include <vector>

#include "capnsplice/error.h"
#include "channel_maker.h"
#include "child_descriptors.h"
#include "fork_exec.h"
#include "pipe_io.h"

extern char** environ;

namespace capnsplice {
namespace {

/// Throws SystemError for a posix_spawn* call that returned `result` (an errno value).
void check_spawn_call(int result, const std::string& context, const char* call) {
  if (result != 0) throw_system_error(context, call, result);
}

/// posix_spawn_file_actions_t, destroyed when done.
class FileActions {
 public:
  explicit FileActions(const std::string& context) : context_(context) {
    check(::posix_spawn_file_actions_init(&actions_), "posix_spawn_file_actions_init");
  }
  ~FileActions() { ::posix_spawn_file_actions_destroy(&actions_); }
  FileActions(const FileActions&) = delete;
  FileActions& operator=(const FileActions&) = delete;

  /// The moves and closes `descriptors` asks for, in its order.
  void put_in_place(const detail::ChildDescriptors& descriptors) {
    for (const auto& move : descriptors.moves()) {
      check(::posix_spawn_file_actions_adddup2(&actions_, move.source, move.target), "adddup2");
    }
    for (int fd : descriptors.gaps()) {
      // glibc ignores EBADF for a close action: a number nothing had open is fine.
      check(::posix_spawn_file_actions_addclose(&actions_, fd), "addclose");
    }
    close_from(descriptors.close_from());
  }

 private:
  void close_from(int first) {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
    check(::posix_spawn_file_actions_addclosefrom_np(&actions_, first), "addclosefrom_np");
#else
    static_cast<void>(first);  // close-on-exec still keeps capnsplice's own descriptors out
#endif
  }

 public:
  const posix_spawn_file_actions_t* get() const noexcept { return &actions_; }

 private:
  void check(int result, const char* call) const { check_spawn_call(result, context_, call); }
  posix_spawn_file_actions_t actions_;
  const std::string& context_;
};

/// posix_spawnattr_t that starts the child with an empty signal mask — a thread that
/// spawns while it blocks signals (as a send does with SIGPIPE) must not pass that on —
/// and with SIGPIPE and SIGCHLD at their default disposition: exec keeps a signal the
/// parent ignores ignored, and a child must not inherit a parent's SIG_IGN for these
/// (its writes to a closed pipe would not end it, its own waitpid would fail ECHILD).
class SpawnAttributes {
 public:
  explicit SpawnAttributes(const std::string& context) : context_(context) {
    check(::posix_spawnattr_init(&attributes_), "posix_spawnattr_init");
    sigset_t empty;
    sigemptyset(&empty);
    sigset_t to_default;
    sigemptyset(&to_default);
    for (int signal : kSignalsToDefault) sigaddset(&to_default, signal);
    try {
      check(::posix_spawnattr_setsigmask(&attributes_, &empty), "posix_spawnattr_setsigmask");
      check(::posix_spawnattr_setsigdefault(&attributes_, &to_default),
            "posix_spawnattr_setsigdefault");
      check(::posix_spawnattr_setflags(&attributes_,
                                       POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF),
            "posix_spawnattr_setflags");
    } catch (...) {
      ::posix_spawnattr_destroy(&attributes_);
      throw;
    }
  }
  ~SpawnAttributes() { ::posix_spawnattr_destroy(&attributes_); }
  SpawnAttributes(const SpawnAttributes&) = delete;
  SpawnAttributes& operator=(const SpawnAttributes&) = delete;
  const posix_spawnattr_t* get() const noexcept { return &attributes_; }

 private:
  static constexpr int kSignalsToDefault[] = {SIGPIPE, SIGCHLD};

  void check(int result, const char* call) const { check_spawn_call(result, context_, call); }
  posix_spawnattr_t attributes_;
  const std::string& context_;
};

/// Strings kept alive next to the char* array exec wants.
class StringArray {
 public:
  void add(std::string value) { strings_.push_back(std::move(value)); }
  char* const* get() {
    pointers_.clear();
    for (auto& value : strings_) pointers_.push_back(value.data());
    pointers_.push_back(nullptr);
    return pointers_.data();
  }

 private:
  std::vector<std::string> strings_;
  std::vector<char*> pointers_;
};

std::string_view variable_name(std::string_view entry) { return entry.substr(0, entry.find('=')); }

/// The parent's environment, minus what `extra` overrides and any old channel variable,
/// plus `extra` and the channel variable.
StringArray child_environment(const std::vector<std::string>& extra) {
  StringArray environment;
  for (char** entry = environ; entry != nullptr && *entry != nullptr; ++entry) {
    std::string_view name = variable_name(*entry);
    bool replaced = name == kChannelVariable;
    for (const auto& added : extra) replaced = replaced || variable_name(added) == name;
    if (!replaced) environment.add(*entry);
  }
  for (const auto& added : extra) environment.add(added);
  environment.add(std::string(kChannelVariable) + "=" + std::to_string(kChildReceiveFd) + "," +
                  std::to_string(kChildSendFd) + "," + std::to_string(kChildControlFd));
  return environment;
}

[[noreturn]] void run_forked_child(Channel parent_end, Channel& own_end,
                                   const std::function<int(Channel&)>& body) {
  int code = 70;
  try {
    { Channel closing = std::move(parent_end); }
    code = body(own_end);
  } catch (const std::exception& error) {
    std::fprintf(stderr, "capnsplice: forked child failed: %s\n", error.what());
  } catch (...) {
    std::fprintf(stderr, "capnsplice: forked child failed with an unknown exception\n");
  }
  std::fflush(nullptr);
  ::_exit(code);
}

/// The descriptors named by the variable: receive, send and (optional) control.
std::vector<int> parse_channel_variable(std::string_view value, const std::string& context) {
  std::vector<int> fds;
  const char* at = value.data();
  const char* end = value.data() + value.size();
  for (;;) {
    int fd = -1;
    auto [next, error] = std::from_chars(at, end, fd);
    const bool separator_ok = next == end || *next == ',';
    if (error != std::errc() || fd < 0 || !separator_ok || fds.size() == 3) {
      fds.clear();
      break;
    }
    fds.push_back(fd);
    if (next == end) break;
    at = next + 1;
  }
  if (fds.size() < 2) {
    throw Error(ErrorCode::InvalidArgument, context,
                std::string(kChannelVariable) + "='" + std::string(value) +
                    "' is not '<receive fd>,<send fd>[,<control fd>]'");
  }
  return fds;
}

/// Throws unless the descriptors named by `value` can be a channel: none of them
/// standard input, output or error, no two the same, each open and of the right kind
/// (pipe ends in the right directions, a socket for the control link). Nothing is taken
/// over or changed until all of them pass, so a bad variable leaves every descriptor as
/// it was.
void check_inherited(const std::vector<int>& fds, std::string_view value,
                     const std::string& context) {
  const std::string variable = std::string(kChannelVariable) + "='" + std::string(value) + "'";
  static constexpr const char* kRoles[] = {"receive", "send", "control"};
  for (std::size_t i = 0; i < fds.size(); ++i) {
    const std::string which =
        variable + ": " + kRoles[i] + " descriptor " + std::to_string(fds[i]);
    if (fds[i] <= STDERR_FILENO) {
      throw Error(ErrorCode::InvalidArgument, context,
                  which + " is standard input, output or error, not a channel end");
    }
    for (std::size_t j = 0; j < i; ++j) {
      if (fds[j] == fds[i]) {
        throw Error(ErrorCode::InvalidArgument, context,
                    which + " is also the " + kRoles[j] + " descriptor");
      }
    }
    if (::fcntl(fds[i], F_GETFD) < 0) {
      throw Error(ErrorCode::InvalidArgument, context, which + " is not open");
    }
    const bool is_control = i == 2;
    struct stat info {};
    const bool right_kind = is_control ? ::fstat(fds[i], &info) == 0 && S_ISSOCK(info.st_mode)
                                       : detail::is_pipe(fds[i]);
    if (!right_kind) {
      throw Error(ErrorCode::InvalidArgument, context,
                  which + " is not a " + (is_control ? "socket" : "pipe"));
    }
    if (!is_control) {
      std::string where = context;
      where.append(": ").append(which);
      detail::require_access_mode(fds[i], /*for_writing=*/i == 1, where);
    }
  }
}

/// Takes a descriptor check_inherited() accepted and makes it close-on-exec.
UniqueFd adopt_inherited(int fd, const std::string& context) {
  UniqueFd owned(fd);
  if (::fcntl(fd, F_SETFD, FD_CLOEXEC) != 0) {
    throw_system_error(context, "descriptor " + std::to_string(fd) + " from " +
                                    std::string(kChannelVariable) + ": fcntl");
  }
  return owned;
}

}  // namespace

Child spawn(const SpawnOptions& options) {
  const std::string context = "spawn '" + options.program + "'";
  detail::check_parent_death_signal(options.parent_death_signal, context);
  auto [local, remote] = Channel::pair_with_remote_end(options.channel);
  const int channel_ends[3] = {remote.receive_fd.get(), remote.send_fd.get(),
                               remote.control_fd.get()};
  const detail::ChildDescriptors descriptors(channel_ends, options.descriptors, context);

  StringArray argv;
  argv.add(options.program);
  for (const auto& argument : options.arguments) argv.add(argument);
  StringArray environment = child_environment(options.environment);

  pid_t pid = -1;
  if (options.parent_death_signal != 0) {
    pid = detail::fork_exec(detail::find_program(options.program, context), argv.get(),
                            environment.get(), descriptors, options.parent_death_signal, context);
  } else {
    FileActions actions(context);
    actions.put_in_place(descriptors);
    SpawnAttributes attributes(context);
    const bool search = options.program.find('/') == std::string::npos;
    const int result = search ? ::posix_spawnp(&pid, options.program.c_str(), actions.get(),
                                               attributes.get(), argv.get(), environment.get())
                              : ::posix_spawn(&pid, options.program.c_str(), actions.get(),
                                              attributes.get(), argv.get(), environment.get());
    if (result != 0) throw_system_error(context, search ? "posix_spawnp" : "posix_spawn", result);
  }
  // The parent's copies of the child's ends close here (remote, descriptors).
  return Child{ChildProcess(pid, options.channel.name), std::move(local)};
}

Child fork_with_channel(const std::function<int(Channel&)>& body, const ChannelOptions& options) {
  const std::string name = options.name;
  auto [local, remote] = Channel::pair(options);
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) throw_system_error("fork '" + name + "'", "fork");
  if (pid == 0) run_forked_child(std::move(local), remote, body);
  { Channel closing = std::move(remote); }
  return Child{ChildProcess(pid, name), std::move(local)};
}

Channel child_channel(const ChannelOptions& options) {
  const std::string context = "channel '" + options.name + "': open";
  const std::string variable(kChannelVariable);
  const char* value = std::getenv(variable.c_str());
  if (value == nullptr) {
    throw Error(ErrorCode::InvalidArgument, context,
                variable + " is not set: this process was not started by capnsplice::spawn()");
  }
  const std::vector<int> fds = parse_channel_variable(value, context);
  check_inherited(fds, value, context);
  UniqueFd receive_end = adopt_inherited(fds[0], context);
  UniqueFd send_end = adopt_inherited(fds[1], context);
  UniqueFd control = fds.size() > 2 ? adopt_inherited(fds[2], context) : UniqueFd();
  ::unsetenv(variable.c_str());
  // capnsplice made these pipes in the parent: this end's sender may raise its pipe too.
  return detail::ChannelMaker::adopt(std::move(receive_end), std::move(send_end), options,
                                     std::move(control));
}

}  // namespace capnsplice
