// capnsplice-pipe — writes or reads a stream of Chunk messages on stdout / stdin.
//
//   capnsplice-pipe produce --count N --size BYTES [--path auto|copy|vmsplice]
//       Writes N Chunk messages (seq 0..N-1, BYTES of payload each) to stdout, in
//       standard Cap'n Proto stream framing: vmsplice when stdout is a pipe (for messages
//       at or above the copy threshold, or all of them with --path vmsplice), plain
//       writes otherwise.
//
//   capnsplice-pipe consume [--max-message-bytes BYTES]
//       Reads Chunk messages from stdin until end of stream, checks that seq counts up
//       from 0, prints "N messages, B payload bytes" and exits 0. On bad input prints
//       the error to stderr and exits 1.
//
//   capnsplice-pipe relay [--max-message-bytes BYTES] [--path auto|copy|vmsplice]
//       Passes messages of any type from stdin to stdout, each exactly as it came (its
//       segments, unchanged), until end of stream; exits 0 then, 1 on bad input.
//
// Both ends interoperate with `capnp encode` / `capnp decode schemas/demo.capnp Chunk`.
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <optional>
#include <string>
#include <string_view>

#include <kj/exception.h>

#include "capnsplice/receiver.h"
#include "capnsplice/sender.h"
#include "demo.capnp.h"

namespace {

using capnsplice::demo::Chunk;

constexpr int kUsageExit = 2;

[[noreturn]] void usage(const char* why) {
  std::cerr << "capnsplice-pipe: " << why << "\n"
            << "usage: capnsplice-pipe produce --count N --size BYTES "
               "[--path auto|copy|vmsplice]\n"
            << "       capnsplice-pipe consume [--max-message-bytes BYTES]\n"
            << "       capnsplice-pipe relay [--max-message-bytes BYTES] "
               "[--path auto|copy|vmsplice]\n";
  std::exit(kUsageExit);
}

std::uint64_t parse_number(const char* flag, const char* text) {
  if (text == nullptr) usage((std::string(flag) + " needs a value").c_str());
  char* end = nullptr;
  errno = 0;
  unsigned long long value = std::strtoull(text, &end, 10);
  if (errno != 0 || end == text || *end != '\0') {
    usage((std::string(flag) + " takes a whole number, not '" + text + "'").c_str());
  }
  return value;
}

/// A close-on-exec duplicate of a standard descriptor, for the Sender/Receiver to own.
capnsplice::UniqueFd duplicate(int fd) {
  capnsplice::UniqueFd copy(::fcntl(fd, F_DUPFD_CLOEXEC, 3));
  if (!copy) {
    std::perror("capnsplice-pipe: dup");
    std::exit(1);
  }
  return copy;
}

int produce(std::uint64_t count, std::uint64_t size, capnsplice::SendPath path) {
  capnsplice::SenderOptions options;
  options.path = path;
  capnsplice::Sender sender(duplicate(STDOUT_FILENO), options, "capnsplice-pipe produce");
  for (std::uint64_t seq = 0; seq < count; ++seq) {
    auto message = sender.new_message();
    auto chunk = message.init_root<Chunk>();
    chunk.setSeq(seq);
    auto payload = chunk.initPayload(static_cast<unsigned>(size));
    std::memset(payload.begin(), static_cast<int>(seq & 0xff), payload.size());
    sender.send(std::move(message));
  }
  return 0;
}

/// A receiver of stdin, whose errors name `command`.
capnsplice::Receiver stdin_receiver(std::size_t max_message_bytes, const char* command) {
  capnsplice::ReceiverOptions options;
  options.limits.max_message_bytes = max_message_bytes;
  return capnsplice::Receiver(duplicate(STDIN_FILENO), options, command);
}

/// The next message; none once the stream ended between messages (the input is done).
std::optional<capnsplice::ReceivedMessage> next_message(capnsplice::Receiver& receiver) {
  try {
    return receiver.receive();
  } catch (const capnsplice::Error& error) {
    if (error.code() != capnsplice::ErrorCode::PeerClosed) throw;
    return std::nullopt;
  }
}

int consume(std::size_t max_message_bytes) {
  capnsplice::Receiver receiver = stdin_receiver(max_message_bytes, "capnsplice-pipe consume");
  std::uint64_t messages = 0;
  std::uint64_t payload_bytes = 0;
  while (auto message = next_message(receiver)) {
    auto chunk = message->root<Chunk>();
    if (chunk.getSeq() != messages) {
      std::cerr << "capnsplice-pipe consume: message " << messages << " has seq "
                << chunk.getSeq() << ", expected " << messages << "\n";
      return 1;
    }
    payload_bytes += chunk.getPayload().size();
    ++messages;
  }
  std::cout << messages << " messages, " << payload_bytes << " payload bytes\n";
  return 0;
}

int relay(std::size_t max_message_bytes, capnsplice::SendPath path) {
  capnsplice::Receiver receiver = stdin_receiver(max_message_bytes, "capnsplice-pipe relay");
  capnsplice::SenderOptions options;
  options.path = path;
  capnsplice::Sender sender(duplicate(STDOUT_FILENO), options, "capnsplice-pipe relay");
  while (auto message = next_message(receiver)) {
    sender.send_copy(message->segments(), capnsplice::Deadline::never());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) usage("missing command");
  const std::string_view command = argv[1];
  std::optional<std::uint64_t> count;
  std::optional<std::uint64_t> size;
  std::size_t max_message_bytes = 64 * capnsplice::MiB;
  capnsplice::SendPath path = capnsplice::SendPath::automatic;
  for (int i = 2; i < argc; ++i) {
    const std::string_view flag = argv[i];
    const char* value = i + 1 < argc ? argv[i + 1] : nullptr;
    if (flag == "--count" || flag == "--size") {
      std::optional<std::uint64_t>& target = flag == "--count" ? count : size;
      target = parse_number(argv[i], value);
    } else if (flag == "--max-message-bytes") {
      max_message_bytes = parse_number("--max-message-bytes", value);
    } else if (flag == "--path") {
      const std::string_view name = value != nullptr ? value : "";
      if (name == "auto") {
        path = capnsplice::SendPath::automatic;
      } else if (name == "copy") {
        path = capnsplice::SendPath::copy;
      } else if (name == "vmsplice") {
        path = capnsplice::SendPath::vmsplice;
      } else {
        usage("--path takes auto, copy or vmsplice");
      }
    } else {
      usage(("unknown argument '" + std::string(flag) + "'").c_str());
    }
    ++i;
  }
  try {
    if (command == "produce") {
      if (!count || !size) usage("produce needs --count and --size");
      if (*size > 0xFFFFFFF8ull) usage("--size must be below 4 GiB (a Cap'n Proto Data limit)");
      return produce(*count, *size, path);
    }
    if (command == "consume") return consume(max_message_bytes);
    if (command == "relay") return relay(max_message_bytes, path);
    usage(("unknown command '" + std::string(command) + "'").c_str());
  } catch (const capnsplice::Error& error) {
    std::cerr << error.what() << "\n";
  } catch (const kj::Exception& error) {
    std::cerr << "capnsplice-pipe " << command << ": invalid message content: "
              << error.getDescription().cStr() << "\n";
  }
  return 1;
}
