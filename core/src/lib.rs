//! fq core
#![warn(missing_docs)]
pub mod case;
pub mod clock;
pub mod county;
pub mod doc;
pub mod faults;
pub mod lang;
pub mod ledger;
pub mod policy;
pub mod report;
pub mod roster;
pub mod sample;
pub mod store;
pub mod sync;
pub mod text;
pub mod todo;
pub mod trust;
