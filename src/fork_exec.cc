#include "fork_exec.h"

#include <fcntl.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <string_view>
#include <utility>

#include "capnsplice/error.h"
#include "capnsplice/unique_fd.h"

namespace capnsplice::detail {
namespace {

/// What a child that could not exec writes to its parent: the step and its errno.
struct ChildFailure {
  int step;
  int error;
};

constexpr const char* kSteps[] = {"dup2", "prctl(PR_SET_PDEATHSIG)", "execve"};
enum Step { kMoveDescriptors, kParentDeathSignal, kExec };

/// Blocks every signal in this thread while alive: no handler of the parent's may run in
/// the forked child before it execs, and the child unblocks only right before exec.
class AllSignalsBlocked {
 public:
  AllSignalsBlocked() noexcept {
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &previous_);
  }
  ~AllSignalsBlocked() { pthread_sigmask(SIG_SETMASK, &previous_, nullptr); }
  AllSignalsBlocked(const AllSignalsBlocked&) = delete;
  AllSignalsBlocked& operator=(const AllSignalsBlocked&) = delete;

 private:
  sigset_t previous_;
};

/// In the child: handlers (the parent's code) and the ignored SIGPIPE and SIGCHLD back
/// to their default, as spawn()'s posix_spawn attributes do, and the parent-death signal
/// (an ignored one would never end the child: nohup's SIGHUP); other ignored signals stay
/// ignored, as exec keeps them.
void reset_signal_dispositions(int parent_death_signal) noexcept {
  struct sigaction to_default {};
  to_default.sa_handler = SIG_DFL;
  for (int signal = 1; signal < NSIG; ++signal) {
    struct sigaction current {};
    if (::sigaction(signal, nullptr, &current) != 0) continue;  // not a signal, or a fixed one
    const bool handled = current.sa_handler != SIG_DFL && current.sa_handler != SIG_IGN;
    const bool to_reset = signal == SIGPIPE || signal == SIGCHLD || signal == parent_death_signal;
    if (handled || (to_reset && current.sa_handler == SIG_IGN)) {
      ::sigaction(signal, &to_default, nullptr);
    }
  }
}

[[noreturn]] void fail_in_child(int report_fd, Step step, int error) noexcept {
  const ChildFailure failure{step, error};
  static_cast<void>(::write(report_fd, &failure, sizeof failure));
  ::_exit(127);
}

/// The forked child's whole life before exec: system calls only.
[[noreturn]] void become_program(const char* path, char* const* argv, char* const* environment,
                                 const ChildDescriptors& descriptors, int parent_death_signal,
                                 pid_t parent, int report_fd) noexcept {
  reset_signal_dispositions(parent_death_signal);
  if (parent_death_signal != 0) {
    if (::prctl(PR_SET_PDEATHSIG, parent_death_signal) != 0) {
      fail_in_child(report_fd, kParentDeathSignal, errno);
    }
    // The parent may have died before the prctl: then nobody sends the signal. Raise it
    // here (blocked, it waits for the mask to open right before exec).
    if (::getppid() != parent) ::raise(parent_death_signal);
  }
  if (const int error = descriptors.apply(report_fd); error != 0) {
    fail_in_child(report_fd, kMoveDescriptors, error);
  }
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  ::execve(path, argv, environment);
  fail_in_child(report_fd, kExec, errno);
}

/// Reads the child's report until exec closes it (empty: the program runs).
bool read_failure(int fd, ChildFailure& failure) {
  for (;;) {
    const ssize_t got = ::read(fd, &failure, sizeof failure);
    if (got < 0 && errno == EINTR) continue;
    return got == static_cast<ssize_t>(sizeof failure);
  }
}

}  // namespace

std::string find_program(const std::string& program, const std::string& context) {
  if (program.find('/') != std::string::npos) return program;
  const char* path_variable = std::getenv("PATH");
  std::string_view directories = path_variable != nullptr ? path_variable : "/bin:/usr/bin";
  for (;;) {
    const std::size_t colon = directories.find(':');
    std::string directory(directories.substr(0, colon));
    if (directory.empty()) directory = ".";  // an empty entry is the working directory
    std::string candidate = std::move(directory);
    candidate.append("/").append(program);
    struct stat file {};
    if (!program.empty() && ::stat(candidate.c_str(), &file) == 0 && S_ISREG(file.st_mode) &&
        ::access(candidate.c_str(), X_OK) == 0) {
      return candidate;
    }
    if (colon == std::string_view::npos) break;
    directories.remove_prefix(colon + 1);
  }
  throw_system_error(context, "search PATH", ENOENT);
}

void check_parent_death_signal(int parent_death_signal, const std::string& context) {
  if (parent_death_signal < 0 || parent_death_signal >= NSIG) {
    throw Error(ErrorCode::InvalidArgument, context,
                "SpawnOptions::parent_death_signal " + std::to_string(parent_death_signal) +
                    " is not a signal: give one such as SIGKILL or SIGTERM, or 0 for none");
  }
}

pid_t fork_exec(const std::string& path, char* const* argv, char* const* environment,
                const ChildDescriptors& descriptors, int parent_death_signal,
                const std::string& context) {
  check_parent_death_signal(parent_death_signal, context);
  int ends[2];
  if (::pipe2(ends, O_CLOEXEC) != 0) throw_system_error(context, "pipe2");
  UniqueFd report_read(ends[0]);
  UniqueFd report_raw(ends[1]);
  // Above every number the child's descriptors take, so their moves leave it open.
  UniqueFd report_write(::fcntl(report_raw.get(), F_DUPFD_CLOEXEC, descriptors.close_from()));
  if (!report_write) throw_system_error(context, "fcntl(F_DUPFD_CLOEXEC)");
  report_raw.reset();

  const pid_t parent = ::getpid();
  pid_t pid = -1;
  {
    const AllSignalsBlocked blocked;
    // _Fork: no pthread_atfork handler runs (the library's own would make every lazy
    // control pair of the process, the application's may take locks); the child only
    // makes system calls before it execs.
    pid = ::_Fork();
    if (pid == 0) {
      become_program(path.c_str(), argv, environment, descriptors, parent_death_signal, parent,
                     report_write.get());
    }
  }
  if (pid < 0) throw_system_error(context, "_Fork");
  report_write.reset();
  ChildFailure failure{};
  if (!read_failure(report_read.get(), failure)) return pid;
  while (::waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
  }
  const bool known_step = failure.step >= 0 && failure.step <= kExec;
  throw_system_error(context, known_step ? kSteps[failure.step] : "exec", failure.error);
}

}  // namespace capnsplice::detail
