package vcenter

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vcagent/vcagent/drivers/vcenter/vmdk"
	"github.com/vcagent/vcagent/drivers/vcenter/vmdk/vmdktest"
)

// fetchBytes returns a FetchFunc serving data, counting its calls in n
// (when not nil).
func fetchBytes(data []byte, n *atomic.Int64) FetchFunc {
	return func(context.Context) (io.ReadCloser, int64, error) {
		if n != nil {
			n.Add(1)
		}
		return io.NopCloser(bytes.NewReader(data)), int64(len(data)), nil
	}
}

// failingReader yields some bytes, then an error.
type failingReader struct{ left int }

func (r *failingReader) Read(p []byte) (int, error) {
	if r.left <= 0 {
		return 0, errors.New("connection to image service reset")
	}
	n := min(len(p), r.left)
	clear(p[:n])
	r.left -= n
	return n, nil
}

// stagingEmpty reports whether the staging folder holds no entries, by
// reading the simulator's directory listing.
func stagingEmpty(t *testing.T, s *Session) bool {
	t.Helper()
	page, err := s.Download(t.Context(), simDC, DatastorePath{simDS, DefaultTempFolder + "/"}, 1<<20)
	if errors.Is(err, ErrNotFound) {
		return true
	}
	if err != nil {
		t.Fatalf("list staging folder: %v", err)
	}
	return !strings.Contains(string(page), "<a href")
}

func TestImageCacheSingleFlight(t *testing.T) {
	t.Parallel()
	s := fileSession(t)
	ctx := t.Context()
	ic, err := NewImageCache(s, "10.0.0.5_base")
	if err != nil {
		t.Fatal(err)
	}
	img := bytes.Repeat([]byte("0123456789abcdef"), 64*1024) // 1 MiB
	var fetches atomic.Int64
	release := make(chan struct{})
	fetch := func(ctx context.Context) (io.ReadCloser, int64, error) {
		fetches.Add(1)
		<-release // hold the first download until every caller is waiting
		return io.NopCloser(bytes.NewReader(img)), int64(len(img)), nil
	}

	const callers = 10
	var wg sync.WaitGroup
	paths := make([]DatastorePath, callers)
	errs := make([]error, callers)
	before := s.Calls()
	for i := range callers {
		wg.Go(func() { paths[i], errs[i] = ic.Ensure(ctx, simDC, simDS, "image-a", fetch, DiskKindPreallocated) })
	}
	waitFor(t, 5*time.Second, "all callers to join", func() bool {
		ic.mu.Lock()
		defer ic.mu.Unlock()
		return len(ic.flights) == 1
	})
	time.Sleep(50 * time.Millisecond) // let the other callers reach the wait
	close(release)
	wg.Wait()
	d := delta(before, s.Calls())
	t.Logf("Ensure (miss, %d concurrent callers): %v", callers, d)

	want := DatastorePath{simDS, "10.0.0.5_base/image-a/image-a.vmdk"}
	for i := range callers {
		if errs[i] != nil || paths[i] != want {
			t.Errorf("caller %d: %s, %v; want %s", i, paths[i], errs[i], want)
		}
	}
	if n := fetches.Load(); n != 1 {
		t.Errorf("fetch called %d times, want 1", n)
	}
	flat, err := s.Download(ctx, simDC, DatastorePath{simDS, "10.0.0.5_base/image-a/image-a-flat.vmdk"}, 2<<20)
	if err != nil || !bytes.Equal(flat, img) {
		t.Errorf("cached extent: %d bytes, %v; want %d", len(flat), err, len(img))
	}
	if capKB, err := s.VirtualDiskCapacityKB(ctx, simDC, want); err != nil || capKB != 1024 {
		t.Errorf("cached capacity = %d KiB, %v; want 1024", capKB, err)
	}
	if !stagingEmpty(t, s) {
		t.Error("staging folder not cleaned up")
	}

	// A cached image costs no SOAP call and no fetch.
	measure(t, s, "Ensure (hit)", func() error {
		_, err := ic.Ensure(ctx, simDC, simDS, "image-a", fetch, DiskKindPreallocated)
		return err
	})
	if n := fetches.Load(); n != 1 {
		t.Errorf("fetch called %d times after a hit, want 1", n)
	}

	// Another datastore is another cache entry.
	var n2 atomic.Int64
	p, err := ic.Ensure(ctx, simDC, "LocalDS_0", "image-b", fetchBytes(img[:4096], &n2), DiskKindThin)
	if err != nil || p.Path != "10.0.0.5_base/image-b/image-b.vmdk" || n2.Load() != 1 {
		t.Errorf("image-b: %s, %v, %d fetches", p, err, n2.Load())
	}
}

func TestImageCacheFailures(t *testing.T) {
	t.Parallel()
	s := fileSession(t)
	ctx := t.Context()
	ic, err := NewImageCache(s, "host_base")
	if err != nil {
		t.Fatal(err)
	}
	cached := ic.Path(simDS, "img")
	img := bytes.Repeat([]byte{7}, 8192)

	// fetch fails outright.
	boom := errors.New("image service unavailable")
	_, err = ic.Ensure(ctx, simDC, simDS, "img", func(context.Context) (io.ReadCloser, int64, error) {
		return nil, 0, boom
	}, DiskKindPreallocated)
	if !errors.Is(err, boom) {
		t.Errorf("Ensure with failing fetch: %v, want %v", err, boom)
	}
	if !stagingEmpty(t, s) {
		t.Error("a failing fetch left files in the staging folder")
	}

	// The image stream breaks half way.
	_, err = ic.Ensure(ctx, simDC, simDS, "img", func(context.Context) (io.ReadCloser, int64, error) {
		return io.NopCloser(&failingReader{left: 4096}), int64(len(img)), nil
	}, DiskKindPreallocated)
	if err == nil {
		t.Fatal("Ensure with a broken stream succeeded")
	}
	t.Logf("broken stream: %v", err)

	// The image announces more bytes than it has.
	_, err = ic.Ensure(ctx, simDC, simDS, "img", func(context.Context) (io.ReadCloser, int64, error) {
		return io.NopCloser(bytes.NewReader(img[:100])), int64(len(img)), nil
	}, DiskKindPreallocated)
	if err == nil {
		t.Fatal("Ensure with a short image succeeded")
	}
	t.Logf("short image: %v", err)

	for _, p := range []DatastorePath{cached, cached.Dir()} {
		if ok, err := s.FileExists(ctx, simDC, p); ok || err != nil {
			t.Errorf("after failures FileExists(%s) = %v, %v; want false", p, ok, err)
		}
	}
	// The staging folders of broken uploads are deleted too, but the
	// simulator's PUT handler may still be running when the delete lands
	// and recreate the folder, so that is not asserted here.

	// A later call retries and succeeds.
	var n atomic.Int64
	p, err := ic.Ensure(ctx, simDC, simDS, "img", fetchBytes(img, &n), DiskKindPreallocated)
	if err != nil || p != cached || n.Load() != 1 {
		t.Fatalf("retry: %s, %v, %d fetches", p, err, n.Load())
	}
	if flat, err := s.Download(ctx, simDC, cached.Dir().Join("img-flat.vmdk"), 1<<20); err != nil || !bytes.Equal(flat, img) {
		t.Errorf("cached extent: %d bytes, %v", len(flat), err)
	}
}

func TestImageCacheLeaderCancelled(t *testing.T) {
	t.Parallel()
	s := fileSession(t)
	ic, err := NewImageCache(s, "c_base")
	if err != nil {
		t.Fatal(err)
	}
	img := bytes.Repeat([]byte{1}, 2048)
	lctx, cancel := context.WithCancel(t.Context())
	started := make(chan struct{})
	leaderDone := make(chan error, 1)
	go func() {
		_, err := ic.Ensure(lctx, simDC, simDS, "img", func(ctx context.Context) (io.ReadCloser, int64, error) {
			close(started)
			<-ctx.Done()
			return nil, 0, ctx.Err()
		}, DiskKindThin)
		leaderDone <- err
	}()
	<-started
	waiter := make(chan error, 1)
	var n atomic.Int64
	go func() {
		_, err := ic.Ensure(t.Context(), simDC, simDS, "img", fetchBytes(img, &n), DiskKindThin)
		waiter <- err
	}()
	time.Sleep(20 * time.Millisecond)
	cancel()
	if err := <-leaderDone; !errors.Is(err, context.Canceled) {
		t.Errorf("leader: %v, want context.Canceled", err)
	}
	if err := <-waiter; err != nil || n.Load() != 1 {
		t.Errorf("waiter after leader cancelled: %v, %d fetches; want success with its own fetch", err, n.Load())
	}
}

func TestImageCacheRejects(t *testing.T) {
	t.Parallel()
	for _, f := range []string{"", "/", "a/../b", "x[1]"} {
		if _, err := NewImageCache(nil, f); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("NewImageCache(%q): %v, want ErrInvalidConfig", f, err)
		}
	}
	ic, err := NewImageCache(nil, "h_base")
	if err != nil {
		t.Fatal(err)
	}
	var n atomic.Int64
	for _, kind := range []DiskKind{"iso", "raw", ""} {
		if _, err := ic.Ensure(t.Context(), simDC, simDS, "img", fetchBytes([]byte("x"), &n), kind); !errors.Is(err, ErrUnsupportedDiskKind) {
			t.Errorf("kind %q: %v, want ErrUnsupportedDiskKind", kind, err)
		}
	}
	for _, id := range []string{"", "a/b", "..", "x]"} {
		if _, err := ic.Ensure(t.Context(), simDC, simDS, id, fetchBytes([]byte("x"), &n), DiskKindThin); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("image id %q: %v, want ErrInvalidConfig", id, err)
		}
	}
	if n.Load() != 0 {
		t.Errorf("fetch called %d times for rejected requests", n.Load())
	}
}

// TestImageCacheRace covers two processes (two ImageCaches) caching the same
// image: the one that moves second keeps the first one's image.
func TestImageCacheRace(t *testing.T) {
	t.Parallel()
	s := fileSession(t)
	ctx := t.Context()
	ic1, _ := NewImageCache(s, "r_base")
	ic2, _ := NewImageCache(s, "r_base")
	img := bytes.Repeat([]byte{3}, 4096)
	var n2 atomic.Int64
	p, err := ic1.Ensure(ctx, simDC, simDS, "img", func(ctx context.Context) (io.ReadCloser, int64, error) {
		// The other process caches the image while this one fetches.
		if _, err := ic2.Ensure(ctx, simDC, simDS, "img", fetchBytes(img, &n2), DiskKindThin); err != nil {
			return nil, 0, err
		}
		return io.NopCloser(bytes.NewReader(img)), int64(len(img)), nil
	}, DiskKindThin)
	if err != nil || p != ic1.Path(simDS, "img") || n2.Load() != 1 {
		t.Fatalf("Ensure racing another cache: %s, %v, %d fetches by the other", p, err, n2.Load())
	}
	if !stagingEmpty(t, s) {
		t.Error("the losing upload was left in the staging folder")
	}

	// A cache folder in the way that does not hold the image is an error.
	_, err = ic1.Ensure(ctx, simDC, simDS, "img2", func(ctx context.Context) (io.ReadCloser, int64, error) {
		if err := s.MakeDirectory(ctx, simDC, ic1.Path(simDS, "img2").Dir()); err != nil {
			return nil, 0, err
		}
		return io.NopCloser(bytes.NewReader(img)), int64(len(img)), nil
	}, DiskKindThin)
	if !errors.Is(err, ErrFileExists) {
		t.Errorf("Ensure with an empty cache folder in the way: %v, want ErrFileExists", err)
	}
}

// TestImageCacheVMDK caches sparse and streamOptimized images and checks
// that the cache holds their flat disk, byte for byte, as a descriptor and
// a -flat.vmdk extent like a flat image's.
func TestImageCacheVMDK(t *testing.T) {
	t.Parallel()
	s := fileSession(t)
	ctx := t.Context()
	ic, err := NewImageCache(s, "v_base")
	if err != nil {
		t.Fatal(err)
	}
	ic.spoolDir = t.TempDir()
	raw := vmdktest.Raw(6<<20 + 192<<10)
	// streamOptimized images are imported through an NFC lease, as they
	// are (imported); the others are converted here and uploaded flat.
	for _, tc := range []struct {
		name     string
		img      []byte
		kind     DiskKind
		fetches  int64
		imported bool
	}{
		{"monolithicSparse", vmdktest.Qemu(t, raw, "monolithicSparse"), DiskKindSparse, 1, false},
		{"streamOptimized", vmdktest.Qemu(t, raw, "streamOptimized"), DiskKindStreamOptimized, 1, true},
		{"streamOptimized named sparse", vmdktest.Qemu(t, raw, "streamOptimized"), DiskKindSparse, 1, true},
		{"monolithicSparse named streamOptimized", vmdktest.Qemu(t, raw, "monolithicSparse"), DiskKindStreamOptimized, 1, false},
		{"VMware streamOptimized", vmdktest.Stream(raw, 128, false, false), DiskKindStreamOptimized, 1, true},
		{"sparse, grains out of order", vmdktest.Sparse(raw, 16, 64, true), DiskKindSparse, 1, false},
		{"streamOptimized, grains out of order", vmdktest.Stream(raw, 8, true, false), DiskKindStreamOptimized, 1, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := strings.NewReplacer(" ", "-", ",", "").Replace(tc.name)
			var n atomic.Int64
			var p DatastorePath
			calls := measure(t, s, "Ensure "+tc.name, func() (err error) {
				p, err = ic.Ensure(ctx, simDC, simDS, id, fetchBytes(tc.img, &n), tc.kind)
				return err
			})
			if p != ic.Path(simDS, id) || n.Load() != tc.fetches {
				t.Errorf("Ensure: %s after %d fetches; want %s after %d", p, n.Load(), ic.Path(simDS, id), tc.fetches)
			}
			want := map[string]int64{"MoveDatastoreFile_Task": 1, "CreateVirtualDisk_Task": 1}
			if tc.imported {
				want = map[string]int64{"MoveDatastoreFile_Task": 1, "ImportVApp": 1, "HttpNfcLeaseComplete": 1, "UnregisterVM": 1}
			}
			for _, m := range []string{"MoveDatastoreFile_Task", "CreateVirtualDisk_Task", "ImportVApp", "HttpNfcLeaseComplete", "UnregisterVM", "HttpNfcLeaseAbort"} {
				if calls[m] != want[m] {
					t.Errorf("%s calls = %d, want %d (%v)", m, calls[m], want[m], calls)
				}
			}
			if left := importVMs(t, s); len(left) != 0 {
				t.Errorf("import VMs left registered: %v", left)
			}
			flat, err := s.Download(ctx, simDC, p.Dir().Join(id+"-flat.vmdk"), 16<<20)
			if err != nil || !bytes.Equal(flat, raw) {
				t.Errorf("cached extent: %d bytes, %v; equal to the raw disk: %v", len(flat), err, bytes.Equal(flat, raw))
			}
			if kb, err := s.VirtualDiskCapacityKB(ctx, simDC, p); err != nil || kb != int64(len(raw)>>10) {
				t.Errorf("cached capacity = %d KiB, %v; want %d", kb, err, len(raw)>>10)
			}
			if !stagingEmpty(t, s) {
				t.Error("staging folder not cleaned up")
			}
			if left, _ := os.ReadDir(ic.spoolDir); len(left) != 0 {
				t.Errorf("spool files left: %v", left)
			}
		})
	}
}

// TestImageCacheVMDKRejects feeds bad images: each fails with the error the
// caller can branch on, and nothing is left on the datastore.
func TestImageCacheVMDKRejects(t *testing.T) {
	t.Parallel()
	s := fileSession(t)
	ctx := t.Context()
	ic, err := NewImageCache(s, "r_base")
	if err != nil {
		t.Fatal(err)
	}
	ic.spoolDir = t.TempDir()
	raw := vmdktest.Raw(6 << 20)
	sparse := vmdktest.Qemu(t, raw, "monolithicSparse")
	stream := vmdktest.Qemu(t, raw, "streamOptimized")
	firstGrain := 128 * 512                      // qemu-img's metadata
	vmw := vmdktest.Stream(raw, 8, false, false) // many small grains, no padding
	unknownSize := func(img []byte) FetchFunc {
		return func(context.Context) (io.ReadCloser, int64, error) { return io.NopCloser(bytes.NewReader(img)), 0, nil }
	}
	boom := errors.New("connection to image service reset")
	for _, tc := range []struct {
		name    string
		fetch   FetchFunc
		kind    DiskKind
		want    error
		notWant error
		touches bool // whether the failure comes after the datastore work began
	}{
		{"a flat image named sparse", fetchBytes(raw, nil), DiskKindSparse, ErrInvalidImage, nil, false},
		{"an ESX COWD image", fetchBytes(append([]byte("COWD"), make([]byte, 1020)...), nil), DiskKindSparse, ErrUnsupportedDiskKind, nil, false},
		{"a header only", fetchBytes(stream[:512], nil), DiskKindStreamOptimized, ErrInvalidImage, nil, false},
		{"sparse cut in the grains, size announced", fetchBytes(sparse[:len(sparse)/2], nil), DiskKindSparse, ErrInvalidImage, nil, false},
		{"sparse cut in the grains, size unknown", unknownSize(sparse[:len(sparse)-4096]), DiskKindSparse, ErrInvalidImage, nil, true},
		{"streamOptimized cut in the first grain", fetchBytes(stream[:firstGrain+2048], nil), DiskKindStreamOptimized, ErrInvalidImage, nil, true},
		{"streamOptimized cut in the grains", fetchBytes(vmw[:len(vmw)/2], nil), DiskKindStreamOptimized, ErrInvalidImage, nil, true},
		{"streamOptimized with a corrupt grain", fetchBytes(func() []byte {
			b := bytes.Clone(vmw)
			for i := len(b) / 2; i < len(b)/2+2048; i++ {
				b[i] ^= 0x5a
			}
			return b
		}(), nil), DiskKindStreamOptimized, ErrInvalidImage, nil, true},
		{"connection reset", func(context.Context) (io.ReadCloser, int64, error) {
			return io.NopCloser(io.MultiReader(bytes.NewReader(vmw[:len(vmw)/2]), &errReader{boom})), int64(len(vmw)), nil
		}, DiskKindStreamOptimized, boom, ErrInvalidImage, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := strings.ReplaceAll(strings.ReplaceAll(tc.name, " ", "-"), ",", "")
			var p DatastorePath
			before := s.Calls()
			p, err := ic.Ensure(ctx, simDC, simDS, id, tc.fetch, tc.kind)
			calls := delta(before, s.Calls())
			t.Logf("%v (SOAP calls %v)", err, calls)
			if !errors.Is(err, tc.want) || (tc.notWant != nil && errors.Is(err, tc.notWant)) {
				t.Fatalf("Ensure: %s, %v; want %v", p, err, tc.want)
			}
			if !errors.Is(err, ErrInvalidImage) && errors.Is(err, vmdk.ErrInvalid) {
				t.Errorf("vmdk.ErrInvalid without ErrInvalidImage: %v", err)
			}
			if began := calls["CreateVirtualDisk_Task"]+calls["ImportVApp"] > 0; began != tc.touches {
				t.Errorf("datastore touched: %v, want %v", began, tc.touches)
			}
			if calls["HttpNfcLeaseComplete"] != 0 {
				t.Errorf("a bad image's import lease was completed (%v)", calls)
			}
			if left := importVMs(t, s); len(left) != 0 {
				t.Errorf("import VMs left registered: %v", left)
			}
			if ok, err := s.FileExists(ctx, simDC, ic.Path(simDS, id).Dir()); ok || err != nil {
				t.Errorf("cache folder after a failure: %v, %v", ok, err)
			}
			// The simulator may still be writing the aborted upload when
			// the staging folder is deleted.
			waitFor(t, 5*time.Second, "the staging folder to be empty", func() bool { return stagingEmpty(t, s) })
			if left, _ := os.ReadDir(ic.spoolDir); len(left) != 0 {
				t.Errorf("spool files left: %v", left)
			}
		})
	}
}

type errReader struct{ err error }

func (r *errReader) Read([]byte) (int, error) { return 0, r.err }

// TestImageCacheRemembers checks that an image the cache has put on a
// datastore is returned without asking the datastore again, even if it
// disappears there, until Forget; then it is fetched again.
func TestImageCacheRemembers(t *testing.T) {
	t.Parallel()
	s := fileSession(t)
	ctx := t.Context()
	ic, err := NewImageCache(s, "m_base")
	if err != nil {
		t.Fatal(err)
	}
	var fetches atomic.Int64
	fetch := fetchBytes(bytes.Repeat([]byte{7}, 64*1024), &fetches)
	p, err := ic.Ensure(ctx, simDC, simDS, "image-m", fetch, DiskKindPreallocated)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteDatastoreFile(ctx, simDC, DatastorePath{Datastore: simDS, Path: "m_base/image-m"}); err != nil {
		t.Fatal(err)
	}
	before := s.Calls()
	if again, err := ic.Ensure(ctx, simDC, simDS, "image-m", fetch, DiskKindPreallocated); err != nil || again != p {
		t.Fatalf("second Ensure: %v %v, want %v", again, err, p)
	}
	if d := delta(before, s.Calls()); len(d) != 0 || fetches.Load() != 1 {
		t.Errorf("second Ensure made calls %v and %d fetches, want none and 1", d, fetches.Load())
	}
	ic.Forget(simDC, simDS, "image-m")
	if _, err := ic.Ensure(ctx, simDC, simDS, "image-m", fetch, DiskKindPreallocated); err != nil {
		t.Fatal(err)
	}
	if fetches.Load() != 2 {
		t.Errorf("after Forget: %d fetches, want the image fetched again", fetches.Load())
	}
	if ok, err := s.FileExists(ctx, simDC, p); !ok || err != nil {
		t.Errorf("cached file after the refetch: %v %v", ok, err)
	}
}

// TestImageCacheFolderRemoved checks that the cache folder, made once per
// datastore, is made again when it was removed behind the cache's back.
func TestImageCacheFolderRemoved(t *testing.T) {
	t.Parallel()
	s := fileSession(t)
	ctx := t.Context()
	ic, err := NewImageCache(s, "f_base")
	if err != nil {
		t.Fatal(err)
	}
	img := vmdktest.Stream(vmdktest.Raw(1<<20), 128, false, false)
	if _, err := ic.Ensure(ctx, simDC, simDS, "image-f1", fetchBytes(img, nil), DiskKindStreamOptimized); err != nil {
		t.Fatal(err)
	}
	calls := measure(t, s, "Ensure, cache folder known", func() error {
		_, err := ic.Ensure(ctx, simDC, simDS, "image-f2", fetchBytes(img, nil), DiskKindStreamOptimized)
		return err
	})
	if calls["MakeDirectory"] != 1 { // the staging folder only
		t.Errorf("MakeDirectory calls = %d, want 1 (%v)", calls["MakeDirectory"], calls)
	}
	if err := s.DeleteDatastoreFile(ctx, simDC, DatastorePath{Datastore: simDS, Path: "f_base"}); err != nil {
		t.Fatal(err)
	}
	p, err := ic.Ensure(ctx, simDC, simDS, "image-f3", fetchBytes(img, nil), DiskKindStreamOptimized)
	if err != nil {
		t.Fatalf("Ensure after the cache folder was removed: %v", err)
	}
	if ok, err := s.FileExists(ctx, simDC, p); !ok || err != nil {
		t.Errorf("%s after Ensure: %v, %v", p, ok, err)
	}
}
