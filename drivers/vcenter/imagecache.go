package vcenter

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vcagent/vcagent/drivers/vcenter/vmdk"
)

// ErrInvalidImage reports an image whose bytes are malformed, truncated or
// hostile (the cause, such as vmdk.ErrInvalid, stays in the chain): fetching
// it again cannot help.
var ErrInvalidImage = errors.New("invalid disk image")

// DefaultTempFolder is the datastore folder ImageCache stages downloads in,
// as nova's VMware driver does ("vmware_temp").
const DefaultTempFolder = "vmware_temp"

// cleanupTimeout bounds the best-effort removal of a staging folder.
const cleanupTimeout = 30 * time.Second

// FetchFunc opens an image for reading and returns its content and its exact
// size in bytes. The cache closes the reader.
type FetchFunc func(ctx context.Context) (io.ReadCloser, int64, error)

// ImageCache keeps disk images on datastores so that each image is
// transferred to a datastore once and then copied per instance. The layout
// is nova's: image id on datastore ds lives at
//
//	[ds] <folder>/<id>/<id>.vmdk   (descriptor)
//	[ds] <folder>/<id>/<id>-flat.vmdk (extent)
//
// where folder is nova's "<cache_prefix>_base" ("<host ip or name>_base" by
// default). An image is staged under [ds] vmware_temp/<random>/<id>/ and
// moved into the cache folder whole, so the cache never holds a partial
// image, even after a crash (the crash leaves the staging folder behind
// instead).
//
// An ImageCache is safe for concurrent use; it holds no state but the
// downloads in progress, so any number may share a datastore.
type ImageCache struct {
	s      *Session
	folder string
	temp   string

	limits   vmdk.Limits // bounds on sparse and streamOptimized images
	spoolDir string      // local folder for conversions that cannot stream ("": os.TempDir)

	mu      sync.Mutex
	flights map[cacheKey]*cacheFlight
	// targets are where streamOptimized images are imported, per
	// datacenter and datastore (see importTargetFor); folders are the
	// datastores (image "") whose cache folder this cache has made.
	targets map[cacheKey]importTarget
	folders map[cacheKey]bool
	// known are the images this cache put or found on their datastores:
	// Ensure returns them without asking the datastore again (an HTTP
	// HEAD per build). Forget drops one that turned out to be gone.
	known map[cacheKey]DatastorePath
}

type cacheKey struct{ dc, ds, image string }

// cacheFlight is one image download that concurrent callers wait on.
type cacheFlight struct {
	done chan struct{} // closed when the download has ended
	path DatastorePath // written before done is closed
	err  error         // written before done is closed
}

// NewImageCache returns an ImageCache storing images in folder (a datastore
// folder name such as "10.0.0.5_base") of each datastore, through s.
func NewImageCache(s *Session, folder string) (*ImageCache, error) {
	if err := checkName("cache folder", folder, true); err != nil {
		return nil, err
	}
	return &ImageCache{s: s, folder: strings.Trim(folder, "/"), temp: DefaultTempFolder, limits: vmdk.DefaultLimits,
		flights: make(map[cacheKey]*cacheFlight)}, nil
}

// checkName rejects names that would escape their folder or break a
// datastore path.
func checkName(what, name string, slashOK bool) error {
	switch {
	case strings.Trim(name, "/") == "":
		return fmt.Errorf("%w: %s is empty", ErrInvalidConfig, what)
	case strings.ContainsAny(name, "[]\\\n"), !slashOK && strings.Contains(name, "/"):
		return fmt.Errorf("%w: %s %q contains a forbidden character", ErrInvalidConfig, what, name)
	}
	for _, e := range strings.Split(name, "/") {
		if e == "." || e == ".." {
			return fmt.Errorf("%w: %s %q contains %q", ErrInvalidConfig, what, name, e)
		}
	}
	return nil
}

// Folder returns the cache folder name.
func (ic *ImageCache) Folder() string { return ic.folder }

// Path returns where image id is (or would be) cached on datastore ds.
func (ic *ImageCache) Path(ds, imageID string) DatastorePath {
	return DatastorePath{Datastore: ds, Path: ic.folder + "/" + imageID + "/" + imageID + ".vmdk"}
}

// Ensure returns the path of image imageID's VMDK in the cache of datastore
// ds (of datacenter dc), putting it there first if it is missing: it calls
// fetch and writes the image as a virtual disk of the given kind.
//
// However many goroutines call Ensure for the same (dc, ds, image) at the
// same time, the image is transferred once, with the first caller's fetch
// and context; the others wait for that result (or their own ctx). A
// failure is returned to all of them and forgotten, so a later call tries
// again; if the first caller's context was cancelled, waiters whose own
// context is still live try again at once. Processes sharing a datastore are
// not coordinated beyond the atomic move into the cache: both may transfer
// the image, and the second move finds the image in place and succeeds.
//
// Supported kinds: DiskKindPreallocated and DiskKindThin (the image is the
// raw flat extent; fetch's size must be exact and positive), and
// DiskKindSparse and DiskKindStreamOptimized (a monolithicSparse or
// streamOptimized VMDK, told apart by its header whichever of the two is
// named), cached as thin disks; fetch's size then only bounds the image (0
// when unknown). A streamOptimized image is imported as nova's VMware driver
// imports it (ImportVApp and an HttpNfcLease, see Session.importDisk): its
// compressed bytes go to vCenter as they arrive from fetch and ESX expands
// them, while the cache inflates every grain on the way only to check the
// image (nothing is kept or sent expanded). A monolithicSparse image is
// converted to a flat extent while it streams from fetch to the datastore;
// one whose grains do not lie in disk order in the file is converted into
// a local temporary file first. A malformed image fails with an error
// wrapping ErrInvalidImage before or while it is written (an import's lease
// is then aborted, never completed), a valid one of a variant not handled
// with ErrUnsupportedDiskKind; either way nothing is left in the cache or
// the staging folder. Other kinds fail with ErrUnsupportedDiskKind.
//
// Cost when this cache has seen the image on the datastore: nothing; when
// the image is there but unseen: one HTTP HEAD, no SOAP call. When it is
// not, for a flat or monolithicSparse image: MakeDirectory,
// CreateVirtualDisk_Task, DeleteDatastoreFile_Task ×2,
// MoveDatastoreFile_Task (each task plus its wait, usually 1-2
// RetrievePropertiesEx), one HTTP HEAD and one HTTP PUT of the extent: 9
// SOAP round trips against vcsim. For a streamOptimized image:
// MakeDirectory, ImportVApp, 1-2 RetrievePropertiesEx until the lease is
// ready, HttpNfcLeaseComplete, UnregisterVM, MoveDatastoreFile_Task,
// DeleteDatastoreFile_Task (with their waits), one HTTP HEAD and one HTTP
// POST of the compressed image: 9-10 SOAP round trips. The first image the
// cache puts on a datastore costs 1 more (MakeDirectory of the cache
// folder), and 1 more if streamOptimized (to find a resource pool and the
// VM folder); add 1 the first time the Session uses dc. Whatever the number
// of concurrent callers.
func (ic *ImageCache) Ensure(ctx context.Context, dc, ds, imageID string, fetch FetchFunc, kind DiskKind) (DatastorePath, error) {
	op := fmt.Sprintf("cache image %s on %s", imageID, ds)
	if err := checkName("image id", imageID, false); err != nil {
		return DatastorePath{}, wrapErr(op, err)
	}
	if ds == "" || strings.ContainsAny(ds, "[]") {
		return DatastorePath{}, wrapErr(op, fmt.Errorf("%w: bad datastore name %q", ErrInvalidConfig, ds))
	}
	switch kind {
	case DiskKindPreallocated, DiskKindThin, DiskKindSparse, DiskKindStreamOptimized:
	default:
		return DatastorePath{}, fmt.Errorf("vcenter: %s: %w: %q", op, ErrUnsupportedDiskKind, kind)
	}

	key := cacheKey{dc, ds, imageID}
	for {
		ic.mu.Lock()
		if p, ok := ic.known[key]; ok {
			ic.mu.Unlock()
			return p, nil
		}
		f := ic.flights[key]
		if f == nil {
			f = &cacheFlight{done: make(chan struct{})}
			ic.flights[key] = f
			ic.mu.Unlock()

			f.path, f.err = ic.fill(ctx, op, dc, ds, imageID, fetch, kind)
			ic.mu.Lock()
			if f.err == nil {
				if ic.known == nil {
					ic.known = map[cacheKey]DatastorePath{}
				}
				ic.known[key] = f.path
			}
			delete(ic.flights, key)
			ic.mu.Unlock()
			close(f.done)
			return f.path, f.err
		}
		ic.mu.Unlock()

		select {
		case <-f.done:
		case <-ctx.Done():
			return DatastorePath{}, wrapErr(op, ctx.Err())
		}
		if f.err != nil && ctx.Err() == nil &&
			(errors.Is(f.err, context.Canceled) || errors.Is(f.err, context.DeadlineExceeded)) {
			continue // the leader gave up; try with our own context
		}
		return f.path, f.err
	}
}

// Forget makes the next Ensure of the image on the datastore check the
// datastore again: call it when the cached file was found missing (removed
// behind the cache's back).
func (ic *ImageCache) Forget(dc, ds, imageID string) {
	ic.mu.Lock()
	delete(ic.known, cacheKey{dc, ds, imageID})
	ic.mu.Unlock()
}

// fill puts one image into the cache unless it is there already.
func (ic *ImageCache) fill(ctx context.Context, op, dc, ds, imageID string, fetch FetchFunc, kind DiskKind) (DatastorePath, error) {
	s := ic.s
	cached := ic.Path(ds, imageID)
	ok, err := s.FileExists(ctx, dc, cached)
	if err != nil {
		return DatastorePath{}, err
	}
	if ok {
		return cached, nil
	}

	rc, size, err := fetch(ctx)
	if err != nil {
		return DatastorePath{}, fmt.Errorf("vcenter: %s: fetch: %w", op, err)
	}
	defer func() { _ = rc.Close() }()

	// The image's header (and a sparse image's grain tables) are read and
	// checked before anything is created on the datastore.
	var ext extent
	switch kind {
	case DiskKindSparse, DiskKindStreamOptimized:
		br := bufio.NewReaderSize(rc, 64<<10)
		hb, perr := br.Peek(vmdk.SectorSize)
		h, err := vmdk.ParseHeader(hb, ic.limits)
		if err != nil && perr != nil && !errors.Is(perr, io.EOF) {
			return DatastorePath{}, wrapErr(op, fmt.Errorf("reading the image: %w", perr))
		}
		if err == nil && h.Format() == vmdk.StreamOptimized {
			// Checks the header against the announced size; reads
			// nothing more.
			im, err := vmdk.Open(bytes.NewReader(hb), size, ic.limits)
			if err != nil {
				return DatastorePath{}, imageErr(op, err)
			}
			ext = ic.importedExtent(op, im.Size(), br, size)
			break
		}
		im, err := vmdk.Open(br, size, ic.limits)
		if err != nil {
			return DatastorePath{}, imageErr(op, err)
		}
		ext = ic.convertedExtent(op, im, rc)
		kind = DiskKindThin
	default:
		if size <= 0 {
			return DatastorePath{}, wrapErr(op, fmt.Errorf("fetch returned size %d; a flat image needs its exact size", size))
		}
		ext = ic.flatExtent(op, rc, size)
	}

	start := time.Now()
	stage := DatastorePath{Datastore: ds, Path: ic.temp + "/" + randomHex(8)}
	defer func() {
		// The staging folder is empty after a successful move; remove it
		// in either case, even if ctx is done.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
		defer cancel()
		if err := s.DeleteDatastoreFile(cctx, dc, stage); err != nil {
			s.logFor(ctx).Warn().Err(err).Str("path", stage.String()).Msg("cannot remove image staging folder")
		}
	}()

	dir := stage.Join(imageID)
	desc := dir.Join(imageID + ".vmdk")
	flat := dir.Join(imageID + "-flat.vmdk")
	if err := s.MakeDirectory(ctx, dc, dir); err != nil {
		return DatastorePath{}, err
	}
	var how string
	if ext.create != nil {
		how, err = ext.create(ctx, dc, stage, desc)
	} else {
		// As nova does: let vSphere write a descriptor of the right
		// capacity, then replace its extent with the image.
		if err := s.CreateVirtualDisk(ctx, dc, desc, (ext.size+1023)/1024, kind); err != nil {
			return DatastorePath{}, err
		}
		if err := s.DeleteDatastoreFile(ctx, dc, flat); err != nil {
			return DatastorePath{}, err
		}
		how, err = ext.upload(ctx, dc, flat)
	}
	if err != nil {
		return DatastorePath{}, err
	}
	// The cache folder is made once per datastore; if it was removed
	// since, the move says so and it is made again.
	folder := DatastorePath{Datastore: ds, Path: ic.folder}
	folderKey := cacheKey{dc: dc, ds: ds}
	ic.mu.Lock()
	made := ic.folders[folderKey]
	ic.mu.Unlock()
	if !made {
		if err := ic.makeFolder(ctx, dc, folder, folderKey); err != nil {
			return DatastorePath{}, err
		}
	}
	err = s.MoveDatastoreFile(ctx, dc, dir, cached.Dir(), false)
	if made && errors.Is(err, ErrNotFound) {
		if err := ic.makeFolder(ctx, dc, folder, folderKey); err != nil {
			return DatastorePath{}, err
		}
		err = s.MoveDatastoreFile(ctx, dc, dir, cached.Dir(), false)
	}
	if errors.Is(err, ErrFileExists) {
		// Another process cached the image meanwhile; make sure the
		// folder in the way really holds it.
		ok, serr := s.FileExists(ctx, dc, cached)
		if serr != nil {
			return DatastorePath{}, serr
		}
		if !ok {
			return DatastorePath{}, fmt.Errorf("vcenter: %s: %s exists without %s: %w", op, cached.Dir(), cached.Base(), err)
		}
		err = nil
	}
	if err != nil {
		return DatastorePath{}, err
	}
	s.logFor(ctx).Info().Str("image", imageID).Str("path", cached.String()).Int64("bytes", ext.size).
		Str("how", how).Dur("took", time.Since(start)).Msg("cached image on datastore")
	return cached, nil
}

// makeFolder makes the cache folder on a datastore and remembers it.
func (ic *ImageCache) makeFolder(ctx context.Context, dc string, folder DatastorePath, key cacheKey) error {
	if err := ic.s.MakeDirectory(ctx, dc, folder); err != nil {
		return err
	}
	ic.mu.Lock()
	if ic.folders == nil {
		ic.folders = map[cacheKey]bool{}
	}
	ic.folders[key] = true
	ic.mu.Unlock()
	return nil
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// extent is the flat extent an image becomes: its size, known before the
// upload starts, and how to write it to the datastore.
type extent struct {
	size int64
	// upload writes the extent to the datastore file dst and says how it
	// went about it, for the log.
	upload func(ctx context.Context, dc string, dst DatastorePath) (string, error)
	// create, when set, replaces the descriptor and upload: it makes the
	// whole disk desc (in its existing directory) and may leave other
	// files in stage, the staging folder.
	create func(ctx context.Context, dc string, stage, desc DatastorePath) (string, error)
}

// flatExtent uploads a flat image as it is.
func (ic *ImageCache) flatExtent(op string, r io.Reader, size int64) extent {
	return extent{size: size, upload: func(ctx context.Context, dc string, dst DatastorePath) (string, error) {
		cr := &countingReader{r: r}
		if err := ic.s.Upload(ctx, dc, dst, cr, size); err != nil {
			return "", err
		}
		if cr.n != size {
			return "", wrapErr(op, fmt.Errorf("image has %d bytes, fetch announced %d", cr.n, size))
		}
		return "flat", nil
	}}
}

// convertedExtent converts a monolithicSparse image, read from src, to its
// flat extent on the way to the datastore (streamOptimized images are
// imported instead, see importedExtent).
func (ic *ImageCache) convertedExtent(op string, im *vmdk.Image, src io.Closer) extent {
	return extent{size: im.Size(), upload: func(ctx context.Context, dc string, dst DatastorePath) (string, error) {
		how := fmt.Sprintf("%s converted", im.Format())
		if !im.Ordered() {
			return how + " through a local file", ic.uploadSpooled(ctx, op, dc, dst, im)
		}
		return how + " as it streamed", ic.uploadStreamed(ctx, op, dc, dst, im, src)
	}}
}

// importedExtent imports a streamOptimized image as vCenter imports one
// (Session.importDisk): the compressed image goes to the datastore as it
// arrives, and ESX expands it into the disk. The image is checked on the
// way, as a conversion would (every grain inflated, nothing kept), so that
// a malformed image fails with ErrInvalidImage and never enters the cache,
// whatever the server accepted.
func (ic *ImageCache) importedExtent(op string, capacity int64, body io.Reader, size int64) extent {
	return extent{size: capacity, create: func(ctx context.Context, dc string, stage, desc DatastorePath) (string, error) {
		target, err := ic.importTarget(ctx, dc, desc.Datastore)
		if err != nil {
			return "", err
		}
		pr, pw := io.Pipe()
		checked := make(chan error, 1)
		go func() {
			err := checkStream(ctx, pr, size, ic.limits)
			if err != nil {
				_ = pr.CloseWithError(err) // stops the upload
			} else {
				_, _ = io.Copy(io.Discard, pr) // whatever follows the end-of-stream marker
			}
			checked <- err
		}()
		var cerr error
		waited := false
		wait := func(end error) error {
			if !waited {
				_ = pw.CloseWithError(end) // no-op when the image's end was read
				cerr, waited = <-checked, true
			}
			return cerr
		}
		tee := &teeReader{r: body, w: pw}
		ierr := ic.s.importDisk(ctx, diskImport{
			dc: dc, target: target, vmx: stage.Join("image.vmx"), disk: desc, capacity: capacity,
			body: tee, size: size,
			// The server has read every byte announced; the lease is
			// completed only if the image was whole and sound.
			check: func() error { return wait(nil) },
		})
		cerr = wait(errUploadEnded)
		switch {
		case errors.Is(cerr, vmdk.ErrInvalid), errors.Is(cerr, vmdk.ErrUnsupported):
			return "", imageErr(op, cerr)
		case cerr != nil && !errors.Is(cerr, errUploadEnded):
			return "", wrapErr(op, cerr) // reading the image failed
		case ierr != nil:
			if isGone(ierr) {
				ic.mu.Lock()
				delete(ic.targets, cacheKey{dc: dc, ds: desc.Datastore})
				ic.mu.Unlock()
			}
			return "", ierr
		}
		return fmt.Sprintf("streamOptimized imported, %d bytes sent", tee.n.Load()), nil
	}}
}

// importTarget returns where to import onto datastore ds, found once per
// datacenter and datastore.
func (ic *ImageCache) importTarget(ctx context.Context, dc, ds string) (importTarget, error) {
	key := cacheKey{dc: dc, ds: ds}
	ic.mu.Lock()
	t, ok := ic.targets[key]
	ic.mu.Unlock()
	if ok {
		return t, nil
	}
	t, err := ic.s.importTargetFor(ctx, dc, ds)
	if err != nil {
		return importTarget{}, err
	}
	ic.mu.Lock()
	if ic.targets == nil {
		ic.targets = map[cacheKey]importTarget{}
	}
	ic.targets[key] = t
	ic.mu.Unlock()
	return t, nil
}

// checkStream reads a whole streamOptimized image from r and inflates every
// grain, keeping nothing: it fails as a conversion of the image would.
func checkStream(ctx context.Context, r io.Reader, size int64, lim vmdk.Limits) error {
	im, err := vmdk.Open(r, size, lim)
	if err != nil {
		return err
	}
	return im.ConvertAt(ctx, discardDisk{})
}

// discardDisk is a disk that forgets what is written to it.
type discardDisk struct{}

func (discardDisk) WriteAt(p []byte, _ int64) (int, error) { return len(p), nil }
func (discardDisk) Truncate(int64) error                   { return nil }

// teeReader passes what it reads from r on to w, closing w at r's end (with
// r's error if it failed), and counts it. A failed write to w fails the
// read: the pipe's reader rejected the image.
type teeReader struct {
	r io.Reader
	w *io.PipeWriter
	n atomic.Int64 // bytes passed on (the HTTP transport may read after the request ended)
}

func (t *teeReader) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	t.n.Add(int64(n))
	if n > 0 {
		if _, werr := t.w.Write(p[:n]); werr != nil {
			return 0, werr
		}
	}
	switch {
	case errors.Is(err, io.EOF):
		_ = t.w.Close()
	case err != nil:
		_ = t.w.CloseWithError(err)
	}
	return n, err
}

// errUploadEnded stops a conversion whose upload has ended.
var errUploadEnded = errors.New("upload ended")

// uploadStreamed converts im, read from src, into the body of the upload of
// dst, so only a grain or so of the image is in memory at a time.
func (ic *ImageCache) uploadStreamed(ctx context.Context, op, dc string, dst DatastorePath, im *vmdk.Image, src io.Closer) error {
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := im.Convert(ctx, pw)
		_ = pw.CloseWithError(err)
		done <- err
	}()
	uerr := ic.s.Upload(ctx, dc, dst, pr, im.Size())
	// Unblocks the conversion if the upload gave up early, whether it
	// waits to write or to read a stalled image stream.
	_ = pr.CloseWithError(errUploadEnded)
	if uerr != nil {
		_ = src.Close()
	}
	// The conversion's failure is the cause of the upload's.
	if cerr := <-done; cerr != nil && !errors.Is(cerr, errUploadEnded) {
		return imageErr(op, cerr)
	}
	return uerr
}

// uploadSpooled converts im into a local temporary file, which keeps holes
// for zero grains, and uploads that.
func (ic *ImageCache) uploadSpooled(ctx context.Context, op, dc string, dst DatastorePath, im *vmdk.Image) error {
	f, err := os.CreateTemp(ic.spoolDir, "vcagent-image-*.vmdk")
	if err != nil {
		return wrapErr(op, fmt.Errorf("spool file: %w", err))
	}
	// Unlinked at once: the open file is all that needs it, and a crash
	// leaves nothing behind.
	_ = os.Remove(f.Name())
	defer func() { _ = f.Close() }()
	if err := im.ConvertAt(ctx, f); err != nil {
		return imageErr(op, err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return wrapErr(op, fmt.Errorf("spool file: %w", err))
	}
	return ic.s.Upload(ctx, dc, dst, f, im.Size())
}

// imageErr wraps a conversion error, adding this package's sentinel for
// faults of the image.
func imageErr(op string, err error) error {
	switch {
	case errors.Is(err, vmdk.ErrInvalid):
		return fmt.Errorf("vcenter: %s: %w: %w", op, ErrInvalidImage, err)
	case errors.Is(err, vmdk.ErrUnsupported):
		return fmt.Errorf("vcenter: %s: %w: %w", op, ErrUnsupportedDiskKind, err)
	default:
		return wrapErr(op, err)
	}
}
