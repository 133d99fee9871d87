//! An exhaustive model of Tidemark's replication protocol (DESIGN §5, §13; issue 14,
//! point 1), checked with stateright. It is abstract — a few replicas, one- or two-field
//! documents, tiny caps — but every step follows src/sync: `state` holds replicas, stores,
//! passes and ghost bookkeeping; `clock` the hybrid logical clock; `pass` the steps of both
//! roles; `actions` the stateright `Model`; `properties` and `converge` what must hold;
//! `mutations` the rules that can be switched off; `upgrade` the two-tab upgrade; `check`
//! runs a checker and summarizes it.

pub mod actions;
pub mod check;
pub mod clock;
pub mod converge;
pub mod mutations;
pub mod pass;
pub mod properties;
pub mod scope;
pub mod state;
pub mod upgrade;

pub use actions::{Action, ProtocolModel};
pub use mutations::{Mutation, Rules, Target};
pub use scope::Scope;
