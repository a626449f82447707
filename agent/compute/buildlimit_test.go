package compute

import (
	"context"
	"sync"
	"testing"
	"time"
)

// TestBuildLimit checks max_concurrent_builds: with a limit of 2, five
// builds run two at a time, the others are counted as queued, a cancelled
// wait gives up, and 0 means no limit.
func TestBuildLimit(t *testing.T) {
	t.Parallel()
	b := newBuildLimit(2)
	var (
		mu            sync.Mutex
		running, peak int
	)
	gate := make(chan struct{})
	var wg sync.WaitGroup
	for range 5 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			release, err := b.acquire(context.Background())
			if err != nil {
				t.Error(err)
				return
			}
			defer release()
			mu.Lock()
			running++
			peak = max(peak, running)
			mu.Unlock()
			<-gate
			mu.Lock()
			running--
			mu.Unlock()
		}()
	}
	deadline := time.Now().Add(5 * time.Second)
	for b.running() != 2 || b.queued() != 3 {
		if time.Now().After(deadline) {
			t.Fatalf("running %d queued %d, want 2 and 3", b.running(), b.queued())
		}
		time.Sleep(time.Millisecond)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := b.acquire(ctx); err == nil {
		t.Error("acquire with a cancelled context succeeded while the limit was reached")
	}
	close(gate)
	wg.Wait()
	if peak != 2 || b.running() != 0 || b.queued() != 0 {
		t.Errorf("peak %d, after: running %d queued %d; want 2, 0, 0", peak, b.running(), b.queued())
	}
	if newBuildLimit(0) != nil {
		t.Error("max_concurrent_builds 0 must mean unlimited")
	}
	release, err := (*buildLimit)(nil).acquire(ctx)
	if err != nil {
		t.Errorf("an unlimited build waited: %v", err)
	}
	release()
}
