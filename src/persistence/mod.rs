//! What a volume keeps: the layout profiles (names and paths), persistence.conf in each
//! reader's dialect, and the catalogue of features.

pub mod config;
pub mod features;
pub mod files;
pub mod layout;
