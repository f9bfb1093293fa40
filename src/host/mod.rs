//! The host machine as keepsake finds it: block devices and their partition tables, mounts,
//! processes, the kernel's device-mapper support, the helper programs it runs, and the
//! safety checks made before any secret is read.

pub mod devices;
pub mod disks;
pub mod kernel;
pub mod mounts;
pub mod preflight;
pub mod processes;
pub mod tools;
