//! Everything that crosses a process boundary in homelab: names, events,
//! actions, commands, world state, MQTT topics, the desired-state schema and
//! the layout of the runtime root. No async code; I/O only through plain file
//! helpers ([`fsutil`], [`store`], [`desired::load`]).

pub mod acl;
pub mod action;
pub mod agentstatus;
pub mod audit;
pub mod command;
pub mod desired;
pub mod event;
pub mod eventlog;
pub mod fleet;
pub mod format;
pub mod fsutil;
pub mod identity;
pub mod layout;
pub mod logs;
pub mod maintenance;
pub mod name;
pub mod nodeconfig;
pub mod operator;
pub mod repo;
pub mod sealbox;
pub mod store;
pub mod time;
pub mod topics;
pub mod uptime;
pub mod world;

pub use action::{Action, ActionKind, ActionState, Risk};
pub use command::{Command, Operation};
pub use event::{Event, EventError, Severity};
pub use layout::Layout;
pub use name::{Name, NameError};
pub use store::ActionStore;
pub use topics::Topics;
