package compute

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/vcagent/vcagent/agent/ovo"
	"github.com/vcagent/vcagent/drivers/vcenter"
	"github.com/vcagent/vcagent/rpc"
)

// Notification formats, as nova's [notifications] notification_format names
// them.
const (
	FormatUnversioned = "unversioned"
	FormatVersioned   = "versioned"
	FormatBoth        = "both"
)

// NotificationConfig mirrors nova's [oslo_messaging_notifications] and
// [notifications] options. The zero value sends nothing, as nova does when
// no notification driver is configured.
type NotificationConfig struct {
	// Driver is [oslo_messaging_notifications] driver: "messagingv2" or
	// "messaging" send; "", "noop" and "log" send nothing on the bus.
	Driver string
	// Format is [notifications] notification_format: unversioned (nova's
	// default), versioned or both.
	Format string
	// Topics are [oslo_messaging_notifications] topics, for the legacy
	// (unversioned) notifications; default ["notifications"].
	Topics []string
	// VersionedTopics are [notifications] versioned_notifications_topics;
	// default ["versioned_notifications"].
	VersionedTopics []string
	// GlanceURL is the image service's URL, for the legacy payloads'
	// image_ref_url (nova's glance.API().generate_image_url).
	GlanceURL string
}

// Validate reports a driver or format nova would not accept.
func (c NotificationConfig) Validate() error {
	switch c.Driver {
	case "", "noop", "log", "messaging", "messagingv2":
	default:
		return fmt.Errorf("notification driver %q: want messagingv2, messaging, log or noop", c.Driver)
	}
	switch c.Format {
	case "", FormatUnversioned, FormatVersioned, FormatBoth:
	default:
		return fmt.Errorf("notification format %q: want unversioned, versioned or both", c.Format)
	}
	return nil
}

// notifier sends nova-compute's instance notifications: the legacy
// ("compute.instance.<action>.<phase>", publisher compute.<host>) and the
// versioned ("instance.<action>.<phase>", publisher nova-compute:<host>)
// ones, each only when its format is enabled. A nil *notifier (or one with
// both kinds off) sends nothing. Sending is best effort, as in nova: a
// failed notification is logged and the operation goes on.
type notifier struct {
	legacy    *rpc.Notifier
	versioned *rpc.Notifier
	host      string
	glanceURL string
}

// newNotifier returns the notifier cfg asks for, or nil when it sends
// nothing.
func newNotifier(tr *rpc.Transport, exchange, host string, cfg NotificationConfig) *notifier {
	if cfg.Driver != "messaging" && cfg.Driver != "messagingv2" {
		return nil
	}
	format := cfg.Format
	if format == "" {
		format = FormatUnversioned
	}
	n := &notifier{host: host, glanceURL: strings.TrimRight(cfg.GlanceURL, "/")}
	legacyV1 := cfg.Driver == "messaging"
	if format != FormatVersioned {
		topics := cfg.Topics
		if len(topics) == 0 {
			topics = []string{"notifications"}
		}
		n.legacy = tr.NewNotifier(rpc.NotifierConfig{Exchange: exchange, PublisherID: "compute." + host, Topics: topics, Legacy: legacyV1})
	}
	if format != FormatUnversioned {
		topics := cfg.VersionedTopics
		if len(topics) == 0 {
			topics = []string{"versioned_notifications"}
		}
		n.versioned = tr.NewNotifier(rpc.NotifierConfig{Exchange: exchange, PublisherID: "nova-compute:" + host, Topics: topics, Legacy: legacyV1})
	}
	return n
}

// enabled reports whether any notification is sent (nova loads the
// instance's flavor for them; without them the agent saves that call).
func (n *notifier) enabled() bool { return n != nil && (n.legacy != nil || n.versioned != nil) }

// instanceAction sends both kinds for an instance action phase, as nova's
// manager pairs _notify_about_instance_usage with
// notify_about_instance_action: legacy "compute.instance.<legacyAction>.<phase>"
// and versioned "instance.<action>.<phase>". cause, for phase "error", is
// the failure. extra adds legacy payload keys (image_name, message...).
func (n *notifier) instanceAction(ctx context.Context, rc rpc.Context, inst *ovo.Object, legacyAction, action, phase string, cause error, extra map[string]any) {
	if n == nil {
		return
	}
	priority := rpc.PriorityInfo
	if phase == "error" {
		priority = rpc.PriorityError
	}
	if n.legacy != nil && legacyAction != "" {
		p := n.legacyPayload(inst, extra)
		if cause != nil {
			code, msg := faultCodeAndMessage(cause)
			p["exception"] = exceptionRepr(cause)
			p["message"] = msg
			p["code"] = code
		}
		n.send(ctx, n.legacy, rc, priority, "compute.instance."+legacyAction+"."+phase, p)
	}
	if n.versioned != nil && action != "" {
		name, version := "InstanceActionPayload", "1.8"
		p := n.instancePayload(rc, inst)
		if action == "create" {
			name, version = "InstanceCreatePayload", "1.12"
			keypairs := []any{}
			if kps, err := inst.Object("keypairs"); err == nil && kps != nil {
				items, _ := kps.Items()
				for _, kp := range items {
					keypairs = append(keypairs, versionedObject("KeypairPayload", "1.0", map[string]any{
						"user_id": nullable(kp, "user_id"), "name": nullable(kp, "name"),
						"fingerprint": nullable(kp, "fingerprint"), "public_key": nullable(kp, "public_key"),
						"type": nullable(kp, "type"),
					}))
				}
			}
			p["keypairs"] = keypairs
			tags := []any{}
			if tl, err := inst.Object("tags"); err == nil && tl != nil {
				items, _ := tl.Items()
				for _, t := range items {
					tags = append(tags, t.StringOrEmpty("tag"))
				}
			}
			p["tags"] = tags
			p["trusted_image_certificates"] = nil
			p["instance_name"] = instanceName(inst)
		}
		p["fault"] = nil
		if cause != nil {
			p["fault"] = exceptionPayload(cause, action)
		}
		n.send(ctx, n.versioned, rc, priority, "instance."+action+"."+phase, versionedObject(name, version, p))
	}
}

// exception is nova's wrap_exception: the legacy error notification named
// after the manager method, with its arguments (no context, nothing named
// *_pass*), and the versioned compute.exception.
func (n *notifier) exception(ctx context.Context, rc rpc.Context, method string, args map[string]any, cause error) {
	if n == nil {
		return
	}
	if n.legacy != nil {
		clean := make(map[string]any, len(args))
		for k, v := range args {
			if !strings.Contains(k, "_pass") {
				clean[k] = v
			}
		}
		n.send(ctx, n.legacy, rc, rpc.PriorityError, method, map[string]any{"exception": exceptionRepr(cause), "args": clean})
	}
	if n.versioned != nil {
		n.send(ctx, n.versioned, rc, rpc.PriorityError, "compute.exception", exceptionPayload(cause, method))
	}
}

func (n *notifier) send(ctx context.Context, to *rpc.Notifier, rc rpc.Context, priority, event string, payload any) {
	if err := to.Notify(ctx, rc, priority, event, payload); err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Str("event_type", event).Msg("sending a notification failed")
	}
}

// legacyPayload is nova's notifications.info_from_instance.
func (n *notifier) legacyPayload(inst *ovo.Object, extra map[string]any) map[string]any {
	flavor, _ := inst.Object("flavor")
	if flavor == nil {
		flavor = ovo.New("Flavor", "1.2")
	}
	root, _ := flavor.Int("root_gb")
	eph, _ := flavor.Int("ephemeral_gb")
	imageRef := inst.StringOrEmpty("image_ref")
	imageURL := any(imageRef)
	if n.glanceURL != "" && imageRef != "" {
		imageURL = n.glanceURL + "/images/" + imageRef
	}
	created := ""
	if t, err := inst.DateTime("created_at"); err == nil {
		created = t.UTC().Format("2006-01-02 15:04:05") + "+00:00"
	}
	p := map[string]any{
		"tenant_id":          nullable(inst, "project_id"),
		"user_id":            nullable(inst, "user_id"),
		"instance_id":        nullable(inst, "uuid"),
		"display_name":       nullable(inst, "display_name"),
		"reservation_id":     nullable(inst, "reservation_id"),
		"hostname":           nullable(inst, "hostname"),
		"instance_type":      flavor.StringOrEmpty("name"),
		"instance_type_id":   nullable(inst, "instance_type_id"),
		"instance_flavor_id": flavor.StringOrEmpty("flavorid"),
		"architecture":       nullable(inst, "architecture"),
		"memory_mb":          nullable(flavor, "memory_mb"),
		"disk_gb":            root + eph,
		"vcpus":              nullable(flavor, "vcpus"),
		"root_gb":            root,
		"ephemeral_gb":       eph,
		"host":               nullable(inst, "host"),
		"node":               nullable(inst, "node"),
		"availability_zone":  nullable(inst, "availability_zone"),
		"cell_name":          inst.StringOrEmpty("cell_name"),
		"created_at":         created,
		"terminated_at":      legacyTime(inst, "terminated_at"),
		"deleted_at":         legacyTime(inst, "deleted_at"),
		"launched_at":        legacyTime(inst, "launched_at"),
		"image_ref_url":      imageURL,
		"os_type":            nullable(inst, "os_type"),
		"kernel_id":          nullable(inst, "kernel_id"),
		"ramdisk_id":         nullable(inst, "ramdisk_id"),
		"state":              nullable(inst, "vm_state"),
		"state_description":  inst.StringOrEmpty("task_state"),
		"progress":           legacyInt(inst, "progress"),
		"access_ip_v4":       nullable(inst, "access_ip_v4"),
		"access_ip_v6":       nullable(inst, "access_ip_v6"),
		"image_meta":         imageMetaFromSystemMetadata(inst),
		"metadata":           stringDict(inst, "metadata"),
	}
	maps.Copy(p, extra)
	return p
}

// instancePayload is nova's InstancePayload (the fields every versioned
// instance payload shares).
func (n *notifier) instancePayload(rc rpc.Context, inst *ovo.Object) map[string]any {
	flavor, _ := inst.Object("flavor")
	if flavor == nil {
		flavor = ovo.New("Flavor", "1.2")
	}
	p := map[string]any{
		"uuid":                     nullable(inst, "uuid"),
		"user_id":                  nullable(inst, "user_id"),
		"tenant_id":                nullable(inst, "project_id"),
		"reservation_id":           nullable(inst, "reservation_id"),
		"display_name":             nullable(inst, "display_name"),
		"display_description":      nullable(inst, "display_description"),
		"host_name":                nullable(inst, "hostname"),
		"host":                     nullable(inst, "host"),
		"node":                     nullable(inst, "node"),
		"os_type":                  nullable(inst, "os_type"),
		"architecture":             nullable(inst, "architecture"),
		"availability_zone":        nullable(inst, "availability_zone"),
		"flavor":                   flavorPayload(flavor),
		"image_uuid":               nullable(inst, "image_ref"),
		"key_name":                 nullable(inst, "key_name"),
		"kernel_id":                nullable(inst, "kernel_id"),
		"ramdisk_id":               nullable(inst, "ramdisk_id"),
		"created_at":               versionedTime(inst, "created_at"),
		"launched_at":              versionedTime(inst, "launched_at"),
		"terminated_at":            versionedTime(inst, "terminated_at"),
		"deleted_at":               versionedTime(inst, "deleted_at"),
		"updated_at":               versionedTime(inst, "updated_at"),
		"state":                    nullable(inst, "vm_state"),
		"power_state":              powerStateName(inst),
		"task_state":               nullable(inst, "task_state"),
		"progress":                 nullable(inst, "progress"),
		"ip_addresses":             ipPayloads(inst),
		"block_devices":            nil, // nova's default bdms_in_notifications=False
		"metadata":                 stringDict(inst, "metadata"),
		"locked":                   boolOr(inst, "locked", false),
		"auto_disk_config":         diskConfig(inst),
		"request_id":               nil,
		"action_initiator_user":    nullString(rc.String("user_id")),
		"action_initiator_project": nullString(rc.String("project_id")),
		"locked_reason":            nil,
	}
	if rc.String("project_id") != "" && rc.String("user_id") != "" {
		p["request_id"] = nullString(rc.String("request_id"))
	}
	if sm := stringDict(inst, "system_metadata"); sm["locked_reason"] != nil {
		p["locked_reason"] = sm["locked_reason"]
	}
	return p
}

// flavorPayload is nova's FlavorPayload 1.4.
func flavorPayload(f *ovo.Object) map[string]any {
	extra := stringDict(f, "extra_specs")
	var projects any
	if v, ok := f.Get("projects"); ok {
		projects = v
	}
	return versionedObject("FlavorPayload", "1.4", map[string]any{
		"flavorid":     nullable(f, "flavorid"),
		"memory_mb":    nullable(f, "memory_mb"),
		"vcpus":        nullable(f, "vcpus"),
		"root_gb":      nullable(f, "root_gb"),
		"ephemeral_gb": nullable(f, "ephemeral_gb"),
		"name":         nullable(f, "name"),
		"swap":         intOr(f, "swap", 0),
		"rxtx_factor":  floatOr(f, "rxtx_factor", 1.0),
		"vcpu_weight":  intOr(f, "vcpu_weight", 0),
		"disabled":     boolOr(f, "disabled", false),
		"is_public":    boolOr(f, "is_public", true),
		"extra_specs":  extra,
		"projects":     projects,
		"description":  nullable(f, "description"),
	})
}

// exceptionPayload is nova's ExceptionPayload 1.1 for an agent error that
// ended function (the manager method or action that failed).
func exceptionPayload(cause error, function string) map[string]any {
	module, class := exceptionClass(cause)
	msg := cause.Error()
	var re *rpc.RemoteError
	if errors.As(cause, &re) && re.Message != "" {
		msg = re.Message
	}
	return versionedObject("ExceptionPayload", "1.1", map[string]any{
		"module_name":       module,
		"function_name":     function,
		"exception":         class,
		"exception_message": msg,
		"traceback":         "Traceback (most recent call last):\n,  (raised by vcagent)\n," + class + ": " + msg + "\n",
	})
}

// exceptionClass names the Python exception nova-compute would raise for
// cause: the class a remote error carries, oslo.vmware's for vCenter
// failures, NovaException otherwise.
func exceptionClass(cause error) (module, class string) {
	var re *rpc.RemoteError
	if errors.As(cause, &re) && re.Class != "" {
		module = re.Module
		if module == "" {
			module = "builtins"
		}
		return module, re.Class
	}
	var te *vcenter.TaskError
	if errors.As(cause, &te) {
		return "oslo_vmware.exceptions", "VimFaultException"
	}
	return "nova.exception", "NovaException"
}

// exceptionRepr is Python's repr of the exception, as the legacy payloads
// carry it ("NotImplementedError('...')").
func exceptionRepr(cause error) string {
	_, class := exceptionClass(cause)
	msg := cause.Error()
	var re *rpc.RemoteError
	if errors.As(cause, &re) && re.Message != "" {
		msg = re.Message
	}
	return fmt.Sprintf("%s(%q)", class, msg)
}

// faultCodeAndMessage is nova's exception_to_dict: a nova exception's code
// (500 otherwise) and message, at most 255 bytes. A Python builtin
// exception (NotImplementedError...) has no format_message, so nova shows
// its class name; the agent's own errors keep their text, which says what
// vCenter answered.
func faultCodeAndMessage(cause error) (int64, string) {
	code := int64(500)
	msg := cause.Error()
	var re *rpc.RemoteError
	if errors.As(cause, &re) {
		switch c := re.Kwargs["code"].(type) { // int when the agent raised it, float64 when decoded
		case int:
			code = int64(c)
		case float64:
			code = int64(c)
		}
		switch {
		case re.Module == "builtins":
			msg = re.Class
		case re.Message != "":
			msg = re.Message
		}
	}
	return code, truncate(msg, 255)
}

func versionedObject(name, version string, data map[string]any) map[string]any {
	return map[string]any{
		"nova_object.name":      name,
		"nova_object.namespace": "nova",
		"nova_object.version":   version,
		"nova_object.data":      data,
	}
}

// instanceName is Instance.name with nova's default instance_name_template.
func instanceName(inst *ovo.Object) any {
	id, err := inst.Int("id")
	if err != nil {
		return nil
	}
	return fmt.Sprintf("instance-%08x", id)
}

// powerStateName is nova's InstancePowerStateField: the name of the state
// (powerStateNames), None when unset or unknown.
func powerStateName(inst *ovo.Object) any {
	ps, err := inst.Int("power_state")
	if err != nil {
		return nil
	}
	if name, ok := powerStateNames[ps]; ok {
		return name
	}
	return nil
}

// diskConfig is nova's DiskConfigField: AUTO or MANUAL.
func diskConfig(inst *ovo.Object) string {
	if boolOr(inst, "auto_disk_config", false) {
		return "AUTO"
	}
	return "MANUAL"
}

// imageMetaFromSystemMetadata is nova's utils.get_image_from_system_metadata
// for the legacy payload's image_meta: the image_* keys without the prefix.
func imageMetaFromSystemMetadata(inst *ovo.Object) map[string]any {
	out := map[string]any{}
	for k, v := range stringDict(inst, "system_metadata") {
		if name, ok := strings.CutPrefix(k, "image_"); ok {
			out[name] = v
		}
	}
	return out
}

// nullable returns the field's primitive value, or nil (None) when unset.
func nullable(o *ovo.Object, name string) any {
	v, _ := o.Get(name)
	return v
}

func nullString(s string) any {
	if s == "" {
		return nil
	}
	return s
}

func stringDict(o *ovo.Object, name string) map[string]any {
	out := map[string]any{}
	d, err := o.StringDict(name)
	if err != nil {
		return out
	}
	for k, v := range d {
		if v == nil {
			out[k] = nil
		} else {
			out[k] = *v
		}
	}
	return out
}

func boolOr(o *ovo.Object, name string, def bool) bool {
	if b, err := o.Bool(name); err == nil {
		return b
	}
	return def
}

func intOr(o *ovo.Object, name string, def int64) int64 {
	if i, err := o.Int(name); err == nil {
		return i
	}
	return def
}

func floatOr(o *ovo.Object, name string, def float64) float64 {
	if f, err := o.Float(name); err == nil {
		return f
	}
	return def
}

// legacyTime is nova's null_safe_isotime: strtime or "".
func legacyTime(o *ovo.Object, name string) string {
	t, err := o.DateTime(name)
	if err != nil {
		return ""
	}
	return t.UTC().Format("2006-01-02T15:04:05.000000")
}

// legacyInt is null_safe_int: the number, or "" when unset.
func legacyInt(o *ovo.Object, name string) any {
	i, err := o.Int(name)
	if err != nil {
		return ""
	}
	return i
}

// versionedTime is oslo's DateTimeField primitive (isotime, no fraction).
func versionedTime(o *ovo.Object, name string) any {
	t, err := o.DateTime(name)
	if err != nil {
		return nil
	}
	return t.UTC().Truncate(time.Second).Format("2006-01-02T15:04:05Z")
}
