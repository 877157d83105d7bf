//! corral-placement: the capacity model and the planner behind `corral plan`,
//! `corral host info` and `corral vm recommend-host`.
//!
//! Data flows one way: text (CSV, TOML, profile JSON) is parsed by [`input`] into [`Host`]s and
//! [`Workload`]s; [`plan`] validates them, compiles them into a dense internal form, runs the
//! density or performance search and returns a [`Plan`] with assignments, per-host utilisation
//! of the six resources, unplaced workloads with reasons, lower bounds and one explanation per
//! decision; [`report`] renders a plan as a terminal table, JSON or a self-contained HTML page.
//! [`rate_hosts`] answers the single-placement question (rate each host 0–5 for one workload).
//!
//! The crate does no I/O and no wall-clock timing: the same input always gives the same plan.

mod bound;
mod density;
mod engine;
mod exact;
pub mod input;
mod model;
mod performance;
mod plan;
mod rate;
mod repack;
mod repair;
pub mod report;
mod resource;
mod tile;

pub use model::{validate, Demand, Host, Mode, ModelError, PlanOptions, Workload, TIME_BUCKETS};
pub use plan::{
    plan, plan_first_fit_decreasing, Assignment, Bounds, Change, Decision, HostReport, Plan,
    Rejection, ResourceUse, Unplaced,
};
pub use rate::{rate_hosts, HostLoad, HostRating, Reason};
pub use resource::{percent, Amounts, Resource, RESOURCES};

/// The chapter's rule of thumb for CPU consolidation: processors × clock × utilisation gives
/// the consumed GHz (4 × 1 GHz × 40 % = 1.6 GHz).
pub fn consumed_ghz(processors: u32, ghz: f64, utilisation: f64) -> f64 {
    f64::from(processors) * ghz * utilisation
}
