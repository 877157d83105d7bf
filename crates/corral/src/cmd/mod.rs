//! One module per command group; each is a thin layer over a library crate or the client.
