package rpc

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestParseTransportURL(t *testing.T) {
	tests := []struct {
		raw     string
		hosts   []Host
		vhost   string
		tls     bool
		wantErr bool
	}{
		{raw: "rabbit://guest:guest@127.0.0.1:5672/", hosts: []Host{{"guest", "guest", "127.0.0.1", 5672}}},
		{raw: "rabbit://u:p%40ss@h1:5673,u2:p2@h2/nova", hosts: []Host{{"u", "p@ss", "h1", 5673}, {"u2", "p2", "h2", 5672}}, vhost: "nova"},
		{raw: "rabbit://u:p@h1,h2:5680/%2Fvh", hosts: []Host{{"u", "p", "h1", 5672}, {"u", "p", "h2", 5680}}, vhost: "/vh"},
		{raw: "amqps://u:p@h/", hosts: []Host{{"u", "p", "h", 5671}}, tls: true},
		{raw: "rabbit://u:p@h/?ssl=1", hosts: []Host{{"u", "p", "h", 5671}}, tls: true},
		{raw: "rabbit://u:p@[::1]:5672/", hosts: []Host{{"u", "p", "::1", 5672}}},
		{raw: "kafka://h/", wantErr: true},
		{raw: "no-scheme", wantErr: true},
		{raw: "rabbit://u:p@h:99999/", wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.raw, func(t *testing.T) {
			u, err := ParseTransportURL(tc.raw)
			if tc.wantErr {
				if !errors.Is(err, ErrInvalidTransportURL) {
					t.Fatalf("want ErrInvalidTransportURL, got %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(u.Hosts) != len(tc.hosts) {
				t.Fatalf("hosts %+v, want %+v", u.Hosts, tc.hosts)
			}
			for i := range tc.hosts {
				if u.Hosts[i] != tc.hosts[i] {
					t.Fatalf("host %d = %+v, want %+v", i, u.Hosts[i], tc.hosts[i])
				}
			}
			if u.VirtualHost != tc.vhost || u.TLS != tc.tls {
				t.Fatalf("vhost %q tls %v", u.VirtualHost, u.TLS)
			}
		})
	}
}

func TestRedactedHidesPasswords(t *testing.T) {
	u, err := ParseTransportURL("rabbit://nova:s3cret@h1:5672,nova:s3cret2@h2:5672/cp?rabbit_qos_prefetch_count=10")
	if err != nil {
		t.Fatal(err)
	}
	r := u.Redacted()
	if strings.Contains(r, "s3cret") || !strings.Contains(r, "h2:5672") {
		t.Fatalf("Redacted() = %s", r)
	}
}

func TestOptionsFromQuery(t *testing.T) {
	u, err := ParseTransportURL("rabbit://h/?amqp_durable_queues=true&rabbit_qos_prefetch_count=10&rabbit_transient_queues_ttl=60&unknown_opt=1")
	if err != nil {
		t.Fatal(err)
	}
	o := DefaultOptions()
	if err := o.ApplyQuery(u.Query); err != nil {
		t.Fatal(err)
	}
	if !o.DurableQueues || o.PrefetchCount != 10 || o.TransientQueuesTTL != time.Minute {
		t.Fatalf("options %+v", o)
	}
	bad := DefaultOptions()
	if _, err := bad.Set("rabbit_qos_prefetch_count", "many"); !errors.Is(err, ErrInvalidOption) || !strings.Contains(err.Error(), "rabbit_qos_prefetch_count") {
		t.Fatalf("bad value error %v must name the option", err)
	}
	both := DefaultOptions()
	both.HAQueues, both.QuorumQueue = true, true
	if err := both.Validate(); !errors.Is(err, ErrInvalidOption) {
		t.Fatalf("quorum+ha must be refused, got %v", err)
	}
}
