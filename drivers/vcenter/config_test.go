package vcenter

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		cfg     Config
		wantErr []string // fields named in the error; nil = valid
	}{
		{name: "complete", cfg: Config{URL: "https://vc.example.com/sdk", User: "u", Password: "p"}},
		{name: "bare host", cfg: Config{URL: "vc.example.com", User: "u", Password: "p"}},
		{name: "credentials in URL", cfg: Config{URL: "https://u:p@vc.example.com/sdk"}},
		{name: "CA file", cfg: Config{URL: "vc", User: "u", Password: "p", CAFile: "/ca.pem"}},
		{name: "empty URL", cfg: Config{User: "u", Password: "p"}, wantErr: []string{"URL"}},
		{name: "bad scheme", cfg: Config{URL: "ftp://vc/sdk", User: "u", Password: "p"}, wantErr: []string{"URL"}},
		{name: "no host", cfg: Config{URL: "https:///sdk", User: "u", Password: "p"}, wantErr: []string{"URL"}},
		{name: "unparsable URL", cfg: Config{URL: "https://u:p@vc:port/sdk", User: "u", Password: "p"}, wantErr: []string{"URL"}},
		{name: "no user", cfg: Config{URL: "vc", Password: "p"}, wantErr: []string{"User"}},
		{name: "no password", cfg: Config{URL: "vc", User: "u"}, wantErr: []string{"Password"}},
		{name: "insecure and CA file", cfg: Config{URL: "vc", User: "u", Password: "p", Insecure: true, CAFile: "/ca.pem"}, wantErr: []string{"CAFile"}},
		{name: "negative MaxConns", cfg: Config{URL: "vc", User: "u", Password: "p", MaxConns: -1}, wantErr: []string{"MaxConns"}},
		{name: "negative KeepAlive", cfg: Config{URL: "vc", User: "u", Password: "p", KeepAlive: -time.Second}, wantErr: []string{"KeepAlive"}},
		{name: "every error reported", cfg: Config{MaxConns: -1}, wantErr: []string{"URL", "User", "Password", "MaxConns"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			err := tc.cfg.Validate()
			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("Validate() = %v, want an error wrapping ErrInvalidConfig", err)
			}
			for _, field := range tc.wantErr {
				if !strings.Contains(err.Error(), field+":") {
					t.Errorf("Validate() = %q, does not name %s", err, field)
				}
			}
			if strings.Contains(err.Error(), ":p@") {
				t.Errorf("Validate() = %q leaks the password", err)
			}
		})
	}
}

func TestConfigResolveDefaults(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name              string
		cfg               Config
		wantURL, wantUser string
		wantPassword      string
		wantMaxConns      int
		wantKeepAlive     time.Duration
	}{
		{
			name:    "defaults",
			cfg:     Config{URL: "vc.example.com", User: "u", Password: "p"},
			wantURL: "https://vc.example.com/sdk", wantUser: "u", wantPassword: "p",
			wantMaxConns: DefaultMaxConns, wantKeepAlive: DefaultKeepAlive,
		},
		{
			name:    "credentials from URL, fields win",
			cfg:     Config{URL: "http://urluser:urlpw@vc:8989", Password: "field", MaxConns: 4, KeepAlive: time.Minute},
			wantURL: "http://vc:8989/sdk", wantUser: "urluser", wantPassword: "field",
			wantMaxConns: 4, wantKeepAlive: time.Minute,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, u, err := tc.cfg.resolve()
			if err != nil {
				t.Fatal(err)
			}
			if u.String() != tc.wantURL || got.User != tc.wantUser || got.Password != tc.wantPassword ||
				got.MaxConns != tc.wantMaxConns || got.KeepAlive != tc.wantKeepAlive {
				t.Errorf("resolve() = %s, %v; want URL %s user %s maxconns %d keepalive %s",
					u, got, tc.wantURL, tc.wantUser, tc.wantMaxConns, tc.wantKeepAlive)
			}
		})
	}
}

func TestConfigStringRedactsPassword(t *testing.T) {
	t.Parallel()
	for _, cfg := range []Config{
		{URL: "https://admin:hunter2@vc/sdk", User: "admin", Password: "hunter2"},
		{URL: "https://admin:hunter2@vc:port/sdk"}, // unparsable
	} {
		for _, s := range []string{cfg.String(), fmt.Sprintf("%v", cfg), fmt.Sprintf("%+v", cfg), fmt.Sprint(cfg)} {
			if strings.Contains(s, "hunter2") {
				t.Errorf("%q leaks the password", s)
			}
		}
	}
}

func TestNewConfiguresTransport(t *testing.T) {
	t.Parallel()
	s, err := New(Config{URL: "vc", User: "u", Password: "p", MaxConns: 7}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	tr := s.soap.DefaultTransport()
	if tr.MaxIdleConnsPerHost != 7 {
		t.Errorf("MaxIdleConnsPerHost = %d, want 7", tr.MaxIdleConnsPerHost)
	}
	if tr.DialTLSContext == nil {
		t.Error("DialTLSContext not set")
	}
	if s.Client() != nil {
		t.Error("Client() before Login is not nil")
	}

	bad := filepath.Join(t.TempDir(), "bad.pem")
	if err := os.WriteFile(bad, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, ca := range []string{bad, filepath.Join(t.TempDir(), "missing.pem")} {
		if _, err := New(Config{URL: "vc", User: "u", Password: "p", CAFile: ca}, zerolog.Nop()); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("New with CAFile %s: err = %v, want ErrInvalidConfig", ca, err)
		}
	}
	if _, err := New(Config{}, zerolog.Nop()); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("New(Config{}) err = %v, want ErrInvalidConfig", err)
	}
}
