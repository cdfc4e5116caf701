//! The slow and stopped reader of `tests/slow_reader.rs` on protocol
//! version 3: the writer's stream shares its connection's queue, consumed
//! with no acknowledgement, so the broker passes every frame on at once
//! and what bounds the reader's connection queue and this process's
//! memory is the credit window alone. A test target of its own so that
//! the process's memory is this test's alone.

mod common;
#[path = "slow_reader/paced.rs"]
mod paced;

use amqp_stream::ProtocolVersion;

#[test]
fn a_slow_then_stopped_version_3_reader_for_a_minute_keeps_queue_and_memory_flat() {
    paced::a_slow_then_stopped_reader_for_a_minute_keeps_queue_and_memory_flat(ProtocolVersion::V3);
}
