package agent

import (
	"time"

	"github.com/vcagent/vcagent/agent/compute"
)

// finishPeriodic checks the settings of nova-compute's periodic tasks as
// nova.conf's option types do (IntOpt min, StrOpt choices and regex).
func (c *Config) finishPeriodic() error {
	switch {
	case c.PeriodicInterval <= 0:
		return bad("PERIODIC_INTERVAL", "must be positive, got %s", c.PeriodicInterval)
	case c.ImageCacheManagerInterval < -time.Second:
		return bad("IMAGE_CACHE_MANAGER_INTERVAL", "must be -1s (off), 0 (every VCAGENT_PERIODIC_INTERVAL) or positive, got %s", c.ImageCacheManagerInterval)
	case c.RemoveUnusedOriginalMinimumAge < 0:
		return bad("REMOVE_UNUSED_ORIGINAL_MINIMUM_AGE", "must not be negative, got %s", c.RemoveUnusedOriginalMinimumAge)
	case c.RunningDeletedInstanceTimeout < 0:
		return bad("RUNNING_DELETED_INSTANCE_TIMEOUT", "must not be negative, got %s", c.RunningDeletedInstanceTimeout)
	case c.ResizeConfirmWindow < 0:
		return bad("RESIZE_CONFIRM_WINDOW", "must not be negative (0 is off), got %s", c.ResizeConfirmWindow)
	}
	switch c.RunningDeletedInstanceAction {
	case compute.RunningDeletedReap, compute.RunningDeletedLog, compute.RunningDeletedShutdown, compute.RunningDeletedNoop:
	default:
		return bad("RUNNING_DELETED_INSTANCE_ACTION", "%q is not reap, log, shutdown or noop", c.RunningDeletedInstanceAction)
	}
	if _, _, err := compute.ParseAuditPeriod(c.InstanceUsageAuditPeriod); err != nil {
		return bad("INSTANCE_USAGE_AUDIT_PERIOD", "%v", err)
	}
	return nil
}

// periodicConfig is the compute role's view of the settings above.
func (c *Config) periodicConfig() compute.PeriodicConfig {
	return compute.PeriodicConfig{
		Interval:                           c.PeriodicInterval,
		ImageCacheManagerInterval:          c.ImageCacheManagerInterval,
		RemoveUnusedBaseImages:             c.RemoveUnusedBaseImages,
		RemoveUnusedOriginalMinimumAge:     c.RemoveUnusedOriginalMinimumAge,
		ReclaimInstanceInterval:            c.ReclaimInstanceInterval,
		RunningDeletedInstanceAction:       c.RunningDeletedInstanceAction,
		RunningDeletedInstancePollInterval: c.RunningDeletedInstancePollInterval,
		RunningDeletedInstanceTimeout:      c.RunningDeletedInstanceTimeout,
		ResizeConfirmWindow:                c.ResizeConfirmWindow,
		InstanceUsageAudit:                 c.InstanceUsageAudit,
		InstanceUsageAuditPeriod:           c.InstanceUsageAuditPeriod,
	}
}
