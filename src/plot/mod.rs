//! Pictures of numbers, as RGB images: the training curves of a run (`curves`, drawn with
//! plotters' bitmap backend) and the text on them (`text`, an 8x8 bitmap font). No system font
//! or library is needed: plotters is built without its font features, so it draws lines and
//! frames only, and every label goes through `text`. What the numbers mean is the caller's.

pub mod curves;
pub mod text;

pub use curves::{training_curves, Row};
