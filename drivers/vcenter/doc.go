// Package vcenter owns vcagent's connection to one VMware vCenter Server:
// the SOAP session (login, keep-alive, transparent re-login on
// NotAuthenticated, logout), read-only inventory of clusters, hosts and
// datastores through the PropertyCollector, the resource figures derived from
// that inventory, and an embedded vCenter simulator for running without a real
// vCenter.
//
// The package knows vCenter and nothing else. It must not import
// github.com/rabbitmq/amqp091-go, any package under
// github.com/vcagent/vcagent/rpc or github.com/vcagent/vcagent/agent, and it
// uses no OpenStack vocabulary in its API: callers (the agent) translate
// [Cluster] and [Resources] into whatever their peers expect. It returns its
// own plain structs, never govmomi's mo.* types, and reports failures as
// wrapped errors that match the sentinels in errors.go through errors.Is while
// keeping the vSphere fault as the cause (usable with
// github.com/vmware/govmomi/fault.Is/As).
//
// # Sessions
//
// There is one [Session] per vCenter. Its vim25 client is safe for concurrent
// use. Two mechanisms keep it authenticated:
//
//   - a keep-alive goroutine, started by [Session.Login] and stopped by
//     [Session.Logout], that touches the session every Config.KeepAlive and
//     re-logs in when the session is gone;
//   - a soap.RoundTripper that, when a call fails with NotAuthenticated,
//     re-logs in once for all concurrent callers (single flight) and retries
//     the call once.
//
// Session-scoped server objects (views, property collectors, filters) do not
// survive a re-login; code in this package creates them per call.
//
// # Round trips
//
// Every SOAP call made through a Session is counted by method name
// ([Session.Calls]). [Session.Clusters] costs a constant number of calls
// whatever the inventory size; see its documentation.
package vcenter
