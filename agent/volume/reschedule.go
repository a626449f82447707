package volume

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/vcagent/vcagent/rpc"
)

// createArgs are create_volume's arguments, kept raw where a reschedule
// sends them back to the scheduler as they came.
type createArgs struct {
	Volume           json.RawMessage `json:"volume"`
	RequestSpec      json.RawMessage `json:"request_spec"`
	FilterProperties map[string]any  `json:"filter_properties"`
	AllowReschedule  *bool           `json:"allow_reschedule"`
}

// wantsReschedule is the create flow's do_reschedule: the scheduler sent
// retry information (scheduler_max_attempts above 1) and the sender
// allows it (allow_reschedule, true unless the volume manager itself
// creates the volume).
func (a createArgs) wantsReschedule() bool {
	if a.AllowReschedule != nil && !*a.AllowReschedule {
		return false
	}
	retry, _ := a.FilterProperties["retry"].(map[string]any)
	return len(retry) > 0
}

// reschedulable is OnFailureRescheduleTask's check: a failure of one of
// its no_reschedule_types (the volume or its source gone, image and
// metadata copy failures, an unacceptable image) puts the volume in error;
// any other (a driver failure) may be tried elsewhere.
func reschedulable(err error) bool {
	var re *rpc.RemoteError
	if !errors.As(err, &re) {
		return true
	}
	switch re.Class {
	case "ImageCopyFailure", "MetadataCopyFailure", "MetadataUpdateFailure", "VolumeNotFound", "SnapshotNotFound",
		"VolumeTypeNotFound", "ImageConversionNotAllowed", "ImageUnacceptable", "ImageTooBig", "InvalidSignatureImage",
		"ImageSignatureVerificationException":
		return false
	}
	return true
}

// rescheduleMessage builds what OnFailureRescheduleTask._reschedule
// sends back to cinder-scheduler's create_volume: the filter properties
// with their retry information (the scheduler added this backend to its
// backends when it chose it) and the failure as retry.exc (the scheduler
// logs it), the request spec with the volume's id, and the volume with
// its host cleared and scheduled_at now (_pre_reschedule).
func rescheduleMessage(a createArgs, volumeID string, cause error, scheduledAt string) (map[string]any, error) {
	var vol map[string]any
	if err := json.Unmarshal(a.Volume, &vol); err != nil {
		return nil, fmt.Errorf("the volume object: %w", err)
	}
	data, _ := vol["versioned_object.data"].(map[string]any)
	if data == nil {
		return nil, errors.New("the volume object has no data")
	}
	data["host"] = nil
	data["scheduled_at"] = scheduledAt
	markChanged(vol, "host", "scheduled_at")

	var spec map[string]any
	if len(a.RequestSpec) > 0 && string(a.RequestSpec) != "null" {
		if err := json.Unmarshal(a.RequestSpec, &spec); err != nil {
			return nil, fmt.Errorf("the request spec: %w", err)
		}
		if sd, ok := spec["versioned_object.data"].(map[string]any); ok {
			sd["volume_id"] = volumeID
			markChanged(spec, "volume_id")
		} else {
			spec["volume_id"] = volumeID
		}
	}

	props := maps.Clone(a.FilterProperties)
	if props == nil {
		props = map[string]any{}
	}
	retry, _ := props["retry"].(map[string]any)
	if retry == nil {
		retry = map[string]any{}
	}
	retry = maps.Clone(retry)
	retry["exc"] = formatException(cause)
	props["retry"] = retry
	return map[string]any{
		"volume": vol, "request_spec": spec, "filter_properties": props,
		"snapshot_id": nil, "image_id": nil, "backup_id": nil,
	}, nil
}

// markChanged adds fields to an object primitive's changes, as
// obj.save() after an update would have them.
func markChanged(obj map[string]any, fields ...string) {
	var changes []any
	if c, ok := obj["versioned_object.changes"].([]any); ok {
		changes = c
	}
	for _, f := range fields {
		if !slices.Contains(changes, any(f)) {
			changes = append(changes, f)
		}
	}
	obj["versioned_object.changes"] = changes
}

// formatException is the failure as traceback.format_exception lists it
// (the last line: the exception's class and message).
func formatException(err error) []string {
	class, msg := "cinder.exception.VolumeBackendAPIException", err.Error()
	var re *rpc.RemoteError
	switch {
	case errors.As(err, &re):
		class, msg = re.Module+"."+re.Class, re.Message
	case errors.Is(err, errNoDatastore):
		class = "cinder.volume.drivers.vmware.exceptions.NoValidDatastoreException"
	}
	return []string{"Traceback (most recent call last):\n", "  vcagent cinder-volume create_volume\n", class + ": " + msg + "\n"}
}

// reschedule hands a volume whose creation failed back to cinder-scheduler
// (OnFailureRescheduleTask.revert with do_reschedule): the volume's host
// cleared and scheduled_at set, its workers row handed back (service_id
// NULL, as the scheduler RPC API's create_worker does), whatever the
// attempt left on vCenter deleted (_post_reschedule, done before the cast
// here: after it, another backend of the same vCenter could already have
// made the volume's backing) and create_volume cast to the scheduler in
// the request's context. The backend's capabilities go to
// the scheduler first, so that it sees what this backend can hold now
// (cinder-volume's periodic report would tell it up to a minute later,
// after the scheduler may have chosen this backend again for the same
// reason).
func (m *Manager) reschedule(ctx context.Context, rc rpc.Context, a createArgs, volumeID string, cause error) error {
	now := utcNow()
	msg, err := rescheduleMessage(a, volumeID, cause, now.Format("2006-01-02T15:04:05Z"))
	if err != nil {
		return err
	}
	if _, err := m.db.ExecContext(ctx, "UPDATE volumes SET scheduled_at = ?, host = NULL, updated_at = ? WHERE id = ? AND deleted = 0", now, now, volumeID); err != nil {
		// as _pre_reschedule, a failed update does not stop the reschedule
		m.log.Error().Err(err).Str("volume_id", volumeID).Msg("cannot update the volume before rescheduling it")
	}
	if _, err := m.db.ExecContext(ctx, "UPDATE workers SET service_id = NULL, status = 'creating', race_preventer = race_preventer + 1, updated_at = ? WHERE resource_type = 'Volume' AND resource_id = ? AND deleted = 0",
		now, volumeID); err != nil {
		m.log.Warn().Err(err).Str("volume_id", volumeID).Msg("cannot hand the workers row back")
	}
	if m.drv != nil {
		if err := m.drv.deleteVolume(ctx, volumeID); err != nil {
			m.log.Debug().Err(err).Str("volume_id", volumeID).Msg("nothing to delete before rescheduling")
		}
	}
	m.reportCapabilities(ctx)
	sched := m.sched
	sched.Target.Version = "3.0" // the scheduler RPC API's default version
	if err := sched.Cast(ctx, rc, "create_volume", msg); err != nil {
		return fmt.Errorf("cast create_volume to cinder-scheduler: %w", err)
	}
	return nil
}
