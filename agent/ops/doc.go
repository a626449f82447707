// Package ops is the agent's operator surface: the Prometheus metrics,
// liveness and readiness endpoints on one HTTP listener. Each component
// reports to it through plain hooks (rpc's observers, the vCenter call
// hook, readiness by name), so that rpc and drivers stay free of
// Prometheus and the roles plug their own readiness in without knowing of
// each other.
package ops
