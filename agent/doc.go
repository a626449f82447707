// Package agent is vcagent itself: the configuration, parsed once from the
// environment, and the Agent that runs the enabled roles (nova-compute,
// cinder-volume, the DVS network agent) for one vCenter on one bus.
//
// It maps OpenStack semantics onto the two layers below it and owns their
// lifecycle: rpc (oslo.messaging on AMQP) and drivers (vCenter through
// govmomi). Each role is a sub-package; roles do not import each other.
package agent
