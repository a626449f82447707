package agent

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/vcagent/vcagent/agent/compute"
)

// TestPeriodicTaskSettings: nova's defaults, nova.conf's option names
// (the deprecated [DEFAULT] ones of [image_cache] too) in seconds, and the
// variables overriding them.
func TestPeriodicTaskSettings(t *testing.T) {
	t.Run("defaults are nova's", func(t *testing.T) {
		setEnv(t, map[string]string{"VCAGENT_HOST": "cmp1"})
		c, err := LoadConfig()
		if err != nil {
			t.Fatal(err)
		}
		if got, want := c.periodicConfig(), compute.DefaultPeriodicConfig(); got != want {
			t.Errorf("defaults\n got  %+v\n want %+v", got, want)
		}
	})
	t.Run("nova.conf configures them", func(t *testing.T) {
		dir := t.TempDir()
		f := writeConf(t, dir, "nova.conf", `[DEFAULT]
host = cmp1
reclaim_instance_interval = 3600
running_deleted_instance_action = log
running_deleted_instance_poll_interval = -1
running_deleted_instance_timeout = 30
resize_confirm_window = 600
instance_usage_audit = True
instance_usage_audit_period = day@3
remove_unused_base_images = false
[image_cache]
manager_interval = 0
remove_unused_original_minimum_age_seconds = 7200
`)
		setEnv(t, map[string]string{"VCAGENT_CONFIG_FILE": f})
		c, err := LoadConfig()
		if err != nil {
			t.Fatal(err)
		}
		want := compute.PeriodicConfig{
			Interval: time.Minute, ImageCacheManagerInterval: 0, RemoveUnusedBaseImages: false,
			RemoveUnusedOriginalMinimumAge: 2 * time.Hour, ReclaimInstanceInterval: time.Hour,
			RunningDeletedInstanceAction: "log", RunningDeletedInstancePollInterval: -time.Second,
			RunningDeletedInstanceTimeout: 30 * time.Second, ResizeConfirmWindow: 10 * time.Minute,
			InstanceUsageAudit: true, InstanceUsageAuditPeriod: "day@3",
		}
		if got := c.periodicConfig(); got != want {
			t.Errorf("from nova.conf\n got  %+v\n want %+v", got, want)
		}
		t.Setenv("VCAGENT_RECLAIM_INSTANCE_INTERVAL", "5s")
		t.Setenv("VCAGENT_IMAGE_CACHE_MANAGER_INTERVAL", "-1s")
		c, err = LoadConfig()
		if err != nil {
			t.Fatal(err)
		}
		if c.ReclaimInstanceInterval != 5*time.Second || c.ImageCacheManagerInterval != -time.Second {
			t.Errorf("the variables do not override the file: %s, %s", c.ReclaimInstanceInterval, c.ImageCacheManagerInterval)
		}
	})
	t.Run("a bad file value names the file's option", func(t *testing.T) {
		dir := t.TempDir()
		f := writeConf(t, dir, "nova.conf", "[DEFAULT]\nhost = cmp1\nrunning_deleted_instance_action = delete\n")
		setEnv(t, map[string]string{"VCAGENT_CONFIG_FILE": f})
		_, err := LoadConfig()
		if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "running_deleted_instance_action") {
			t.Fatalf("error %v does not name running_deleted_instance_action", err)
		}
	})
}
