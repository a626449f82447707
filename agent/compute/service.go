package compute

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/rs/zerolog"

	"github.com/vcagent/vcagent/agent/ovo"
	"github.com/vcagent/vcagent/rpc"
)

// Binary is the service binary the agent registers as.
const Binary = "nova-compute"

// serviceRecord is the agent's row in nova's services table, kept alive
// by heartbeats as nova's "db" servicegroup driver does.
type serviceRecord struct {
	cond *Conductor
	host string
	// rc is reused for every heartbeat, as nova reuses the service's context.
	rc  rpc.Context
	obj *ovo.Object
	log zerolog.Logger

	failing bool // the last heartbeat failed (log the loss and recovery once)
}

// register finds or creates the service record (binary nova-compute, topic
// compute, version ovo.NovaZedServiceVersion so that senders talk compute
// RPC 6.x to us), and raises its version when an older agent left it lower.
func (s *serviceRecord) register(ctx context.Context) error {
	v, err := s.cond.ClassAction(ctx, s.rc, "Service", "get_by_host_and_binary", []any{s.host, Binary}, nil)
	if err != nil {
		return fmt.Errorf("look up the service record: %w", err)
	}
	if obj, ok := v.(*ovo.Object); ok {
		s.obj = obj
		version, _ := obj.Int("version")
		if version < ovo.NovaZedServiceVersion {
			obj.SetInt("version", ovo.NovaZedServiceVersion)
			if _, err := s.cond.ObjectAction(ctx, s.rc, obj, "save", nil, nil); err != nil {
				return fmt.Errorf("update the service version: %w", err)
			}
		}
		s.log.Info().Str("host", s.host).Msg("found the service record")
		return nil
	}
	obj := ovo.New("Service", s.cond.version("Service"))
	obj.SetString("host", s.host)
	obj.SetString("binary", Binary)
	obj.SetString("topic", Topic)
	obj.SetInt("report_count", 0)
	obj.SetInt("version", ovo.NovaZedServiceVersion)
	if _, err := s.cond.ObjectAction(ctx, s.rc, obj, "create", nil, nil); err != nil {
		return fmt.Errorf("create the service record: %w", err)
	}
	s.obj = obj
	id, _ := obj.Int("id")
	s.log.Info().Str("host", s.host).Int64("service_id", id).Msg("created the service record")
	return nil
}

// heartbeat is nova's report_state: report_count+1 and Service.save, which
// makes conductor refresh last_seen_up. A failed heartbeat is logged once
// and retried at the next interval; forced_down and disabled are never
// touched, since only report_count is sent as changed.
func (s *serviceRecord) heartbeat(ctx context.Context) {
	count, _ := s.obj.Int("report_count")
	s.obj.SetInt("report_count", count+1)
	_, err := s.cond.ObjectAction(ctx, s.rc, s.obj, "save", nil, nil)
	switch {
	case err != nil && !s.failing:
		s.failing = true
		s.log.Error().Err(err).Msg("lost connection to nova-conductor for reporting service status")
	case err != nil:
		s.log.Debug().Err(err).Msg("service status report failed again")
	case s.failing:
		s.failing = false
		s.log.Info().Msg("recovered from being unable to report status")
	}
	if err != nil {
		// Keep the count where nova has it, so the next save carries it.
		s.obj.SetInt("report_count", count)
	}
}

// runHeartbeats reports every interval, the first after a short delay
// (nova's INITIAL_REPORTING_DELAY), until ctx ends.
func (s *serviceRecord) runHeartbeats(ctx context.Context, interval time.Duration) {
	t := time.NewTimer(min(5*time.Second, interval))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.heartbeat(ctx)
			t.Reset(interval)
		}
	}
}

// isRemote reports whether err is the nova exception class.
func isRemote(err error, class string) bool {
	var re *rpc.RemoteError
	return errors.As(err, &re) && re.Class == class
}
