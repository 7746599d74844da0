//! ferryd and ferryctl: the helper that ships a primary's records to the
//! secondary and applies them there, and its control tool.
//!
//! The library holds what both programs share: the configuration file, the
//! link protocol (frames, authentication) and the status document.

pub mod config;
pub mod link;
pub mod status;
