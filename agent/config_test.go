package agent

import (
	"errors"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestLoadConfigDefaults(t *testing.T) {
	setEnv(t, map[string]string{"VCAGENT_HOST": "cmp1"})
	c, err := LoadConfig()
	if err != nil {
		t.Fatal(err)
	}
	if c.TransportURL != "rabbit://guest:guest@127.0.0.1:5672/" || c.Host != "cmp1" || c.ControlExchange != "nova" || c.VCenterURL != "" {
		t.Fatalf("defaults: %+v", c)
	}
}

// TestBadValuesNameTheVariable: every bad value stops start-up with a
// message naming the variable at fault.
func TestBadValuesNameTheVariable(t *testing.T) {
	tests := []struct{ name, value string }{
		{"VCAGENT_TRANSPORT_URL", "kafka://h/"},
		{"VCAGENT_TRANSPORT_URL", "rabbit://h/?rabbit_qos_prefetch_count=many"},
		{"VCAGENT_TRANSPORT_URL", "rabbit://h/?rabbit_quorum_queue=true&rabbit_ha_queues=true"},
		{"VCAGENT_DATASTORE_REGEX", "(["},
		{"VCAGENT_LOG_LEVEL", "loud"},
		{"VCAGENT_LOG_FORMAT", "xml"},
		{"VCAGENT_SHUTDOWN_TIMEOUT", "soon"},
		{"VCAGENT_SHUTDOWN_TIMEOUT", "-1s"},
		{"VCAGENT_VCENTER_INSECURE", "maybe"},
		{"VCAGENT_CLUSTERS", "a,,b"},
		{"VCAGENT_SIM_CLUSTERS", "0"},
		{"VCAGENT_PERIODIC_INTERVAL", "0s"},
		{"VCAGENT_IMAGE_CACHE_MANAGER_INTERVAL", "-2s"},
		{"VCAGENT_REMOVE_UNUSED_BASE_IMAGES", "sometimes"},
		{"VCAGENT_REMOVE_UNUSED_ORIGINAL_MINIMUM_AGE", "-1s"},
		{"VCAGENT_RECLAIM_INSTANCE_INTERVAL", "soon"},
		{"VCAGENT_RUNNING_DELETED_INSTANCE_ACTION", "delete"},
		{"VCAGENT_RUNNING_DELETED_INSTANCE_TIMEOUT", "-5s"},
		{"VCAGENT_RESIZE_CONFIRM_WINDOW", "-1s"},
		{"VCAGENT_INSTANCE_USAGE_AUDIT", "monthly"},
		{"VCAGENT_INSTANCE_USAGE_AUDIT_PERIOD", "week"},
	}
	setEnv(t, nil)
	for _, tc := range tests {
		t.Run(tc.name+"="+tc.value, func(t *testing.T) {
			t.Setenv(tc.name, tc.value)
			_, err := LoadConfig()
			if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tc.name) {
				t.Fatalf("error %v does not name %s", err, tc.name)
			}
		})
	}
	t.Run("the message says what the value must be", func(t *testing.T) {
		for name, want := range map[string]string{
			"VCAGENT_SHUTDOWN_TIMEOUT":     `VCAGENT_SHUTDOWN_TIMEOUT: "soon" is not a duration such as 10s or 2m`,
			"VCAGENT_VCENTER_INSECURE":     `VCAGENT_VCENTER_INSECURE: "soon" is not a boolean`,
			"VCAGENT_SIM_CLUSTERS":         `VCAGENT_SIM_CLUSTERS: "soon" is not an integer`,
			"VCAGENT_CPU_ALLOCATION_RATIO": `VCAGENT_CPU_ALLOCATION_RATIO: "soon" is not a number`,
		} {
			t.Run(name, func(t *testing.T) {
				t.Setenv(name, "soon")
				if _, err := LoadConfig(); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), want) {
					t.Fatalf("error %v, want %q", err, want)
				}
			})
		}
	})
	t.Run("network role settings", func(t *testing.T) {
		t.Setenv("VCAGENT_ROLES", "compute,network")
		for name, value := range map[string]string{
			"VCAGENT_NETWORK_BRIDGE_MAPPINGS":  "physnet1",
			"VCAGENT_NETWORK_POLLING_INTERVAL": "0s",
			"VCAGENT_NETWORK_PORTGROUP_PORTS":  "0",
			"VCAGENT_NETWORK_EXCHANGE":         "",
		} {
			t.Run(name, func(t *testing.T) {
				t.Setenv(name, value)
				if _, err := LoadConfig(); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), name) {
					t.Fatalf("%s=%q: error %v does not name it", name, value, err)
				}
			})
		}
		t.Setenv("VCAGENT_NETWORK_BRIDGE_MAPPINGS", "physnet1:DVS0, physnet2:DVS1")
		c, err := LoadConfig()
		if err != nil {
			t.Fatal(err)
		}
		if want := map[string]string{"physnet1": "DVS0", "physnet2": "DVS1"}; !maps.Equal(c.bridgeMappings, want) || !c.HasRole("network") {
			t.Errorf("bridge mappings %v, want %v", c.bridgeMappings, want)
		}
	})
	t.Run("volume role settings", func(t *testing.T) {
		t.Setenv("VCAGENT_ROLES", "compute,volume")
		t.Setenv("VCAGENT_VOLUME_DATABASE_URL", "mysql+pymysql://cinder:secret@127.0.0.1/cinder?charset=utf8")
		for name, value := range map[string]string{
			"VCAGENT_VOLUME_BACKEND":                "a@b",
			"VCAGENT_VOLUME_ADAPTER_TYPE":           "nvme",
			"VCAGENT_VOLUME_IMAGE_TRANSFER_TIMEOUT": "0s",
			"VCAGENT_VOLUME_STORAGE_PROFILE":        "gold,",
		} {
			t.Run(name, func(t *testing.T) {
				t.Setenv(name, value)
				if _, err := LoadConfig(); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), name) {
					t.Fatalf("%s=%q: error %v does not name it", name, value, err)
				}
			})
		}
		t.Setenv("VCAGENT_VOLUME_STORAGE_PROFILE", "gold, silver")
		c, err := LoadConfig()
		if err != nil {
			t.Fatal(err)
		}
		if want := []string{"gold", "silver"}; !slices.Equal(c.VolumeStorageProfiles, want) {
			t.Errorf("storage profiles %q, want %q", c.VolumeStorageProfiles, want)
		}
	})
	t.Run("vCenter user required", func(t *testing.T) {
		t.Setenv("VCAGENT_VCENTER_URL", "https://vc/sdk")
		if _, err := LoadConfig(); err == nil || !strings.Contains(err.Error(), "VCAGENT_VCENTER_USER") {
			t.Fatalf("got %v", err)
		}
	})
}

// TestOnlyPrefixedVariables: envconfig falls back to a variable's name
// without the prefix; Load reads only the VCAGENT_* variables.
func TestOnlyPrefixedVariables(t *testing.T) {
	setEnv(t, map[string]string{"VCAGENT_HOST": "cmp1"})
	t.Setenv("REPORT_INTERVAL", "not a duration")
	t.Setenv("CONTROL_EXCHANGE", "other")
	c, err := LoadConfig()
	if err != nil {
		t.Fatal(err)
	}
	if c.ReportInterval != 10*time.Second || c.ControlExchange != "nova" {
		t.Fatalf("report interval %s, control exchange %q", c.ReportInterval, c.ControlExchange)
	}
}

func TestUsageListsEveryVariable(t *testing.T) {
	u := Usage()
	for _, v := range []string{"VCAGENT_TRANSPORT_URL", "VCAGENT_HOST", "VCAGENT_VCENTER_URL", "VCAGENT_VCENTER_PASSWORD", "VCAGENT_CLUSTERS", "VCAGENT_DATASTORE_REGEX", "VCAGENT_LOG_LEVEL", "transport_url"} {
		if !strings.Contains(u, v) {
			t.Errorf("--help does not mention %s", v)
		}
	}
}
