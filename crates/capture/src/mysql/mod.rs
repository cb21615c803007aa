//! MySQL/MariaDB log capture: the row-based binary log read as a replica, after a consistent
//! initial copy (see [`source`]).

pub(crate) mod ddl;
pub(crate) mod schema;
pub mod source;
pub(crate) mod value;
