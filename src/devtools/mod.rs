//! Tools for developing and testing vend (`vend dev ...`); not used by `vend serve`.

pub mod aws_proxy;
