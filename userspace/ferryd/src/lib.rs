//! ferryd and ferryctl: the helper that ships a primary's records to the
//! secondary and applies them there, and its control tool.
//!
//! The library holds what both programs share: the configuration file, the
//! link protocol (frames, authentication), the control socket, the status
//! document and its endpoint, and the secondary's record of consistency
//! points.

pub mod config;
pub mod cpoints;
pub mod ctl;
pub mod link;
pub mod status;
