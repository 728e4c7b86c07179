//! One module per subcommand, plus `offline`, what `get`, `dump` and
//! `restore` share. Each turns its parsed arguments into work on the layers
//! below and ends in the commands' error type; none parses a file format or
//! answers a request itself.

pub mod completions;
pub mod dump;
pub mod get;
pub mod offline;
pub mod restore;
pub mod serve;
