//! For learners: `layernorm explain` walks through the seed's four steps on real numbers and
//! sets BatchNorm beside LayerNorm; `layernorm compare` measures the seed's comparison table;
//! both draw diagrams (SVG and PNG). Every number shown comes from the library.

pub mod compare;
pub mod diagrams;
pub mod explain;
