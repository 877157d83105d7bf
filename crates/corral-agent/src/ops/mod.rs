//! Operations that span more than one VM action, one file each. They take the narrow
//! context ([`crate::context::Host`]) and a [`crate::vm::runtime::Runtime`], never the facade.

pub mod create;
