// bench/transports/registry.cc — the table of transports, in the order tables show them.
//
// To add a transport: write transports/<name>.cc defining a
// function that returns its Transport, declare it below and add it to the table.
#include "transport.h"

namespace bench {

Transport capnsplice_automatic_transport();
Transport capnsplice_send_transport();
Transport capnsplice_copy_transport();
Transport capnsplice_vmsplice_transport();
Transport capnsplice_shm_transport();
Transport capnsplice_doorbell_transport();
Transport capnp_socketpair_transport();
Transport capnp_pipe_transport();
Transport boost_mq_transport();
Transport zmq_ipc_transport();
Transport raw_pipe_transport();
Transport shared_memory_spin_transport();
Transport memcpy_transport();

const std::vector<Transport>& all_transports() {
  static const std::vector<Transport> table = {
      capnsplice_automatic_transport(),
      capnsplice_send_transport(),
      capnsplice_copy_transport(),
      capnsplice_vmsplice_transport(),
      capnsplice_shm_transport(),
      capnsplice_doorbell_transport(),
      capnp_socketpair_transport(),
      capnp_pipe_transport(),
      boost_mq_transport(),
      zmq_ipc_transport(),
      raw_pipe_transport(),
      shared_memory_spin_transport(),
      memcpy_transport(),
  };
  return table;
}

}  // namespace bench
