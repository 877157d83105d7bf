//! corral: the command-line front end and the host agent entry point (`corral serve`).
//! Placeholder while the workspace is being laid out.

mod cmd;

fn main() {}
