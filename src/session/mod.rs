//! The unlocked session: which features are active, activating and deactivating them (the
//! binder and its journal), the runtime record, and tor's state handling.

pub mod binder;
pub mod tor;
pub mod unlocked;
