//! ferryd and ferryctl: the helper that ships a primary's records to the
//! secondary and applies them there, and its control tool.
//!
//! The library holds what both programs share: the configuration file, the
//! link protocol (frames, authentication), the control socket, the status
//! document and its endpoint, the secondary's record of consistency
//! points, and the room a resync needs on the secondary; what serves the
//! command lines: their definitions, `ferryd --check`, a group's health,
//! `ferryctl status`'s words and `ferryctl events`; and what `ferryd` does
//! for systemd (watchdog, `STATUS=`, credentials).

pub mod check;
pub mod cli;
pub mod config;
pub mod cpoints;
pub mod ctl;
pub mod events;
pub mod health;
pub mod link;
pub mod render;
pub mod room;
pub mod status;
pub mod systemd;
