// Starting a child with fork() and execve() where posix_spawn cannot do what is asked
// (internal): a parent-death signal must be set in the child before it execs.
#pragma once

#include <sys/types.h>

#include <string>

#include "child_descriptors.h"

namespace capnsplice::detail {

/// The executable `program` names: itself when it holds a '/', else the first
/// executable file of that name in the directories of PATH (or /bin:/usr/bin without
/// it): a regular file this process may execute, as posix_spawnp searches. Throws
/// SystemError ENOENT naming `context` when there is none.
std::string find_program(const std::string& program, const std::string& context);

/// Throws InvalidArgument naming `context` unless `parent_death_signal` is 0 or a signal.
void check_parent_death_signal(int parent_death_signal, const std::string& context);

/// Forks a child that, before it execs `path` with `argv` and `environment`, does what
/// posix_spawn does for spawn() — signal handlers and SIGPIPE and SIGCHLD to their
/// default, an empty signal mask, `descriptors` put in place — and asks the kernel for
/// `parent_death_signal` when this thread ends (sent at once if the parent has gone
/// already). The child makes system calls only: safe in a multi-threaded parent.
/// Returns the child's pid. Throws SystemError naming `context` and the call that failed
/// when the child could not get as far as the new program; that child is reaped.
pid_t fork_exec(const std::string& path, char* const* argv, char* const* environment,
                const ChildDescriptors& descriptors, int parent_death_signal,
                const std::string& context);

}  // namespace capnsplice::detail
