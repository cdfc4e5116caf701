//! End-to-end keys: the key options of each subcommand and `keygen`.

pub mod keygen;
pub mod live;
pub mod options;
