//! The client side: front doors that take TCP clients (`forward`,
//! `http`, `socks`) or standard input and output (`connect`) and carry
//! each to a served queue.

pub mod connect;
pub mod door;
pub mod forward;
pub mod http;
pub mod socks;
pub mod socks5;
