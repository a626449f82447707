package vcenter

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

// simDC is the simulator's one datacenter; simDS its first datastore.
const (
	simDC = "DC0"
	simDS = "LocalDS_0"
)

// fileSession starts a small simulator and returns a logged-in Session.
func fileSession(t *testing.T) *Session {
	t.Helper()
	sim := startSim(t, SimulatorConfig{Clusters: 1, HostsPerCluster: 1, Datastores: 1})
	return login(t, simConfig(sim))
}

// measure runs f and logs the SOAP calls it made; it returns the calls.
func measure(t *testing.T, s *Session, what string, f func() error) map[string]int64 {
	t.Helper()
	before := s.Calls()
	if err := f(); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	d := delta(before, s.Calls())
	var n int64
	for _, v := range d {
		n += v
	}
	t.Logf("%s: %d SOAP round trips %v", what, n, d)
	return d
}

func TestDatastorePath(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   string
		want DatastorePath
		str  string
	}{
		{"[LocalDS_0] a/b.vmdk", DatastorePath{"LocalDS_0", "a/b.vmdk"}, "[LocalDS_0] a/b.vmdk"},
		{"  [my ds]   dir with space/x.vmdk ", DatastorePath{"my ds", "dir with space/x.vmdk"}, "[my ds] dir with space/x.vmdk"},
		{"[ds]", DatastorePath{"ds", ""}, "[ds]"},
		{"[ds]x", DatastorePath{"ds", "x"}, "[ds] x"},
	} {
		got, err := ParseDatastorePath(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseDatastorePath(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
		if s := got.String(); s != tc.str {
			t.Errorf("%+v.String() = %q, want %q", got, s, tc.str)
		}
		if back, err := ParseDatastorePath(got.String()); err != nil || back != got {
			t.Errorf("round trip of %q = %+v, %v", got.String(), back, err)
		}
	}
	for _, bad := range []string{"", "ds] x", "[] x", "[ds x", "x [ds]"} {
		if p, err := ParseDatastorePath(bad); err == nil {
			t.Errorf("ParseDatastorePath(%q) = %+v, want an error", bad, p)
		}
	}
	p := DatastorePath{"ds", "a/b"}
	if got := p.Join("c", "d.vmdk"); got != (DatastorePath{"ds", "a/b/c/d.vmdk"}) {
		t.Errorf("Join = %+v", got)
	}
	if got := p.Dir(); got != (DatastorePath{"ds", "a"}) {
		t.Errorf("Dir = %+v", got)
	}
	if got := (DatastorePath{"ds", "a"}).Dir(); got != (DatastorePath{"ds", ""}) {
		t.Errorf("Dir of top = %+v", got)
	}
	if got := p.Base(); got != "b" {
		t.Errorf("Base = %q", got)
	}
}

func TestDatastoreFiles(t *testing.T) {
	t.Parallel()
	s := fileSession(t)
	ctx := t.Context()
	dir := DatastorePath{simDS, "files/sub dir"}
	file := dir.Join("hello.txt")
	data := bytes.Repeat([]byte("vcagent "), 1000)

	measure(t, s, "MakeDirectory (first, resolves the datacenter)", func() error { return s.MakeDirectory(ctx, simDC, dir) })
	measure(t, s, "MakeDirectory (exists)", func() error { return s.MakeDirectory(ctx, simDC, dir) })
	d := measure(t, s, "Upload", func() error {
		return s.Upload(ctx, simDC, file, bytes.NewReader(data), int64(len(data)))
	})
	if len(d) != 0 {
		t.Errorf("Upload made SOAP calls %v", d)
	}
	var got []byte
	measure(t, s, "Download", func() (err error) { got, err = s.Download(ctx, simDC, file, 1<<20); return err })
	if !bytes.Equal(got, data) {
		t.Fatalf("read back %d bytes, want %d equal bytes", len(got), len(data))
	}
	if _, err := s.Download(ctx, simDC, file, 10); err == nil {
		t.Error("Download over the limit succeeded")
	}
	var ok bool
	measure(t, s, "FileExists", func() (err error) { ok, err = s.FileExists(ctx, simDC, file); return err })
	if !ok {
		t.Error("FileExists of uploaded file = false")
	}

	cp := dir.Join("copy.txt")
	measure(t, s, "CopyDatastoreFile", func() error { return s.CopyDatastoreFile(ctx, simDC, file, cp, false) })
	if err := s.CopyDatastoreFile(ctx, simDC, file, cp, false); !errors.Is(err, ErrFileExists) {
		t.Errorf("second copy: %v, want ErrFileExists", err)
	}
	mv := dir.Join("moved.txt")
	measure(t, s, "MoveDatastoreFile", func() error { return s.MoveDatastoreFile(ctx, simDC, cp, mv, false) })
	if ok, _ := s.FileExists(ctx, simDC, cp); ok {
		t.Error("move source still exists")
	}
	if got, err := s.Download(ctx, simDC, mv, 1<<20); err != nil || !bytes.Equal(got, data) {
		t.Errorf("moved file: %d bytes, %v", len(got), err)
	}
	if err := s.MoveDatastoreFile(ctx, simDC, cp, mv, true); !errors.Is(err, ErrNotFound) {
		t.Errorf("move of missing file: %v, want ErrNotFound", err)
	}

	measure(t, s, "DeleteDatastoreFile", func() error { return s.DeleteDatastoreFile(ctx, simDC, file) })
	measure(t, s, "DeleteDatastoreFile (missing)", func() error { return s.DeleteDatastoreFile(ctx, simDC, file) })
	if ok, err := s.FileExists(ctx, simDC, file); ok || err != nil {
		t.Errorf("FileExists after delete = %v, %v", ok, err)
	}
	if _, err := s.Download(ctx, simDC, file, 1<<20); !errors.Is(err, ErrNotFound) {
		t.Errorf("Download after delete: %v, want ErrNotFound", err)
	}
	// Deleting a directory takes its contents.
	if err := s.DeleteDatastoreFile(ctx, simDC, DatastorePath{simDS, "files"}); err != nil {
		t.Fatal(err)
	}
	if ok, _ := s.FileExists(ctx, simDC, mv); ok {
		t.Error("file survived deleting its directory")
	}

	if err := s.MakeDirectory(ctx, "NoSuchDC", dir); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown datacenter: %v, want ErrNotFound", err)
	}
}

func TestDatastoreFilesNotLoggedIn(t *testing.T) {
	t.Parallel()
	sim := startSim(t, SimulatorConfig{Clusters: 1, HostsPerCluster: 1, Datastores: 1})
	s, err := New(simConfig(sim), testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	p := DatastorePath{simDS, "x"}
	if err := s.MakeDirectory(ctx, simDC, p); !errors.Is(err, ErrNotLoggedIn) {
		t.Errorf("MakeDirectory: %v", err)
	}
	if err := s.Upload(ctx, simDC, p, strings.NewReader("x"), 1); !errors.Is(err, ErrNotLoggedIn) {
		t.Errorf("Upload: %v", err)
	}
	if _, err := s.FileExists(ctx, simDC, p); !errors.Is(err, ErrNotLoggedIn) {
		t.Errorf("FileExists: %v", err)
	}
}
