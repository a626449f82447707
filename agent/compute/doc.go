// Package compute is the nova-compute role: it serves nova's compute RPC API
// for the vCenter clusters of the agent, one compute node per cluster.
//
// For now it answers nova's baseapi namespace (ping) on compute.<host>;
// every compute method not implemented yet gets oslo's NoSuchMethod, which is
// what nova-compute answers for a method it lacks.
package compute
