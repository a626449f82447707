// Package volume is the cinder-volume role (VMware VMDK driver): it keeps
// its row in cinder's services table alive, serves the volume RPC API 3.18
// on cinder's exchange, and reports the backend's capabilities (the
// vCenter datastores' capacity) to cinder-scheduler. Like the VMDK
// driver, a volume is created lazily: it has no backing in vCenter until
// it is first attached.
package volume
