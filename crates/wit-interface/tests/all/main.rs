//! Integration tests of the WIT contract: the WIT resolves, and every guest is a
//! component whose imports and exports match the world it claims.

mod guests;
mod wit;
