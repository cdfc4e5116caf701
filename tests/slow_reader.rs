//! A reader slower than its writer for a minute, with a long stop in the
//! middle: the writer is held to the reader's pace (protocol version 2's
//! window), the broker's queue never holds more than a window, memory on
//! both ends stays flat, and every byte arrives. A test target of its own
//! so that the process's memory is this test's alone.

mod common;
#[path = "slow_reader/paced.rs"]
mod paced;

use amqp_stream::ProtocolVersion;

#[test]
fn a_slow_then_stopped_reader_for_a_minute_keeps_queue_and_memory_flat() {
    paced::a_slow_then_stopped_reader_for_a_minute_keeps_queue_and_memory_flat(ProtocolVersion::V2);
}
