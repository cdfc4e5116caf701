//! The serving side: `serve` takes the streams that arrive on a queue
//! and connects each to a TCP service, the fixed `--to` or the one it
//! asks for within `--allow`.

pub mod admission;
pub mod allow;
pub mod chosen_target;
pub mod serve;
pub mod target;
