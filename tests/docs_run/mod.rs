//! Support for tests/docs.rs: reading the docs (`extract`), the shell words and the shrinking
//! rule (`shell`), and the scratch folder the lines run in (`sandbox`).

pub mod extract;
pub mod sandbox;
pub mod shell;
