// Package volume is the cinder-volume role (VMware VMDK driver): it keeps
// its row in cinder's services table alive, serves the volume RPC API 3.18
// on cinder's exchange, and reports the backend's capabilities (the
// vCenter datastores' capacity) to cinder-scheduler.
//
// Volumes live on vCenter as the VMDK driver keeps them: a "backing" VM per
// volume (volume-<id>, instance UUID and extraConfig cinder.volume.id the
// volume id, in OpenStack/Project (<id>)/Volumes, managed by
// org.openstack.storage). Like the driver, a blank volume is created
// lazily by default: its backing appears at its first connection
// (initialize_connection, attachment_update), next to the connector's
// instance. Extend, snapshots (templates in Volumes/Snapshots), volumes
// from snapshots, clones (full or linked), volumes from vmdk images, uploads
// to glance (streamOptimized), transfers, retype (disk type: relocate or
// clone), manage_existing (a VM's disk adopted as a backing's disk),
// unmanage (the backing kept, no longer naming the volume) and
// revert_to_snapshot (refused for the driver's template snapshots, as the
// driver does) work on the backings. Storage profiles (SPBM) work as the
// driver's: a type's vmware:storage_profile places the backing on a
// compliant datastore and associates it with the profile (its id in the
// connection info), a retype relocates a backing whose datastore does not
// comply with the new profile, and vmware_storage_profile limits the
// reported capacity to the compliant datastores; SPBM is only reached
// when a profile is used. A create that fails is handed back to
// cinder-scheduler when it sent retry information (the create flow's
// reschedule); otherwise the volume is in error; the database writes, quota, workers
// rows, user messages and notifications are cinder-volume's own. At start
// the role runs cinder-volume's init_host clean-up of its own workers rows
// (volumes and snapshots left creating: error; a delete left under way:
// resumed), and do_cleanup for the API's POST /workers/cleanup.
package volume
