//! The node agent's pods part against a real containerd with CRI and runc
//! (see `common/cri.rs`), the API server and controllers in this process,
//! and the real kubectl: Deployments run and serve, the pod spec is
//! honoured, failures are reported as Kubernetes reports them, and pods
//! deleted (even while the agent was down) leave nothing in CRI.
//!
//! Needs root, containerd, runc, the CNI plugins and busybox-static.

//! The tests are grouped by concern, [`lifecycle`] and [`spec`], on the
//! shared fixture in [`env`].

mod common;
#[path = "agent_pods/env.rs"]
mod env;
#[path = "agent_pods/lifecycle.rs"]
mod lifecycle;
#[path = "agent_pods/spec.rs"]
mod spec;
