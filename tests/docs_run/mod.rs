//! Support for tests/docs.rs: reading the docs (`extract`), what `ddpm fid` lines read (`fid`), the shell words and the shrinking
//! rule (`shell`), and the scratch folder the lines run in (`sandbox`).

pub mod extract;
pub mod fid;
pub mod sandbox;
pub mod shell;
