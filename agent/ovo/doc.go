// Package ovo is the oslo.versionedobjects primitive codec shared by the
// nova-compute and cinder-volume roles of vcagent.
//
// It owns:
//
//   - the generic object model ([Object]: name, namespace, version, field
//     values in primitive form, changed fields) and its change tracking,
//     mirroring oslo's obj_what_changed / obj_reset_changes;
//   - the primitive wire format ([Codec]): the "<p>.name", "<p>.namespace",
//     "<p>.version", "<p>.data" and, only when non-empty, "<p>.changes" keys
//     with p = "nova_object" for nova and "versioned_object" for cinder,
//     nested objects, lists of objects and ObjectList "objects" fields, plus
//     serialize_entity / deserialize_entity over arbitrary arguments;
//   - the wire formats of oslo's field types (DateTime, UUID, IP addresses,
//     Float as Python writes it, sets as lists, nova's NetworkModel as a JSON
//     string) as helpers on [Object] and free functions;
//   - the arguments and replies of nova-conductor's object indirection calls
//     object_class_action_versions, object_action and
//     object_backport_versions ([Codec.ClassActionArgs],
//     [Codec.ObjectActionArgs], [Codec.BackportArgs],
//     [Codec.ApplyObjectActionReply]);
//   - the Zed object registries of nova 26.2.2 and cinder 21.3.1 ([NovaZed],
//     [CinderZed]) with oslo's version compatibility rule and
//     obj_tree_get_versions ([Registry.TreeVersions]).
//
// It does not own, and knows nothing of: AMQP or the oslo.messaging
// transport and envelope (package rpc), the conductor client that sends the
// calls, vCenter, or the behaviour of any particular object's methods.
// Backporting an object to an older version is the conductor's job: this
// package only detects that one is needed ([Registry.Check]) and builds the
// request.
//
// The package has no package-level mutable state; registries are built
// fresh by each constructor call.
package ovo
