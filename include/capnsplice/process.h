// capnsplice/process.h — start a child process with a channel to it.
//
// Parent:
//
//   capnsplice::Child child = capnsplice::spawn({
//       .program = "/usr/lib/app/worker",
//       .arguments = {"--verbose"},
//       .channel = capnsplice::ChannelOptions().with_name("worker"),
//   });
//   child.channel.send_struct<Job>([](Job::Builder job) { job.setId(1); });
//   auto result = child.channel.receive_as<Result>();
//   child.channel.close_sending();
//   child.process.wait();
//
// Child (the worker's main):
//
//   capnsplice::Channel parent = capnsplice::child_channel(
//       capnsplice::ChannelOptions().with_name("parent"));
//
// The child inherits exactly its channel's descriptors (pipe ends 3 and 4, control socket
// 5, named in the CAPNSPLICE_CHANNEL environment variable) besides stdin, stdout, stderr
// and the descriptors SpawnOptions::descriptors names: every descriptor capnsplice opens
// is close-on-exec, and spawn() closes any other inherited descriptor in the child. When the parent dies, the child's receive and send
// report PeerClosed, and the other way round.
#pragma once

#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "capnsplice/channel.h"
#include "capnsplice/child_process.h"
#include "capnsplice/options.h"

namespace capnsplice {

/// The environment variable that tells a spawned child its descriptors:
/// "<receive fd>,<send fd>,<control fd>", e.g. "3,4,5". The control socket carries what
/// the shared-memory path needs; a child without capnsplice can ignore it (and a value
/// with only the two pipe descriptors is accepted).
inline constexpr std::string_view kChannelVariable = "CAPNSPLICE_CHANNEL";

/// The descriptor numbers a spawned child finds its channel at.
inline constexpr int kChildReceiveFd = 3;
inline constexpr int kChildSendFd = 4;
inline constexpr int kChildControlFd = 5;

/// The highest number SpawnOptions::descriptors may give a descriptor in the child.
inline constexpr int kMaxChildFd = 1023;

/// A descriptor of the parent's that a spawned child gets at a number of its choosing.
/// spawn() duplicates it: the parent's descriptor stays open and the caller's to close.
struct InheritedFd {
  /// Open in the parent (close-on-exec or not: either way the child gets it).
  int parent_fd = -1;
  /// Its number in the child: 0, 1 or 2 (replacing standard input, output or error), or
  /// 6 to kMaxChildFd. 3, 4 and 5 are the channel's.
  int child_fd = -1;
};

/// A started child: the parent's end of the channel and the process handle.
/// The channel is declared last so it is closed first: when a Child is destroyed without
/// wait(), the child sees end of stream and has kChildExitGracePeriod (100 ms) to exit
/// on its own before its handle kills (SIGKILL) and reaps it.
struct Child {
  ChildProcess process;
  Channel channel;
};

/// What to start and how.
struct SpawnOptions {
  /// Path of the executable; a name without '/' is searched in PATH.
  std::string program;
  /// Arguments after argv[0] (argv[0] is `program`).
  std::vector<std::string> arguments;
  /// "NAME=value" entries added to (or replacing those of) the parent's environment.
  std::vector<std::string> environment;
  /// The parent's end of the channel; its name also names the child in errors.
  ChannelOptions channel;
  /// Descriptors the child gets besides its channel's, each at its own number, whatever
  /// numbers they have in the parent (one may be another's target: parent 7 as child 8
  /// and parent 8 as child 7 works). Every other descriptor is closed in the child.
  std::vector<InheritedFd> descriptors;
  /// A signal (SIGKILL, SIGTERM, ...) the child gets when the parent dies, so a hung
  /// child does not outlive a killed host; 0 (the default): none. Set in the child
  /// before exec (PR_SET_PDEATHSIG), and sent at once if the parent is already gone by
  /// then, so no parent death is missed. Linux sends it when the parent *thread* that
  /// called spawn() ends: spawn from a thread that lives as long as the child should.
  /// The kernel clears it when the child execs a set-user-ID or set-group-ID program.
  /// With a signal set, spawn() starts the child with _Fork() and execve() instead of
  /// posix_spawn (a parent with much memory pays for copying its page tables; no
  /// pthread_atfork handler runs). An ignored signal is set back to its default in the
  /// child, so that it ends the child.
  int parent_death_signal = 0;
};

/// Starts `options.program` with posix_spawn (safe in a multi-threaded parent; with a
/// parent_death_signal, _Fork and execve, as safe) and a channel to it. The child gets its pipe ends as blocking descriptors 3 and 4, the
/// control socket as descriptor 5, `options.descriptors` at their numbers and every
/// other descriptor closed; it starts with an
/// empty signal mask and with SIGPIPE and SIGCHLD at their default disposition even
/// when the parent ignores them (other signals the parent ignores stay ignored, as
/// exec does: nohup's SIGHUP, for one). Throws SystemError naming the program when it
/// cannot be started (ENOENT, EACCES, ...), InvalidArgument for descriptors or a signal
/// that cannot be given (see SpawnOptions); no child is left then.
Child spawn(const SpawnOptions& options);

/// Forks and runs `body` in the child with the child's end of a new channel; the child
/// exits with body's return value (70 after an uncaught exception, printed to stderr).
/// The child closes the parent's end of this channel. Everything else the parent had
/// open is inherited as fork() always does — including other channels' ends, which then
/// stay open while this child lives (their peers see no end of stream): prefer spawn()
/// for long-lived children. In a multi-threaded parent, `body` runs in a copy of the
/// process where only the forking thread exists (no locks held by other threads may be
/// taken). stdio buffers are flushed before the fork so output is not duplicated.
Child fork_with_channel(const std::function<int(Channel&)>& body,
                        const ChannelOptions& options = {});

/// Opens the channel a parent made with spawn(), from CAPNSPLICE_CHANNEL. Call it once,
/// early in main() (it unsets the variable, which is not thread-safe). The descriptors
/// are made close-on-exec so the child's own children do not inherit them. Throws
/// SystemError (EINVAL/EBADF) naming the variable and the descriptor when the variable
/// is missing or malformed, or names standard input/output/error, one descriptor twice,
/// or anything but two pipe ends open in the right directions (and a socket); then no
/// descriptor is closed or changed.
Channel child_channel(const ChannelOptions& options = ChannelOptions().with_name("parent"));

}  // namespace capnsplice
